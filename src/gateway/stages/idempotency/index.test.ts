import { randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import type { GatewayRequest, Stage, StageResponse } from '../../context.ts';
import { Denial } from '../../problems.ts';
import { IdempotencyDeclarationError, readDeclaration } from './config.ts';
import { idempotencyStage, parseIdempotencyKey } from './stage.ts';
import {
  createMemoryIdempotencyStore,
  createRedisIdempotencyStore,
  createStoreIdempotencyStore,
} from './store.ts';
import { testBackends } from '../../../oauth/test-backends.ts';
import type { Store } from '../../../store/index.ts';
import type { IdempotencyStore } from './store.ts';

const LIMITS = { defaultTtlSeconds: 3600, maxTtlSeconds: 86_400 };

function request(key: string | undefined, body = '{"a":1}', principal?: string): GatewayRequest {
  return {
    correlationId: randomUUID(),
    method: 'POST',
    target: { path: '/v1/items', segments: ['v1', 'items'], query: '' },
    headers: {
      'content-type': 'application/json',
      ...(key === undefined ? {} : { 'idempotency-key': key }),
    },
    peerIp: '192.0.2.1',
    clientIp: '192.0.2.1',
    params: {},
    body: Buffer.from(body),
    credentialPresented: principal !== undefined,
    ...(principal === undefined
      ? {}
      : {
          principal: { scheme: 'oauth', subject: principal, clientId: principal, scopes: new Set<string>() },
        }),
    responseHeaders: {},
  } as unknown as GatewayRequest;
}

/** An upstream stage that counts calls and can be held until released. */
function upstream(
  answer: () => StageResponse = () => ({ status: 201, headers: { 'x-n': '1' }, body: 'made' }),
) {
  let calls = 0;
  let hold: Promise<void> | undefined;
  let release = () => {};
  const stage: Stage = async () => {
    calls++;
    if (hold) await hold;
    return answer();
  };
  return {
    stage,
    calls: () => calls,
    holdNext: () => {
      hold = new Promise((ok) => (release = ok));
    },
    release: () => {
      release();
    },
  };
}

function wrap(store: IdempotencyStore, next: Stage, required = false, maxResponseBytes = 1024) {
  return idempotencyStage(
    {
      declaration: { required, ttlSeconds: 60 },
      scope: 'api\0createItem',
      store,
      lockMs: 10_000,
      maxResponseBytes,
      logger: undefined,
    },
    next,
  );
}

async function text(res: StageResponse | undefined): Promise<string> {
  const body = res?.body;
  if (body === undefined) return '';
  if (typeof body === 'string') return body;
  if (Buffer.isBuffer(body)) return body.toString('utf8');
  const chunks: Buffer[] = [];
  for await (const c of body) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

describe('readDeclaration', () => {
  it('reads required and ttlSeconds, with defaults', () => {
    expect(readDeclaration('POST', {}, LIMITS)).toBeNull();
    expect(readDeclaration('POST', { 'x-portcullis-idempotency': {} }, LIMITS)).toEqual({
      required: false,
      ttlSeconds: 3600,
    });
    expect(
      readDeclaration('PUT', { 'x-portcullis-idempotency': { required: true, ttlSeconds: 60 } }, LIMITS),
    ).toEqual({ required: true, ttlSeconds: 60 });
  });

  it('refuses unusable declarations', () => {
    const bad = [
      ['GET', {}],
      ['POST', true],
      ['POST', { required: 'yes' }],
      ['POST', { ttlSeconds: 0 }],
      ['POST', { ttlSeconds: 86_401 }],
      ['POST', { other: 1 }],
    ] as const;
    for (const [method, decl] of bad) {
      expect(() => readDeclaration(method, { 'x-portcullis-idempotency': decl }, LIMITS)).toThrow(
        IdempotencyDeclarationError,
      );
    }
  });
});

describe('parseIdempotencyKey', () => {
  it('accepts an sf-string or a bare token of visible ASCII up to 255 characters', () => {
    expect(parseIdempotencyKey(undefined)).toBeUndefined();
    expect(parseIdempotencyKey('"8e03978e-40d5-43e8-bc93-6894a57f9324"')).toBe(
      '8e03978e-40d5-43e8-bc93-6894a57f9324',
    );
    expect(parseIdempotencyKey('abc_123')).toBe('abc_123');
    expect(parseIdempotencyKey('x'.repeat(255))).toBe('x'.repeat(255));
  });

  it('refuses empty, long, repeated or odd keys with a 400', () => {
    for (const bad of ['', '""', 'x'.repeat(256), 'a b', '"unterminated', 'caf\u00e9', 'a\\b', ['a', 'b']]) {
      let caught: unknown;
      try {
        parseIdempotencyKey(bad);
      } catch (err) {
        caught = err;
      }
      expect(caught).toBeInstanceOf(Denial);
      expect((caught as Denial).status).toBe(400);
    }
  });
});

describe('idempotencyStage (memory store)', () => {
  it('passes requests without a key through, and refuses them when a key is required', async () => {
    const up = upstream();
    const res = await wrap(createMemoryIdempotencyStore(), up.stage)(request(undefined));
    expect(res?.status).toBe(201);
    await expect(
      wrap(createMemoryIdempotencyStore(), up.stage, true)(request(undefined)),
    ).rejects.toMatchObject({
      status: 400,
      reason: 'idempotency-key-missing',
    });
    expect(up.calls()).toBe(1);
  });

  it('replays the first response for a retry, without calling the upstream again', async () => {
    const up = upstream();
    const stage = wrap(createMemoryIdempotencyStore(), up.stage);
    const first = await stage(request('k1'));
    expect(first?.status).toBe(201);
    expect(first?.headers['idempotent-replayed']).toBeUndefined();
    expect(await text(first)).toBe('made');
    const again = await stage(request('k1'));
    expect(again?.status).toBe(201);
    expect(again?.headers['idempotent-replayed']).toBe('true');
    expect(again?.headers['x-n']).toBe('1');
    expect(await text(again)).toBe('made');
    expect(up.calls()).toBe(1);
  });

  it('refuses the same key with a different body (422) and scopes keys by caller', async () => {
    const up = upstream();
    const stage = wrap(createMemoryIdempotencyStore(), up.stage);
    await stage(request('k2', '{"a":1}', 'alice'));
    await expect(stage(request('k2', '{"a":2}', 'alice'))).rejects.toMatchObject({ status: 422 });
    // Another caller's identical key is a different record.
    expect((await stage(request('k2', '{"a":2}', 'bob')))?.headers['idempotent-replayed']).toBeUndefined();
    expect(up.calls()).toBe(2);
  });

  it('refuses a concurrent duplicate with 409 while the first is in flight', async () => {
    const up = upstream();
    const stage = wrap(createMemoryIdempotencyStore(), up.stage);
    up.holdNext();
    const first = stage(request('k3'));
    await expect(stage(request('k3'))).rejects.toMatchObject({
      status: 409,
      reason: 'idempotency-request-in-flight',
    });
    up.release();
    expect((await first)?.status).toBe(201);
    expect(up.calls()).toBe(1);
  });

  it('does not store 5xx answers or failures: a retry reaches the upstream again', async () => {
    let status = 503;
    const up = upstream(() => ({ status, headers: {}, body: 'x' }));
    const stage = wrap(createMemoryIdempotencyStore(), up.stage);
    expect((await stage(request('k4')))?.status).toBe(503);
    status = 201;
    expect((await stage(request('k4')))?.headers['idempotent-replayed']).toBeUndefined();
    const failing = wrap(createMemoryIdempotencyStore(), () => {
      throw new Denial('bad-gateway', 'upstream-unreachable');
    });
    const store = createMemoryIdempotencyStore();
    await expect(wrap(store, failing)(request('k5'))).rejects.toMatchObject({ status: 502 });
    expect((await wrap(store, up.stage)(request('k5')))?.status).toBe(201);
  });

  it('streams a response larger than the cap whole, without storing it', async () => {
    const big = 'y'.repeat(5000);
    const up = upstream(() => ({
      status: 200,
      headers: {},
      body: Readable.from([Buffer.from(big.slice(0, 2000)), Buffer.from(big.slice(2000))]),
    }));
    const stage = wrap(createMemoryIdempotencyStore(), up.stage, false, 1024);
    expect(await text(await stage(request('k6')))).toBe(big);
    expect(await text(await stage(request('k6')))).toBe(big);
    expect(up.calls()).toBe(2);
  });
});

describe('memory store bounds', () => {
  it('drops the oldest records beyond its byte budget, and expired ones', async () => {
    let now = 0;
    const store = createMemoryIdempotencyStore({ maxBytes: 4000, now: () => now });
    for (let i = 0; i < 20; i++) {
      await store.begin(`k${String(i)}`, 'f', 1000);
      await store.complete(`k${String(i)}`, 'f', { status: 200, headers: {}, body: 'z'.repeat(500) }, 1000);
    }
    expect(store.size()).toBeLessThanOrEqual(4);
    expect((await store.begin('k19', 'f', 1000)).kind).toBe('replay');
    now = 2000;
    expect((await store.begin('k19', 'f', 1000)).kind).toBe('acquired');
  });
});

describe('Redis store', () => {
  const client = new Redis('redis://127.0.0.1:6379', { maxRetriesPerRequest: 1 });
  const prefix = `test:${randomUUID()}:`;
  afterAll(async () => {
    const keys = await client.keys(`${prefix}*`);
    if (keys.length > 0) await client.del(...keys);
    await client.quit();
  });

  it('locks with SET NX, stores with a TTL, releases only its own lock', async () => {
    const a = createRedisIdempotencyStore(client, prefix);
    const b = createRedisIdempotencyStore(client, prefix);
    expect(await a.begin('r1', 'f1', 10_000)).toEqual({ kind: 'acquired' });
    expect(await b.begin('r1', 'f1', 10_000)).toEqual({ kind: 'in-flight' });
    expect(await b.begin('r1', 'f2', 10_000)).toEqual({ kind: 'mismatch' });
    await b.release('r1', 'f2'); // not its lock: nothing happens
    expect(await b.begin('r1', 'f1', 10_000)).toEqual({ kind: 'in-flight' });
    await a.complete('r1', 'f1', { status: 201, headers: { a: 'b' }, body: 'eA==' }, 10_000);
    expect(await b.begin('r1', 'f1', 10_000)).toEqual({
      kind: 'replay',
      response: { status: 201, headers: { a: 'b' }, body: 'eA==' },
    });
    const ttl = await client.pttl(`${prefix}idem:r1`);
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(10_000);
    expect(await a.begin('r2', 'f', 10_000)).toEqual({ kind: 'acquired' });
    await a.release('r2', 'f');
    expect(await b.begin('r2', 'f', 10_000)).toEqual({ kind: 'acquired' });
  });
});

describe('store-backed records (SQLite and PostgreSQL)', () => {
  const backends = testBackends();
  const opened: Store[] = [];
  afterAll(async () => {
    for (const s of opened) await s.close();
    await backends.cleanup();
  });
  for (const kind of backends.names) {
    it(`${kind}: one taker per key, replay after completion, own lock released only, expiry`, async () => {
      const store = await backends.open(kind);
      opened.push(store);
      let now = Date.parse('2026-01-01T00:00:00Z');
      const a = createStoreIdempotencyStore(store.db, { now: () => now });
      const b = createStoreIdempotencyStore(store.db, { now: () => now });
      // Two gateways racing for one key: exactly one acquires it.
      const raced = await Promise.all([a.begin('r1', 'f1', 10_000), b.begin('r1', 'f1', 10_000)]);
      expect(raced.map((r) => r.kind).sort()).toEqual(['acquired', 'in-flight']);
      expect(await b.begin('r1', 'f2', 10_000)).toEqual({ kind: 'mismatch' });
      await b.release('r1', 'f2'); // not its lock: nothing happens
      expect(await b.begin('r1', 'f1', 10_000)).toEqual({ kind: 'in-flight' });
      const response = { status: 201, headers: { a: 'b', 'set-x': ['1', '2'] }, body: 'eA==' };
      await a.complete('r1', 'f1', response, 60_000);
      expect(await b.begin('r1', 'f1', 10_000)).toEqual({ kind: 'replay', response });
      // A released lock can be taken again; an expired lock or record is taken over.
      expect(await a.begin('r2', 'f', 10_000)).toEqual({ kind: 'acquired' });
      await a.release('r2', 'f');
      expect(await b.begin('r2', 'f', 10_000)).toEqual({ kind: 'acquired' });
      now += 10_001;
      expect(await a.begin('r2', 'f', 10_000)).toEqual({ kind: 'acquired' });
      now += 60_000;
      expect(await b.begin('r1', 'f1', 10_000)).toEqual({ kind: 'acquired' });
      // Expired rows are purged (at most once a minute).
      now += 120_000;
      await a.begin('r3', 'f', 10_000);
      const left = await store.db.selectFrom('idempotency_records').select('record_key').execute();
      expect(left.map((r) => r.record_key)).toEqual(['r3']);
    });
  }
});
