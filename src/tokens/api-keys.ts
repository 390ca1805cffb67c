/**
 * API keys: issuance, rotation, revocation, and their verification at the gateway.
 *
 * ## Format
 *
 * ```
 * pcl_<env>_<secret>_<checksum>
 * pcl_live_4Jx0…(43 chars)…9Zq_1bX9aQ
 * ```
 *
 * - `pcl`: the fixed prefix, so secret scanners (and people) recognise a Portcullis key.
 * - `<env>`: `live` or `test`; a gateway accepts only keys of its own environment.
 * - `<secret>`: 32 bytes (256 bits) from the operating system's CSPRNG (`crypto.randomBytes`),
 *   base62, left-padded with `0` to exactly 43 characters.
 * - `<checksum>`: CRC-32 (ISO-HDLC, zlib's) of `pcl_<env>_<secret>` in base62, left-padded to
 *   6 characters. It is not a secret and not a MAC: it lets scanners tell real keys from
 *   look-alikes, and lets the gateway refuse a mistyped or truncated key before any lookup.
 *
 * {@link API_KEY_PATTERN} matches a key anywhere in a text (for scanners).
 *
 * ## Storage
 *
 * A key is shown once, when issued or rotated. The store keeps only the HMAC-SHA-256 of the
 * whole key under the key manager's `api-key` pepper (`keys.hmac('api-key', key)`), the key's
 * id (random, not derived from the key), its name, restrictions (APIs, operationIds, source
 * CIDRs, environment), expiry, and usage (count, last use, last source network, the source
 * networks seen).
 *
 * ## Verification ({@link createApiKeyAuthority})
 *
 * Per request: format and checksum (no lookup for a malformed key), the HMAC, a small TTL cache of
 * key records in front of the store (the stored hash is compared with the computed one in
 * constant time), environment, revocation, expiry (exact, per request), then the restrictions.
 * Revoking through the authority applies to the next request in this process; a revocation made
 * elsewhere (CLI, another process) applies once the cached record is older than `cacheTtlMs`.
 * Usage is counted in memory and written to the store every `flushIntervalMs`. Anomalies (a
 * source network the key was not used from before, a volume spike, any use after revocation,
 * expiry or the end of a rotation's grace period) are handed to `onAnomaly`.
 */
import { isDependencyUnavailable } from '../store/unavailable.ts';
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { BlockList, isIPv4, isIPv6 } from 'node:net';
import { crc32 } from 'node:zlib';
import type { SchemeVerifier } from '../gateway/context.ts';
import type { KeyManager } from '../keys/types.ts';
import type { Selectable } from 'kysely';
import type { Store } from '../store/index.ts';
import type { ApiKeysTable } from '../store/schema.ts';

export type ApiKeyEnv = 'live' | 'test';
export const API_KEY_ENVS: readonly ApiKeyEnv[] = ['live', 'test'];
export const API_KEY_PREFIX = 'pcl';
/** A Portcullis API key anywhere in a text (for secret scanners). */
export const API_KEY_PATTERN = /\bpcl_(?:live|test)_[0-9A-Za-z]{43}_[0-9A-Za-z]{6}\b/g;
const API_KEY_EXACT = /^pcl_(live|test)_([0-9A-Za-z]{43})_([0-9A-Za-z]{6})$/;
const SECRET_BYTES = 32;
const SECRET_CHARS = 43;
const CHECKSUM_CHARS = 6;
const ID_CHARS = 22;

/** Default lifetime of a key, and the longest one `issue` accepts. */
export const DEFAULT_EXPIRES_IN_DAYS = 90;
export const MAX_EXPIRES_IN_DAYS = 365;
/** Default and longest rotation grace period (hours). */
export const DEFAULT_GRACE_HOURS = 24;
export const MAX_GRACE_HOURS = 30 * 24;
export const MAX_RESTRICTIONS = 100;

const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
const DAY_MS = 24 * 60 * 60 * 1000;
const HOUR_MS = 60 * 60 * 1000;

function base62(bytes: Buffer, width: number): string {
  let n = bytes.length === 0 ? 0n : BigInt(`0x${bytes.toString('hex')}`);
  let out = '';
  while (n > 0n) {
    out = (BASE62[Number(n % 62n)] ?? '') + out;
    n /= 62n;
  }
  if (out.length > width) throw new RangeError('base62: value wider than its field');
  return out.padStart(width, '0');
}

function checksum(body: string): string {
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return base62(crc, CHECKSUM_CHARS);
}

