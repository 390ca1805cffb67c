/**
 * DPoP proof verification at the gateway (RFC 9449 §4.3 and §7).
 *
 * A proof is accepted when all of these hold: the JWS header has `typ: dpop+jwt`, an
 * asymmetric algorithm from the allowlist, and a public `jwk` (no private members, no symmetric
 * key); the signature verifies with that key; `htm` is the request method; `htu` is the request
 * URL without query and fragment (both normalised by the WHATWG URL parser); `iat` is within the
 * window (not older than `iatWindowSeconds`, not more than `clockSkewSeconds` ahead); when an
 * access token is presented, `ath` is the base64url SHA-256 of it; when the token is bound
 * (`cnf.jkt`), the proof key's RFC 7638 thumbprint is that value; and the `jti` was not seen
 * before within the window (checked last, so an invalid proof never occupies the cache).
 *
 * Not supported: server-provided nonces (RFC 9449 §8/§9).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import {
  calculateJwkThumbprint,
  decodeProtectedHeader,
  errors as joseErrors,
  importJWK,
  jwtVerify,
} from 'jose';
import type { JWK, JWTPayload } from 'jose';
import { approvedJoseAlgs } from '../keys/fips.ts';

/** Algorithms a proof may use (asymmetric only). */
export const DPOP_ALGORITHMS = ['ES256', 'PS256', 'EdDSA'] as const;

/** JWK members that only a private (or symmetric) key has. */
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'] as const;
const MAX_PROOF_LENGTH = 8 * 1024;
const MAX_JTI_LENGTH = 256;

export type DpopRejection =
  | 'malformed'
  | 'wrong-type'
  | 'wrong-algorithm'
  | 'bad-key'
  | 'bad-signature'
  | 'missing-claim'
  | 'wrong-method'
  | 'wrong-url'
  | 'iat-too-old'
  | 'iat-in-future'
  | 'wrong-ath'
  | 'key-mismatch'
  | 'replayed'
  | 'replay-cache-full'
  | 'replay-cache-unavailable';

export class DpopError extends Error {
  readonly reason: DpopRejection;
  constructor(reason: DpopRejection, options?: { cause?: unknown }) {
    super(`DPoP proof refused: ${reason}`, options);
    this.name = 'DpopError';
    this.reason = reason;
  }
}

/**
 * The shared replay cache is unreachable. A proof is then refused (fail closed): accepting it
 * would let the same proof be replayed at another gateway process.
 */
export class ReplayCacheUnavailableError extends Error {
  constructor(options?: { cause?: unknown }) {
    super('DPoP replay cache is unavailable', options);
    this.name = 'ReplayCacheUnavailableError';
  }
}

/** The subset of an ioredis client the shared replay cache uses. */
export interface ReplayRedis {
  readonly status: string;
  set(key: string, value: string, px: 'PXAT', at: number, nx: 'NX'): Promise<'OK' | null>;
}

/**
 * A {@link ReplayCache} shared by every gateway process on one Redis: `SET key 1 PXAT exp NX`
 * records a proof atomically, so a proof accepted by one process is a replay at all others.
 */
export function createRedisReplayCache(redis: ReplayRedis, keyPrefix: string): ReplayCache {
  return {
    async seen(jti, expiresAt) {
      if (redis.status !== 'ready') throw new ReplayCacheUnavailableError();
      try {
        return (await redis.set(`${keyPrefix}dpop:${jti}`, '1', 'PXAT', expiresAt, 'NX')) === null;
      } catch (err) {
        throw new ReplayCacheUnavailableError({ cause: err });
      }
    },
  };
}

/** Remembers proof `jti`s until they can no longer pass the `iat` check. */
export interface ReplayCache {
  /**
   * Records `jti` until `expiresAt` (ms since the epoch) and returns whether it was already
   * recorded and not expired. Must be atomic across the processes that share it.
   */
  seen(jti: string, expiresAt: number): Promise<boolean>;
}

export class ReplayCacheFullError extends Error {
  constructor() {
    super('DPoP replay cache is full');
    this.name = 'ReplayCacheFullError';
  }
}

/**
 * A bounded in-memory {@link ReplayCache} for one process. When it is full of unexpired entries
 * it refuses new proofs (throws {@link ReplayCacheFullError}) rather than forgetting one that
 * could then be replayed.
 */
export function createMemoryReplayCache(
  options: { maxEntries?: number; now?: () => number } = {},
): ReplayCache & { readonly size: number } {
  const max = options.maxEntries ?? 200_000;
  const now = options.now ?? (() => Date.now());
  const entries = new Map<string, number>();
  const purge = (full: boolean) => {
    const t = now();
    for (const [jti, expiresAt] of entries) {
      if (expiresAt <= t) entries.delete(jti);
      else if (!full) break;
    }
  };
  return {
    get size() {
      return entries.size;
    },
    seen(jti, expiresAt) {
      const existing = entries.get(jti);
      if (existing !== undefined && existing > now()) return Promise.resolve(true);
      purge(false);
      if (entries.size >= max) purge(true);
      if (entries.size >= max) return Promise.reject(new ReplayCacheFullError());
      entries.set(jti, expiresAt);
      return Promise.resolve(false);
    },
  };
}

export interface DpopProofCheck {
  /** The `DPoP` header's value. */
  readonly proof: string;
  /** The request method. */
  readonly method: string;
  /** The request URL as the client addressed it; query and fragment are ignored. */
  readonly url: string;
  /** The access token presented with the proof (then `ath` is required). */
  readonly accessToken?: string;
  /** The bound token's `cnf.jkt` (then the proof key must have this thumbprint). */
  readonly expectedJkt?: string;
  /** Milliseconds since the epoch. */
  readonly now: number;
  /** How old a proof may be (seconds). */
  readonly iatWindowSeconds: number;
  /** How far ahead of this clock a proof's `iat` may be (seconds, default 5). */
  readonly clockSkewSeconds?: number;
  readonly replay: ReplayCache;
  readonly algorithms?: readonly string[];
}

