/**
 * Authentication and scope checks, driven by the operation's OpenAPI `security` requirements.
 *
 * An operation with no requirement, or with the empty requirement `{}` among its alternatives,
 * is public. Otherwise one alternative must be satisfied in full: every scheme it names has a
 * verifier that accepts the request's credential with the listed scopes. A scheme without a
 * verifier can never be satisfied: default deny, never default allow.
 *
 * Refusals: 401 with `WWW-Authenticate` (RFC 6750) when no alternative had a valid credential;
 * 403 with `error="insufficient_scope"` and the scopes one alternative needs when the credential
 * was valid but lacked scopes.
 */
import { Denial } from '../../problems.ts';
import type { SecurityRequirement } from '../../openapi.ts';
import type { GatewayRequest, Principal, SchemeVerifier, Stage, VerifyOutcome } from '../../context.ts';

// The caller's type and the verifier contract live with the request context (context.ts).
export type { Principal, SchemeVerifier, VerifyOutcome } from '../../context.ts';

export interface AuthenticateOptions {
  readonly apiName: string;
  readonly security: readonly SecurityRequirement[];
  /** Scheme types (from components.securitySchemes) keyed by scheme name. */
  readonly schemeTypes: Readonly<Record<string, string>>;
  /** Verifiers by scheme name; a scheme without one cannot be satisfied. */
  readonly verifiers: Readonly<Record<string, SchemeVerifier>>;
}

const BEARER_TYPES = new Set(['oauth2', 'openIdConnect', 'http']);

export function isPublic(security: readonly SecurityRequirement[]): boolean {
  return security.length === 0 || security.some((r) => Object.keys(r).length === 0);
}

function hasCredential(headers: GatewayRequest['headers']): boolean {
  return headers.authorization !== undefined || headers.cookie !== undefined || headers.dpop !== undefined;
}

const pick = (challenge: string | undefined) => (challenge === undefined ? {} : { challenge });

const NO_VERIFIER: VerifyOutcome = { ok: false, status: 401, reason: 'no-verifier-for-scheme' };

/** Returns null for a public operation (nothing to run per request). */
export function compileAuthenticate(options: AuthenticateOptions): Stage | null {
  const { security, verifiers, schemeTypes, apiName } = options;
  if (isPublic(security)) return null;
  const realm = `realm="${apiName}"`;
  const bearer = security.some((r) => Object.keys(r).some((s) => BEARER_TYPES.has(schemeTypes[s] ?? '')));
  const alternatives = security.map((requirement) =>
    Object.entries(requirement).map(([scheme, scopes]) => ({ verify: verifiers[scheme], scopes })),
  );

  return async (req) => {
    const presented = hasCredential(req.headers);
    req.credentialPresented = presented;
    let lastFailure: VerifyOutcome | undefined;
    let scopeFailure: { scopes: readonly string[]; reason: string; challenge?: string } | undefined;
    /** Issue 13: a known API key that was refused, named on the audit event. */
    let apiKeyId: string | undefined;
    let apiKeyReason: string | undefined;
    for (const alternative of alternatives) {
      let principal: Principal | undefined;
      let satisfied = true;
      for (const { verify, scopes } of alternative) {
        const outcome = verify === undefined ? NO_VERIFIER : await verify(req, scopes);
        if (!outcome.ok) {
          satisfied = false;
          lastFailure = outcome;
          if (apiKeyId === undefined && outcome.apiKeyId !== undefined) {
            apiKeyId = outcome.apiKeyId;
            apiKeyReason = outcome.reason;
          }
          if (outcome.status === 403) {
            scopeFailure ??= { scopes, reason: outcome.reason, ...pick(outcome.challenge) };
          }
          break;
        }
        principal ??= outcome.principal;
      }
      if (satisfied && principal !== undefined) {
        req.principal = principal;
        return undefined;
      }
    }
    if (scopeFailure !== undefined) {
      const scope = scopeFailure.scopes.join(' ');
      throw new Denial('forbidden', scopeFailure.reason, {
        headers:
          scopeFailure.challenge !== undefined
            ? { 'www-authenticate': scopeFailure.challenge }
            : bearer
              ? { 'www-authenticate': `Bearer ${realm}, error="insufficient_scope", scope="${scope}"` }
              : {},
        apiKeyId,
      });
    }
    const headers: Record<string, string> = {};
    if (lastFailure?.ok === false && lastFailure.challenge !== undefined) {
      headers['www-authenticate'] = lastFailure.challenge;
    } else if (bearer) {
      headers['www-authenticate'] = presented ? `Bearer ${realm}, error="invalid_token"` : `Bearer ${realm}`;
    }
    // A known API key that was refused says why (an API key is not an Authorization header).
    const reason =
      apiKeyReason !== undefined
        ? apiKeyReason
        : presented
          ? lastFailure?.ok === false
            ? lastFailure.reason
            : 'credential-not-accepted'
          : 'credential-missing';
    throw new Denial('unauthenticated', reason, { headers, apiKeyId });
  };
}
