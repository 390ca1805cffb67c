/**
 * Idempotency-Key through the real gateway over TLS: retries replayed without a second upstream
 * call, a reused key with another body refused (422), concurrent duplicates reaching the
 * upstream once, a required key missing (400), and records shared by two gateways on one Redis.
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRecordingUpstream, startTestGateway, TEST_OPENAPI } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';

const API = {
  ...TEST_OPENAPI,
  paths: {
    ...TEST_OPENAPI.paths,
    '/items': {
      ...TEST_OPENAPI.paths['/items'],
      post: { ...TEST_OPENAPI.paths['/items'].post, 'x-portcullis-idempotency': { ttlSeconds: 600 } },
    },
    '/orders': {
      post: {
        operationId: 'createOrder',
        'x-portcullis-idempotency': { required: true },
        requestBody: {
          content: {
            'application/json': { schema: { type: 'object', properties: { n: { type: 'integer' } } } },
          },
        },
        responses: { '201': { description: 'created' } },
      },
    },
  },
};

let upstream: RecordingUpstream;
let counter = 0;

function post(gw: TestGateway, path: string, body: unknown, key?: string) {
  return gw.request(path, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(key === undefined ? {} : { 'idempotency-key': key }) },
    body: JSON.stringify(body),
  });
}

function problemType(body: string): unknown {
  return (JSON.parse(body) as { type?: unknown }).type;
}

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  upstream.respond((r) => ({
    status: 201,
    headers: { 'content-type': 'application/json', 'x-order': String(++counter) },
    body: JSON.stringify({ n: counter, got: r.body.length }),
  }));
});

afterAll(async () => {
  await upstream.close();
});

describe('memory backend', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startTestGateway(
      { apis: [{ name: 'shop', openapi: 'api.yaml', basePath: '/v1', upstream: { url: upstream.url } }] },
      { openapi: API },
    );
  }, 60_000);
  afterAll(async () => {
    await gw.close();
  });

  it('replays a retry with the stored response, without a second upstream call', async () => {
    upstream.received.length = 0;
    const key = randomUUID();
    const first = await post(gw, '/v1/orders', { n: 1 }, key);
    expect(first.status).toBe(201);
    expect(first.headers['idempotent-replayed']).toBeUndefined();
    const retry = await post(gw, '/v1/orders', { n: 1 }, `"${key}"`);
    expect(retry.status).toBe(201);
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(retry.headers['x-order']).toBe(first.headers['x-order']);
    expect(retry.body).toBe(first.body);
    expect(upstream.received).toHaveLength(1);
    // Another key is another request.
    const other = await post(gw, '/v1/orders', { n: 1 }, randomUUID());
    expect(other.headers['idempotent-replayed']).toBeUndefined();
    expect(upstream.received).toHaveLength(2);
  });

  it('refuses the same key with a different body (422), without reaching the upstream', async () => {
    upstream.received.length = 0;
    const key = randomUUID();
    expect((await post(gw, '/v1/orders', { n: 1 }, key)).status).toBe(201);
    const reuse = await post(gw, '/v1/orders', { n: 2 }, key);
    expect(reuse.status).toBe(422);
    expect(problemType(reuse.body)).toBe('urn:portcullis:problem:unprocessable');
    expect(reuse.body).not.toContain(key);
    expect(upstream.received).toHaveLength(1);
  });

  it('lets exactly one of concurrent duplicates reach the upstream; the others get 409', async () => {
    upstream.received.length = 0;
    const slow = (r: { body: string }) => ({
      status: 201,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ got: r.body.length }),
      delayMs: 300,
    });
    upstream.respond(slow);
    const key = randomUUID();
    try {
      const answers = await Promise.all(
        Array.from({ length: 5 }, () => post(gw, '/v1/orders', { n: 3 }, key)),
      );
      const statuses = answers.map((a) => a.status).sort();
      expect(statuses).toEqual([201, 409, 409, 409, 409]);
      for (const a of answers.filter((x) => x.status === 409)) {
        expect(problemType(a.body)).toBe('urn:portcullis:problem:conflict');
        expect(a.headers['retry-after']).toBe('1');
      }
      expect(upstream.received).toHaveLength(1);
      // Once finished, a retry is replayed.
      const later = await post(gw, '/v1/orders', { n: 3 }, key);
      expect(later.headers['idempotent-replayed']).toBe('true');
      expect(upstream.received).toHaveLength(1);
    } finally {
      upstream.respond((r) => ({
        status: 201,
        headers: { 'content-type': 'application/json', 'x-order': String(++counter) },
        body: JSON.stringify({ n: counter, got: r.body.length }),
      }));
    }
  });

  it('requires a key where declared, and refuses malformed keys (400)', async () => {
    upstream.received.length = 0;
    const missing = await post(gw, '/v1/orders', { n: 1 });
    expect(missing.status).toBe(400);
    expect(problemType(missing.body)).toBe('urn:portcullis:problem:bad-request');
    for (const bad of ['x'.repeat(256), 'two words', '"open']) {
      expect((await post(gw, '/v1/orders', { n: 1 }, bad)).status).toBe(400);
    }
    expect(upstream.received).toHaveLength(0);
    // Where the key is optional, a request without one passes untouched, every time.
    expect((await post(gw, '/v1/items', { name: 'a' })).status).toBe(201);
    expect((await post(gw, '/v1/items', { name: 'a' })).headers['idempotent-replayed']).toBeUndefined();
    expect(upstream.received).toHaveLength(2);
  });

  it('does not store 5xx answers: a retry reaches the upstream again', async () => {
    upstream.received.length = 0;
    upstream.respond(() => ({ status: 503, body: 'busy' }));
    const key = randomUUID();
    try {
      expect((await post(gw, '/v1/items', { name: 'b' }, key)).status).toBeGreaterThanOrEqual(500);
    } finally {
      upstream.respond(() => ({ status: 201, headers: { 'content-type': 'application/json' }, body: '{}' }));
    }
    const retry = await post(gw, '/v1/items', { name: 'b' }, key);
    expect(retry.status).toBe(201);
    expect(retry.headers['idempotent-replayed']).toBeUndefined();
    expect(upstream.received).toHaveLength(2);
  });
});

describe('Redis backend across two gateways', () => {
  const prefix = `test:${randomUUID()}:`;
  const admin = new Redis('redis://127.0.0.1:6379', { maxRetriesPerRequest: 1 });
  let a: TestGateway;
  let b: TestGateway;
  // One deployment: the two gateways share Redis, the store and the master key (records are
  // sealed under data keys in the store, src/keys/envelope.ts).
  const shared = mkdtempSync(join(tmpdir(), 'portcullis-idem-shared-'));
  const config = () => ({
    store: { url: `sqlite:${join(shared, 'shared.db')}` },
    oauth: { kms: { masterKeyFile: join(shared, 'master.key') } },
    redis: { url: 'redis://127.0.0.1:6379', keyPrefix: prefix },
    idempotency: { backend: 'redis' },
    apis: [{ name: 'shop', openapi: 'api.yaml', basePath: '/v1', upstream: { url: upstream.url } }],
  });

  beforeAll(async () => {
    expect(await admin.ping()).toBe('PONG'); // fails loudly without Redis
    a = await startTestGateway(config(), { openapi: API });
    b = await startTestGateway(config(), { openapi: API });
  }, 60_000);
  afterAll(async () => {
    await a.close();
    await b.close();
    const keys = await admin.keys(`${prefix}*`);
    if (keys.length > 0) await admin.del(...keys);
    await admin.quit();
    rmSync(shared, { recursive: true, force: true });
  });

  it('replays at one gateway what the other stored, and refuses a conflicting reuse there', async () => {
    upstream.received.length = 0;
    const key = randomUUID();
    const first = await post(a, '/v1/orders', { n: 7 }, key);
    expect(first.status).toBe(201);
    const retry = await post(b, '/v1/orders', { n: 7 }, key);
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(retry.body).toBe(first.body);
    expect((await post(b, '/v1/orders', { n: 8 }, key)).status).toBe(422);
    expect(upstream.received).toHaveLength(1);
    const stored = await admin.keys(`${prefix}idem:*`);
    expect(stored.length).toBeGreaterThan(0);
    const ttl = await admin.pttl(stored[0]!);
    expect(ttl).toBeGreaterThan(0);
  });

  it('lets one of concurrent duplicates sent to two gateways reach the upstream', async () => {
    upstream.received.length = 0;
    upstream.respond(() => ({
      status: 201,
      headers: { 'content-type': 'application/json' },
      body: '{}',
      delayMs: 300,
    }));
    const key = randomUUID();
    try {
      const answers = await Promise.all([
        post(a, '/v1/orders', { n: 9 }, key),
        post(b, '/v1/orders', { n: 9 }, key),
        post(a, '/v1/orders', { n: 9 }, key),
        post(b, '/v1/orders', { n: 9 }, key),
      ]);
      expect(answers.map((x) => x.status).sort()).toEqual([201, 409, 409, 409]);
      expect(upstream.received).toHaveLength(1);
    } finally {
      upstream.respond(() => ({ status: 201, headers: { 'content-type': 'application/json' }, body: '{}' }));
    }
  });
});
