/**
 * The building blocks of distributed mode, each against the real PostgreSQL and Redis: the signal
 * bus (Redis pub/sub between processes, resync after a gap), the revocation list with its Redis
 * denylist (memory → Redis → store, fail closed when neither answers), the shared DPoP replay
 * cache, the "dependency unavailable" classifier, the per-process share of a rate limit while
 * Redis is down, and a PostgreSQL connection reset in the middle of a query.
 *
 * Two "processes" are two sets of clients in this one process. An outage is made for ONE client
 * with a {@link FaultProxy} in front of the real server (the servers stay up: other tests use
 * them), or with a closed port.
 */
import { createHash, generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { exportJWK, SignJWT } from 'jose';
import { sql } from 'kysely';
import pg from 'pg';
import { RateLimiterRes } from 'rate-limiter-flexible';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRevocationList } from '../src/oauth/revocation.ts';
import type { RevocationList } from '../src/oauth/revocation.ts';
import {
  createLimitBackends,
  localShare,
  onDegraded,
  onRestored,
  UNLIMITED,
} from '../src/gateway/stages/rate-limit/backend.ts';
import type { DegradedEvent, LimitBackends } from '../src/gateway/stages/rate-limit/backend.ts';
import { openStore } from '../src/store/index.ts';
import type { Store } from '../src/store/index.ts';
import { createRedisConnections } from '../src/store/redis.ts';
import type { RedisConnections } from '../src/store/redis.ts';
import { createSignalBus, parseSignal, waitSubscribed } from '../src/store/signals.ts';
import type { Signal, SignalBus, SignalBusOptions } from '../src/store/signals.ts';
import { isDependencyUnavailable } from '../src/store/unavailable.ts';
import {
  createRedisReplayCache,
  DpopError,
  ReplayCacheUnavailableError,
  verifyDpopProof,
} from '../src/tokens/dpop.ts';
import type { ReplayCache } from '../src/tokens/dpop.ts';
import { PG_URL } from './cli-harness.ts';
import { pgSchema, REDIS_URL, redisPrefix, scanKeys } from './cluster-harness.ts';
import { startFaultProxy } from './fault-proxy.ts';
import type { FaultProxy } from './fault-proxy.ts';

const schema = pgSchema('shared-state');
const prefix = redisPrefix('shared-state');
const otherPrefix = redisPrefix('shared-state-other');

/** Closers of everything opened here, run in reverse order after the file. */
const closers: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const close of closers.reverse()) await close().catch(() => undefined);
});

/** An admin client to inspect keys and publish raw messages (direct, never cut). */
let admin: Redis;
beforeAll(async () => {
  admin = new Redis(REDIS_URL, { maxRetriesPerRequest: 1, lazyConnect: true });
  closers.push(() => admin.quit());
  await admin.connect().catch((err: unknown) => {
    throw new Error(`Redis at ${REDIS_URL} is required`, { cause: err });
  });
});

const redisTarget = () => {
  const u = new URL(REDIS_URL);
  return { host: u.hostname, port: Number(u.port || 6379) };
};
const pgTarget = () => {
  const u = new URL(PG_URL);
  return { host: u.hostname, port: Number(u.port || 5432) };
};

async function proxy(target: { host: string; port: number }): Promise<FaultProxy> {
  const p = await startFaultProxy(target);
  closers.push(() => p.close());
  return p;
}

/** `redis://…` through `via` (default: the real server). */
function redisUrl(via?: FaultProxy): string {
  if (via === undefined) return REDIS_URL;
  const u = new URL(REDIS_URL);
  u.host = via.address;
  return u.href.replace(/\/$/, '');
}

/** This file's schema, through `via` (default: the real server). */
function storeUrl(via?: FaultProxy): string {
  const u = new URL(PG_URL);
  if (via !== undefined) u.host = via.address;
  u.searchParams.set('schema', schema);
  return u.href;
}

async function store(via?: FaultProxy): Promise<Store> {
  const s = await openStore({ url: storeUrl(via), dataDir: tmpdir(), onPoolError: () => undefined });
  closers.push(() => s.close());
  return s;
}

function bus(options: Partial<SignalBusOptions> = {}): SignalBus {
  const b = createSignalBus({ url: REDIS_URL, keyPrefix: prefix, ...options });
  closers.push(() => b.close());
  return b;
}

