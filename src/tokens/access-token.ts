/**
 * Access-token verification at the gateway (RFC 9068 JWT access tokens, RFC 8725 practices).
 *
 * Checked on every request: the `Authorization: Bearer` syntax, the signature against the
 * issuer's published keys with an asymmetric algorithm allowlist (`none` and HS* can never
 * pass), `typ: at+jwt`, `iss`, `aud` (this API's audience), `exp`/`nbf`/`iat` with a small skew,
 * the required claims, unknown `crit` headers (refused by jose), and the revocation list.
 * Keys come only from the configured key source: `jku`, `x5u` and embedded `jwk` headers are
 * never consulted. Tokens bound to a key (`cnf`) are refused unless the verifier is created with
 * `allowBoundTokens`, which only its callers that check the proof of possession (DPoP `cnf.jkt`,
 * mTLS `cnf.x5t#S256`; see oauth-verifier.ts) may set: fail closed.
 */
import { createHash } from 'node:crypto';
import { createLocalJWKSet, errors as joseErrors, jwtVerify } from 'jose';
import type { JSONWebKeySet, JWTPayload } from 'jose';
import { approvedJoseAlgs } from '../keys/fips.ts';

export const ALLOWED_ALGORITHMS = ['ES256', 'PS256', 'EdDSA'] as const;

export interface VerifiedAccessToken {
  readonly subject: string;
  readonly clientId: string;
  readonly scopes: ReadonlySet<string>;
  readonly jti: string;
  readonly expiresAt: number;
  readonly issuer: string;
  /** The token's binding (`cnf`), present only when the verifier allows bound tokens. */
  readonly confirmation?: TokenConfirmation;
}

/** A bound token's `cnf` (RFC 7800): the DPoP key (RFC 9449) and/or client certificate (RFC 8705). */
export interface TokenConfirmation {
  /** RFC 7638 SHA-256 thumbprint of the DPoP public key. */
  readonly jkt?: string;
  /** base64url SHA-256 of the client certificate (DER). */
  readonly x5tS256?: string;
}

/** Why a token was not accepted; becomes the audit/log reason, never the client message. */
export type TokenRejection =
  | 'malformed-authorization'
  | 'bad-signature'
  | 'wrong-algorithm'
  | 'wrong-type'
  | 'wrong-issuer'
  | 'wrong-audience'
  | 'expired'
  | 'not-yet-valid'
  | 'missing-claim'
  | 'revoked'
  | 'bound-token-without-proof'
  | 'unsupported-confirmation'
  | 'invalid';

export class TokenError extends Error {
  readonly reason: TokenRejection;
  constructor(reason: TokenRejection, options?: { cause?: unknown }) {
    super(`access token refused: ${reason}`, options);
    this.name = 'TokenError';
    this.reason = reason;
  }
}

export interface AccessTokenVerifierOptions {
  readonly issuer: string;
  readonly audience: string;
  /** Current public keys of the issuer (read on every cache miss, so rotation applies at once). */
  readonly keys: () => JSONWebKeySet;
  readonly isRevoked: (jti: string) => boolean | Promise<boolean>;
  readonly clockToleranceSeconds?: number;
  readonly algorithms?: readonly string[];
  /** How many verified tokens to remember (keyed by a hash of the token) until they expire. */
  readonly cacheSize?: number;
  readonly now?: () => number;
  /**
   * Accept tokens with `cnf` and return their binding in `confirmation`. Only for callers that
   * then check the proof of possession on every request. Default false: bound tokens are refused.
   */
  readonly allowBoundTokens?: boolean;
}

const BASE64URL_SHA256 = /^[A-Za-z0-9_-]{43}$/;

/** The `cnf` claim of a bound token; only `jkt` and `x5t#S256` (both SHA-256 thumbprints) are known. */
function confirmationOf(cnf: unknown): TokenConfirmation {
  if (typeof cnf !== 'object' || cnf === null || Array.isArray(cnf)) {
    throw new TokenError('unsupported-confirmation');
  }
  const members = Object.entries(cnf);
  const known = members.filter(([k]) => k === 'jkt' || k === 'x5t#S256');
  if (known.length === 0 || known.length !== members.length) throw new TokenError('unsupported-confirmation');
  const result: { jkt?: string; x5tS256?: string } = {};
  for (const [k, v] of known) {
    if (typeof v !== 'string' || !BASE64URL_SHA256.test(v)) throw new TokenError('unsupported-confirmation');
    if (k === 'jkt') result.jkt = v;
    else result.x5tS256 = v;
  }
  return result;
}

const BEARER = /^Bearer ([A-Za-z0-9\-._~+/]+=*)$/i;

/** The token from an `Authorization: Bearer` header, or undefined when the header is absent. */
export function bearerToken(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  const m = BEARER.exec(header);
  if (!m?.[1]) throw new TokenError('malformed-authorization');
  return m[1];
}