/** A new key for `env`: 256 bits from the CSPRNG, prefixed and checksummed. */
export function generateApiKey(env: ApiKeyEnv): string {
  if (!API_KEY_ENVS.includes(env)) throw new TypeError('generateApiKey: env must be live or test');
  const body = `${API_KEY_PREFIX}_${env}_${base62(randomBytes(SECRET_BYTES), SECRET_CHARS)}`;
  return `${body}_${checksum(body)}`;
}

/** The key's environment when it is well-formed with a correct checksum; undefined otherwise. */
export function parseApiKey(value: string): { readonly env: ApiKeyEnv } | undefined {
  if (typeof value !== 'string' || value.length > 64) return undefined;
  const m = API_KEY_EXACT.exec(value);
  if (m === null) return undefined;
  const body = value.slice(0, value.length - CHECKSUM_CHARS - 1);
  if (checksum(body) !== m[3]) return undefined;
  return { env: m[1] === 'test' ? 'test' : 'live' };
}

function newId(): string {
  return `ak_${base62(randomBytes(16), ID_CHARS)}`;
}

// ---------------------------------------------------------------------------------------------
// Records and administration

/** Mistakes in an administrative request (bad input, unknown id); the message names the problem. */
export type ApiKeyErrorCode = 'API_KEY_INVALID_INPUT' | 'API_KEY_NOT_FOUND' | 'API_KEY_STATE';

export class ApiKeyError extends Error {
  readonly code: ApiKeyErrorCode;
  constructor(code: ApiKeyErrorCode, message: string) {
    super(message);
    this.name = 'ApiKeyError';
    this.code = code;
  }
}

/** What may be shown about a key: never the key, never its hash. */
export interface ApiKeyRecord {
  readonly id: string;
  readonly name: string;
  readonly env: ApiKeyEnv;
  readonly apis: readonly string[];
  /** Allowed operationIds; empty: every operation of the allowed APIs. */
  readonly operations: readonly string[];
  /** Allowed source CIDRs; empty: any source. */
  readonly cidrs: readonly string[];
  readonly createdAt: Date;
  readonly expiresAt: Date;
  readonly revokedAt: Date | undefined;
  readonly replacedBy: string | undefined;
  readonly useCount: number;
  readonly lastUsedAt: Date | undefined;
  readonly lastSourceNetwork: string | undefined;
}

export type ApiKeyStatus = 'active' | 'rotating' | 'revoked' | 'expired';

/** `rotating`: replaced, but still accepted until its grace period ends. */
export function apiKeyStatus(record: ApiKeyRecord, now: number = Date.now()): ApiKeyStatus {
  if (record.revokedAt !== undefined) return 'revoked';
  if (record.expiresAt.getTime() <= now) return 'expired';
  return record.replacedBy === undefined ? 'active' : 'rotating';
}

export interface IssueApiKeyInput {
  readonly name: string;
  /** API names (as in the configuration); at least one. */
  readonly apis: readonly string[];
  readonly operations?: readonly string[];
  readonly cidrs?: readonly string[];
  readonly env?: ApiKeyEnv;
  readonly expiresInDays?: number;
  readonly now?: Date;
}

export interface IssuedApiKey {
  readonly id: string;
  /** The key itself: shown once, never stored. */
  readonly key: string;
  readonly record: ApiKeyRecord;
}

type ApiKeyRow = Selectable<ApiKeysTable>;
type KeyHasher = Pick<KeyManager, 'hmac'> & Partial<Pick<KeyManager, 'hmacPrevious'>>;

const API_NAME = /^[a-z][a-z0-9-]{0,62}$/;
const OPERATION_ID = /^[A-Za-z0-9_.:-]{1,200}$/;
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;

function invalid(message: string): ApiKeyError {
  return new ApiKeyError('API_KEY_INVALID_INPUT', message);
}

/** Parses `a.b.c.d/n` or `ipv6/n`; returns it in a canonical lower-case form. */
export function parseCidr(cidr: string): { address: string; prefix: number; family: 'ipv4' | 'ipv6' } {
  const m = /^([^/]+)\/(\d{1,3})$/.exec(cidr);
  const address = m?.[1]?.toLowerCase();
  const prefix = Number(m?.[2]);
  if (address === undefined) throw invalid(`CIDR "${cidr.slice(0, 60)}" is not address/prefix`);
  if (isIPv4(address) && prefix >= 0 && prefix <= 32) return { address, prefix, family: 'ipv4' };
  if (isIPv6(address) && prefix >= 0 && prefix <= 128) return { address, prefix, family: 'ipv6' };
  throw invalid(`CIDR "${cidr.slice(0, 60)}" is not a valid IPv4 or IPv6 network`);
}