/** Production-configured clients (fail fast, no offline queue), one set per "process". */
function connections(): RedisConnections {
  const c = createRedisConnections();
  closers.push(() => c.close());
  return c;
}

/** A TCP port nothing listens on. */
async function closedPort(): Promise<number> {
  const s = createServer().listen(0, '127.0.0.1');
  await new Promise((ok) => s.once('listening', ok));
  const { port } = s.address() as { port: number };
  await new Promise<void>((ok) => s.close(() => ok()));
  return port;
}

/** Resolves once `pred()` holds; fails after `ms`. */
async function until(what: string, pred: () => boolean | Promise<boolean>, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`timed out after ${String(ms)} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** The listener's signals, in arrival order. */
function collect(b: SignalBus): Signal[] {
  const got: Signal[] = [];
  b.subscribe((s) => got.push(s));
  return got;
}

async function subscribedAll(...buses: SignalBus[]): Promise<void> {
  for (const b of buses) expect(await waitSubscribed(b, 5_000)).toBe(true);
}

/** A short description of a thrown value, for assertion messages. */
const label = (v: unknown): string => {
  if (v instanceof Error) return `${v.name}: ${v.message}`;
  return v === undefined ? 'undefined' : JSON.stringify(v);
};

const nowSec = () => Math.floor(Date.now() / 1000);
const freshJti = (label: string) => `${label}-${randomUUID()}`;

describe('signal bus', () => {
  it('delivers a signal to the other processes on the prefix, not back to the sender or across prefixes', async () => {
    const a = bus();
    const b = bus();
    const other = bus({ keyPrefix: otherPrefix });
    const atA = collect(a);
    const atB = collect(b);
    const atOther = collect(other);
    await subscribedAll(a, b, other);

    const fromA: Signal = { kind: 'token-revoked', jti: 'tok-1', exp: nowSec() + 60 };
    expect(await a.publish(fromA)).toBe(true);
    await until('B to receive A', () => atB.length > 0);
    expect(atB).toEqual([fromA]);

    // B answers after A's signal reached Redis: A's subscription sees its own message first
    // (same channel, one connection, in order), so once B's arrives A's own was dropped.
    const fromB: Signal = { kind: 'keys-changed' };
    expect(await b.publish(fromB)).toBe(true);
    await until('A to receive B', () => atA.length > 0);
    expect(atA).toEqual([fromB]);
    expect(atB).toEqual([fromA]); // and B did not get its own back

    // The other prefix: only what is published on its own channel.
    const marker = JSON.stringify({ origin: 'marker', kind: 'api-key-changed', id: 'k1' });
    expect(await admin.publish(`${otherPrefix}signals`, marker)).toBe(1);
    await until('the other prefix to receive the marker', () => atOther.length > 0);
    expect(atOther).toEqual([{ kind: 'api-key-changed', id: 'k1' }]);
  });

  it('ignores invalid messages on the channel and reports each through onInvalid', async () => {
    let invalid = 0;
    const b = bus({ onInvalid: () => invalid++ });
    const got = collect(b);
    await subscribedAll(b);
    const channel = `${prefix}signals`;
    const raw = [
      'not json {',
      JSON.stringify({ origin: 'p1', kind: 'tokens-flushed' }),
      JSON.stringify({ origin: 'p1', kind: 'keys-changed', pad: 'x'.repeat(2100) }),
      JSON.stringify({ origin: 'p1', kind: 'token-revoked', jti: 'a b/c', exp: nowSec() + 60 }),
      JSON.stringify({ kind: 'keys-changed' }),
      JSON.stringify([{ origin: 'p1', kind: 'keys-changed' }]),
    ];
    for (const text of raw) await admin.publish(channel, text);
    // Its own origin is neither delivered nor invalid.
    await admin.publish(channel, JSON.stringify({ origin: b.origin, kind: 'keys-changed' }));
    // A valid one last: once it arrived, every message before it was handled.
    const version = 'ab12cd34ef';
    await admin.publish(channel, JSON.stringify({ origin: 'p1', kind: 'config-applied', version }));
    await until('the valid message', () => got.length > 0);
    expect(got).toEqual([{ kind: 'config-applied', version }]);
    expect(invalid).toBe(raw.length);
  });

  it('parseSignal accepts exactly the four kinds, field by field', () => {
    const ok = (m: Record<string, unknown>) => parseSignal(JSON.stringify({ origin: 'o-1', ...m }));
    expect(ok({ kind: 'token-revoked', jti: 'j.1:x~y_z-', exp: 1_900_000_000 })).toEqual({
      origin: 'o-1',
      signal: { kind: 'token-revoked', jti: 'j.1:x~y_z-', exp: 1_900_000_000 },
    });
    expect(ok({ kind: 'api-key-changed', id: 'key_1' })?.signal).toEqual({
      kind: 'api-key-changed',
      id: 'key_1',
    });
    // Unknown members are dropped, not passed on.
    expect(ok({ kind: 'keys-changed', extra: { a: 1 } })?.signal).toEqual({ kind: 'keys-changed' });
    expect(ok({ kind: 'config-applied', version: 'deadbeef' })?.signal).toEqual({
      kind: 'config-applied',
      version: 'deadbeef',
    });

    for (const m of [
      { kind: 'token-revoked', jti: 'j', exp: 0 },
      { kind: 'token-revoked', jti: 'j', exp: -5 },
      { kind: 'token-revoked', jti: 'j', exp: 1.5 },
      { kind: 'token-revoked', jti: 'j', exp: '1900000000' },
      { kind: 'token-revoked', jti: '', exp: 1_900_000_000 },
      { kind: 'token-revoked', jti: 'x'.repeat(401), exp: 1_900_000_000 },
      { kind: 'token-revoked', jti: 'j\n', exp: 1_900_000_000 },
      { kind: 'token-revoked', exp: 1_900_000_000 },
      { kind: 'api-key-changed', id: 42 },
      { kind: 'config-applied', version: 'DEADBEEF' },
      { kind: 'config-applied', version: 'abc' },
      { kind: 'toString' },
      { kind: '__proto__' },
      {},
    ]) {
      expect(ok(m), JSON.stringify(m)).toBeUndefined();
    }
    for (const text of ['', 'null', '[]', '"keys-changed"', '42', '{"kind":"keys-changed"}']) {
      expect(parseSignal(text), text).toBeUndefined();
    }
    expect(parseSignal(JSON.stringify({ origin: 'a b', kind: 'keys-changed' }))).toBeUndefined();
    expect(parseSignal(JSON.stringify({ origin: 7, kind: 'keys-changed' }))).toBeUndefined();
    // The size bound applies to the text, whatever it holds.
    const padded = JSON.stringify({ origin: 'o', kind: 'keys-changed', pad: 'x'.repeat(2048) });
    expect(parseSignal(padded)).toBeUndefined();
    expect(parseSignal(JSON.stringify({ origin: 'o', kind: 'keys-changed', pad: 'x'.repeat(1900) }))).toEqual(
      {
        origin: 'o',
        signal: { kind: 'keys-changed' },
      },
    );
  });

  it('reports down and up around a gap, resyncs once, and does not replay what was missed', async () => {
    const p = await proxy(redisTarget());
    const states: { state: string; error: string | undefined }[] = [];
    const a = bus();
    const b = bus({ url: redisUrl(p), onState: (state, error) => states.push({ state, error }) });
    let resyncs = 0;
    b.onResync(() => resyncs++);
    const got = collect(b);
    await subscribedAll(a, b);
    expect(states).toEqual([{ state: 'up', error: undefined }]);
    expect(resyncs).toBe(0); // the first subscription is not a resync

    p.cut('reset');
    await until('state down', () => states.length === 2);
    expect(states[1]?.state).toBe('down');
    expect(states[1]?.error).toMatch(/^[A-Za-z_-]+$/); // a short code, e.g. ECONNRESET
    expect(b.subscribed).toBe(false);

    const missed: Signal = { kind: 'api-key-changed', id: 'missed' };
    expect(await a.publish(missed)).toBe(true);
    await sleep(200);

    p.restore();
    await until('state up again', () => states.length === 3, 8_000);
    expect(states[2]).toEqual({ state: 'up', error: undefined });
    expect(b.subscribed).toBe(true);
    expect(resyncs).toBe(1);

    const after: Signal = { kind: 'api-key-changed', id: 'after' };
    expect(await a.publish(after)).toBe(true);
    await until('the signal after the gap', () => got.length > 0);
    // The one published during the gap is lost for good: hence the resync.
    expect(got).toEqual([after]);
    expect(resyncs).toBe(1);
  });

  it('notices a silent partition (blackhole) by its pings, and resyncs once it is over', async () => {
    const p = await proxy(redisTarget());
    const states: string[] = [];
    const b = bus({ url: redisUrl(p), pingIntervalMs: 200, onState: (state) => states.push(state) });
    let resyncs = 0;
    b.onResync(() => resyncs++);
    await subscribedAll(b);

    p.cut('blackhole'); // nothing is closed: only unanswered pings can tell
    await until('state down', () => states.length === 2, 8_000);
    expect(states).toEqual(['up', 'down']);
    expect(b.subscribed).toBe(false);
    expect(resyncs).toBe(0);

    p.restore();
    await until('state up again', () => states.length === 3, 8_000);
    expect(states).toEqual(['up', 'down', 'up']);
    expect(resyncs).toBe(1);
  });

  it('publish resolves false, not a rejection, while Redis is unreachable, and true again after', async () => {
    const p = await proxy(redisTarget());
    const publisher = bus({ url: redisUrl(p), subscribe: false });
    const signal: Signal = { kind: 'keys-changed' };
    expect(await publisher.publish(signal)).toBe(true);
    expect(publisher.subscribed).toBe(false); // publish-only (a CLI command)

    p.cut('reset');
    expect(await publisher.publish(signal)).toBe(false);

    p.restore();
    await until('publishing again', () => publisher.publish(signal), 8_000);

    p.cut('blackhole'); // the connection looks open; the command times out
    expect(await publisher.publish(signal)).toBe(false);
    p.restore();
  });
});

describe('revocation list with a Redis denylist', () => {
  let storeA: Store;
  let storeB: Store;
  let pgB: FaultProxy;
  let redisB: FaultProxy;
  let clientB: Redis;
  let listA: RevocationList;
  let listB: RevocationList;
  /** Writes the store and the denylist but announces nothing (a process without a bus). */
  let silent: RevocationList;
  const errors: string[] = [];
  const keyOf = (jti: string) => `${prefix}revoked:${createHash('sha256').update(jti).digest('base64url')}`;

  beforeAll(async () => {
    storeA = await store();
    pgB = await proxy(pgTarget());
    redisB = await proxy(redisTarget());
    storeB = await store(pgB);
    const clientA = await connections().get(REDIS_URL);
    clientB = await connections().get(redisUrl(redisB));
    expect([clientA.status, clientB.status]).toEqual(['ready', 'ready']);
    const busA = bus();
    const busB = bus();
    await subscribedAll(busA, busB);
    const onError = (what: string) => errors.push(what);
    listA = createRevocationList({
      db: storeA.db,
      denylist: { redis: clientA, keyPrefix: prefix },
      signals: busA,
      onError,
    });
    listB = createRevocationList({
      db: storeB.db,
      denylist: { redis: clientB, keyPrefix: prefix },
      signals: busB,
      onError,
    });
    // As src/server/cluster.ts wires it.
    for (const [b, list] of [
      [busA, listA],
      [busB, listB],
    ] as const) {
      b.subscribe((s) => {
        if (s.kind === 'token-revoked') list.noteRevoked(s.jti, s.exp);
      });
    }
    silent = createRevocationList({ db: storeA.db, denylist: { redis: clientA, keyPrefix: prefix } });
  });

  /** Both paths of B back, and B's client usable again. */
  const restoreB = async () => {
    pgB.restore();
    redisB.restore();
    await until("B's Redis client ready", () => clientB.status === 'ready', 8_000);
  };

  it("a revocation at A reaches B's cache through the signal, under a second", async () => {
    const jti = freshJti('signalled');
    const exp = nowSec() + 600;
    const control = freshJti('unsignalled');
    expect(await listB.isRevoked(jti)).toBe(false); // cached: "not revoked"
    expect(await listB.isRevoked(control)).toBe(false);

    // Without a signal, B keeps its cached answer (store and Redis both say revoked).
    await silent.revoke(control, 'client-1', exp);
    expect(await admin.exists(keyOf(control))).toBe(1);
    expect(await listB.isRevoked(control)).toBe(false);

    const started = Date.now();
    await listA.revoke(jti, 'client-1', exp);
    await until('B to see the revocation', () => listB.isRevoked(jti), 1_000);
    expect(Date.now() - started).toBeLessThan(1_000);
    expect(errors).toEqual([]);
  });

  it('keeps token ids out of Redis in the clear, and the key expires with the token', async () => {
    const jti = freshJti('hashed');
    const exp = nowSec() + 900;
    const before = new Set(await scanKeys(admin, `${prefix}revoked:`));
    await listA.revoke(jti, 'client-1', exp);
    const added = (await scanKeys(admin, `${prefix}revoked:`)).filter((k) => !before.has(k));
    expect(added).toEqual([keyOf(jti)]);
    expect(added[0]).not.toContain(jti);
    expect(await admin.get(keyOf(jti))).toBe('1');
    expect(await admin.pexpiretime(keyOf(jti))).toBe(exp * 1000);
    expect(errors).toEqual([]);
  });

  it("answers from Redis while B's PostgreSQL is cut", async () => {
    const revoked = freshJti('redis-revoked');
    const unknown = freshJti('redis-unknown');
    await silent.revoke(revoked, 'client-1', nowSec() + 600);
    pgB.cut('reset');
    await sleep(100); // the pool notices its reset idle connections (see the next describe)
    try {
      // The store is really out of B's reach…
      await expect(storeB.db.selectFrom('revoked_tokens').select('jti').execute()).rejects.toSatisfy(
        isDependencyUnavailable,
      );
      // …and B still answers, both ways.
      expect(await listB.isRevoked(revoked)).toBe(true);
      expect(await listB.isRevoked(unknown)).toBe(false);
    } finally {
      await restoreB();
    }
  });

  it("answers from PostgreSQL while B's Redis is cut", async () => {
    // Only in the store (its denylist write was lost): Redis could not say so.
    const storeOnly = freshJti('pg-revoked');
    await storeA.db
      .insertInto('revoked_tokens')
      .values({
        jti: storeOnly,
        client_id: 'client-1',
        expires_at: new Date((nowSec() + 600) * 1000).toISOString(),
        revoked_at: new Date().toISOString(),
      })
      .execute();
    const unknown = freshJti('pg-unknown');
    redisB.cut('reset');
    try {
      await until("B's Redis client down", () => clientB.status !== 'ready');
      expect(await listB.isRevoked(storeOnly)).toBe(true);
      expect(await listB.isRevoked(unknown)).toBe(false);
    } finally {
      await restoreB();
    }
  });

  it('fails closed when neither Redis nor PostgreSQL answers, and recovers', async () => {
    const cachedRevoked = freshJti('cached');
    await listA.revoke(cachedRevoked, 'client-1', nowSec() + 600);
    await until('B to see it', () => listB.isRevoked(cachedRevoked), 1_000);
    const unknown = freshJti('both-down');
    redisB.cut('reset');
    pgB.cut('reset');
    await sleep(100); // as above
    try {
      await until("B's Redis client down", () => clientB.status !== 'ready');
      const err: unknown = await listB.isRevoked(unknown).then(
        () => new Error('isRevoked resolved'),
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(Error);
      expect(isDependencyUnavailable(err)).toBe(true);
      // What B already knows is revoked stays refused without either.
      expect(await listB.isRevoked(cachedRevoked)).toBe(true);
    } finally {
      await restoreB();
    }
    expect(await listB.isRevoked(unknown)).toBe(false);
  });

  it('resync copies unexpired store rows to Redis and forgets cached "not revoked" answers', async () => {
    const lost = freshJti('lost');
    expect(await listB.isRevoked(lost)).toBe(false); // cached negative
    const exp = nowSec() + 700;
    const row = (jti: string, expSec: number) => ({
      jti,
      client_id: 'client-1',
      expires_at: new Date(expSec * 1000).toISOString(),
      revoked_at: new Date().toISOString(),
    });
    // A revocation whose denylist write and signal were lost, and one already expired.
    const expired = freshJti('expired');
    await storeA.db
      .insertInto('revoked_tokens')
      .values([row(lost, exp), row(expired, nowSec() - 10)])
      .execute();
    expect(await listB.isRevoked(lost)).toBe(false); // stale until the resync
    // And a key that Redis lost (e.g. a failover) for a revocation it had.
    const dropped = freshJti('dropped');
    const droppedExp = nowSec() + 800;
    await listA.revoke(dropped, 'client-1', droppedExp);
    expect(await admin.del(keyOf(dropped))).toBe(1);

    const copied = await listB.resync();
    const live = await storeA.db
      .selectFrom('revoked_tokens')
      .select('jti')
      .where('expires_at', '>', new Date().toISOString())
      .execute();
    expect(copied).toBe(live.length);
    expect(await admin.exists(keyOf(dropped))).toBe(1);
    expect(await admin.pexpiretime(keyOf(dropped))).toBe(droppedExp * 1000);
    expect(await admin.pexpiretime(keyOf(lost))).toBe(exp * 1000);
    expect(await admin.exists(keyOf(expired))).toBe(0);
    expect(await listB.isRevoked(lost)).toBe(true);
    expect(await listB.isRevoked(expired)).toBe(false);
  });
});

describe('the PostgreSQL store through a fault proxy', () => {
  it('a connection reset during a query fails that query, and nothing else', async () => {
    const p = await proxy(pgTarget());
    const s = await store(p);
    // An 'error' event nobody listens to would end a gateway process: catch it here (instead of
    // the runner's handler) so that it fails this test by name.
    const escaped: unknown[] = [];
    const runner = process.listeners('uncaughtException');
    process.removeAllListeners('uncaughtException');
    const catcher = (err: unknown) => escaped.push(err);
    process.on('uncaughtException', catcher);
    let failure: unknown;
    try {
      const query = sql`select pg_sleep(2)`.execute(s.db).then(
        () => new Error('the query survived the reset'),
        (e: unknown) => e,
      );
      await sleep(300); // in flight
      p.cut('reset');
      failure = await query;
      await sleep(100);
    } finally {
      process.off('uncaughtException', catcher);
      for (const l of runner) process.on('uncaughtException', l);
      p.restore();
    }
    expect(isDependencyUnavailable(failure)).toBe(true);
    expect(escaped.map(label)).toEqual([]);
    // And the store works again once the network is back.
    expect((await sql<{ one: number }>`select 1 as one`.execute(s.db)).rows).toEqual([{ one: 1 }]);
  });
});

describe('Redis DPoP replay cache', () => {
  let cacheA: ReplayCache;
  let cacheB: ReplayCache;
  let key: { privateKey: KeyObject; jwk: Record<string, unknown> };
  const url = 'https://gw.example/v1/items';

  beforeAll(async () => {
    cacheA = createRedisReplayCache(await connections().get(REDIS_URL), prefix);
    cacheB = createRedisReplayCache(await connections().get(REDIS_URL), prefix);
    const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    key = { privateKey: pair.privateKey, jwk: { ...(await exportJWK(pair.publicKey)) } };
  });

  const proof = () =>
    new SignJWT({ htm: 'GET', htu: url, iat: nowSec(), jti: randomUUID() })
      .setProtectedHeader({ alg: 'ES256', typ: 'dpop+jwt', jwk: key.jwk })
      .sign(key.privateKey);
  const verify = (p: string, replay: ReplayCache) =>
    verifyDpopProof({ proof: p, method: 'GET', url, now: Date.now(), iatWindowSeconds: 60, replay });
  const reasonOf = (p: Promise<unknown>) =>
    p.then(
      () => 'accepted',
      (e: unknown) => (e instanceof DpopError ? e.reason : e),
    );

  it('a proof seen at one process is a replay at another', async () => {
    const jti = randomBytes(16).toString('base64url');
    const exp = Date.now() + 60_000;
    expect(await cacheA.seen(jti, exp)).toBe(false);
    expect(await cacheB.seen(jti, exp)).toBe(true);
    expect(await cacheA.seen(jti, exp)).toBe(true);
    expect(await cacheB.seen(`${jti}-other`, exp)).toBe(false);
    // Another prefix (another deployment on the same Redis) does not share entries.
    const elsewhere = createRedisReplayCache(await connections().get(REDIS_URL), otherPrefix);
    expect(await elsewhere.seen(jti, exp)).toBe(false);

    const p = await proof();
    expect(await reasonOf(verify(p, cacheA))).toBe('accepted');
    expect(await reasonOf(verify(p, cacheB))).toBe('replayed');
  });

  it('forgets an entry at its expiry (PXAT)', async () => {
    const jti = randomBytes(16).toString('base64url');
    const exp = Date.now() + 400;
    expect(await cacheA.seen(jti, exp)).toBe(false);
    expect(await admin.pexpiretime(`${prefix}dpop:${jti}`)).toBe(exp);
    expect(await cacheB.seen(jti, exp)).toBe(true);
    await sleep(exp - Date.now() + 100);
    expect(await cacheB.seen(jti, Date.now() + 60_000)).toBe(false);
  });

  it('refuses (ReplayCacheUnavailableError, DPoP replay-cache-unavailable) when Redis is unreachable', async () => {
    const refused = createRedisReplayCache(
      await connections().get(`redis://127.0.0.1:${String(await closedPort())}`),
      prefix,
    );
    const p = await proxy(redisTarget());
    const hung = createRedisReplayCache(await connections().get(redisUrl(p)), prefix);
    expect(await hung.seen(randomUUID(), Date.now() + 60_000)).toBe(false); // through the proxy: fine
    p.cut('blackhole'); // the client still looks connected; the command times out

    for (const cache of [refused, hung]) {
      const err = await cache.seen(randomUUID(), Date.now() + 60_000).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(ReplayCacheUnavailableError);
      expect(isDependencyUnavailable(err)).toBe(true);
      const rejection = await verify(await proof(), cache).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(rejection).toBeInstanceOf(DpopError);
      expect((rejection as DpopError).reason).toBe('replay-cache-unavailable');
      expect((rejection as DpopError).cause).toBeInstanceOf(ReplayCacheUnavailableError);
      // The gateway answers it as an outage (503 + Retry-After), not as a bad proof (401).
      expect(isDependencyUnavailable(rejection)).toBe(true);
      expect(isDependencyUnavailable(new DpopError('replayed'))).toBe(false);
    }
    p.restore();
  });
});

