/**
 * Authentication, driven by the operation's OpenAPI `security` requirements.
 *
 * An operation with no requirement, or with the empty requirement `{}` among its alternatives,
 * is public. Every other operation needs a credential that a verifier for its scheme accepts.
 * Until a scheme has a verifier registered (the token, API-key and mTLS verifiers come with the
 * access-control work), no credential can satisfy it and the operation is refused with 401:
 * default deny, never default allow.
 */
import { Denial } from '../../problems.ts';
import type { SecurityRequirement } from '../../openapi.ts';
import type { Stage } from '../../chain.ts';

/** Checks a presented credential against one requirement; returns true when satisfied. */
export type SchemeVerifier = (
  req: Parameters<Stage>[0],
  requiredScopes: readonly string[],
) => boolean | Promise<boolean>;

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

function hasCredential(headers: Parameters<Stage>[0]['headers']): boolean {
  return headers.authorization !== undefined || headers.cookie !== undefined || headers.dpop !== undefined;
}

/** Returns null for a public operation (nothing to run per request). */
export function compileAuthenticate(options: AuthenticateOptions): Stage | null {
  const { security, verifiers, schemeTypes, apiName } = options;
  if (isPublic(security)) return null;
  const realm = `realm="${apiName}"`;
  const bearer = security.some((r) => Object.keys(r).some((s) => BEARER_TYPES.has(schemeTypes[s] ?? '')));
  return async (req) => {
    const presented = hasCredential(req.headers);
    req.credentialPresented = presented;
    for (const requirement of security) {
      let satisfied = true;
      for (const [scheme, scopes] of Object.entries(requirement)) {
        const verify = verifiers[scheme];
        if (verify === undefined || !(await verify(req, scopes))) {
          satisfied = false;
          break;
        }
      }
      if (satisfied) return undefined;
    }
    const headers: Record<string, string> = {};
    if (bearer) {
      headers['www-authenticate'] = presented ? `Bearer ${realm}, error="invalid_token"` : `Bearer ${realm}`;
    }
    throw new Denial('unauthenticated', presented ? 'credential-not-accepted' : 'credential-missing', {
      headers,
    });
  };
}
