/**
 * Idempotency records: a lock while the first request is in flight, then its response, each
 * with the fingerprint of the request that made it. Memory (per process, bounded in bytes) or
 * Redis (`SET NX PX` as the lock; the stored response replaces it with its own expiry), or the
 * store (a row per key; the primary key is the lock).
 */
import type { Redis } from 'ioredis';
import type { Kysely } from 'kysely';
import type { Database } from '../../../store/schema.ts';

export interface StoredResponse {
  readonly status: number;
  readonly headers: Readonly<Record<string, string | readonly string[]>>;
  /** The body, base64. */
  readonly body: string;
  /** Encrypted at rest (./sealed.ts): the whole response, sealed; the other members are empty. */
  readonly sealed?: string;
}

export type BeginOutcome =
  | { readonly kind: 'acquired' }
  | { readonly kind: 'replay'; readonly response: StoredResponse }
  /** The key was used for a different request. */
  | { readonly kind: 'mismatch' }
  /** The first request with this key is still in flight. */
  | { readonly kind: 'in-flight' };

export interface IdempotencyStore {
  /** Takes the key for a new request, or says why not. Never lets two callers acquire one key. */
  begin(key: string, fingerprint: string, lockMs: number): Promise<BeginOutcome>;
  /** Stores the response of the request that acquired `key`, replacing its lock. */
  complete(key: string, fingerprint: string, response: StoredResponse, ttlMs: number): Promise<void>;
  /** Gives the key up (the request failed, or its response is not stored). */
  release(key: string, fingerprint: string): Promise<void>;
}

interface Pending {
  readonly f: string;
  readonly s: 'p';
}
interface Done {
  readonly f: string;
  readonly s: 'd';
  readonly r: StoredResponse;
}
type RecordValue = Pending | Done;

function outcome(value: RecordValue, fingerprint: string): BeginOutcome {
  if (value.f !== fingerprint) return { kind: 'mismatch' };
  return value.s === 'p' ? { kind: 'in-flight' } : { kind: 'replay', response: value.r };
}

/** Bytes a record is counted as in the memory store: its body plus a fixed overhead. */
function sizeOf(value: RecordValue): number {
  if (value.s === 'p') return 256;
  let size = 512 + value.r.body.length;
  for (const [name, v] of Object.entries(value.r.headers)) {
    size += name.length + (typeof v === 'string' ? v.length : v.join('').length);
  }
  return size;
}

export function createMemoryIdempotencyStore(
  options: { maxBytes: number; now?: () => number } = { maxBytes: 64 * 1024 * 1024 },
): IdempotencyStore & { readonly size: () => number } {
  const now = options.now ?? Date.now;
  const records = new Map<string, { value: RecordValue; expires: number; bytes: number }>();
  let bytes = 0;
  const remove = (key: string) => {
    const r = records.get(key);
    if (r === undefined) return;
    bytes -= r.bytes;
    records.delete(key);
  };
  const put = (key: string, value: RecordValue, ttlMs: number) => {
    remove(key);
    const size = sizeOf(value);
    // Oldest first: a Map iterates in insertion order.
    for (const oldest of records.keys()) {
      if (bytes + size <= options.maxBytes) break;
      remove(oldest);
    }
    records.set(key, { value, expires: now() + ttlMs, bytes: size });
    bytes += size;
  };
  const live = (key: string) => {
    const r = records.get(key);
    if (r === undefined) return undefined;
    if (r.expires <= now()) {
      remove(key);
      return undefined;
    }
    return r.value;
  };
  return {
    size: () => records.size,
    begin: (key, fingerprint, lockMs) => {
      const existing = live(key);
      if (existing !== undefined) return Promise.resolve(outcome(existing, fingerprint));
      put(key, { f: fingerprint, s: 'p' }, lockMs);
      return Promise.resolve({ kind: 'acquired' });
    },
    complete: (key, fingerprint, response, ttlMs) => {
      put(key, { f: fingerprint, s: 'd', r: response }, ttlMs);
      return Promise.resolve();
    },
    release: (key, fingerprint) => {
      const existing = live(key);
      if (existing?.s === 'p' && existing.f === fingerprint) remove(key);
      return Promise.resolve();
    },
  };
}

