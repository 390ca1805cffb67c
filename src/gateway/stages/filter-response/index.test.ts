import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import type { GatewayRequest, StageResponse } from '../../chain.ts';
import { parseOpenApi } from '../../openapi.ts';
import { Denial } from '../../problems.ts';
import { compileResponseEnforcement, RESPONSE_BUFFER_LIMIT } from './index.ts';

const ITEM = {
  type: 'object',
  required: ['id'],
  properties: { id: { type: 'integer' }, pin: { type: 'string', writeOnly: true } },
};

async function stage() {
  const d = await parseOpenApi(
    JSON.stringify({
      openapi: '3.0.3',
      info: { title: 't', version: '1' },
      paths: {
        '/x': {
          get: {
            responses: {
              '200': {
                description: 'ok',
                content: {
                  'application/json': {
                    schema: {
                      type: 'object',
                      properties: {
                        base: { allOf: [ITEM, { type: 'object', properties: { name: { type: 'string' } } }] },
                        list: { type: 'array', maxItems: 2, items: ITEM },
                        note: { type: 'string', nullable: true },
                      },
                    },
                  },
                },
              },
            },
          },
        },
      },
    }),
    '/nonexistent/api.json',
  );
  const s = compileResponseEnforcement(d.operations[0]!, d);
  if (s === null) throw new Error('no stage');
  return s;
}

const req = { method: 'GET' } as unknown as GatewayRequest;

async function answer(res: StageResponse): Promise<StageResponse | Denial> {
  const s = await stage();
  try {
    return await s(req, res);
  } catch (err) {
    if (err instanceof Denial) return err;
    throw err;
  }
}

describe('compileResponseEnforcement', () => {
  it('minimises through allOf, caps arrays and keeps 3.0 nullable values', async () => {
    const body = {
      base: { id: 1, name: 'a', pin: '1234', extra: true },
      list: [{ id: 1, pin: '9' }, { id: 2 }, { id: 3 }],
      note: null,
      internal: 'x',
    };
    const out = await answer({
      status: 200,
      headers: { 'content-type': 'application/json' },
      body: Readable.from([Buffer.from(JSON.stringify(body))]),
    });
    if (out instanceof Denial) throw out;
    expect(JSON.parse((out.body as Buffer).toString())).toEqual({
      base: { id: 1, name: 'a' },
      list: [{ id: 1 }, { id: 2 }],
      note: null,
    });
  });

  it('decodes gzip, and refuses unknown encodings and oversized bodies', async () => {
    const gz = await answer({
      status: 200,
      headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' },
      body: gzipSync(JSON.stringify({ note: 'n', secret: 1 })),
    });
    if (gz instanceof Denial) throw gz;
    expect(JSON.parse((gz.body as Buffer).toString())).toEqual({ note: 'n' });
    expect(gz.headers['content-encoding']).toBeUndefined();
    const zstd = await answer({
      status: 200,
      headers: { 'content-type': 'application/json', 'content-encoding': 'compress' },
      body: Buffer.from('x'),
    });
    expect(zstd).toBeInstanceOf(Denial);
    expect((zstd as Denial).reason).toBe('response-encoding');
    const bomb = await answer({
      status: 200,
      headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' },
      body: gzipSync(Buffer.alloc(RESPONSE_BUFFER_LIMIT + 1, 0x20)),
    });
    expect((bomb as Denial).reason).toBe('response-encoding');
    const big = await answer({
      status: 200,
      headers: { 'content-type': 'application/json' },
      body: Readable.from([Buffer.alloc(RESPONSE_BUFFER_LIMIT), Buffer.alloc(10)]),
    });
    expect((big as Denial).reason).toBe('response-too-large');
  });

  it('502s an undeclared status when no default is declared', async () => {
    const out = await answer({ status: 201, headers: {}, body: Buffer.from('{}') });
    expect(out).toBeInstanceOf(Denial);
    expect((out as Denial).status).toBe(502);
    expect((out as Denial).reason).toBe('response-status');
  });
});

describe('compileResponseEnforcement without writeOnly members (validated first)', () => {
  const PLAIN = {
    type: 'object',
    required: ['id'],
    properties: {
      id: { type: 'integer' },
      tags: { type: 'array', maxItems: 2, items: { type: 'string' } },
      child: { type: 'object', properties: { name: { type: 'string' } } },
    },
  };
  async function plainStage() {
    const d = await parseOpenApi(
      JSON.stringify({
        openapi: '3.1.0',
        info: { title: 't', version: '1' },
        paths: {
          '/x': {
            get: {
              responses: {
                '200': { description: 'ok', content: { 'application/json': { schema: PLAIN } } },
              },
            },
          },
        },
      }),
      '/nonexistent/api.json',
    );
    const s = compileResponseEnforcement(d.operations[0]!, d);
    if (s === null) throw new Error('no stage');
    return s;
  }
  const run = async (body: Buffer): Promise<StageResponse | Denial> => {
    const s = await plainStage();
    try {
      return await s(req, {
        status: 200,
        headers: { 'content-type': 'application/json; charset=utf-8', etag: '"e1"', 'content-length': '1' },
        body,
      });
    } catch (err) {
      if (err instanceof Denial) return err;
      throw err;
    }
  };

  it('passes a conforming body through as the same bytes, headers untouched', async () => {
    const raw = Buffer.from('{ "id": 1,  "tags": ["a"], "child": {"name": "n"} }');
    const out = await run(raw);
    if (out instanceof Denial) throw out;
    expect(out.body).toBe(raw);
    expect(out.headers.etag).toBe('"e1"');
  });

  it('still removes undeclared members and cuts arrays, then re-serialises', async () => {
    const out = await run(
      Buffer.from(JSON.stringify({ id: 1, tags: ['a', 'b', 'c'], child: { name: 'n', x: 1 }, y: 2 })),
    );
    if (out instanceof Denial) throw out;
    expect(JSON.parse((out.body as Buffer).toString())).toEqual({
      id: 1,
      tags: ['a', 'b'],
      child: { name: 'n' },
    });
    expect(out.headers.etag).toBeUndefined();
    expect(out.headers['content-length']).toBe(String((out.body as Buffer).length));
  });

  it('refuses what removal cannot repair, with or without something to remove', async () => {
    for (const body of [{ tags: [] }, { id: 'one' }, { id: 'one', extra: true }]) {
      const out = await run(Buffer.from(JSON.stringify(body)));
      expect(out).toBeInstanceOf(Denial);
      expect((out as Denial).reason).toBe('response-schema');
    }
  });
});