export interface VerifiedDpopProof {
  /** RFC 7638 SHA-256 thumbprint of the proof key (base64url). */
  readonly jkt: string;
  readonly jti: string;
  readonly iat: number;
}

/** `ath`: base64url(SHA-256(ASCII(token))). */
export function accessTokenHash(token: string): string {
  return createHash('sha256').update(token, 'ascii').digest('base64url');
}

function sameText(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** The URL without query and fragment, normalised; undefined when it is not an absolute http(s) URL. */
export function htuOf(url: string): string | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return undefined;
  }
  if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') return undefined;
  if (parsed.username !== '' || parsed.password !== '') return undefined;
  parsed.search = '';
  parsed.hash = '';
  return parsed.href;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Verifies one proof for one request; throws {@link DpopError} with the reason. */
export async function verifyDpopProof(check: DpopProofCheck): Promise<VerifiedDpopProof> {
  const algorithms = approvedJoseAlgs(check.algorithms ?? DPOP_ALGORITHMS);
  for (const alg of algorithms) {
    if (alg === 'none' || alg.startsWith('HS'))
      throw new TypeError(`algorithm ${alg} is not allowed for DPoP`);
  }
  const { proof } = check;
  if (typeof proof !== 'string' || proof.length === 0 || proof.length > MAX_PROOF_LENGTH) {
    throw new DpopError('malformed');
  }
  if (!/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/.test(proof)) throw new DpopError('malformed');
  let header: ReturnType<typeof decodeProtectedHeader>;
  try {
    header = decodeProtectedHeader(proof);
  } catch (err) {
    throw new DpopError('malformed', { cause: err });
  }
  if (header.typ !== 'dpop+jwt') throw new DpopError('wrong-type');
  if (typeof header.alg !== 'string' || !algorithms.includes(header.alg))
    throw new DpopError('wrong-algorithm');
  const jwk: unknown = header.jwk;
  if (!isRecord(jwk) || typeof jwk.kty !== 'string' || jwk.kty === 'oct') throw new DpopError('bad-key');
  if (PRIVATE_MEMBERS.some((m) => m in jwk)) throw new DpopError('bad-key');

  let payload: JWTPayload;
  let jkt: string;
  try {
    const publicJwk = jwk as JWK;
    const key = await importJWK(publicJwk, header.alg);
    if (key instanceof Uint8Array || key.type !== 'public') throw new DpopError('bad-key');
    ({ payload } = await jwtVerify(proof, key, { algorithms, typ: 'dpop+jwt' }));
    jkt = await calculateJwkThumbprint(publicJwk, 'sha256');
  } catch (err) {
    if (err instanceof DpopError) throw err;
    if (err instanceof joseErrors.JWSSignatureVerificationFailed)
      throw new DpopError('bad-signature', { cause: err });
    if (err instanceof joseErrors.JOSEAlgNotAllowed) throw new DpopError('wrong-algorithm', { cause: err });
    if (
      err instanceof joseErrors.JOSENotSupported ||
      err instanceof TypeError ||
      err instanceof joseErrors.JWKInvalid
    ) {
      throw new DpopError('bad-key', { cause: err });
    }
    throw new DpopError('malformed', { cause: err });
  }

  const { htm, htu, iat, jti, ath } = payload as JWTPayload & { htm?: unknown; htu?: unknown; ath?: unknown };
  if (
    typeof htm !== 'string' ||
    typeof htu !== 'string' ||
    typeof iat !== 'number' ||
    typeof jti !== 'string'
  ) {
    throw new DpopError('missing-claim');
  }
  if (jti.length === 0 || jti.length > MAX_JTI_LENGTH || !Number.isFinite(iat))
    throw new DpopError('missing-claim');
  if (htm !== check.method) throw new DpopError('wrong-method');
  const expected = htuOf(check.url);
  if (expected === undefined) throw new TypeError('verifyDpopProof: url must be an absolute http(s) URL');
  const presented = htuOf(htu);
  if (presented === undefined || presented !== expected) throw new DpopError('wrong-url');

  const nowSec = check.now / 1000;
  const skew = check.clockSkewSeconds ?? 5;
  if (iat < nowSec - check.iatWindowSeconds) throw new DpopError('iat-too-old');
  if (iat > nowSec + skew) throw new DpopError('iat-in-future');

  if (check.accessToken !== undefined) {
    if (typeof ath !== 'string' || !sameText(ath, accessTokenHash(check.accessToken))) {
      throw new DpopError('wrong-ath');
    }
  }
  if (check.expectedJkt !== undefined && !sameText(jkt, check.expectedJkt))
    throw new DpopError('key-mismatch');

  // Scoped by the key: one client cannot block another's jti. The entry lives as long as a
  // proof with this iat could still pass.
  const replayKey = createHash('sha256').update(`${jkt}\u0000${jti}`).digest('base64url');
  const expiresAt = (iat + check.iatWindowSeconds) * 1000 + 1000;
  let replayed: boolean;
  try {
    replayed = await check.replay.seen(replayKey, Math.max(expiresAt, check.now + 1000));
  } catch (err) {
    if (err instanceof ReplayCacheFullError) throw new DpopError('replay-cache-full', { cause: err });
    if (err instanceof ReplayCacheUnavailableError)
      throw new DpopError('replay-cache-unavailable', { cause: err });
    throw err;
  }
  if (replayed) throw new DpopError('replayed');
  return { jkt, jti, iat };
}
