/**
 * The authenticate stage's verifier for `oauth2` / `openIdConnect` / `http bearer` schemes:
 * a JWT access token in the Authorization header (never in the query string), verified by
 * {@link createAccessTokenVerifier}, carrying every scope the requirement lists.
 *
 * Bound tokens (RFC 7800 `cnf`) need the access-token verifier created with `allowBoundTokens`
 * and the matching option here; otherwise they are refused (fail closed):
 *
 * - `dpop` (RFC 9449): a token with `cnf.jkt` is accepted only as `Authorization: DPoP <token>`
 *   with a valid `DPoP` proof for this request (method, URL, `ath`, the token's key, fresh and
 *   unreplayed `jti`); the same token under the Bearer scheme is refused. Refusals carry the
 *   RFC 9449 §7.1 challenge (`DPoP error="invalid_token"` or `"invalid_dpop_proof"`,
 *   `algs="ES256 PS256 EdDSA"`) beside the Bearer one.
 * - `mtls` (RFC 8705): a token with `cnf.x5t#S256` is accepted only when the connection's client
 *   certificate has that SHA-256 thumbprint.
 */
import type { DetailedPeerCertificate, PeerCertificate } from 'node:tls';
import type { GatewayRequest, SchemeVerifier, VerifyOutcome } from '../gateway/context.ts';
import { TokenError } from './access-token.ts';
import type { AccessTokenVerifier, VerifiedAccessToken } from './access-token.ts';
import { DPOP_ALGORITHMS, DpopError, verifyDpopProof } from './dpop.ts';
import { approvedJoseAlgs } from '../keys/fips.ts';
import type { ReplayCache } from './dpop.ts';
import { certificateMatchesThumbprint } from './mtls.ts';

export interface DpopSchemeOptions {
  /** Shared by every process of the gateway (Redis in production). */
  readonly replay: ReplayCache;
  /**
   * The URL the client addressed: the gateway's public origin and the request path as sent
   * (the query is ignored). Compared with the proof's `htu`.
   */
  readonly requestUrl: (req: GatewayRequest) => string;
  /** How old a proof may be (default 60 s). */
  readonly iatWindowSeconds?: number;
  /** How far ahead of this clock a proof may be dated (default 5 s). */
  readonly clockSkewSeconds?: number;
  readonly algorithms?: readonly string[];
  readonly now?: () => number;
}

export interface MtlsBindingOptions {
  /** The connection's client certificate (`getPeerCertificate(true)`), if any. */
  readonly certificate: (req: GatewayRequest) => PeerCertificate | DetailedPeerCertificate | undefined;
}

export interface OAuthSchemeOptions {
  /** The realm in challenges (the API name). */
  readonly realm?: string;
  readonly dpop?: DpopSchemeOptions;
  readonly mtls?: MtlsBindingOptions;
}

const AUTHORIZATION = /^(Bearer|DPoP) ([A-Za-z0-9\-._~+/]+=*)$/i;

/** The scheme and token of an `Authorization` header; undefined when absent, 'malformed' when bad. */
export function authorizationToken(
  header: string | undefined,
): { readonly scheme: 'bearer' | 'dpop'; readonly token: string } | 'malformed' | undefined {
  if (header === undefined) return undefined;
  const m = AUTHORIZATION.exec(header);
  if (!m?.[1] || !m[2]) return 'malformed';
  return { scheme: m[1].toLowerCase() === 'dpop' ? 'dpop' : 'bearer', token: m[2] };
}