/** Deletes the lock only while it is still the caller's (a lock that expired may be someone else's). */
const RELEASE = `local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`;

export function createRedisIdempotencyStore(client: Redis, keyPrefix: string): IdempotencyStore {
  const k = (key: string) => `${keyPrefix}idem:${key}`;
  const parse = (text: string): RecordValue => JSON.parse(text) as RecordValue;
  return {
    begin: async (key, fingerprint, lockMs) => {
      const pending = JSON.stringify({ f: fingerprint, s: 'p' } satisfies Pending);
      // Two rounds: the record may expire between a failed SET NX and the GET.
      for (let attempt = 0; attempt < 2; attempt++) {
        const set = await client.set(k(key), pending, 'PX', lockMs, 'NX');
        if (set === 'OK') return { kind: 'acquired' };
        const text = await client.get(k(key));
        if (text !== null) return outcome(parse(text), fingerprint);
      }
      return { kind: 'in-flight' };
    },
    complete: async (key, fingerprint, response, ttlMs) => {
      await client.set(
        k(key),
        JSON.stringify({ f: fingerprint, s: 'd', r: response } satisfies Done),
        'PX',
        ttlMs,
      );
    },
    release: async (key, fingerprint) => {
      await client.eval(RELEASE, 1, k(key), JSON.stringify({ f: fingerprint, s: 'p' } satisfies Pending));
    },
  };
}

/**
 * Records in the store (SQLite or PostgreSQL: `idempotency.backend: store`), shared by every
 * gateway on it and durable across restarts. Taking a key is one insert on the primary key
 * (exactly one caller succeeds); an expired lock or record is deleted and the insert retried.
 * Expired rows are purged at most once a minute, by whichever request comes by. A store outage
 * refuses keyed requests with 503, like a Redis outage for the Redis backend.
 */
export function createStoreIdempotencyStore(
  db: Kysely<Database>,
  options: { now?: () => number } = {},
): IdempotencyStore {
  const now = options.now ?? Date.now;
  const iso = (ms: number) => new Date(ms).toISOString();
  let lastPurge = 0;
  const purge = async (t: number) => {
    if (t - lastPurge < 60_000) return;
    lastPurge = t;
    await db.deleteFrom('idempotency_records').where('expires_at', '<=', iso(t)).execute();
  };
  return {
    begin: async (key, fingerprint, lockMs) => {
      const t = now();
      await purge(t);
      for (let attempt = 0; attempt < 2; attempt++) {
        const inserted = await db
          .insertInto('idempotency_records')
          .values({ record_key: key, fingerprint, state: 'p', response: null, expires_at: iso(t + lockMs) })
          .onConflict((oc) => oc.column('record_key').doNothing())
          .executeTakeFirst();
        if (Number(inserted.numInsertedOrUpdatedRows ?? 0) === 1) return { kind: 'acquired' };
        const row = await db
          .selectFrom('idempotency_records')
          .selectAll()
          .where('record_key', '=', key)
          .executeTakeFirst();
        if (row === undefined) continue; // gone in between: try again
        if (row.expires_at <= iso(t)) {
          await db
            .deleteFrom('idempotency_records')
            .where('record_key', '=', key)
            .where('expires_at', '<=', iso(t))
            .execute();
          continue;
        }
        const value: RecordValue =
          row.state === 'd' && row.response !== null
            ? { f: row.fingerprint, s: 'd', r: JSON.parse(row.response) as StoredResponse }
            : { f: row.fingerprint, s: 'p' };
        return outcome(value, fingerprint);
      }
      return { kind: 'in-flight' };
    },
    complete: async (key, fingerprint, response, ttlMs) => {
      await db
        .updateTable('idempotency_records')
        .set({ state: 'd', response: JSON.stringify(response), expires_at: iso(now() + ttlMs) })
        .where('record_key', '=', key)
        .where('fingerprint', '=', fingerprint)
        .execute();
    },
    release: async (key, fingerprint) => {
      await db
        .deleteFrom('idempotency_records')
        .where('record_key', '=', key)
        .where('fingerprint', '=', fingerprint)
        .where('state', '=', 'p')
        .execute();
    },
  };
}