function checkList(values: readonly string[], what: string, pattern: RegExp): string[] {
  if (values.length > MAX_RESTRICTIONS) throw invalid(`at most ${MAX_RESTRICTIONS} ${what}s`);
  for (const v of values) {
    if (!pattern.test(v)) throw invalid(`${what} "${v.slice(0, 60)}" is invalid`);
  }
  return [...new Set(values)];
}

function validateIssue(input: IssueApiKeyInput): {
  name: string;
  apis: string[];
  operations: string[];
  cidrs: string[];
  env: ApiKeyEnv;
  days: number;
} {
  const name = input.name;
  if (typeof name !== 'string' || name.trim() === '' || name.length > 200 || CONTROL.test(name)) {
    throw invalid('name must be 1–200 printable characters');
  }
  const apis = checkList(input.apis, 'API name', API_NAME);
  if (apis.length === 0) throw invalid('a key must be restricted to at least one API (--api)');
  const operations = checkList(input.operations ?? [], 'operationId', OPERATION_ID);
  const cidrs = (input.cidrs ?? []).map((c) => {
    const p = parseCidr(c);
    return `${p.address}/${String(p.prefix)}`;
  });
  if (cidrs.length > MAX_RESTRICTIONS) throw invalid(`at most ${MAX_RESTRICTIONS} CIDRs`);
  const env = input.env ?? 'live';
  if (!API_KEY_ENVS.includes(env)) throw invalid('environment must be live or test');
  const days = input.expiresInDays ?? DEFAULT_EXPIRES_IN_DAYS;
  if (!Number.isInteger(days) || days < 1 || days > MAX_EXPIRES_IN_DAYS) {
    throw invalid(`expiry must be a whole number of days from 1 to ${MAX_EXPIRES_IN_DAYS}`);
  }
  return { name, apis, operations, cidrs: [...new Set(cidrs)], env, days };
}

function parseList(json: string): string[] {
  const value: unknown = JSON.parse(json);
  return Array.isArray(value) ? value.filter((v): v is string => typeof v === 'string') : [];
}

const date = (s: string | null): Date | undefined => (s === null ? undefined : new Date(s));

function toRecord(row: ApiKeyRow): ApiKeyRecord {
  return {
    id: row.id,
    name: row.name,
    env: row.env === 'test' ? 'test' : 'live',
    apis: parseList(row.apis),
    operations: parseList(row.operations),
    cidrs: parseList(row.cidrs),
    createdAt: new Date(row.created_at),
    expiresAt: new Date(row.expires_at),
    revokedAt: date(row.revoked_at),
    replacedBy: row.replaced_by ?? undefined,
    useCount: row.use_count,
    lastUsedAt: date(row.last_used_at),
    lastSourceNetwork: row.last_source_network ?? undefined,
  };
}

/** Issues a key; the key is in the result only (store it nowhere, show it once). */
export async function issueApiKey(
  store: Store,
  keys: KeyHasher,
  input: IssueApiKeyInput,
): Promise<IssuedApiKey> {
  const v = validateIssue(input);
  const now = input.now ?? new Date();
  const key = generateApiKey(v.env);
  const row: ApiKeyRow = {
    id: newId(),
    name: v.name,
    key_hash: keys.hmac('api-key', key),
    env: v.env,
    apis: JSON.stringify(v.apis),
    operations: JSON.stringify(v.operations),
    cidrs: JSON.stringify(v.cidrs),
    created_at: now.toISOString(),
    expires_at: new Date(now.getTime() + v.days * DAY_MS).toISOString(),
    revoked_at: null,
    replaced_by: null,
    use_count: 0,
    last_used_at: null,
    last_source_network: null,
  };
  await store.db.insertInto('api_keys').values(row).execute();
  return { id: row.id, key, record: toRecord(row) };
}

export async function listApiKeys(store: Store): Promise<ApiKeyRecord[]> {
  const rows = await store.db
    .selectFrom('api_keys')
    .selectAll()
    .orderBy('created_at')
    .orderBy('id')
    .execute();
  return rows.map(toRecord);
}

export async function getApiKey(store: Store, id: string): Promise<ApiKeyRecord | undefined> {
  const row = await store.db.selectFrom('api_keys').selectAll().where('id', '=', id).executeTakeFirst();
  return row === undefined ? undefined : toRecord(row);
}

export interface RotateOptions {
  /** How long the old key keeps working, in hours (0–720, default 24). */
  readonly graceHours?: number;
  readonly now?: Date;
}

export interface RotatedApiKey extends IssuedApiKey {
  /** The old key, now ending at the end of the grace period. */
  readonly previous: ApiKeyRecord;
}

