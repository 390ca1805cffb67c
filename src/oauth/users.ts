/**
 * End users of the authorization server: local accounts with PBKDF2-HMAC-SHA-256 password hashes,
 * an optional TOTP second factor (RFC 6238), federated accounts (`<issuer>|<sub>`), and login
 * throttling counted in the store (so it survives restarts and is shared by every process on the
 * same database).
 *
 * Throttling follows NIST SP 800-63B §5.2.2 without handing attackers a lockout: failures are
 * counted per client IP (password spraying) and per username + client IP, and each of those is
 * blocked with a doubling delay up to `oauth.login.maxDelaySeconds` (an attempt while blocked
 * counts too). Per username alone there is
 * only a ceiling that slows: once the account has `maxFailures` failures from anywhere, each
 * attempt on it waits a doubling delay capped at {@link ACCOUNT_MAX_DELAY_MS} before it is checked,
 * and the right password from a source that is not blocked still signs in.
 *
 * Every failure the caller can observe is the same `{ ok: false }`: wrong password, unknown user,
 * disabled user, wrong or replayed TOTP code and throttling all look alike, and an unknown user
 * still costs one full PBKDF2 verification so timing does not reveal which names exist.
 */
import { createHmac, pbkdf2, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { promisify } from 'node:util';
import { sql } from 'kysely';
import type { Kysely } from 'kysely';
import type { OAuthConfig } from '../config/schema.ts';
import type { KmsProvider } from '../keys/kms.ts';
import type { Database } from '../store/schema.ts';

const pbkdf2Async = promisify(pbkdf2);

/** OWASP Password Storage Cheat Sheet: PBKDF2-HMAC-SHA-256 with 600 000 iterations. */
export const PBKDF2_ITERATIONS = 600_000;
export const PASSWORD_MIN_LENGTH = 12;
export const PASSWORD_MAX_LENGTH = 128;
const SALT_BYTES = 16;
const HASH_BYTES = 32;
const HASH_PREFIX = 'pbkdf2-sha256';
/** Lower bound accepted when reading a stored hash (tests may create cheaper hashes). */
const MIN_STORED_ITERATIONS = 1_000;
const MAX_STORED_ITERATIONS = 10_000_000;
/** The per-username slow-down: 250 ms after `maxFailures`, doubling, never more than this. */
export const ACCOUNT_MAX_DELAY_MS = 3_000;
const ACCOUNT_BASE_DELAY_MS = 250;

const USERNAME = /^[a-z0-9][a-z0-9._@+-]{0,63}$/;

/** The one message shown for every failed login, whatever the reason. */
export const GENERIC_LOGIN_FAILURE = 'Invalid username or password';

// ---------------------------------------------------------------------------------------------
// Passwords

/** `pbkdf2-sha256$<iterations>$<salt base64url>$<hash base64url>`. */
export async function hashPassword(password: string, iterations = PBKDF2_ITERATIONS): Promise<string> {
  if (
    !Number.isInteger(iterations) ||
    iterations < MIN_STORED_ITERATIONS ||
    iterations > MAX_STORED_ITERATIONS
  ) {
    throw new TypeError('hashPassword: iterations out of range');
  }
  const salt = randomBytes(SALT_BYTES);
  const hash = await pbkdf2Async(password.normalize('NFC'), salt, iterations, HASH_BYTES, 'sha256');
  return [HASH_PREFIX, String(iterations), salt.toString('base64url'), hash.toString('base64url')].join('$');
}

interface ParsedHash {
  readonly iterations: number;
  readonly salt: Buffer;
  readonly hash: Buffer;
}

export function parsePasswordHash(encoded: string): ParsedHash | undefined {
  const parts = encoded.split('$');
  if (parts.length !== 4 || parts[0] !== HASH_PREFIX) return undefined;
  const [, iter = '', salt = '', hash = ''] = parts;
  if (!/^[1-9][0-9]{3,7}$/.test(iter)) return undefined;
  const iterations = Number(iter);
  if (iterations < MIN_STORED_ITERATIONS || iterations > MAX_STORED_ITERATIONS) return undefined;
  const s = Buffer.from(salt, 'base64url');
  const h = Buffer.from(hash, 'base64url');
  if (s.length !== SALT_BYTES || h.length !== HASH_BYTES) return undefined;
  return { iterations, salt: s, hash: h };
}

/** Constant-time check of `password` against an encoded hash; false for malformed hashes. */
export async function verifyPassword(encoded: string, password: string): Promise<boolean> {
  const parsed = parsePasswordHash(encoded);
  if (!parsed) return false;
  const candidate = await pbkdf2Async(
    password.normalize('NFC'),
    parsed.salt,
    parsed.iterations,
    HASH_BYTES,
    'sha256',
  );
  return timingSafeEqual(candidate, parsed.hash);
}

/** Why a password is not acceptable for `username`, or undefined when it is. */
export function passwordPolicyProblem(username: string, password: string): string | undefined {
  let length = 0;
  for (const _ of password) length++; // code points
  if (length < PASSWORD_MIN_LENGTH) {
    return `password must have at least ${PASSWORD_MIN_LENGTH} characters`;
  }
  if (length > PASSWORD_MAX_LENGTH) return `password must have at most ${PASSWORD_MAX_LENGTH} characters`;
  if (password.normalize('NFKC').toLowerCase() === username.normalize('NFKC').toLowerCase()) {
    return 'password must not be the username';
  }
  return undefined;
}

/** The canonical form of a local username, or undefined when it is not a valid one. */
export function normalizeUsername(username: string): string | undefined {
  const n = username.normalize('NFKC').trim().toLowerCase();
  return USERNAME.test(n) ? n : undefined;
}

// ---------------------------------------------------------------------------------------------
// TOTP (RFC 6238 over RFC 4226 HOTP, HMAC-SHA-1, 6 digits, 30 s steps, for authenticator apps)

export const TOTP_STEP_SECONDS = 30;
export const TOTP_DIGITS = 6;
/** Steps accepted either side of the current one (clock drift). */
export const TOTP_WINDOW = 1;
const TOTP_SECRET_BYTES = 20;
const B32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

export function base32Encode(data: Uint8Array): string {
  let out = '';
  let bits = 0;
  let value = 0;
  for (const byte of data) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += B32[(value >>> (bits - 5)) & 31] ?? '';
      bits -= 5;
    }
    value &= (1 << bits) - 1;
  }
  if (bits > 0) out += B32[(value << (5 - bits)) & 31] ?? '';
  return out;
}

