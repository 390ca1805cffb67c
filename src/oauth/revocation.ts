/**
 * Revoked JWT access tokens (RFC 7009 for structured tokens). oidc-provider cannot revoke a
 * self-contained token, so the authorization server records the jti of each revoked one in
 * `revoked_tokens` until the token would have expired, and the gateway asks
 * {@link RevocationList.isRevoked} before accepting a token.
 *
 * With several gateway processes (a `denylist` on Redis and a signal bus), a revocation is
 * written to the store first (durable; when the store is down the revocation fails and the
 * caller answers 503), then to the Redis denylist, then announced on the bus so that every
 * process marks the token revoked at once. Lookups go memory → Redis → store, so that a
 * process keeps checking revocations while PostgreSQL is down, and while Redis is down.
 * An answer "not revoked" is reused for `cacheTtlMs`, or for `subscribedTtlMs` while the bus
 * subscription is live (a revocation would arrive as a signal); a resync after a gap in the
 * subscription forgets every such answer and copies the store's list back into Redis.
 */
import { createHash } from 'node:crypto';
import type { Kysely } from 'kysely';
import type { Database } from '../store/schema.ts';

export interface RevocationList {
  /** Whether `jti` was revoked (cached; this process's revocations and signalled ones at once). */
  isRevoked(jti: string): Promise<boolean>;
  /** Records a revocation; `expiresAt` is the token's exp (epoch seconds). Idempotent. */
  revoke(jti: string, clientId: string, expiresAt: number): Promise<void>;
  /** A revocation made by another process (a signal): refused from now on. */
  noteRevoked(jti: string, expiresAt: number): void;
  /** The subscription is lost: cached "not revoked" answers are forgotten (they relied on it). */
  forgetUnrevoked(): void;
  /**
   * After a gap in the signal subscription: forgets cached "not revoked" answers and copies the
   * store's unexpired revocations into the Redis denylist. Resolves the number copied.
   */
  resync(): Promise<number>;
}

/** The subset of an ioredis client the denylist uses. */
export interface DenylistRedis {
  readonly status: string;
  exists(key: string): Promise<number>;
  set(key: string, value: string, mode: 'PXAT', at: number): Promise<unknown>;
}

export interface RevocationListOptions {
  readonly db: Kysely<Database>;
  /** How long a "not revoked" answer is reused; default 5 s. */
  readonly cacheTtlMs?: number;
  /** The same while `signals().subscribed`; default 30 s. */
  readonly subscribedTtlMs?: number;
  /** Entries kept at most; the oldest go first. Default 10 000. */
  readonly cacheSize?: number;
  /** The shared denylist on Redis. */
  readonly denylist?: { readonly redis: DenylistRedis; readonly keyPrefix: string };
  /** The signal bus: `subscribed` state, and where revocations are announced. */
  readonly signals?: {
    readonly subscribed: boolean;
    publish(signal: { kind: 'token-revoked'; jti: string; exp: number }): Promise<boolean>;
  };
  /** A best-effort step (denylist write, announcement) failed; the revocation itself stands. */
  readonly onError?: (what: 'denylist' | 'signal', error: unknown) => void;
  readonly now?: () => number;
}

const MAX_JTI = 400;

