/**
 * The caller's identity as the upstream sees it. The client's credential never leaves the
 * gateway; instead each authenticated request carries a short-lived assertion (a JWT signed
 * with the key manager's current key, lifetime ≤ 60 s) naming the subject, the client, the
 * granted scopes and the correlation id, for the audience of that one upstream.
 *
 * Explicit typing (RFC 8725 §3.11) keeps it from being confused with an access token: its
 * `typ` is `portcullis-identity+jwt`, which the gateway's access-token check refuses, and the
 * upstream verifier refuses anything else.
 */
import { randomUUID } from 'node:crypto';
import { createLocalJWKSet, importJWK, jwtVerify, SignJWT } from 'jose';
import type { JSONWebKeySet, JWK, JWTPayload } from 'jose';
import type { Principal } from '../gateway/stages/authenticate/index.ts';

export const IDENTITY_TYP = 'portcullis-identity+jwt';

export interface IdentityInput {
  readonly audience: string;
  readonly principal: Principal;
  readonly correlationId: string;
}

export type IdentitySigner = (input: IdentityInput) => Promise<string>;

export interface IdentitySignerOptions {
  readonly issuer: string;
  /** The current private signing JWK first (KeyManager.signingJwks). */
  readonly signingJwks: () => { keys: JWK[] };
  readonly ttlSeconds: number;
  readonly now?: () => number;
}

export function createIdentitySigner(options: IdentitySignerOptions): IdentitySigner {
  if (options.ttlSeconds < 1 || options.ttlSeconds > 60) {
    throw new TypeError('identity assertions live at most 60 seconds');
  }
  const now = options.now ?? (() => Date.now());
  let cached: { kid: string; alg: string; key: Awaited<ReturnType<typeof importJWK>> } | undefined;
  const currentKey = async () => {
    const jwk = options.signingJwks().keys[0];
    if (jwk?.kid === undefined || jwk.alg === undefined) throw new Error('no current signing key');
    if (cached?.kid !== jwk.kid) cached = { kid: jwk.kid, alg: jwk.alg, key: await importJWK(jwk, jwk.alg) };
    return cached;
  };
  return async ({ audience, principal, correlationId }) => {
    const key = await currentKey();
    const iat = Math.floor(now() / 1000);
    return new SignJWT({
      client_id: principal.clientId,
      scope: [...principal.scopes].join(' '),
      auth_scheme: principal.scheme,
      txn: correlationId,
    })
      .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: IDENTITY_TYP })
      .setIssuer(options.issuer)
      .setAudience(audience)
      .setSubject(principal.subject)
      .setIssuedAt(iat)
      .setExpirationTime(iat + options.ttlSeconds)
      .setJti(randomUUID())
      .sign(key.key);
  };
}

export interface VerifiedIdentity {
  readonly subject: string;
  readonly clientId: string;
  readonly scopes: ReadonlySet<string>;
  readonly correlationId: string;
}

/** For upstreams (the demo API uses it): verifies an assertion from the gateway. */
export function createIdentityVerifier(options: {
  readonly issuer: string;
  readonly audience: string;
  readonly jwks: () => JSONWebKeySet;
  readonly clockToleranceSeconds?: number;
}): (assertion: string) => Promise<VerifiedIdentity> {
  return async (assertion) => {
    const { payload }: { payload: JWTPayload } = await jwtVerify(
      assertion,
      createLocalJWKSet(options.jwks()),
      {
        issuer: options.issuer,
        audience: options.audience,
        typ: IDENTITY_TYP,
        algorithms: ['ES256', 'PS256', 'EdDSA'],
        clockTolerance: options.clockToleranceSeconds ?? 5,
        maxTokenAge: 60 + (options.clockToleranceSeconds ?? 5),
        requiredClaims: ['sub', 'exp', 'iat', 'jti', 'client_id', 'txn'],
      },
    );
    const scope = typeof payload.scope === 'string' ? payload.scope : '';
    return {
      subject: String(payload.sub),
      clientId: String(payload.client_id),
      scopes: new Set(scope.split(' ').filter((s) => s !== '')),
      correlationId: String(payload.txn),
    };
  };
}