export function base32Decode(text: string): Buffer {
  const clean = text.replace(/=+$/, '').toUpperCase();
  const out: number[] = [];
  let bits = 0;
  let value = 0;
  for (const ch of clean) {
    const idx = B32.indexOf(ch);
    if (idx < 0) throw new TypeError('invalid base32');
    value = (value << 5) | idx;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
    value &= (1 << bits) - 1;
  }
  return Buffer.from(out);
}

/** HOTP value (RFC 4226) of `counter`; `digits` and the hash are parameters for test vectors. */
export function hotp(
  secret: Uint8Array,
  counter: number,
  digits = TOTP_DIGITS,
  hash: 'sha1' | 'sha256' | 'sha512' = 'sha1',
): string {
  const msg = Buffer.alloc(8);
  msg.writeBigUInt64BE(BigInt(counter));
  const mac = createHmac(hash, secret).update(msg).digest();
  const offset = (mac[mac.length - 1] ?? 0) & 0x0f;
  const bin = mac.readUInt32BE(offset) & 0x7fffffff;
  return String(bin % 10 ** digits).padStart(digits, '0');
}

export function totpStep(nowMs: number): number {
  return Math.floor(nowMs / 1000 / TOTP_STEP_SECONDS);
}

/**
 * The time step `code` matches within ±TOTP_WINDOW of `nowMs`, or undefined. Compares in constant
 * time per candidate. Replay protection is the caller's (accept only steps above the last used).
 */
