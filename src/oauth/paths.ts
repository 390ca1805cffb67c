/**
 * The paths the embedded authorization server answers: oidc-provider's fixed endpoints and the
 * prefixes of its per-request pages. One list for the router and for the metrics' route labels.
 */

/** Paths oidc-provider serves with its default routes. */
export const AUTHORIZATION_SERVER_PATHS: ReadonlySet<string> = new Set([
  '/.well-known/openid-configuration',
  '/.well-known/oauth-authorization-server',
  '/jwks',
  '/auth',
  '/token',
  '/token/introspection',
  '/token/revocation',
  '/request',
  '/me',
  '/session/end',
  '/session/end/confirm',
  '/session/end/success',
]);

const PREFIXES = ['/auth/', '/interaction/'];

/** True for the paths the authorization server answers (discovery, endpoints, interactions). */
export function isAuthorizationServerPath(pathname: string): boolean {
  return (
    AUTHORIZATION_SERVER_PATHS.has(pathname) ||
    PREFIXES.some((p) => pathname.startsWith(p) && pathname.length > p.length)
  );
}
