/**
 * The authenticate stage's verifier for `oauth2` / `openIdConnect` / `http bearer` schemes:
 * a JWT access token in the Authorization header (never in the query string), verified by
 * {@link createAccessTokenVerifier}, carrying every scope the requirement lists.
 */
import type { SchemeVerifier } from '../gateway/stages/authenticate/index.ts';
import { bearerToken, TokenError } from './access-token.ts';
import type { AccessTokenVerifier } from './access-token.ts';

export function oauthSchemeVerifier(scheme: string, verify: AccessTokenVerifier): SchemeVerifier {
  return async (req, requiredScopes) => {
    const header = req.headers.authorization;
    try {
      const token = bearerToken(header);
      if (token === undefined) return { ok: false, status: 401, reason: 'credential-missing' };
      const verified = await verify(token);
      const missing = requiredScopes.filter((s) => !verified.scopes.has(s));
      if (missing.length > 0) return { ok: false, status: 403, reason: 'insufficient-scope' };
      return {
        ok: true,
        principal: {
          scheme,
          subject: verified.subject,
          clientId: verified.clientId,
          scopes: verified.scopes,
        },
      };
    } catch (err) {
      if (err instanceof TokenError) return { ok: false, status: 401, reason: `token-${err.reason}` };
      throw err;
    }
  };
}
