import { describe, expect, it } from 'vitest';
import type { GatewayRequest } from '../../context.ts';
import { parseOpenApi } from '../../openapi.ts';
import type { OpenApiDocument } from '../../openapi.ts';
import { Denial } from '../../problems.ts';
import { compileRequestValidation, SchemaError } from './index.ts';
import { prepareSchema } from './schema.ts';

async function doc(version: string, op: Record<string, unknown>): Promise<OpenApiDocument> {
  const text = JSON.stringify({
    openapi: version,
    info: { title: 't', version: '1' },
    paths: { '/x': { post: { responses: { '200': { description: 'ok' } }, ...op } } },
  });
  return parseOpenApi(text, '/nonexistent/api.json');
}

function request(body: unknown, query = ''): GatewayRequest {
  return {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    target: { path: '/x', segments: ['x'], query },
    params: {},
    body: body === undefined ? undefined : Buffer.from(JSON.stringify(body)),
  } as unknown as GatewayRequest;
}

async function run(d: OpenApiDocument, req: GatewayRequest): Promise<Denial | undefined> {
  const op = d.operations[0];
  if (op === undefined) throw new Error('no operation');
  const stage = compileRequestValidation(op, d);
  if (stage === null) throw new Error('no stage');
  try {
    await stage(req);
    return undefined;
  } catch (err) {
    if (err instanceof Denial) return err;
    throw err;
  }
}

const body = (schema: unknown) => ({ requestBody: { content: { 'application/json': { schema } } } });

describe('prepareSchema', () => {
  it('closes objects by default, honours an explicit opt-out, and closes allOf over the union', () => {
    expect(prepareSchema({ type: 'object', properties: { a: {} } }, 'request', false)).toMatchObject({
      additionalProperties: false,
    });
    expect(prepareSchema({ type: 'object', additionalProperties: true }, 'request', false)).toEqual({
      type: 'object',
      additionalProperties: true,
    });
    const combined = prepareSchema(
      { allOf: [{ type: 'object', properties: { a: {} } }, { properties: { b: {} } }] },
      'request',
      false,
    ) as Record<string, unknown>;
    expect(combined.additionalProperties).toBe(false);
    expect(Object.keys(combined.properties as object).sort()).toEqual(['a', 'b']);
    const members = combined.allOf as Record<string, unknown>[];
    expect(members.every((m) => m.additionalProperties === undefined)).toBe(true);
  });

  it('rewrites OpenAPI 3.0 nullable and boolean exclusive bounds', () => {
    expect(
      prepareSchema({ type: 'integer', nullable: true, minimum: 1, exclusiveMinimum: true }, 'request', true),
    ).toEqual({
      type: ['integer', 'null'],
      exclusiveMinimum: 1,
    });
  });

  it('turns readOnly into a failing schema for requests and drops writeOnly from required in responses', () => {
    const schema = {
      type: 'object',
      required: ['id', 'secret'],
      properties: { id: { type: 'string', readOnly: true }, secret: { type: 'string', writeOnly: true } },
    };
    expect(prepareSchema(schema, 'request', false)).toMatchObject({ required: ['secret'] });
    expect(prepareSchema(schema, 'response', false)).toMatchObject({ required: ['id'] });
  });
});

