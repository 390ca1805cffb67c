/**
 * The caller's identity as the upstream sees it. The client's credential never leaves the
 * gateway; instead each authenticated request carries a short-lived assertion (a JWT signed
 * with the key manager's current key, lifetime ≤ 60 s) naming the subject, the client and the
 * granted scopes, for the audience of that one upstream. The request's correlation id travels in
 * its own header (`gateway.correlationHeader`), not in the assertion.
 *
 * Signing is synchronous (`node:crypto` with a `KeyObject` imported once per key), and one
 * assertion is reused for the same caller, client, scopes and audience during the first half of
 * its lifetime: an asymmetric signature per request would cost more than everything else the
 * gateway does for it. A new current key (rotation) empties the cache at once.
 *
 * Explicit typing (RFC 8725 §3.11) keeps it from being confused with an access token: its
 * `typ` is `portcullis-identity+jwt`, which the gateway's access-token check refuses, and the
 * upstream verifier refuses anything else.
 */
import type { TokenSigner } from '../keys/types.ts';
import { constants, createPrivateKey, randomUUID, sign as cryptoSign } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { createLocalJWKSet, jwtVerify } from 'jose';
import type { JSONWebKeySet, JWK, JWTPayload } from 'jose';
import type { Principal } from '../gateway/stages/authenticate/index.ts';
import { approvedJoseAlgs } from '../keys/fips.ts';
import type { PrivacyClaims } from '../gateway/context.ts';

export const IDENTITY_TYP = 'portcullis-identity+jwt';

/** Assertions kept for reuse at most; past it the oldest is dropped. */
export const IDENTITY_CACHE_MAX = 10_000;

export interface IdentityInput {
  readonly audience: string;
  readonly principal: Principal;
  /**
   * On operations with privacy annotations: the subject's consents and opt-outs, sent as the
   * `privacy` claim (`{consents, opt_outs}`). Their version is part of the reuse key, so an
   * assertion never outlives a change of consent.
   */
  readonly privacy?: PrivacyClaims | undefined;
}

/** Returns the assertion for this caller and audience: a cached one while fresh, else a new one. */
export type IdentitySigner = (input: IdentityInput) => string;

export interface IdentitySignerOptions {
  readonly issuer: string;
  /** The current private signing JWK first (KeyManager.signingJwks). */
  readonly signingJwks: () => { keys: JWK[] };
  /**
   * The current key's id, asked on every request (KeyManager.current().kid): when it changes the
   * key is imported again and every cached assertion dropped. Without it the kid of
   * `signingJwks()`'s first key is asked instead (a copy of the key set per request).
   */
  readonly currentKid?: () => string;
  /**
   * The current key's signer (the KeyManager signer of the current kid), asked only when the kid changes. Given, it
   * signs instead of a private JWK: the only way for a key on an HSM, whose private part never
   * leaves it.
   */
  readonly currentSigner?: () => TokenSigner | undefined;
  readonly ttlSeconds: number;
  readonly now?: () => number;
  /** Bound of the reuse cache (default {@link IDENTITY_CACHE_MAX}). */
  readonly cacheMax?: number;
}

interface SigningKey {
  readonly kid: string;
  /** The protected header, encoded once per key. */
  readonly header: string;
  readonly sign: (data: Buffer) => Buffer;
}

function importSigningKey(jwk: JWK): SigningKey {
  if (jwk.kid === undefined || jwk.alg === undefined) throw new Error('no current signing key');
  const key: KeyObject = createPrivateKey({ key: jwk, format: 'jwk' });
  let sign: (data: Buffer) => Buffer;
  switch (jwk.alg) {
    case 'ES256':
      sign = (data) => cryptoSign('sha256', data, { key, dsaEncoding: 'ieee-p1363' });
      break;
    case 'PS256':
      sign = (data) =>
        cryptoSign('sha256', data, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 });
      break;
    case 'EdDSA':
      sign = (data) => cryptoSign(null, data, key);
      break;
    default:
      throw new Error(`identity assertions cannot be signed with alg ${jwk.alg}`);
  }
  return { kid: jwk.kid, header: identityHeader(jwk.alg, jwk.kid), sign };
}

/** The protected header of an assertion signed with `kid`, encoded once per key. */
function identityHeader(alg: string, kid: string): string {
  return Buffer.from(JSON.stringify({ alg, kid, typ: IDENTITY_TYP })).toString('base64url');
}

