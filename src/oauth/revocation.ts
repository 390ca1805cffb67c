/**
 * Revoked JWT access tokens (RFC 7009 for structured tokens). oidc-provider cannot revoke a
 * self-contained token, so the authorization server records the jti of each revoked one in
 * `revoked_tokens` until the token would have expired, and the gateway asks
 * {@link RevocationList.isRevoked} before accepting a token.
 */
import type { Kysely } from 'kysely';
import type { Database } from '../store/schema.ts';

export interface RevocationList {
  /** Whether `jti` was revoked (cached for `cacheTtlMs`; this process's revocations at once). */
  isRevoked(jti: string): Promise<boolean>;
  /** Records a revocation; `expiresAt` is the token's exp (epoch seconds). Idempotent. */
  revoke(jti: string, clientId: string, expiresAt: number): Promise<void>;
}

export interface RevocationListOptions {
  readonly db: Kysely<Database>;
  /** How long an answer is reused; default 5 s (a revocation elsewhere shows within it). */
  readonly cacheTtlMs?: number;
  /** Entries kept at most; the oldest go first. Default 10 000. */
  readonly cacheSize?: number;
  readonly now?: () => number;
}

const MAX_JTI = 400;

export function createRevocationList(options: RevocationListOptions): RevocationList {
  const { db } = options;
  const ttl = options.cacheTtlMs ?? 5_000;
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
  return {
    async isRevoked(jti) {
      if (typeof jti !== 'string' || jti.length === 0 || jti.length > MAX_JTI) return false;
      const t = now();
      const hit = cache.get(jti);
      if (hit !== undefined && hit.until > t) return hit.revoked;
      const row = await db
        .selectFrom('revoked_tokens')
        .select('jti')
        .where('jti', '=', jti)
        .where('expires_at', '>', new Date(t).toISOString())
        .executeTakeFirst();
      remember(jti, row !== undefined, t + ttl);
      return row !== undefined;
    },
    async revoke(jti, clientId, expiresAt) {
      if (jti.length === 0 || jti.length > MAX_JTI) throw new TypeError('jti is empty or too long');
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
    },
  };
}