export function createRevocationList(options: RevocationListOptions): RevocationList {
  const { db, denylist, signals } = options;
  const ttl = options.cacheTtlMs ?? 5_000;
  const subscribedTtl = options.subscribedTtlMs ?? 30_000;
  const size = options.cacheSize ?? 10_000;
  const now = options.now ?? Date.now;
  const cache = new Map<string, { revoked: boolean; until: number }>();
  const remember = (jti: string, revoked: boolean, until: number) => {
    cache.delete(jti);
    cache.set(jti, { revoked, until });
    if (cache.size > size) {
      const oldest = cache.keys().next();
      if (oldest.done !== true) cache.delete(oldest.value);
    }
  };
  const negativeTtl = () => (signals?.subscribed === true ? subscribedTtl : ttl);
  // Hashed: a bounded key, and the denylist does not hold token ids in the clear.
  const keyOf = (jti: string) =>
    `${denylist?.keyPrefix ?? ''}revoked:${createHash('sha256').update(jti).digest('base64url')}`;
  const fromRedis = async (jti: string): Promise<boolean | undefined> => {
    if (denylist?.redis.status !== 'ready') return undefined;
    try {
      return (await denylist.redis.exists(keyOf(jti))) === 1;
    } catch {
      return undefined;
    }
  };
  const toRedis = async (jti: string, expiresAtMs: number): Promise<void> => {
    if (denylist === undefined) return;
    await denylist.redis.set(keyOf(jti), '1', 'PXAT', expiresAtMs);
  };
  /**
   * A denylist write that failed is retried (every 2 s, for as long as the token lives, at most
   * 30 times): other processes ask Redis before the store, and must not miss a revocation
   * because of one dropped write. A resync after an outage copies everything anyway.
   */
  const retryToRedis = (jti: string, expiresAtMs: number, attempt: number): void => {
    if (attempt > 30 || expiresAtMs <= now()) return;
    setTimeout(() => {
      toRedis(jti, expiresAtMs).catch(() => {
        retryToRedis(jti, expiresAtMs, attempt + 1);
      });
    }, 2_000).unref();
  };
  const forgetUnrevoked = () => {
    for (const [jti, entry] of cache) if (!entry.revoked) cache.delete(jti);
  };
  const valid = (jti: unknown): jti is string =>
    typeof jti === 'string' && jti.length > 0 && jti.length <= MAX_JTI;

  return {
    async isRevoked(jti) {
      if (!valid(jti)) return false;
      const t = now();
      const hit = cache.get(jti);
      if (hit !== undefined && hit.until > t) return hit.revoked;
      const shared = await fromRedis(jti);
      if (shared !== undefined) {
        remember(jti, shared, t + (shared ? Math.max(ttl, subscribedTtl) : negativeTtl()));
        return shared;
      }
      // Redis unavailable (or not configured): the store answers; when it does not either,
      // this throws and the token is refused (fail closed).
      const row = await db
        .selectFrom('revoked_tokens')
        .select('jti')
        .where('jti', '=', jti)
        .where('expires_at', '>', new Date(t).toISOString())
        .executeTakeFirst();
      remember(jti, row !== undefined, t + ttl);
      return row !== undefined;
    },
    async revoke(jti, clientId, exp) {
      if (!valid(jti)) throw new TypeError('jti is empty or too long');
      if (!Number.isFinite(exp)) throw new TypeError('expiresAt must be a number of seconds');
      const expiresAt = Math.ceil(exp);
      const t = now();
      await db
        .insertInto('revoked_tokens')
        .values({
          jti,
          client_id: clientId,
          expires_at: new Date(expiresAt * 1000).toISOString(),
          revoked_at: new Date(t).toISOString(),
        })
        .onConflict((oc) => oc.column('jti').doNothing())
        .execute();
      remember(jti, true, Math.max(t + ttl, expiresAt * 1000));
      try {
        await toRedis(jti, expiresAt * 1000);
      } catch (err) {
        options.onError?.('denylist', err);
        retryToRedis(jti, expiresAt * 1000, 1);
      }
      if (signals !== undefined && !(await signals.publish({ kind: 'token-revoked', jti, exp: expiresAt }))) {
        options.onError?.('signal', new Error('the signal could not be published'));
      }
    },
    noteRevoked(jti, expiresAt) {
      if (!valid(jti)) return;
      remember(jti, true, Math.max(now() + ttl, expiresAt * 1000));
    },
    forgetUnrevoked,
    async resync() {
      forgetUnrevoked();
      if (denylist === undefined) return 0;
      const t = now();
      const rows = await db
        .selectFrom('revoked_tokens')
        .select(['jti', 'expires_at'])
        .where('expires_at', '>', new Date(t).toISOString())
        .execute();
      for (const row of rows) await toRedis(row.jti, Date.parse(row.expires_at));
      return rows.length;
    },
  };
}
