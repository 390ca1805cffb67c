/**
 * Refresh-token policy and the JWT access tokens of a grant.
 *
 * - {@link refreshTokenTtl}: a refresh-token chain has an absolute lifetime counted from its
 *   first token (`iiat`, which oidc-provider carries across rotations); a rotated token gets only
 *   what is left of it, so rotation never extends the chain.
 * - {@link createGrantTokenTracker}: JWT access tokens are self-contained and oidc-provider does
 *   not store them, so revoking a grant (refresh-token reuse, authorization-code reuse, refresh
 *   token revocation, logout) would leave them valid until they expire. The tracker records the
 *   `jti` of each access token issued under a grant (a row in `oauth_models`, model
 *   {@link ISSUED_JWT_MODEL}, expiring with the token) and, when the grant is revoked, puts every
 *   one of them on the revocation list the gateway checks.
 */
import type { Kysely } from 'kysely';
import type { Database } from '../store/schema.ts';
import type { ModelCodec } from './model-codec.ts';
import type { RevocationList } from './revocation.ts';

/** The `oauth_models.model` of the per-grant access-token records (no oidc-provider model has it). */
export const ISSUED_JWT_MODEL = 'IssuedJwtAccessToken';

/**
 * Seconds a refresh token may live: what is left of the chain's absolute lifetime, at least 1
 * (oidc-provider needs a positive TTL; a chain already past its end cannot be presented, since
 * the token it comes from has expired).
 *
 * @param initialIssuedAt epoch seconds of the chain's first refresh token (`iiat`)
 * @param now epoch seconds
 * @param absoluteTtlSeconds `oauth.refreshTokens.absoluteTtlSeconds`
 */
export function refreshTokenTtl(
  initialIssuedAt: number | undefined,
  now: number,
  absoluteTtlSeconds: number,
): number {
  const start =
    typeof initialIssuedAt === 'number' && Number.isFinite(initialIssuedAt) && initialIssuedAt <= now
      ? initialIssuedAt
      : now;
  return Math.max(1, Math.floor(start + absoluteTtlSeconds - now));
}

export interface IssuedAccessToken {
  readonly grantId: string;
  readonly jti: string;
  readonly clientId: string;
  /** Epoch seconds. */
  readonly exp: number;
}

export interface GrantTokenTracker {
  /** Records an access token issued under a grant. */
  record(token: IssuedAccessToken): Promise<void>;
  /** Revokes every unexpired access token recorded for the grant; returns how many. */
  revokeGrant(grantId: string): Promise<number>;
}

export interface GrantTokenTrackerOptions {
  readonly db: Kysely<Database>;
  readonly revocations: Pick<RevocationList, 'revoke'>;
  /** Rows rest as keyed hashes with a sealed payload, like every artifact (model-codec.ts). */
  readonly codec: ModelCodec;
  readonly now?: () => number;
}

const MAX_KEY = 400;

function usable(value: unknown): value is string {
  return typeof value === 'string' && value.length > 0 && value.length <= MAX_KEY;
}

export function createGrantTokenTracker(options: GrantTokenTrackerOptions): GrantTokenTracker {
  const { db, revocations, codec } = options;
  const now = options.now ?? Date.now;
  return {
    async record(token) {
      if (!usable(token.grantId) || !usable(token.jti) || !Number.isFinite(token.exp)) return;
      const id = codec.hash(token.jti);
      const payload = codec.seal(ISSUED_JWT_MODEL, id, {
        jti: token.jti,
        clientId: token.clientId,
        exp: token.exp,
      });
      await db
        .insertInto('oauth_models')
        .values({
          model: ISSUED_JWT_MODEL,
          id,
          payload,
          grant_id: codec.hash(token.grantId),
          uid: null,
          user_code: null,
          expires_at: new Date(token.exp * 1000).toISOString(),
          consumed_at: null,
        })
        .onConflict((oc) => oc.columns(['model', 'id']).doNothing())
        .execute();
    },
    async revokeGrant(grantId) {
      if (!usable(grantId)) return 0;
      const rows = await db
        .selectFrom('oauth_models')
        .select(['id', 'payload'])
        .where('model', '=', ISSUED_JWT_MODEL)
        .where('grant_id', '=', codec.hash(grantId))
        .where('expires_at', '>', new Date(now()).toISOString())
        .execute();
      for (const row of rows) {
        const { jti, clientId, exp } = codec.open(ISSUED_JWT_MODEL, row.id, row.payload) as {
          jti?: unknown;
          clientId?: unknown;
          exp?: unknown;
        };
        if (typeof exp !== 'number' || typeof jti !== 'string') continue;
        await revocations.revoke(jti, typeof clientId === 'string' ? clientId : '', exp);
      }
      await db
        .deleteFrom('oauth_models')
        .where('model', '=', ISSUED_JWT_MODEL)
        .where('grant_id', '=', codec.hash(grantId))
        .execute();
      return rows.length;
    },
  };
}