/**
 * Issues a successor with the same name, restrictions, environment and lifetime, and lets the
 * old key work until the grace period ends (never past its own expiry). Refused for a revoked,
 * expired or already rotated key.
 */
export async function rotateApiKey(
  store: Store,
  keys: KeyHasher,
  id: string,
  options: RotateOptions = {},
): Promise<RotatedApiKey> {
  const graceHours = options.graceHours ?? DEFAULT_GRACE_HOURS;
  if (!Number.isFinite(graceHours) || graceHours < 0 || graceHours > MAX_GRACE_HOURS) {
    throw invalid(`grace period must be 0–${MAX_GRACE_HOURS} hours`);
  }
  const now = options.now ?? new Date();
  return store.db.transaction().execute(async (trx) => {
    const old = await trx.selectFrom('api_keys').selectAll().where('id', '=', id).executeTakeFirst();
    if (old === undefined) throw new ApiKeyError('API_KEY_NOT_FOUND', `no API key ${id.slice(0, 80)}`);
    const status = apiKeyStatus(toRecord(old), now.getTime());
    if (status !== 'active') {
      const hint = old.replaced_by === null ? '' : ` (rotate ${old.replaced_by} instead)`;
      throw new ApiKeyError('API_KEY_STATE', `API key ${old.id} is ${status} and cannot be rotated${hint}`);
    }
    const lifetime = new Date(old.expires_at).getTime() - new Date(old.created_at).getTime();
    const key = generateApiKey(old.env === 'test' ? 'test' : 'live');
    const row: ApiKeyRow = {
      ...old,
      id: newId(),
      key_hash: keys.hmac('api-key', key),
      created_at: now.toISOString(),
      expires_at: new Date(now.getTime() + Math.max(lifetime, HOUR_MS)).toISOString(),
      revoked_at: null,
      replaced_by: null,
      use_count: 0,
      last_used_at: null,
      last_source_network: null,
    };
    await trx.insertInto('api_keys').values(row).execute();
    const graceEnd = Math.min(new Date(old.expires_at).getTime(), now.getTime() + graceHours * HOUR_MS);
    const updated = { ...old, expires_at: new Date(graceEnd).toISOString(), replaced_by: row.id };
    await trx
      .updateTable('api_keys')
      .set({ expires_at: updated.expires_at, replaced_by: row.id })
      .where('id', '=', old.id)
      .execute();
    return { id: row.id, key, record: toRecord(row), previous: toRecord(updated) };
  });
}

/** Revokes a key (idempotent: a second revocation keeps the first time). */
export async function revokeApiKey(store: Store, id: string, now: Date = new Date()): Promise<ApiKeyRecord> {
  await store.db
    .updateTable('api_keys')
    .set({ revoked_at: now.toISOString() })
    .where('id', '=', id)
    .where('revoked_at', 'is', null)
    .execute();
  const record = await getApiKey(store, id);
  if (record === undefined) throw new ApiKeyError('API_KEY_NOT_FOUND', `no API key ${id.slice(0, 80)}`);
  return record;
}

// ---------------------------------------------------------------------------------------------
// Source networks

function ipv6Groups(address: string): number[] | undefined {
  let text = address;
  const lastColon = text.lastIndexOf(':');
  const v4 = text.slice(lastColon + 1);
  if (isIPv4(v4)) {
    // An embedded IPv4 address (`::ffff:192.0.2.1`) becomes its two 16-bit groups.
    const o = v4.split('.').map(Number);
    const hi = ((o[0] ?? 0) << 8) | (o[1] ?? 0);
    const lo = ((o[2] ?? 0) << 8) | (o[3] ?? 0);
    text = `${text.slice(0, lastColon + 1)}${hi.toString(16)}:${lo.toString(16)}`;
  }
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const parse = (s: string) =>
    s === '' ? [] : s.split(':').map((g) => (/^[0-9a-f]{1,4}$/.test(g) ? parseInt(g, 16) : NaN));
  const head = parse(halves[0] ?? '');
  const rest = halves.length === 2 ? parse(halves[1] ?? '') : [];
  const fill = halves.length === 2 ? 8 - head.length - rest.length : 0;
  if (fill < 0) return undefined;
  const groups = [...head, ...new Array<number>(fill).fill(0), ...rest];
  if (groups.length !== 8 || groups.some((g) => Number.isNaN(g))) return undefined;
  return groups;
}

/** An IPv4-mapped IPv6 address as IPv4; other addresses as they are, lower-case. */
export function normalizeIp(ip: string): string {
  const lower = ip.toLowerCase();
  if (lower.startsWith('::ffff:') && isIPv4(lower.slice(7))) return lower.slice(7);
  return lower;
}

