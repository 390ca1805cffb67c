/**
 * Ends everything a user holds at the authorization server at once: sessions, grants (with their
 * codes and refresh tokens) and the JWT access tokens issued under them, which go on the
 * revocation list the gateway checks (revocation.ts; with Redis, the shared denylist and a signal
 * reach every gateway at once). Used by `portcullis users revoke` and `users disable`.
 *
 * Rows are found by the keyed hash of the account id (model-codec.ts); grant ids are read from
 * the sealed payloads of the user's sessions, grants and tokens.
 */
import type { Kysely } from 'kysely';
import type { Database } from '../store/schema.ts';
import { createGrantTokenTracker } from './grant-tokens.ts';
import type { ModelCodec } from './model-codec.ts';
import type { RevocationList } from './revocation.ts';

export interface EndedUserSessions {
  /** Login sessions ended. */
  readonly sessions: number;
  /** Grants revoked (consents, with their codes and refresh tokens). */
  readonly grants: number;
  /** Stored artifacts deleted in all (sessions, grants, codes, refresh tokens, interactions…). */
  readonly artifacts: number;
  /** Unexpired JWT access tokens put on the revocation list. */
  readonly accessTokens: number;
}

export interface EndUserSessionsOptions {
  readonly db: Kysely<Database>;
  readonly codec: ModelCodec;
  readonly revocations: Pick<RevocationList, 'revoke'>;
  /** The account id (the `sub`), not the username. */
  readonly userId: string;
  readonly now?: () => number;
}

function grantIdsOf(model: string, payload: Record<string, unknown>): string[] {
  const out: string[] = [];
  if (model === 'Grant' && typeof payload.jti === 'string') out.push(payload.jti);
  if (typeof payload.grantId === 'string') out.push(payload.grantId);
  const authorizations = payload.authorizations;
  if (authorizations !== null && typeof authorizations === 'object') {
    for (const entry of Object.values(authorizations as Record<string, unknown>)) {
      const grantId = (entry as { grantId?: unknown } | null)?.grantId;
      if (typeof grantId === 'string') out.push(grantId);
    }
  }
  return out;
}

/** Ends the user's sessions, grants and tokens; idempotent (a second call finds nothing). */
export async function endUserSessions(options: EndUserSessionsOptions): Promise<EndedUserSessions> {
  const { db, codec, revocations, userId } = options;
  const account = codec.hash(userId);
  const rows = await db
    .selectFrom('oauth_models')
    .select(['model', 'id', 'payload'])
    .where('account_id', '=', account)
    .execute();
  const grants = new Set<string>();
  let sessions = 0;
  for (const row of rows) {
    if (row.model === 'Session') sessions++;
    let payload: Record<string, unknown>;
    try {
      payload = codec.open(row.model, row.id, row.payload) as Record<string, unknown>;
    } catch {
      continue; // unreadable: deleted below by account all the same
    }
    for (const g of grantIdsOf(row.model, payload)) grants.add(g);
  }
  const tracker = createGrantTokenTracker({
    db,
    codec,
    revocations,
    ...(options.now ? { now: options.now } : {}),
  });
  let accessTokens = 0;
  let artifacts = 0;
  for (const grantId of grants) {
    // The access tokens first: once their records are gone they could not be found again.
    accessTokens += await tracker.revokeGrant(grantId);
    const gone = await db
      .deleteFrom('oauth_models')
      .where('grant_id', '=', codec.hash(grantId))
      .executeTakeFirst();
    artifacts += Number(gone.numDeletedRows);
    const grant = await db
      .deleteFrom('oauth_models')
      .where('model', '=', 'Grant')
      .where('id', '=', codec.hash(grantId))
      .executeTakeFirst();
    artifacts += Number(grant.numDeletedRows);
  }
  const rest = await db.deleteFrom('oauth_models').where('account_id', '=', account).executeTakeFirst();
  artifacts += Number(rest.numDeletedRows);
  return { sessions, grants: grants.size, artifacts, accessTokens };
}
