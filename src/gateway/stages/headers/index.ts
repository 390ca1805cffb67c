/**
 * Security headers for every response the gateway sends, refusals included (DESIGN.md
 * "Secure defaults"). Upstream headers that reveal software or weaken these are replaced.
 */
import type { OutgoingHttpHeaders } from 'node:http';

export const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  'strict-transport-security': 'max-age=31536000; includeSubDomains',
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'content-security-policy': "default-src 'none'; frame-ancestors 'none'",
  'x-frame-options': 'DENY',
};

/** Response headers an upstream may not pass to clients: they reveal software and versions. */
export const REVEALING_HEADERS = [
  'server',
  'x-powered-by',
  'x-aspnet-version',
  'x-aspnetmvc-version',
  'x-runtime',
  'x-generator',
  'via',
] as const;

export interface HeaderPolicyInput {
  /** The request carried a credential or the operation requires one. */
  readonly authenticated: boolean;
  /** The response is a refusal or an error. */
  readonly error: boolean;
}

/**
 * Applies the security headers in place. `Cache-Control: no-store` is forced on authenticated
 * responses and on errors; an unauthenticated success keeps an upstream's own Cache-Control and
 * otherwise gets `no-store` too (nothing is cacheable unless the API says so).
 */
export function applySecurityHeaders(
  set: (name: string, value: string) => void,
  get: (name: string) => unknown,
  remove: (name: string) => void,
  input: HeaderPolicyInput,
): void {
  for (const name of REVEALING_HEADERS) remove(name);
  for (const [name, value] of Object.entries(SECURITY_HEADERS)) set(name, value);
  if (input.authenticated || input.error || get('cache-control') === undefined) {
    set('cache-control', 'no-store');
    remove('expires');
    if (input.authenticated || input.error) remove('etag');
  }
}

/** The same policy for a plain header object (used outside Fastify, e.g. raw client errors). */
export function securityHeaderObject(input: HeaderPolicyInput): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  applySecurityHeaders(
    (n, v) => (out[n] = v),
    (n) => out[n],
    (n) => Reflect.deleteProperty(out, n),
    input,
  );
  return out;
}