/** The source network of an address: IPv4 /`v4Prefix`, IPv6 /`v6Prefix` (canonical text). */
export function sourceNetwork(ip: string, v4Prefix = 24, v6Prefix = 64): string {
  const addr = normalizeIp(ip);
  if (isIPv4(addr)) {
    const n = addr.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
    const mask = v4Prefix === 0 ? 0 : Math.floor(n / 2 ** (32 - v4Prefix)) * 2 ** (32 - v4Prefix);
    const octets = [24, 16, 8, 0].map((s) => Math.floor(mask / 2 ** s) % 256);
    return `${octets.join('.')}/${String(v4Prefix)}`;
  }
  const groups = ipv6Groups(addr);
  if (groups === undefined) return 'unknown';
  const masked = groups.map((g, i) => {
    const bits = Math.min(Math.max(v6Prefix - i * 16, 0), 16);
    return bits === 0 ? 0 : g & (0xffff << (16 - bits)) & 0xffff;
  });
  return `${masked.map((g) => g.toString(16)).join(':')}/${String(v6Prefix)}`;
}

function blockList(cidrs: readonly string[]): BlockList | undefined {
  if (cidrs.length === 0) return undefined;
  const list = new BlockList();
  for (const cidr of cidrs) {
    const { address, prefix, family } = parseCidr(cidr);
    list.addSubnet(address, prefix, family);
  }
  return list;
}

// ---------------------------------------------------------------------------------------------
// Verification

export type ApiKeyAnomaly =
  | {
      readonly type: 'new-source-network';
      readonly keyId: string;
      readonly network: string;
      readonly at: Date;
    }
  | {
      readonly type: 'volume-spike';
      readonly keyId: string;
      /** Requests in the current window when the spike was detected. */
      readonly count: number;
      /** The usual count per window (moving average of earlier windows; 0 before any). */
      readonly baseline: number;
      readonly windowMs: number;
      readonly at: Date;
    }
  | {
      readonly type: 'used-after-revocation' | 'used-after-expiry' | 'used-after-rotation';
      readonly keyId: string;
      readonly network: string;
      readonly at: Date;
    };

/** Why a key was refused: the audit/log reason, never the client message. */
export type ApiKeyRejection =
  | 'malformed'
  | 'unknown'
  | 'wrong-environment'
  | 'revoked'
  | 'expired'
  | 'rotated'
  | 'api-not-allowed'
  | 'operation-not-allowed'
  | 'source-not-allowed';

export interface ApiKeyContext {
  /** The API (configuration name) being called. */
  readonly api: string;
  readonly operationId: string | undefined;
  /** The client's address (after trusted-proxy resolution). */
  readonly clientIp: string;
}

export type ApiKeyVerdict =
  | { readonly ok: true; readonly id: string; readonly name: string }
  | { readonly ok: false; readonly reason: ApiKeyRejection; readonly id?: string };

export interface ApiKeyAuthorityOptions {
  /** This gateway's environment: only keys issued for it are accepted. Default `live`. */
  readonly environment?: ApiKeyEnv;
  /** How long a key record is used from memory before it is read again (default 5000 ms). */
  readonly cacheTtlMs?: number;
  /**
   * While the store is unreachable, a cached record up to this old is still used (default
   * 15 minutes); older ones, and keys never seen, are refused with 503.
   */
  readonly staleIfErrorMs?: number;
  /** Most key records kept in memory (default 10 000). */
  readonly cacheSize?: number;
  /** Usage is written to the store this often (default 10 000 ms; 0: only on flush()). */
  readonly flushIntervalMs?: number;
  /** Volume-spike detection: requests per window above max(minimum, factor × usual). */
  readonly spike?: { readonly windowMs?: number; readonly factor?: number; readonly minimum?: number };
  /** Prefix lengths that group addresses into source networks (default /24 and /64). */
  readonly ipv4Prefix?: number;
  readonly ipv6Prefix?: number;
  readonly onAnomaly?: (event: ApiKeyAnomaly) => void;
  /** Usage could not be written (the request is not affected). */
  readonly onError?: (error: unknown) => void;
  readonly now?: () => number;
}

export interface ApiKeyAuthority {
  verify(key: string, context: ApiKeyContext): Promise<ApiKeyVerdict>;
  /** Revokes through the store and drops the cached record: refused from the next request. */
  revoke(id: string): Promise<ApiKeyRecord>;
  /** Drops cached records (one key, or all); the next request reads the store. */
  invalidate(id?: string): void;
  /** Writes the usage counted so far. */
  flush(): Promise<void>;
  /** Flushes and stops the timer. */
  close(): Promise<void>;
}