interface CachedAssertion {
  readonly value: string;
  /** Reused until this instant (ms): half the lifetime, so an upstream never gets a stale one. */
  readonly refreshAt: number;
}

export function createIdentitySigner(options: IdentitySignerOptions): IdentitySigner {
  if (options.ttlSeconds < 1 || options.ttlSeconds > 60) {
    throw new TypeError('identity assertions live at most 60 seconds');
  }
  const now = options.now ?? (() => Date.now());
  const cacheMax = options.cacheMax ?? IDENTITY_CACHE_MAX;
  const reuseMs = (options.ttlSeconds * 1000) / 2;
  const currentKid = options.currentKid ?? (() => options.signingJwks().keys[0]?.kid ?? '');
  const cache = new Map<string, CachedAssertion>();
  let key: SigningKey | undefined;

  const currentKey = (): SigningKey => {
    const kid = currentKid();
    if (key?.kid !== kid) {
      const signer = options.currentSigner?.();
      if (signer !== undefined) {
        key = {
          kid: signer.kid,
          header: identityHeader(signer.alg, signer.kid),
          sign: (d) => signer.sign(d),
        };
      } else {
        const jwk = options.signingJwks().keys[0];
        if (jwk === undefined) throw new Error('no current signing key');
        key = importSigningKey(jwk);
      }
      cache.clear();
    }
    return key;
  };

  const mint = (
    k: SigningKey,
    audience: string,
    principal: Principal,
    privacy: PrivacyClaims | undefined,
    at: number,
  ): string => {
    const iat = Math.floor(at / 1000);
    const payload = Buffer.from(
      JSON.stringify({
        client_id: principal.clientId,
        scope: [...principal.scopes].join(' '),
        auth_scheme: principal.scheme,
        iss: options.issuer,
        aud: audience,
        sub: principal.subject,
        iat,
        exp: iat + options.ttlSeconds,
        jti: randomUUID(),
        ...(privacy === undefined
          ? {}
          : { privacy: { consents: privacy.consents, opt_outs: privacy.optOuts } }),
      }),
    ).toString('base64url');
    const input = `${k.header}.${payload}`;
    return `${input}.${k.sign(Buffer.from(input)).toString('base64url')}`;
  };

  return ({ audience, principal, privacy }) => {
    const k = currentKey();
    const at = now();
    let scopes = '';
    for (const s of principal.scopes) scopes += `${s} `;
    let id = `${audience}\n${principal.scheme}\n${principal.clientId}\n${principal.subject}\n${scopes}`;
    if (privacy !== undefined) id += `\n${privacy.version}`;
    const hit = cache.get(id);
    if (hit !== undefined && at < hit.refreshAt) return hit.value;
    const value = mint(k, audience, principal, privacy, at);
    if (hit !== undefined) cache.delete(id);
    else if (cache.size >= cacheMax) {
      const oldest = cache.keys().next();
      if (oldest.done !== true) cache.delete(oldest.value);
    }
    cache.set(id, { value, refreshAt: at + reuseMs });
    return value;
  };
}

export interface VerifiedIdentity {
  readonly subject: string;
  readonly clientId: string;
  readonly scopes: ReadonlySet<string>;
  /** The `privacy` claim, on operations with privacy annotations (issue 16). */
  readonly privacy?: { readonly consents: readonly string[]; readonly optOuts: readonly string[] };
}

function strings(value: unknown): string[] {
  return Array.isArray(value) ? value.filter((v): v is string => typeof v === 'string') : [];
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
        algorithms: approvedJoseAlgs(['ES256', 'PS256', 'EdDSA']),
        clockTolerance: options.clockToleranceSeconds ?? 5,
        maxTokenAge: 60 + (options.clockToleranceSeconds ?? 5),
        requiredClaims: ['sub', 'exp', 'iat', 'jti', 'client_id'],
      },
    );
    const scope = typeof payload.scope === 'string' ? payload.scope : '';
    const privacy: unknown = payload.privacy;
    return {
      subject: String(payload.sub),
      clientId: String(payload.client_id),
      scopes: new Set(scope.split(' ').filter((s) => s !== '')),
      ...(typeof privacy === 'object' && privacy !== null
        ? {
            privacy: {
              consents: strings((privacy as { consents?: unknown }).consents),
              optOuts: strings((privacy as { opt_outs?: unknown }).opt_outs),
            },
          }
        : {}),
    };
  };
}