export function matchTotp(secret: Uint8Array, code: string, nowMs: number): number | undefined {
  if (!/^[0-9]{6}$/.test(code)) return undefined;
  const current = totpStep(nowMs);
  let matched: number | undefined;
  const given = Buffer.from(code);
  for (let step = current - TOTP_WINDOW; step <= current + TOTP_WINDOW; step++) {
    if (timingSafeEqual(Buffer.from(hotp(secret, step)), given)) matched ??= step;
  }
  return matched;
}

/** otpauth:// provisioning URI (Key Uri Format) for authenticator apps. */
export function totpProvisioningUri(issuer: string, account: string, secret: Uint8Array): string {
  const label = `${encodeURIComponent(issuer)}:${encodeURIComponent(account)}`;
  const params = new URLSearchParams({
    secret: base32Encode(secret),
    issuer,
    algorithm: 'SHA1',
    digits: String(TOTP_DIGITS),
    period: String(TOTP_STEP_SECONDS),
  });
  return `otpauth://totp/${label}?${params.toString()}`;
}

// ---------------------------------------------------------------------------------------------
// Wrapping TOTP secrets at rest

/** Encrypts small secrets at rest; `context` is bound as additional authenticated data. */
export interface SecretWrapper {
  wrap(plain: Buffer, context: string): Promise<string>;
  unwrap(wrapped: string, context: string): Promise<Buffer>;
}

/**
 * Wraps with the key manager's KMS provider (AES-256-GCM under the key-encryption key for the
 * `local` provider), the same protection signing keys and peppers get. Stored as
 * `k1.<provider>.<envelope base64url>`.
 */