function classify(err: unknown): TokenError {
  if (err instanceof TokenError) return err;
  if (err instanceof joseErrors.JWTExpired) return new TokenError('expired', { cause: err });
  if (err instanceof joseErrors.JWTClaimValidationFailed) {
    const claim = err.claim;
    if (err.reason === 'missing') return new TokenError('missing-claim', { cause: err });
    if (claim === 'iss') return new TokenError('wrong-issuer', { cause: err });
    if (claim === 'aud') return new TokenError('wrong-audience', { cause: err });
    if (claim === 'nbf' || claim === 'iat') return new TokenError('not-yet-valid', { cause: err });
    if (claim === 'typ') return new TokenError('wrong-type', { cause: err });
    return new TokenError('missing-claim', { cause: err });
  }
  if (err instanceof joseErrors.JOSEAlgNotAllowed) return new TokenError('wrong-algorithm', { cause: err });
  if (
    err instanceof joseErrors.JWSSignatureVerificationFailed ||
    err instanceof joseErrors.JWKSNoMatchingKey ||
    err instanceof joseErrors.JWKSMultipleMatchingKeys
  ) {
    return new TokenError('bad-signature', { cause: err });
  }
  return new TokenError('invalid', { cause: err });
}

export type AccessTokenVerifier = (token: string) => Promise<VerifiedAccessToken>;

export function createAccessTokenVerifier(options: AccessTokenVerifierOptions): AccessTokenVerifier {
  const algorithms = approvedJoseAlgs(options.algorithms ?? ALLOWED_ALGORITHMS);
  for (const alg of algorithms) {
    if (alg === 'none' || alg.startsWith('HS'))
      throw new TypeError(`algorithm ${alg} is not allowed for access tokens`);
  }
  const tolerance = options.clockToleranceSeconds ?? 30;
  const now = options.now ?? (() => Date.now());
  const cacheSize = options.cacheSize ?? 10_000;
  const cache = new Map<string, VerifiedAccessToken>();
  /**
   * Tokens whose signature did not verify, with the key set they were checked against: a
   * signature over the same bytes with the same keys fails again, so a repeated forged token
   * is refused without another ECDSA/RSA verification. Bounded like the positive cache; a new
   * key set (rotation, refresh) makes every entry stale.
   */
  const forged = new Map<string, string>();
  let keySet: { fingerprint: string; resolve: ReturnType<typeof createLocalJWKSet> } | undefined;
  const resolver = () => {
    const source = options.keys();
    // Key sets are identified by their kids (RFC 7638 thumbprints), so a rotation rebuilds it.
    const fingerprint = source.keys.map((k) => k.kid ?? '?').join(',');
    if (keySet?.fingerprint !== fingerprint) keySet = { fingerprint, resolve: createLocalJWKSet(source) };
    return keySet;
  };

  const verifyFresh = async (token: string, key: string): Promise<VerifiedAccessToken> => {
    let payload: JWTPayload;
    const keys = resolver();
    if (forged.get(key) === keys.fingerprint) throw new TokenError('bad-signature');
    try {
      ({ payload } = await jwtVerify(token, keys.resolve, {
        issuer: options.issuer,
        audience: options.audience,
        algorithms,
        typ: 'at+jwt',
        clockTolerance: tolerance,
        currentDate: new Date(now()),
        requiredClaims: ['exp', 'iat', 'jti', 'sub', 'client_id'],
      }));
    } catch (err) {
      if (err instanceof joseErrors.JWSSignatureVerificationFailed) {
        if (forged.size >= cacheSize) {
          const oldest = forged.keys().next();
          if (oldest.done !== true) forged.delete(oldest.value);
        }
        forged.set(key, keys.fingerprint);
      }
      throw classify(err);
    }
    if (typeof payload.iat === 'number' && payload.iat > now() / 1000 + tolerance) {
      throw new TokenError('not-yet-valid');
    }
    let confirmation: TokenConfirmation | undefined;
    if (payload.cnf !== undefined) {
      if (options.allowBoundTokens !== true) throw new TokenError('bound-token-without-proof');
      confirmation = confirmationOf(payload.cnf);
    }
    const { sub, jti, exp, iss } = payload;
    const clientId = payload.client_id;
    if (
      typeof sub !== 'string' ||
      typeof jti !== 'string' ||
      typeof exp !== 'number' ||
      typeof clientId !== 'string'
    ) {
      throw new TokenError('missing-claim');
    }
    const scope = typeof payload.scope === 'string' ? payload.scope : '';
    return {
      subject: sub,
      clientId,
      scopes: new Set(scope.split(' ').filter((s) => s !== '')),
      jti,
      expiresAt: exp,
      issuer: iss ?? options.issuer,
      ...(confirmation === undefined ? {} : { confirmation }),
    };
  };

  return async (token) => {
    const key = createHash('sha256').update(token).digest('base64url');
    let verified = cache.get(key);
    if (verified !== undefined && verified.expiresAt + tolerance <= now() / 1000) {
      cache.delete(key);
      verified = undefined;
    }
    if (verified === undefined) {
      verified = await verifyFresh(token, key);
      if (cache.size >= cacheSize) {
        const oldest = cache.keys().next();
        if (oldest.done !== true) cache.delete(oldest.value);
      }
      cache.set(key, verified);
    }
    // Revocation is checked on every request, cached verification or not.
    if (await options.isRevoked(verified.jti)) throw new TokenError('revoked');
    return verified;
  };
}
