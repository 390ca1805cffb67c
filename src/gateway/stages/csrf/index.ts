/**
 * CSRF protection for browser-facing, cookie-authenticated operations (seed 001 B.7 / B.12;
 * OWASP CSRF Prevention Cheat Sheet: double-submit cookie plus origin verification).
 *
 * An operation is protected when one of its security alternatives uses an `apiKey` scheme
 * `in: cookie`, or when it declares `x-portcullis-csrf: true`. For unsafe methods (anything but
 * GET, HEAD, OPTIONS, TRACE):
 *
 * 1. the request's origin must be trusted: an `Origin` header must be the gateway's public origin
 *    or one of the API's CORS `allowOrigins`; without `Origin`, a `Sec-Fetch-Site` other than
 *    `same-origin` / `none` is refused;
 * 2. the `X-CSRF-Token` header must equal the `__Host-csrf` cookie (one of each, compared in
 *    constant time).
 *
 * Both refusals are 403 with a generic problem. On safe methods the gateway issues the cookie
 * when the request has none (`__Host-` prefix: Secure, Path=/, no Domain, so neither a sibling
 * domain nor plain HTTP can plant one; not HttpOnly, because the page's script must copy it into
 * the header; SameSite=Strict).
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { Denial } from '../../problems.ts';
import type { OpenApiDocument, OpenApiOperation } from '../../openapi.ts';
import type { Stage } from '../../context.ts';
import { parseCookies } from '../validate/params.ts';

export const CSRF_COOKIE = '__Host-csrf';
export const CSRF_HEADER = 'x-csrf-token';
export const CSRF_EXTENSION = 'x-portcullis-csrf';

const SAFE_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE']);
/** Tokens are base64url; 16 to 256 characters (the gateway issues 43). */
const TOKEN_SHAPE = /^[A-Za-z0-9_-]{16,256}$/;

export interface CsrfOptions {
  /** Origins whose pages may call the API: the public origin and the API's CORS allowlist. */
  readonly trustedOrigins: readonly string[];
}

/** Whether an operation needs CSRF protection. */
export function needsCsrf(op: OpenApiOperation, document: OpenApiDocument): boolean {
  if (op.definition[CSRF_EXTENSION] === true) return true;
  return op.security.some((requirement) =>
    Object.keys(requirement).some((name) => {
      const scheme = document.securitySchemes[name];
      return scheme?.type === 'apiKey' && scheme.in === 'cookie';
    }),
  );
}

function digest(value: string): Buffer {
  return createHash('sha256').update(value).digest();
}

/** Constant-time equality of two tokens (their digests, so lengths leak nothing either). */
export function tokensMatch(a: string, b: string): boolean {
  return timingSafeEqual(digest(a), digest(b));
}

export function newCsrfToken(): string {
  return randomBytes(32).toString('base64url');
}

export function compileCsrf(
  op: OpenApiOperation,
  document: OpenApiDocument,
  options: CsrfOptions,
): Stage | null {
  if (!needsCsrf(op, document)) return null;
  const trusted = new Set(options.trustedOrigins.map((o) => new URL(o).origin));
  return (req) => {
    const cookies = parseCookies(req.headers.cookie);
    if (SAFE_METHODS.has(req.method)) {
      if (!cookies.values.has(CSRF_COOKIE)) {
        req.responseHeaders['set-cookie'] =
          `${CSRF_COOKIE}=${newCsrfToken()}; Path=/; Secure; SameSite=Strict`;
      }
      return undefined;
    }
    const origin = req.headers.origin;
    if (origin !== undefined) {
      if (typeof origin !== 'string' || !trusted.has(origin)) {
        throw new Denial('forbidden', 'csrf-origin-not-trusted');
      }
    } else {
      const site = req.headers['sec-fetch-site'];
      if (site !== undefined && site !== 'same-origin' && site !== 'none') {
        throw new Denial('forbidden', 'csrf-cross-site');
      }
    }
    const header = req.headers[CSRF_HEADER];
    const cookie = cookies.values.get(CSRF_COOKIE);
    if (typeof header !== 'string' || cookie === undefined || cookies.repeated.has(CSRF_COOKIE)) {
      throw new Denial('forbidden', 'csrf-token-missing');
    }
    if (!TOKEN_SHAPE.test(cookie) || !tokensMatch(header, cookie)) {
      throw new Denial('forbidden', 'csrf-token-mismatch');
    }
    return undefined;
  };
}