describe('compileRequestValidation', () => {
  it('handles OpenAPI 3.0 nullable and 3.1 type arrays alike', async () => {
    for (const [version, prop] of [
      ['3.0.3', { type: 'string', nullable: true }],
      ['3.1.0', { type: ['string', 'null'] }],
    ] as const) {
      const d = await doc(version, body({ type: 'object', properties: { a: prop } }));
      expect(await run(d, request({ a: null }))).toBeUndefined();
      expect((await run(d, request({ a: 1 })))?.errors).toEqual([
        { in: 'body', pointer: '/a', rule: 'type' },
      ]);
      expect((await run(d, request({ b: 1 })))?.errors).toEqual([
        { in: 'body', pointer: '/b', rule: 'additionalProperties' },
      ]);
    }
  });

  it('lets each oneOf alternative close itself', async () => {
    const d = await doc(
      '3.1.0',
      body({
        oneOf: [
          { type: 'object', required: ['cat'], properties: { cat: { type: 'string' } } },
          { type: 'object', required: ['dog'], properties: { dog: { type: 'string' } } },
        ],
      }),
    );
    expect(await run(d, request({ cat: 'x' }))).toBeUndefined();
    expect(await run(d, request({ dog: 'x' }))).toBeUndefined();
    expect((await run(d, request({ cat: 'x', admin: true })))?.code).toBe('invalid-request');
  });

  it('refuses what it cannot enforce at start-up', async () => {
    const deep = await doc('3.1.0', {
      parameters: [{ name: 'f', in: 'query', style: 'deepObject', schema: { type: 'object' } }],
    });
    expect(() => compileRequestValidation(deep.operations[0]!, deep)).toThrow(SchemaError);
    const matrix = await doc('3.1.0', {
      parameters: [{ name: 'p', in: 'header', style: 'matrix', schema: { type: 'string' } }],
    });
    expect(() => compileRequestValidation(matrix.operations[0]!, matrix)).toThrow(/style "matrix"/);
  });

  it('parses JSON-encoded query parameters with the same limits', async () => {
    const d = await doc('3.1.0', {
      parameters: [
        {
          name: 'filter',
          in: 'query',
          content: {
            'application/json': { schema: { type: 'object', properties: { n: { type: 'integer' } } } },
          },
        },
      ],
    });
    expect(await run(d, request(undefined, 'filter=%7B%22n%22%3A1%7D'))).toBeUndefined();
    expect((await run(d, request(undefined, 'filter=%7B%22__proto__%22%3A1%7D')))?.errors).toEqual([
      { in: 'query', pointer: '/filter/__proto__', rule: 'json-forbidden-key' },
    ]);
    expect((await run(d, request(undefined, 'filter=%7B%22x%22%3A1%7D')))?.errors).toEqual([
      { in: 'query', pointer: '/filter/x', rule: 'additionalProperties' },
    ]);
  });
});

describe('the canonical query (req.forwardQuery)', () => {
  it('serialises what was validated: declared order, coerced values, declared array styles, JSON', async () => {
    const d = await doc('3.1.0', {
      parameters: [
        { name: 'n', in: 'query', schema: { type: 'number' } },
        { name: 'flag', in: 'query', schema: { type: 'boolean' } },
        { name: 'csv', in: 'query', explode: false, schema: { type: 'array', items: { type: 'integer' } } },
        {
          name: 'pipes',
          in: 'query',
          style: 'pipeDelimited',
          schema: { type: 'array', items: { type: 'string' } },
        },
        { name: 'spaces', in: 'query', style: 'spaceDelimited', schema: { type: 'array' } },
        {
          name: 'f',
          in: 'query',
          content: { 'application/json': { schema: { type: 'object', properties: { a: {}, b: {} } } } },
        },
        { name: 'opt', in: 'query', schema: { type: ['string', 'null'] } },
      ],
    });
    const req = request(
      undefined,
      'f=%7B%22b%22%3A1.0%2C%20%22a%22%3A%5B%5D%7D&spaces=x%20y&pipes=a%7Cb%20c&csv=01,2&flag=true&n=-0.50&opt=',
    );
    expect(await run(d, req)).toBeUndefined();
    expect(req.forwardQuery).toBe(
      'n=-0.5&flag=true&csv=1,2&pipes=a%7Cb%20c&spaces=x%20y&f=%7B%22b%22%3A1%2C%22a%22%3A%5B%5D%7D&opt=',
    );
    const refused = request(undefined, 'n=abc');
    expect((await run(d, refused))?.errors).toEqual([{ in: 'query', pointer: '/n', rule: 'type' }]);
    expect(refused.forwardQuery).toBeUndefined();
  });
});
