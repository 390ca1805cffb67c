/**
 * External token issuers (config `tokens.issuers`) beside the built-in authorization server.
 *
 * A token is routed by its `iss`, read without trusting it; the chosen issuer's verifier then
 * checks everything (signature with that issuer's keys only, its algorithm allowlist, `iss`,
 * `aud`, times, `typ`, revocation) exactly as for the built-in issuer (access-token.ts). A token
 * naming an issuer that is not configured is refused (401) without any fetch.
 */
import { decodeJwt, decodeProtectedHeader } from 'jose';
import { TokenError, createAccessTokenVerifier } from './access-token.ts';
import type { AccessTokenVerifier } from './access-token.ts';
import { createJwksCache } from './jwks.ts';
import type { JwksCache } from './jwks.ts';

export interface ExternalIssuerConfig {
  readonly issuer: string;
  readonly jwksUri: string;
  /** Default: the audience of the API the token is for. */
  readonly audience?: string | undefined;
  readonly algorithms: readonly string[];
  readonly caFile?: string | undefined;
  readonly refreshMinIntervalSeconds: number;
  readonly clockSkewSeconds: number;
}

export interface IssuerVerifier {
  readonly issuer: string;
  readonly verify: AccessTokenVerifier;
}

export interface ExternalIssuers {
  /** One verifier per configured issuer, for an API with this audience. */
  verifiersFor(options: {
    readonly audience: string;
    readonly isRevoked: (jti: string) => boolean | Promise<boolean>;
    readonly allowBoundTokens: boolean;
  }): IssuerVerifier[];
  /** The key caches, by issuer (tests, observability). */
  readonly caches: ReadonlyMap<string, JwksCache>;
  close(): Promise<void>;
}

export class IssuerConfigError extends Error {
  readonly index: number;
  readonly key: string;
  constructor(index: number, key: string, message: string) {
    super(message);
    this.name = 'IssuerConfigError';
    this.index = index;
    this.key = key;
  }
}

/**
 * Creates a key cache per issuer. `readCa` reads a configured CA file; `reserved` are issuer
 * identifiers that may not be configured again (the built-in one).
 */
export function openExternalIssuers(
  configs: readonly ExternalIssuerConfig[],
  options: {
    readonly readCa: (file: string) => string;
    readonly reserved?: readonly string[];
    readonly now?: () => number;
    readonly onError?: (issuer: string, error: Error) => void;
  },
): ExternalIssuers {
  const caches = new Map<string, JwksCache>();
  const seen = new Set(options.reserved ?? []);
  try {
    for (const [i, c] of configs.entries()) {
      if (seen.has(c.issuer)) throw new IssuerConfigError(i, 'issuer', 'this issuer is configured twice');
      seen.add(c.issuer);
      if (c.algorithms.some((a) => a === 'none' || a.startsWith('HS'))) {
        throw new IssuerConfigError(i, 'algorithms', 'only asymmetric algorithms are allowed');
      }
      let ca: string | undefined;
      if (c.caFile !== undefined) {
        try {
          ca = options.readCa(c.caFile);
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code ?? 'error';
          throw new IssuerConfigError(i, 'caFile', `cannot read the CA file (${code})`);
        }
      }
      const onError = options.onError;
      caches.set(
        c.issuer,
        createJwksCache({
          uri: c.jwksUri,
          refreshMinIntervalSeconds: c.refreshMinIntervalSeconds,
          ...(ca === undefined ? {} : { ca }),
          ...(options.now === undefined ? {} : { now: options.now }),
          ...(onError === undefined ? {} : { onError: (e: Error) => onError(c.issuer, e) }),
        }),
      );
    }
  } catch (err) {
    for (const cache of caches.values()) void cache.close();
    throw err;
  }

  return {
    caches,
    verifiersFor({ audience, isRevoked, allowBoundTokens }) {
      return configs.map((c) => {
        const jwks = caches.get(c.issuer);
        if (jwks === undefined) throw new Error('unreachable: no key cache');
        const verify = createAccessTokenVerifier({
          issuer: c.issuer,
          audience: c.audience ?? audience,
          keys: () => jwks.current(),
          isRevoked,
          clockToleranceSeconds: c.clockSkewSeconds,
          algorithms: c.algorithms,
          allowBoundTokens,
          ...(options.now === undefined ? {} : { now: options.now }),
        });
        return {
          issuer: c.issuer,
          verify: async (token: string) => {
            let kid: unknown;
            try {
              kid = decodeProtectedHeader(token).kid;
            } catch (err) {
              throw new TokenError('invalid', { cause: err });
            }
            await jwks.ensure(typeof kid === 'string' ? kid : undefined);
            return verify(token);
          },
        };
      });
    },
    async close() {
      await Promise.allSettled([...caches.values()].map((c) => c.close()));
    },
  };
}

/**
 * One verifier over several issuers, choosing by the token's (unverified) `iss`. With one
 * issuer it is that issuer's verifier itself (which checks `iss`); with none, undefined.
 */
export function routeByIssuer(verifiers: readonly IssuerVerifier[]): AccessTokenVerifier | undefined {
  const [only] = verifiers;
  if (only === undefined) return undefined;
  if (verifiers.length === 1) return only.verify;
  const byIssuer = new Map(verifiers.map((v) => [v.issuer, v.verify]));
  return async (token) => {
    let iss: unknown;
    try {
      iss = decodeJwt(token).iss;
    } catch (err) {
      throw new TokenError('invalid', { cause: err });
    }
    const verify = typeof iss === 'string' ? byIssuer.get(iss) : undefined;
    if (verify === undefined) throw new TokenError('wrong-issuer');
    return verify(token);
  };
}