export function oauthSchemeVerifier(
  scheme: string,
  verify: AccessTokenVerifier,
  options: OAuthSchemeOptions = {},
): SchemeVerifier {
  const { dpop, mtls } = options;
  const realm = options.realm === undefined ? '' : `realm="${options.realm.replace(/["\\]/g, '')}"`;
  const algs = `algs="${approvedJoseAlgs(dpop?.algorithms ?? DPOP_ALGORITHMS).join(' ')}"`;
  const window = dpop?.iatWindowSeconds ?? 60;
  const now = dpop?.now ?? (() => Date.now());
  const params = (...parts: string[]) => parts.filter((p) => p !== '').join(', ');

  /** Without DPoP: no challenge of our own (the stage sends the Bearer one). */
  const refuse = (
    status: 401 | 403,
    reason: string,
    failed: 'bearer' | 'dpop',
    error?: string,
    scope?: string,
  ): VerifyOutcome => {
    if (dpop === undefined) return { ok: false, status, reason };
    const err = error === undefined ? '' : `error="${error}"`;
    const sc = scope === undefined ? '' : `scope="${scope}"`;
    const bearer =
      `Bearer ${params(realm, failed === 'bearer' ? err : '', failed === 'bearer' ? sc : '')}`.trim();
    const dpopChallenge = `DPoP ${params(realm, failed === 'dpop' ? err : '', failed === 'dpop' ? sc : '', algs)}`;
    return { ok: false, status, reason, challenge: `${bearer}, ${dpopChallenge}` };
  };

  return async (req, requiredScopes) => {
    const parsed = authorizationToken(req.headers.authorization);
    if (parsed === undefined) return refuse(401, 'credential-missing', 'bearer');
    if (parsed === 'malformed')
      return refuse(401, 'token-malformed-authorization', 'bearer', 'invalid_request');
    const { scheme: used, token } = parsed;
    if (used === 'dpop' && dpop === undefined) {
      return { ok: false, status: 401, reason: 'token-malformed-authorization' };
    }
    let verified: VerifiedAccessToken;
    try {
      verified = await verify(token);
    } catch (err) {
      if (err instanceof TokenError) return refuse(401, `token-${err.reason}`, used, 'invalid_token');
      throw err;
    }
    const cnf = verified.confirmation;

    if (used === 'bearer' && cnf?.jkt !== undefined) {
      // RFC 9449 §7.1: a DPoP-bound token is never accepted as a bearer token.
      return refuse(401, 'token-dpop-bound-as-bearer', 'bearer', 'invalid_token');
    }
    if (used === 'dpop' && dpop !== undefined) {
      if (cnf?.jkt === undefined) return refuse(401, 'token-not-dpop-bound', 'dpop', 'invalid_token');
      const proof = req.headers.dpop;
      if (typeof proof !== 'string' || proof === '') {
        return refuse(401, 'dpop-proof-missing', 'dpop', 'invalid_dpop_proof');
      }
      try {
        await verifyDpopProof({
          proof,
          method: req.method,
          url: dpop.requestUrl(req),
          accessToken: token,
          expectedJkt: cnf.jkt,
          now: now(),
          iatWindowSeconds: window,
          replay: dpop.replay,
          ...(dpop.clockSkewSeconds === undefined ? {} : { clockSkewSeconds: dpop.clockSkewSeconds }),
          ...(dpop.algorithms === undefined ? {} : { algorithms: dpop.algorithms }),
        });
      } catch (err) {
        if (err instanceof DpopError) {
          // Not the client's fault: fail closed as an outage (503), not as a bad proof.
          if (err.reason === 'replay-cache-unavailable') throw err;
          return refuse(401, `dpop-${err.reason}`, 'dpop', 'invalid_dpop_proof');
        }
        throw err;
      }
    }
    if (cnf?.x5tS256 !== undefined) {
      const certificate = mtls?.certificate(req);
      if (mtls === undefined)
        return refuse(401, 'token-certificate-bound-without-mtls', used, 'invalid_token');
      if (!certificateMatchesThumbprint(certificate, cnf.x5tS256)) {
        return refuse(401, 'token-certificate-mismatch', used, 'invalid_token');
      }
    }

    const missing = requiredScopes.filter((s) => !verified.scopes.has(s));
    if (missing.length > 0) {
      return refuse(403, 'insufficient-scope', used, 'insufficient_scope', requiredScopes.join(' '));
    }
    return {
      ok: true,
      principal: {
        scheme,
        subject: verified.subject,
        clientId: verified.clientId,
        scopes: verified.scopes,
      },
    };
  };
}
