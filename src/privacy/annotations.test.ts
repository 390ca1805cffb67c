/**
 * The data map read from a contract: categories on schemas and properties (inherited, overridden,
 * `none`), purposes, automated decisions, the warning for personal data without a category, and
 * the errors for malformed annotations (naming the operation and where).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseOpenApi } from '../gateway/openapi.ts';
import { needsEnforcement, PrivacyAnnotationError, readOperationPrivacy } from './annotations.ts';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'portcullis-privacy-map-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function doc(paths: Record<string, unknown>, schemas: Record<string, unknown> = {}) {
  return JSON.stringify({
    openapi: '3.1.0',
    info: { title: 't', version: '1' },
    paths,
    components: { schemas },
  });
}

function answer(schema: unknown) {
  return { responses: { '200': { description: 'ok', content: { 'application/json': { schema } } } } };
}

async function read(paths: Record<string, unknown>, schemas: Record<string, unknown> = {}) {
  const d = await parseOpenApi(doc(paths, schemas), join(dir, 'api.json'));
  const warnings: string[] = [];
  const ops = d.operations.map((op) => readOperationPrivacy(op, warnings));
  return { ops, warnings };
}

describe('the data map of a contract', () => {
  it('reads categories through $ref, inherits them, lets properties override, and skips write-only answers', async () => {
    const { ops, warnings } = await read(
      {
        '/people/{id}': {
          get: {
            operationId: 'getPerson',
            'x-portcullis-purposes': ['service', 'analytics'],
            ...answer({ $ref: '#/components/schemas/Person' }),
          },
        },
      },
      {
        Email: { type: 'string', format: 'email', 'x-portcullis-data': { category: 'contact' } },
        Person: {
          type: 'object',
          'x-portcullis-data': { category: 'health' },
          properties: {
            email: { $ref: '#/components/schemas/Email' },
            notes: { type: 'string' },
            secret: { type: 'string', writeOnly: true, 'x-portcullis-data': { category: 'government-id' } },
            location: { type: 'string', 'x-portcullis-data': 'none' },
          },
        },
      },
    );
    expect(warnings).toEqual([]);
    const [op] = ops;
    expect(op?.purposes).toEqual(['service', 'analytics']);
    expect(op?.categories).toEqual(['contact', 'health']);
    expect(op?.sensitive).toBe(true);
    expect(op?.fields).toEqual([
      { direction: 'response', pointer: '', category: 'health', sensitive: true },
      { direction: 'response', pointer: '/email', category: 'contact', sensitive: false },
    ]);
    expect(op !== undefined && needsEnforcement(op)).toBe(true);
  });

  it('defaults to the service purpose (nothing to enforce) and implies automated-decision from its annotation', async () => {
    const { ops } = await read({
      '/a': { get: answer({ type: 'object' }) },
      '/b': {
        get: {
          'x-portcullis-automated-decision': { logic: 'age from birth date', significance: 'an offer' },
          ...answer({ type: 'object' }),
        },
      },
    });
    expect(ops[0]?.purposes).toEqual(['service']);
    expect(ops[0]?.purposesDeclared).toBe(false);
    expect(ops[0] !== undefined && needsEnforcement(ops[0])).toBe(false);
    expect(ops[1]?.purposes).toEqual(['service', 'automated-decision']);
    expect(ops[1]?.automatedDecision).toEqual({
      logic: 'age from birth date',
      significance: 'an offer',
      consequences: undefined,
      humanReview: undefined,
    });
  });

  it('warns about an answer that returns personal data without a category, naming the property and the operation', async () => {
    const { warnings } = await read({
      '/users': {
        get: {
          operationId: 'listUsers',
          ...answer({
            type: 'object',
            properties: {
              items: {
                type: 'array',
                items: {
                  type: 'object',
                  properties: {
                    id: { type: 'string' },
                    givenName: { type: 'string' },
                    contact: { type: 'string', format: 'email' },
                  },
                },
              },
            },
          }),
        },
      },
    });
    expect(warnings).toEqual([
      "GET /users (listUsers): the answer's property /items/*/givenName looks like personal data but has no x-portcullis-data category",
      "GET /users (listUsers): the answer's property /items/*/contact looks like personal data but has no x-portcullis-data category",
    ]);
  });

  it.each([
    [
      { 'x-portcullis-purposes': ['service', 'world-domination'] },
      /GET \/x: x-portcullis-purposes: "world-domination" is not one of/,
    ],
    [{ 'x-portcullis-purposes': [] }, /must be a non-empty array/],
    [
      { 'x-portcullis-automated-decision': { logic: 'x' } },
      /automated-decision\.significance must be a non-empty string/,
    ],
    [
      { 'x-portcullis-automated-decision': { logic: 'x', significance: 'y', secret: 1 } },
      /unknown member "secret"/,
    ],
  ])('refuses a malformed operation annotation %#', async (extra, message) => {
    await expect(read({ '/x': { get: { ...extra, ...answer({ type: 'object' }) } } })).rejects.toThrow(
      message,
    );
  });

  it.each([
    [{ category: 'favourite-colour' }, /category must be one of/],
    [
      { category: 'health', sensitive: false },
      /sensitive personal data; it cannot be marked sensitive: false/,
    ],
    [{ category: 'contact', retention: '1y' }, /unknown member "retention"/],
    ['personal', /must be \{category, sensitive\?\} or "none"/],
  ])('refuses a malformed data annotation %#', async (annotation, message) => {
    const p = read({
      '/x': {
        get: answer({
          type: 'object',
          properties: { email: { type: 'string', 'x-portcullis-data': annotation } },
        }),
      },
    });
    await expect(p).rejects.toThrow(PrivacyAnnotationError);
    await expect(p).rejects.toThrow(message);
    await expect(p).rejects.toThrow(/GET \/x response \/email/);
  });
});