describe('isDependencyUnavailable', () => {
  const withCode = (code: string, message = 'x') => Object.assign(new Error(message), { code });

  it('recognises lost and missing connections', async () => {
    for (const err of [
      withCode('ECONNREFUSED'),
      withCode('ECONNRESET'),
      withCode('08006'),
      withCode('57P01', 'terminating connection due to administrator command'),
      new Error('Connection terminated unexpectedly'),
      new Error('query failed', { cause: withCode('ECONNRESET') }),
      new Error('outer', { cause: new Error('inner', { cause: withCode('ETIMEDOUT') }) }),
      new AggregateError([new Error('no'), withCode('ECONNREFUSED')], 'all attempts failed'),
      new (class MaxRetriesPerRequestError extends Error {
        override name = 'MaxRetriesPerRequestError';
      })(),
      new ReplayCacheUnavailableError(),
    ]) {
      expect(isDependencyUnavailable(err), label(err)).toBe(true);
    }
    // A real one: PostgreSQL on a port nobody listens on.
    const client = new pg.Client({ host: '127.0.0.1', port: await closedPort(), user: 'postgres' });
    const real = await client.connect().then(
      () => undefined,
      (e: unknown) => e,
    );
    await client.end().catch(() => undefined);
    expect(isDependencyUnavailable(real)).toBe(true);
  });

  it('does not mistake bugs and bad data for an outage', async () => {
    for (const err of [
      new Error('boom'),
      new TypeError("Cannot read properties of undefined (reading 'x')"),
      withCode('23505', 'duplicate key value violates unique constraint'),
      withCode('42P01', 'relation does not exist'),
      new AggregateError([new Error('a'), new TypeError('b')]),
      new Error('outer', { cause: new Error('inner') }),
      null,
      undefined,
      'ECONNREFUSED',
      { code: 42 },
    ]) {
      expect(isDependencyUnavailable(err), label(err)).toBe(false);
    }
    // A real unique violation from PostgreSQL.
    const s = await store();
    const row = {
      jti: freshJti('dup'),
      client_id: 'c',
      expires_at: new Date(Date.now() + 60_000).toISOString(),
      revoked_at: new Date().toISOString(),
    };
    await s.db.insertInto('revoked_tokens').values(row).execute();
    const dup = await s.db
      .insertInto('revoked_tokens')
      .values(row)
      .execute()
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(dup).toMatchObject({ code: '23505' });
    expect(isDependencyUnavailable(dup)).toBe(false);
  });

  it('stops at a bounded depth on a cycle of causes', () => {
    const a = new Error('a');
    const b = new Error('b', { cause: a });
    Object.assign(a, { cause: b });
    expect(isDependencyUnavailable(a)).toBe(false);
  });
});

