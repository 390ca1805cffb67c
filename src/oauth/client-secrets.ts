/**
 * Client-secret rotation and expiry.
 *
 * `portcullis clients rotate-secret` issues a new secret (shown once, stored only as its HMAC)
 * and keeps the previous one valid for a grace period the operator chooses, so that clients can
 * be redeployed without an outage; a secret may carry an expiry, after which it is refused. The
 * authorization server checks a presented secret against the current one (unless expired) and
 * the previous one (within its grace period) in constant time ({@link clientSecretAccepted}).
 *
 * {@link secretsExpiringSoon} lists the clients whose current secret expires within a window:
 * the gateway records a `client-secret-expiring` audit event for each (daily), which the
 * built-in alert rule `client-secret-expiry` turns into an alert.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { Kysely } from 'kysely';
import type { Database } from '../store/schema.ts';
import type { SecretHasher } from './clients.ts';

const CLIENT_ID = /^pc_[A-Za-z0-9_-]{22}$/;
const SECRET_METHODS = new Set(['client_secret_basic', 'client_secret_post']);
/** Longest grace period and expiry accepted (the rotation is meant to be short; a secret ≤ 1 year). */
export const MAX_GRACE_SECONDS = 30 * 86_400;
export const MAX_EXPIRY_SECONDS = 366 * 86_400;

export class ClientSecretError extends Error {
  readonly code: 'not-found' | 'no-secret' | 'bad-duration';
  constructor(code: ClientSecretError['code'], message: string) {
    super(message);
    this.name = 'ClientSecretError';
    this.code = code;
  }
}

/** `90s`, `15m`, `24h`, `30d` (or plain seconds) → seconds. */
export function parseDurationSeconds(text: string): number {
  const m = /^(\d{1,9})([smhd]?)$/.exec(text.trim());
  if (m === null)
    throw new ClientSecretError(
      'bad-duration',
      `expected a duration like 90s, 15m, 24h or 30d, not "${text}"`,
    );
  const unit = { '': 1, s: 1, m: 60, h: 3600, d: 86_400 }[m[2] as '' | 's' | 'm' | 'h' | 'd'];
  return Number(m[1]) * unit;
}

export interface RotatedSecret {
  readonly clientId: string;
  /** The new secret: shown once, never stored. */
  readonly clientSecret: string;
  /** When the new secret expires (ISO-8601), or null. */
  readonly expiresAt: string | null;
  /** Until when the previous secret stays valid (ISO-8601), or null when it ended at once. */
  readonly previousValidUntil: string | null;
}

/** Replaces a client's secret; the old one stays valid for `graceSeconds` (0: ends now). */
export async function rotateClientSecret(
  db: Kysely<Database>,
  keys: SecretHasher,
  clientId: string,
  options: {
    readonly graceSeconds: number;
    readonly expiresInSeconds?: number | undefined;
    readonly now?: number;
  },
): Promise<RotatedSecret> {
  const now = options.now ?? Date.now();
  if (
    !Number.isInteger(options.graceSeconds) ||
    options.graceSeconds < 0 ||
    options.graceSeconds > MAX_GRACE_SECONDS
  ) {
    throw new ClientSecretError(
      'bad-duration',
      `the grace period must be between 0 and ${String(MAX_GRACE_SECONDS / 86_400)} days`,
    );
  }
  const exp = options.expiresInSeconds;
  if (exp !== undefined && (!Number.isInteger(exp) || exp < 60 || exp > MAX_EXPIRY_SECONDS)) {
    throw new ClientSecretError('bad-duration', 'the expiry must be between 1 minute and 366 days');
  }
  if (exp !== undefined && exp <= options.graceSeconds) {
    throw new ClientSecretError(
      'bad-duration',
      'the new secret must outlive the grace period of the old one',
    );
  }
  const row = CLIENT_ID.test(clientId)
    ? await db.selectFrom('oauth_clients').selectAll().where('client_id', '=', clientId).executeTakeFirst()
    : undefined;
  if (row === undefined) throw new ClientSecretError('not-found', 'no such client');
  const method = (JSON.parse(row.metadata) as { token_endpoint_auth_method?: unknown })
    .token_endpoint_auth_method;
  if (row.secret_hash === null || typeof method !== 'string' || !SECRET_METHODS.has(method)) {
    throw new ClientSecretError('no-secret', 'this client authenticates without a secret');
  }
  const clientSecret = randomBytes(32).toString('base64url');
  const expiresAt = exp === undefined ? null : new Date(now + exp * 1000).toISOString();
  // The old secret keeps its own expiry when that comes first.
  const oldEnd = row.secret_expires_at === null ? Infinity : Date.parse(row.secret_expires_at);
  const graceEnd = Math.min(now + options.graceSeconds * 1000, oldEnd);
  const previousValidUntil =
    options.graceSeconds > 0 && graceEnd > now ? new Date(graceEnd).toISOString() : null;
  await db
    .updateTable('oauth_clients')
    .set({
      secret_hash: keys.hmac('client-secret', clientSecret),
      secret_expires_at: expiresAt,
      previous_secret_hash: previousValidUntil === null ? null : row.secret_hash,
      previous_secret_expires_at: previousValidUntil,
    })
    .where('client_id', '=', clientId)
    .execute();
  return { clientId, clientSecret, expiresAt, previousValidUntil };
}