interface CachedKey {
  readonly row: ApiKeyRow;
  readonly hash: Buffer;
  readonly record: ApiKeyRecord;
  readonly allowedApis: ReadonlySet<string>;
  readonly allowedOperations: ReadonlySet<string> | undefined;
  readonly sources: BlockList | undefined;
  readonly networks: Set<string>;
  readonly loadedAt: number;
}

interface Usage {
  count: number;
  lastUsedAt: number;
  lastNetwork: string;
}

interface Volume {
  windowStart: number;
  count: number;
  baseline: number | undefined;
  raised: boolean;
}

/** Verifies API keys for every API of this gateway; one per process, shared by all schemes. */
export function createApiKeyAuthority(
  store: Store,
  keys: KeyHasher,
  options: ApiKeyAuthorityOptions = {},
): ApiKeyAuthority {
  const environment = options.environment ?? 'live';
  const ttl = options.cacheTtlMs ?? 5000;
  const staleIfErrorMs = options.staleIfErrorMs ?? 15 * 60_000;
  const cacheSize = options.cacheSize ?? 10_000;
  const flushEvery = options.flushIntervalMs ?? 10_000;
  const windowMs = options.spike?.windowMs ?? 60_000;
  const factor = options.spike?.factor ?? 10;
  const minimum = options.spike?.minimum ?? 100;
  const v4 = options.ipv4Prefix ?? 24;
  const v6 = options.ipv6Prefix ?? 64;
  const now = options.now ?? (() => Date.now());
  const onAnomaly = options.onAnomaly ?? (() => undefined);
  const onError = options.onError ?? (() => undefined);
  if (!API_KEY_ENVS.includes(environment)) throw new TypeError('environment must be live or test');
  if (!(ttl >= 0 && windowMs > 0 && factor >= 1 && minimum >= 1)) {
    throw new TypeError('createApiKeyAuthority: invalid cache or spike settings');
  }

  // Keyed by the HMAC (base64url), which reveals nothing about the key.
  const cache = new Map<string, CachedKey>();
  const byId = new Map<string, string>();
  const usage = new Map<string, Usage>();
  const volume = new Map<string, Volume>();

  const load = async (hash: string): Promise<CachedKey | undefined> => {
    const row = await store.db
      .selectFrom('api_keys')
      .selectAll()
      .where('key_hash', '=', hash)
      .executeTakeFirst();
    if (row === undefined) return undefined;
    const networks = await store.db
      .selectFrom('api_key_networks')
      .select('network')
      .where('key_id', '=', row.id)
      .execute();
    const record = toRecord(row);
    return {
      row,
      hash: Buffer.from(row.key_hash),
      record,
      allowedApis: new Set(record.apis),
      allowedOperations: record.operations.length === 0 ? undefined : new Set(record.operations),
      sources: blockList(record.cidrs),
      networks: new Set(networks.map((n) => n.network)),
      loadedAt: now(),
    };
  };

  const lookup = async (hash: string): Promise<CachedKey | undefined> => {
    const cached = cache.get(hash);
    if (cached !== undefined && now() - cached.loadedAt < ttl) return cached;
    let loaded: CachedKey | undefined;
    try {
      loaded = await load(hash);
    } catch (err) {
      // The store is down: a key verified recently keeps working for a while (its expiry and
      // restrictions still apply; a revocation signalled meanwhile has dropped it already).
      if (cached !== undefined && now() - cached.loadedAt < staleIfErrorMs && isDependencyUnavailable(err))
        return cached;
      throw err;
    }
    cache.delete(hash);
    if (loaded === undefined) return undefined;
    if (cache.size >= cacheSize) {
      const oldest = cache.keys().next();
      if (oldest.done !== true) cache.delete(oldest.value);
    }
    cache.set(hash, loaded);
    byId.set(loaded.row.id, hash);
    return loaded;
  };

  /**
   * A key hashed under a pepper a rotation replaced (still in its grace period): found by its old
   * hash, its row takes the current pepper's hash, so it keeps working after the old pepper retires.
   */
  const lookupPrevious = async (key: string, hash: string): Promise<CachedKey | undefined> => {
    for (const old of keys.hmacPrevious?.('api-key', key) ?? []) {
      const found = await lookup(old);
      if (found === undefined) continue;
      await store.db
        .updateTable('api_keys')
        .set({ key_hash: hash })
        .where('id', '=', found.row.id)
        .where('key_hash', '=', old)
        .execute();
      cache.delete(old);
      byId.delete(found.row.id);
      return lookup(hash);
    }
    return undefined;
  };

  const countVolume = (id: string, at: number): void => {
    let v = volume.get(id);
    const start = at - (at % windowMs);
    if (v === undefined) {
      v = { windowStart: start, count: 0, baseline: undefined, raised: false };
      volume.set(id, v);
    } else if (start > v.windowStart) {
      const elapsed = Math.round((start - v.windowStart) / windowMs);
      let baseline = v.baseline === undefined ? v.count : 0.7 * v.baseline + 0.3 * v.count;
      for (let i = 1; i < Math.min(elapsed, 50); i++) baseline *= 0.7;
      v.baseline = baseline;
      v.windowStart = start;
      v.count = 0;
      v.raised = false;
    }
    v.count++;
    const threshold = Math.max(minimum, factor * (v.baseline ?? 0));
    if (!v.raised && v.count > threshold) {
      v.raised = true;
      onAnomaly({
        type: 'volume-spike',
        keyId: id,
        count: v.count,
        baseline: v.baseline ?? 0,
        windowMs,
        at: new Date(at),
      });
    }
  };

  const notice = async (entry: CachedKey, network: string, at: number): Promise<void> => {
    const id = entry.row.id;
    const u = usage.get(id);
    if (u === undefined) usage.set(id, { count: 1, lastUsedAt: at, lastNetwork: network });
    else {
      u.count++;
      u.lastUsedAt = at;
      u.lastNetwork = network;
    }
    countVolume(id, at);
    if (entry.networks.has(network)) return;
    const knownBefore = entry.networks.size > 0;
    entry.networks.add(network);
    try {
      const result = await store.db
        .insertInto('api_key_networks')
        .values({ key_id: id, network, first_seen_at: new Date(at).toISOString() })
        .onConflict((oc) => oc.columns(['key_id', 'network']).doNothing())
        .executeTakeFirst();
      // Another process may have recorded it first: only the first to record it reports it.
      const inserted = Number(result.numInsertedOrUpdatedRows ?? 0n) > 0;
      if (inserted && knownBefore)
        onAnomaly({ type: 'new-source-network', keyId: id, network, at: new Date(at) });
    } catch (error) {
      onError(error);
    }
  };

  const flush = async (): Promise<void> => {
    const pending = [...usage.entries()];
    usage.clear();
    for (const [id, u] of pending) {
      try {
        await store.db
          .updateTable('api_keys')
          .set((eb) => ({
            use_count: eb('use_count', '+', u.count),
            last_used_at: new Date(u.lastUsedAt).toISOString(),
            last_source_network: u.lastNetwork,
          }))
          .where('id', '=', id)
          .execute();
      } catch (error) {
        onError(error);
      }
    }
  };

  let flushing: Promise<void> | undefined;
  const timer =
    flushEvery > 0
      ? setInterval(() => {
          flushing ??= flush().finally(() => (flushing = undefined));
        }, flushEvery)
      : undefined;
  timer?.unref();

  const invalidate = (id?: string): void => {
    if (id === undefined) {
      cache.clear();
      byId.clear();
      return;
    }
    const hash = byId.get(id);
    if (hash !== undefined) cache.delete(hash);
    byId.delete(id);
  };

  return {
    async verify(key, context) {
      const parsed = parseApiKey(key);
      if (parsed === undefined) return { ok: false, reason: 'malformed' };
      const hash = keys.hmac('api-key', key);
      let entry = await lookup(hash);
      if (entry === undefined) entry = await lookupPrevious(key, hash);
      // The query matched on the hash; compare again in constant time, independent of how the
      // database compares text.
      const computed = Buffer.from(hash);
      if (
        entry === undefined ||
        entry.hash.length !== computed.length ||
        !timingSafeEqual(entry.hash, computed)
      ) {
        return { ok: false, reason: 'unknown' };
      }
      const at = now();
      const id = entry.row.id;
      const network = sourceNetwork(context.clientIp, v4, v6);
      if (parsed.env !== environment || entry.record.env !== environment) {
        return { ok: false, reason: 'wrong-environment', id };
      }
      if (entry.record.revokedAt !== undefined) {
        onAnomaly({ type: 'used-after-revocation', keyId: id, network, at: new Date(at) });
        return { ok: false, reason: 'revoked', id };
      }
      if (entry.record.expiresAt.getTime() <= at) {
        const rotated = entry.record.replacedBy !== undefined;
        onAnomaly({
          type: rotated ? 'used-after-rotation' : 'used-after-expiry',
          keyId: id,
          network,
          at: new Date(at),
        });
        return { ok: false, reason: rotated ? 'rotated' : 'expired', id };
      }
      if (!entry.allowedApis.has(context.api)) return { ok: false, reason: 'api-not-allowed', id };
      if (
        entry.allowedOperations !== undefined &&
        (context.operationId === undefined || !entry.allowedOperations.has(context.operationId))
      ) {
        return { ok: false, reason: 'operation-not-allowed', id };
      }
      if (entry.sources !== undefined) {
        const ip = normalizeIp(context.clientIp);
        const family = isIPv4(ip) ? 'ipv4' : isIPv6(ip) ? 'ipv6' : undefined;
        if (family === undefined || !entry.sources.check(ip, family)) {
          return { ok: false, reason: 'source-not-allowed', id };
        }
      }
      await notice(entry, network, at);
      return { ok: true, id, name: entry.record.name };
    },
    async revoke(id) {
      const record = await revokeApiKey(store, id, new Date(now()));
      invalidate(id);
      return record;
    },
    invalidate,
    flush: () => flush(),
    async close() {
      if (timer !== undefined) clearInterval(timer);
      await flushing;
      await flush();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The authenticate stage's verifier

/** Where an OpenAPI `apiKey` security scheme says the key is (`in`, `name`). */
export interface ApiKeyLocation {
  readonly in: 'header' | 'query' | 'cookie';
  readonly name: string;
}

export interface ApiKeySchemeOptions {
  /**
   * Accept keys in the query string when the document declares it. Default false: keys in URLs
   * end up in logs, histories and Referer headers, so such a scheme refuses every request.
   */
  readonly allowQuery?: boolean;
  /** Accept keys in a cookie when the document declares it. Default false (CSRF-prone). */
  readonly allowCookie?: boolean;
}

function cookieValue(header: string | undefined, name: string): string | string[] | undefined {
  if (header === undefined) return undefined;
  const found: string[] = [];
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) found.push(part.slice(eq + 1).trim());
  }
  return found.length === 0 ? undefined : found.length === 1 ? found[0] : found;
}

function queryValue(query: string, name: string): string | string[] | undefined {
  const values = new URLSearchParams(query).getAll(name);
  return values.length === 0 ? undefined : values.length === 1 ? values[0] : values;
}

/** Whether a declared location is accepted under these options (for start-up warnings). */
export function apiKeyLocationAllowed(location: ApiKeyLocation, options: ApiKeySchemeOptions = {}): boolean {
  if (location.in === 'query') return options.allowQuery === true;
  if (location.in === 'cookie') return options.allowCookie === true;
  return true;
}

/**
 * The verifier for an OpenAPI `apiKey` scheme. 401 for a missing, malformed, unknown, revoked or
 * expired key (and for any key in a location that is not allowed); 403 for a valid key used
 * outside its restrictions (API, operation, source network). API keys carry no scopes: an
 * operation that lists scopes (roles) for this scheme refuses them with 403.
 */
export function apiKeySchemeVerifier(
  schemeName: string,
  location: ApiKeyLocation,
  authority: ApiKeyAuthority,
  options: ApiKeySchemeOptions = {},
): SchemeVerifier {
  if (location.name === '' || !['header', 'query', 'cookie'].includes(location.in)) {
    throw new TypeError(`apiKey scheme ${schemeName}: invalid location`);
  }
  const allowed = apiKeyLocationAllowed(location, options);
  const headerName = location.name.toLowerCase();
  return async (req, requiredScopes) => {
    if (!allowed) return { ok: false, status: 401, reason: `api-key-in-${location.in}-refused` };
    const raw =
      location.in === 'header'
        ? req.headers[headerName]
        : location.in === 'cookie'
          ? cookieValue(req.headers.cookie, location.name)
          : queryValue(req.target.query, location.name);
    if (raw === undefined || raw === '') return { ok: false, status: 401, reason: 'credential-missing' };
    if (typeof raw !== 'string') return { ok: false, status: 401, reason: 'api-key-malformed' };
    const verdict = await authority.verify(raw, {
      api: req.operation.api.name,
      operationId: req.operation.operationId,
      clientIp: req.clientIp,
    });
    if (!verdict.ok) {
      const forbidden =
        verdict.reason === 'api-not-allowed' ||
        verdict.reason === 'operation-not-allowed' ||
        verdict.reason === 'source-not-allowed';
      return {
        ok: false,
        status: forbidden ? 403 : 401,
        reason: `api-key-${verdict.reason}`,
        // Issue 13: a known key's id (never the key) names the refusal on the audit trail.
        ...(verdict.id === undefined ? {} : { apiKeyId: verdict.id }),
      };
    }
    if (requiredScopes.length > 0) return { ok: false, status: 403, reason: 'insufficient-scope' };
    return {
      ok: true,
      principal: { scheme: schemeName, subject: verdict.id, clientId: verdict.id, scopes: new Set<string>() },
    };
  };
}