export function kmsSecretWrapper(
  kms: Pick<KmsProvider, 'name' | 'wrap' | 'unwrap'> & { readonly legacyNames?: readonly string[] },
): SecretWrapper {
  return {
    async wrap(plain, context) {
      const envelope = await kms.wrap(plain, context);
      return `k1.${kms.name}.${envelope.toString('base64url')}`;
    },
    async unwrap(wrapped, context) {
      const [v, name, envelope = ''] = wrapped.split('.');
      if (v !== 'k1' || (name !== kms.name && !(kms.legacyNames ?? []).includes(name ?? '')))
        throw new Error('wrapped secret is from another KMS provider');
      return kms.unwrap(Buffer.from(envelope, 'base64url'), context);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The user directory

export interface UserInfo {
  readonly id: string;
  readonly username: string;
  readonly disabled: boolean;
  readonly hasTotp: boolean;
  readonly federated: boolean;
  readonly createdAt: string;
}

export type LoginOutcome =
  | { readonly ok: true; readonly user: UserInfo; readonly secondFactor: 'none' | 'totp' }
  | { readonly ok: false };

export type SecondFactorOutcome = { readonly ok: true; readonly user: UserInfo } | { readonly ok: false };

/**
 * Why a sign-in step failed, for the audit trail only (issue 13): the caller's answer stays the
 * generic `{ ok: false }`. Never carries what the user typed; `userId` only for a known account.
 */
export interface SignInFailure {
  readonly reason:
    | 'throttled'
    | 'unknown-user'
    | 'disabled'
    | 'no-password'
    | 'bad-password'
    | 'bad-code'
    | 'replayed-code'
    | 'no-second-factor';
  readonly userId?: string;
  /** `throttled`: seconds until the source may try again. */
  readonly retryAfterSeconds?: number;
}

export interface CreatedUser {
  readonly user: UserInfo;
  /** The otpauth:// URI to show once, when a TOTP secret was created. */
  readonly totpUri: string | undefined;
}

export class UserError extends Error {
  readonly code: 'invalid-username' | 'weak-password' | 'exists' | 'not-found';
  constructor(code: UserError['code'], message: string) {
    super(message);
    this.name = 'UserError';
    this.code = code;
  }
}

/** What an operator sees of a user (`portcullis users list|show`): never a secret. */
export interface UserRecord extends UserInfo {
  readonly lastLoginAt: string | null;
  readonly passwordChangedAt: string | null;
}

export interface Users {
  create(input: { username: string; password: string; totp?: boolean }): Promise<CreatedUser>;
  /** Disables the account (idempotent); throws UserError('not-found'). */
  disable(username: string): Promise<UserInfo>;
  /** Every user, by username. */
  list(): Promise<UserRecord[]>;
  /** One user by username; throws UserError('not-found'). */
  show(username: string): Promise<UserRecord>;
  /**
   * Sets a new password (the policy applies) and clears the account's sign-in slow-down; throws
   * UserError('not-found') for an unknown or federated account.
   */
  resetPassword(username: string, password: string): Promise<UserRecord>;
  /** First factor. `ip` is the client address the throttle counts per. */
  authenticate(input: {
    username: string;
    password: string;
    ip: string;
    /** Told why a failure failed (the audit trail); the answer stays `{ ok: false }`. */
    onFailure?: (why: SignInFailure) => void;
  }): Promise<LoginOutcome>;
  /** Second factor for a user the first factor accepted; a used time step is refused. */
  verifyTotp(input: {
    accountId: string;
    code: string;
    ip: string;
    onFailure?: (why: SignInFailure) => void;
  }): Promise<SecondFactorOutcome>;
  /** A usable account by id (undefined when unknown or disabled): for findAccount. */
  find(id: string): Promise<UserInfo | undefined>;
  /**
   * The local account for an upstream identity, created on first sign-in; undefined when it is
   * disabled or the identifiers are unusable.
   */
  federated(issuer: string, subject: string): Promise<UserInfo | undefined>;
  /**
   * Seconds until `username` may be tried again from `ip` (0 when neither the IP nor the pair is
   * blocked); for tests and admin.
   */
  throttledFor(input: { username: string; ip: string }): Promise<number>;
  /** The slow-down every attempt on `username` waits now, in milliseconds (never a denial). */
  accountDelayMs(username: string): Promise<number>;
}

export interface UsersOptions {
  readonly db: Kysely<Database>;
  readonly wrapper: SecretWrapper;
  readonly login: OAuthConfig['login'];
  /** Shown as the issuer in TOTP provisioning URIs. */
  readonly issuerName?: string;
  /** PBKDF2 iterations for new hashes (default 600 000); lower only in tests. */
  readonly iterations?: number;
  readonly now?: () => number;
  /** Waits the per-username slow-down (default a timer; tests record it instead). */
  readonly sleep?: (ms: number) => Promise<void>;
}

function info(row: {
  id: string;
  username: string;
  disabled: number;
  totp_secret_wrapped: string | null;
  federated_issuer: string | null;
  created_at: string;
}): UserInfo {
  return {
    id: row.id,
    username: row.username,
    disabled: row.disabled !== 0,
    hasTotp: row.totp_secret_wrapped !== null,
    federated: row.federated_issuer !== null,
    createdAt: row.created_at,
  };
}

function record(
  row: Parameters<typeof info>[0] & { last_login_at: string | null; password_changed_at: string | null },
): UserRecord {
  return { ...info(row), lastLoginAt: row.last_login_at, passwordChangedAt: row.password_changed_at };
}

const MAX_ID_LENGTH = 300;

export function createUsers(options: UsersOptions): Users {
  const { db, wrapper, login } = options;
  const now = options.now ?? Date.now;
  const iterations = options.iterations ?? PBKDF2_ITERATIONS;
  const issuerName = options.issuerName ?? 'Portcullis';
  const iso = (ms: number) => new Date(ms).toISOString();
  let dummy: Promise<string> | undefined;
  const dummyHash = () => (dummy ??= hashPassword(randomBytes(16).toString('base64url'), iterations));

  const sleep =
    options.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms).unref()));
  const accountKey = (username: string) => `account:${normalizeUsername(username) ?? username.slice(0, 100)}`;
  /** The keys that deny: the source, and the username from that source. */
  const denyKeys = (username: string, ip: string) => [
    `pair:${ip.slice(0, 100)}|${normalizeUsername(username) ?? username.slice(0, 100)}`,
    `ip:${ip.slice(0, 100)}`,
  ];

  async function accountDelay(username: string): Promise<number> {
    const row = await db
      .selectFrom('login_throttle')
      .select(['failures', 'window_start'])
      .where('key', '=', accountKey(username))
      .executeTakeFirst();
    if (row === undefined) return 0;
    if (Date.parse(row.window_start) < now() - login.windowSeconds * 1000) return 0;
    const over = row.failures - login.maxFailures;
    if (over < 0) return 0;
    return Math.min(ACCOUNT_MAX_DELAY_MS, ACCOUNT_BASE_DELAY_MS * 2 ** Math.min(over, 30));
  }

  /**
   * Blocked: the generic refusal, and the attempt counts against the source (hammering a blocked
   * source extends its block). Otherwise the account's slow-down is waited first.
   */
  async function admit(username: string, ip: string): Promise<number> {
    const keys = denyKeys(username, ip);
    const blocked = await blockedFor(keys);
    if (blocked > 0) {
      await recordFailure(keys);
      return blocked;
    }
    const delay = await accountDelay(username);
    if (delay > 0) await sleep(delay);
    return 0;
  }

  async function blockedFor(keys: string[]): Promise<number> {
    const rows = await db
      .selectFrom('login_throttle')
      .select(['blocked_until'])
      .where('key', 'in', keys)
      .execute();
    const t = now();
    let wait = 0;
    for (const r of rows) {
      if (r.blocked_until === null) continue;
      const until = Date.parse(r.blocked_until);
      if (until > t) wait = Math.max(wait, Math.ceil((until - t) / 1000));
    }
    return wait;
  }

  async function recordFailure(keys: string[]): Promise<void> {
    const t = now();
    const nowIso = iso(t);
    const cutoff = iso(t - login.windowSeconds * 1000);
    for (const key of keys) {
      const row = await db
        .insertInto('login_throttle')
        .values({ key, failures: 1, window_start: nowIso, blocked_until: null })
        .onConflict((oc) =>
          oc.column('key').doUpdateSet({
            failures: sql<number>`case when login_throttle.window_start < ${cutoff} then 1 else login_throttle.failures + 1 end`,
            window_start: sql<string>`case when login_throttle.window_start < ${cutoff} then ${nowIso} else login_throttle.window_start end`,
          }),
        )
        .returning(['failures'])
        .executeTakeFirstOrThrow();
      const failures = row.failures;
      if (failures >= login.maxFailures) {
        const delay = Math.min(login.maxDelaySeconds, 2 ** Math.min(failures - login.maxFailures, 30));
        await db
          .updateTable('login_throttle')
          .set({ blocked_until: iso(t + delay * 1000) })
          .where('key', '=', key)
          .execute();
      }
    }
  }

  /** A sign-in succeeded: the account and this source's count for it start again (not the IP's). */
  async function resetAccount(username: string, ip: string): Promise<void> {
    const [pair = ''] = denyKeys(username, ip);
    await db
      .deleteFrom('login_throttle')
      .where('key', 'in', [accountKey(username), pair])
      .execute();
  }

  const columns = [
    'id',
    'username',
    'password_hash',
    'totp_secret_wrapped',
    'totp_last_step',
    'federated_issuer',
    'disabled',
    'created_at',
  ] as const;
  const recordColumns = [...columns, 'last_login_at', 'password_changed_at'] as const;

  async function recordOf(username: string): Promise<UserRecord> {
    const name = normalizeUsername(username) ?? username;
    const row = await db
      .selectFrom('users')
      .select(recordColumns)
      .where('username', '=', name)
      .executeTakeFirst();
    if (!row) throw new UserError('not-found', 'no such user');
    return record(row);
  }

  async function byUsername(username: string) {
    return db.selectFrom('users').select(columns).where('username', '=', username).executeTakeFirst();
  }

  return {
    async create({ username, password, totp = false }) {
      const name = normalizeUsername(username);
      if (name === undefined) {
        throw new UserError(
          'invalid-username',
          'username must be 1-64 characters: letters, digits and . _ @ + - (starting with a letter or digit)',
        );
      }
      const problem = passwordPolicyProblem(name, password);
      if (problem !== undefined) throw new UserError('weak-password', problem);
      if (await byUsername(name)) throw new UserError('exists', 'a user with that username exists');
      const id = randomUUID();
      const created = iso(now());
      const secret = totp ? randomBytes(TOTP_SECRET_BYTES) : undefined;
      const row = {
        id,
        username: name,
        password_hash: await hashPassword(password, iterations),
        totp_secret_wrapped: secret ? await wrapper.wrap(secret, `totp:${id}`) : null,
        totp_last_step: null,
        federated_issuer: null,
        federated_subject: null,
        disabled: 0,
        created_at: created,
        password_changed_at: created,
        last_login_at: null,
      };
      try {
        await db.insertInto('users').values(row).execute();
      } catch (err) {
        if (await byUsername(name)) throw new UserError('exists', 'a user with that username exists');
        throw err;
      }
      return {
        user: info(row),
        totpUri: secret ? totpProvisioningUri(issuerName, name, secret) : undefined,
      };
    },

    async disable(username) {
      const name = normalizeUsername(username) ?? username;
      const result = await db
        .updateTable('users')
        .set({ disabled: 1 })
        .where('username', '=', name)
        .executeTakeFirst();
      if (result.numUpdatedRows === 0n) throw new UserError('not-found', 'no such user');
      const row = await byUsername(name);
      if (!row) throw new UserError('not-found', 'no such user');
      return info(row);
    },

    async list() {
      const rows = await db.selectFrom('users').select(recordColumns).orderBy('username').execute();
      return rows.map(record);
    },

    show: recordOf,

    async resetPassword(username, password) {
      const name = normalizeUsername(username);
      const row = name === undefined ? undefined : await byUsername(name);
      if (name === undefined || row === undefined || row.federated_issuer !== null) {
        throw new UserError('not-found', 'no such local user');
      }
      const problem = passwordPolicyProblem(name, password);
      if (problem !== undefined) throw new UserError('weak-password', problem);
      await db
        .updateTable('users')
        .set({ password_hash: await hashPassword(password, iterations), password_changed_at: iso(now()) })
        .where('id', '=', row.id)
        .execute();
      await db.deleteFrom('login_throttle').where('key', '=', accountKey(name)).execute();
      return recordOf(name);
    },

    async authenticate({ username, password, ip, onFailure }) {
      const keys = [...denyKeys(username, ip), accountKey(username)];
      const blocked = await admit(username, ip);
      if (blocked > 0) {
        onFailure?.({ reason: 'throttled', retryAfterSeconds: blocked });
        return { ok: false };
      }
      const name = normalizeUsername(username);
      const row = name === undefined ? undefined : await byUsername(name);
      const usable = row !== undefined && row.disabled === 0 && row.password_hash !== null;
      const encoded = usable && row.password_hash !== null ? row.password_hash : await dummyHash();
      const good = await verifyPassword(encoded, password);
      if (!usable || !good) {
        await recordFailure(keys);
        onFailure?.(
          row === undefined
            ? { reason: 'unknown-user' }
            : {
                reason:
                  row.disabled !== 0
                    ? 'disabled'
                    : row.password_hash === null
                      ? 'no-password'
                      : 'bad-password',
                userId: row.id,
              },
        );
        return { ok: false };
      }
      if (row.totp_secret_wrapped !== null) return { ok: true, user: info(row), secondFactor: 'totp' };
      await resetAccount(username, ip);
      await db
        .updateTable('users')
        .set({ last_login_at: iso(now()) })
        .where('id', '=', row.id)
        .execute();
      if ((parsePasswordHash(encoded)?.iterations ?? 0) < iterations) {
        // Raise the work factor of an old hash now that the password is known.
        await db
          .updateTable('users')
          .set({ password_hash: await hashPassword(password, iterations) })
          .where('id', '=', row.id)
          .execute();
      }
      return { ok: true, user: info(row), secondFactor: 'none' };
    },

    async verifyTotp({ accountId, code, ip, onFailure }) {
      const row = await db.selectFrom('users').select(columns).where('id', '=', accountId).executeTakeFirst();
      const username = row?.username ?? accountId;
      const keys = [...denyKeys(username, ip), accountKey(username)];
      const blocked = await admit(username, ip);
      if (blocked > 0) {
        onFailure?.({ reason: 'throttled', userId: accountId, retryAfterSeconds: blocked });
        return { ok: false };
      }
      if (!row || row.disabled !== 0 || row.totp_secret_wrapped === null) {
        await recordFailure(keys);
        onFailure?.({
          reason: !row ? 'unknown-user' : row.disabled !== 0 ? 'disabled' : 'no-second-factor',
          userId: accountId,
        });
        return { ok: false };
      }
      const secret = await wrapper.unwrap(row.totp_secret_wrapped, `totp:${row.id}`);
      const step = matchTotp(secret, code.trim(), now());
      secret.fill(0);
      if (step === undefined) {
        await recordFailure(keys);
        onFailure?.({ reason: 'bad-code', userId: row.id });
        return { ok: false };
      }
      // Atomic: only one request can move the last-used step forward to this one.
      const moved = await db
        .updateTable('users')
        .set({ totp_last_step: step, last_login_at: iso(now()) })
        .where('id', '=', row.id)
        .where((eb) => eb.or([eb('totp_last_step', 'is', null), eb('totp_last_step', '<', step)]))
        .executeTakeFirst();
      if (moved.numUpdatedRows === 0n) {
        await recordFailure(keys);
        onFailure?.({ reason: 'replayed-code', userId: row.id });
        return { ok: false };
      }
      await resetAccount(username, ip);
      return { ok: true, user: info(row) };
    },

    async find(id) {
      const row = await db.selectFrom('users').select(columns).where('id', '=', id).executeTakeFirst();
      if (!row || row.disabled !== 0) return undefined;
      return info(row);
    },

    async federated(issuer, subject) {
      if (subject.length === 0 || subject.length > 255 || /\p{Cc}/u.test(subject)) return undefined;
      const id = `${issuer}|${subject}`;
      if (id.length > MAX_ID_LENGTH) return undefined;
      const existing = await db.selectFrom('users').select(columns).where('id', '=', id).executeTakeFirst();
      if (existing) {
        if (existing.disabled !== 0) return undefined;
        await db
          .updateTable('users')
          .set({ last_login_at: iso(now()) })
          .where('id', '=', id)
          .execute();
        return info(existing);
      }
      const created = iso(now());
      const row = {
        id,
        username: id,
        password_hash: null,
        totp_secret_wrapped: null,
        totp_last_step: null,
        federated_issuer: issuer,
        federated_subject: subject,
        disabled: 0,
        created_at: created,
        password_changed_at: null,
        last_login_at: created,
      };
      await db
        .insertInto('users')
        .values(row)
        .onConflict((oc) => oc.column('id').doNothing())
        .execute();
      const again = await db.selectFrom('users').select(columns).where('id', '=', id).executeTakeFirst();
      return again && again.disabled === 0 ? info(again) : undefined;
    },

    async throttledFor({ username, ip }) {
      return blockedFor(denyKeys(username, ip));
    },

    accountDelayMs: accountDelay,
  };
}