describe('rate limits: the local share while Redis is down', () => {
  const degradedEvents: DegradedEvent[] = [];
  const restoredEvents: string[] = [];
  beforeAll(() => {
    const offs = [onDegraded((e) => degradedEvents.push(e)), onRestored((e) => restoredEvents.push(e.redis))];
    closers.push(() => {
      for (const off of offs) off();
      return Promise.resolve();
    });
  });
  const backends = (nodes: number): LimitBackends => {
    const b = createLimitBackends({ nodes });
    closers.push(() => b.close());
    return b;
  };
  const window = { points: 9, seconds: 60 };
  /** Consumes one point per call; `ok` or `refused`. */
  const take = async (limiter: { consume(key: string): Promise<unknown> }, key: string, n: number) => {
    const out: string[] = [];
    for (let i = 0; i < n; i++) {
      out.push(
        await limiter.consume(key).then(
          () => 'ok',
          (e: unknown) => {
            if (e instanceof RateLimiterRes) return 'refused';
            throw e;
          },
        ),
      );
    }
    return out;
  };

  it('localShare divides a limit between the nodes, never to 0', () => {
    expect(localShare(300, 3)).toBe(100);
    expect(localShare(10, 3)).toBe(3);
    expect(localShare(1, 5)).toBe(1);
    expect(localShare(2, 3)).toBe(1);
    expect(localShare(300, 1)).toBe(300);
    expect(localShare(300, 0)).toBe(300);
    expect(localShare(UNLIMITED, 3)).toBe(UNLIMITED);
  });

  it('with Redis up, the nodes share the whole limit', async () => {
    const target = { url: REDIS_URL, keyPrefix: prefix };
    const one = await backends(3).limiter('shared', window, target);
    const two = await backends(3).limiter('shared', window, target);
    const key = randomUUID();
    expect(await take(one, key, 5)).toEqual(Array(5).fill('ok'));
    expect(await take(two, key, 5)).toEqual([...Array<string>(4).fill('ok'), 'refused']);
  });

  it('with Redis unreachable, each node enforces its share (limit / nodes)', async () => {
    const closed = `redis://127.0.0.1:${String(await closedPort())}`;
    const b = backends(3);
    const limiter = await b.limiter('local', window, { url: closed, keyPrefix: prefix });
    expect(await take(limiter, 'k1', 4)).toEqual(['ok', 'ok', 'ok', 'refused']);
    expect(await take(limiter, 'k2', 1)).toEqual(['ok']); // per key, as the shared limit
    expect(b.degraded()).toEqual([closed]);
    expect(degradedEvents.filter((e) => e.redis === closed)).toEqual([
      { redis: closed, error: 'ECONNREFUSED' },
    ]);
    // One node alone keeps the whole limit.
    const single = await backends(1).limiter('local', window, { url: closed, keyPrefix: prefix });
    expect(await take(single, 'k1', 10)).toEqual([...Array<string>(9).fill('ok'), 'refused']);
  });

  it('reports the outage once and the recovery when Redis comes back', async () => {
    const p = await proxy(redisTarget());
    const url = redisUrl(p);
    const b = backends(3);
    const limiter = await b.limiter('outage', window, { url, keyPrefix: prefix });
    const key = randomUUID();
    expect(await take(limiter, key, 4)).toEqual(Array(4).fill('ok')); // shared: more than the share
    expect(b.degraded()).toEqual([]);

    p.cut('reset');
    await until('the outage to be reported', () => b.degraded().length > 0);
    expect(b.degraded()).toEqual([url]);
    expect(await take(limiter, key, 4)).toEqual(['ok', 'ok', 'ok', 'refused']);
    await sleep(500); // reconnection attempts fail meanwhile: still one report
    expect(degradedEvents.filter((e) => e.redis === url)).toHaveLength(1);

    p.restore();
    await until('the recovery to be reported', () => b.degraded().length === 0, 8_000);
    expect(restoredEvents.filter((r) => r === url)).toHaveLength(1);
    // Shared counting again: 4 before the outage + 5 now = the whole limit of 9.
    expect(await take(limiter, key, 6)).toEqual([...Array<string>(5).fill('ok'), 'refused']);
  });
});
