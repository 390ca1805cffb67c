/**
 * The authorization server's cookies stay on its own paths (issue 12 #3). oidc-provider already
 * scopes the interaction cookie to `/interaction/<uid>` and the resume cookie to `/auth/<uid>`; its
 * session cookie (`_session`, and `_session.sig`) is written with one set of options, `Path=/`,
 * because two endpoints read it: authorization (`/auth`, `/auth/<uid>`) and logout
 * (`/session/end…`). {@link scopeSessionCookies} rewrites each such Set-Cookie into one per path,
 * so the session never reaches the APIs served on the same origin. The signature cookie signs
 * `name=value` only, so it holds on every path.
 */

/** The paths that read the session cookie. */
export const SESSION_COOKIE_PATHS = ['/auth', '/session/end'] as const;

const PATH_ROOT = /;\s*path=\/\s*(?=;|$)/i;

/**
 * Rewrites the `Path=/` Set-Cookie headers of cookie `name` (and `name.sig`) into one per path
 * of `paths`; other headers are returned unchanged.
 */
export function scopeSessionCookies(
  headers: readonly string[],
  name: string,
  paths: readonly string[] = SESSION_COOKIE_PATHS,
): string[] {
  const out: string[] = [];
  for (const header of headers) {
    const eq = header.indexOf('=');
    const cookie = eq < 0 ? '' : header.slice(0, eq).trim();
    if ((cookie !== name && cookie !== `${name}.sig`) || !PATH_ROOT.test(header)) {
      out.push(header);
      continue;
    }
    for (const path of paths) out.push(header.replace(PATH_ROOT, `; path=${path}`));
  }
  return out;
}