function same(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/**
 * Whether `presented` is the client's current secret (not expired) or its previous one (within
 * the grace period). Every comparison always runs, in constant time. A secret hashed under a
 * pepper that a rotation replaced (`keys rotate-pepper`, still in its grace period) is accepted
 * too, and the stored hash is then replaced by the current pepper's, so that the client keeps
 * working once the old pepper retires.
 */
export async function clientSecretAccepted(
  db: Kysely<Database>,
  keys: SecretHasher,
  clientId: string,
  presented: unknown,
  now: number = Date.now(),
): Promise<boolean> {
  if (typeof presented !== 'string' || presented.length === 0 || presented.length > 512) return false;
  if (!CLIENT_ID.test(clientId)) return false;
  const row = await db
    .selectFrom('oauth_clients')
    .select(['secret_hash', 'secret_expires_at', 'previous_secret_hash', 'previous_secret_expires_at'])
    .where('client_id', '=', clientId)
    .executeTakeFirst();
  if (row === undefined || row.secret_hash === null) return false;
  // The current pepper's digest first, then those of peppers still in their grace period.
  const digests = [
    keys.hmac('client-secret', presented),
    ...(keys.hmacPrevious?.('client-secret', presented) ?? []),
  ];
  const t = new Date(now).toISOString();
  let currentUnder = -1;
  let previousMatched = false;
  for (const [i, digest] of digests.entries()) {
    if (same(digest, row.secret_hash) && currentUnder < 0) currentUnder = i;
    if (row.previous_secret_hash !== null && same(digest, row.previous_secret_hash)) previousMatched = true;
  }
  const current = currentUnder >= 0 && (row.secret_expires_at === null || row.secret_expires_at > t);
  const previous =
    previousMatched && row.previous_secret_expires_at !== null && row.previous_secret_expires_at > t;
  if (current && currentUnder > 0) {
    await db
      .updateTable('oauth_clients')
      .set({ secret_hash: digests[0] ?? null })
      .where('client_id', '=', clientId)
      .where('secret_hash', '=', row.secret_hash)
      .execute();
  }
  return current || previous;
}

/** The clients whose current secret expires within `withinSeconds` (or has expired since `now`). */
export async function secretsExpiringSoon(
  db: Kysely<Database>,
  withinSeconds: number,
  now: number = Date.now(),
): Promise<{ clientId: string; expiresAt: string }[]> {
  const rows = await db
    .selectFrom('oauth_clients')
    .select(['client_id', 'secret_expires_at'])
    .where('secret_expires_at', 'is not', null)
    .where('secret_expires_at', '<=', new Date(now + withinSeconds * 1000).toISOString())
    .where('secret_expires_at', '>', new Date(now - 86_400_000).toISOString())
    .execute();
  return rows.map((r) => ({ clientId: r.client_id, expiresAt: r.secret_expires_at ?? '' }));
}
