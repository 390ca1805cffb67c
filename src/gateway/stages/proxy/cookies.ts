/**
 * Which cookies cross the proxy, each way (issue 12 §3).
 *
 * The authorization server shares the APIs' origin, so a browser sends its sign-in cookies with
 * every API call. None of them may reach an upstream (a replayed `_session` lets the upstream act
 * as the user at the authorization server), and no upstream may set one. Per operation:
 * - **Request**: the `Cookie` header goes upstream only with the cookies the operation declares as
 *   `in: cookie` parameters, never an authorization-server cookie, the gateway's CSRF cookie or a
 *   cookie that carries an API key (a credential stays at the gateway); otherwise it is dropped.
 * - **Response**: `Set-Cookie` from the upstream passes only when one of the operation's declared
 *   responses lists a `Set-Cookie` header, and even then never for a reserved cookie name.
 *   `Access-Control-*` headers from upstreams are always dropped: the gateway's CORS policy alone
 *   sets them.
 */
import type { OpenApiDocument, OpenApiOperation } from '../../openapi.ts';

/**
 * oidc-provider's cookie names (its defaults; src/oauth/provider.ts keeps them), with the
 * `.sig` companions its signed cookies get and the `.legacy` variants older versions used.
 */
const AS_COOKIES = ['_session', '_interaction', '_interaction_resume'];
/** Session-state cookies of oidc-provider's session management (`_state.<client_id>`). */
const AS_COOKIE_PREFIX = '_state.';
/** The gateway's own double-submit cookie (stages/csrf): set by the gateway alone. */
const GATEWAY_COOKIES = ['__Host-csrf'];

const RESERVED = new Set<string>(
  [...AS_COOKIES, ...GATEWAY_COOKIES].flatMap((n) => [n, `${n}.sig`, `${n}.legacy`, `${n}.legacy.sig`]),
);

/** True for a cookie name no upstream may receive or set. */
export function isReservedCookie(name: string): boolean {
  return RESERVED.has(name) || name.startsWith(AS_COOKIE_PREFIX);
}

export interface CookiePolicy {
  /** Cookie names forwarded upstream; `null`: the Cookie header is dropped. */
  readonly forward: ReadonlySet<string> | null;
  /** The operation declares a `Set-Cookie` response header. */
  readonly setCookie: boolean;
}

const NONE: CookiePolicy = { forward: null, setCookie: false };

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function declaresSetCookie(definition: Readonly<Record<string, unknown>>): boolean {
  const responses = definition.responses;
  if (!isRecord(responses)) return false;
  for (const response of Object.values(responses)) {
    if (!isRecord(response) || !isRecord(response.headers)) continue;
    for (const name of Object.keys(response.headers)) if (name.toLowerCase() === 'set-cookie') return true;
  }
  return false;
}

/** The policy of one operation, computed once at compile time. */
export function cookiePolicy(op: OpenApiOperation, doc: OpenApiDocument): CookiePolicy {
  const credentials = new Set<string>();
  for (const scheme of Object.values(doc.securitySchemes)) {
    if (scheme.type === 'apiKey' && scheme.in === 'cookie' && typeof scheme.name === 'string') {
      credentials.add(scheme.name);
    }
  }
  const forward = new Set<string>();
  for (const p of op.parameters) {
    if (p.in !== 'cookie' || typeof p.name !== 'string') continue;
    if (isReservedCookie(p.name) || credentials.has(p.name)) continue;
    forward.add(p.name);
  }
  const setCookie = declaresSetCookie(op.definition);
  if (forward.size === 0 && !setCookie) return NONE;
  return { forward: forward.size === 0 ? null : forward, setCookie };
}

/** Policies of every operation of an API, by `METHOD template` as the route table names them. */
export function cookiePolicies(doc: OpenApiDocument, basePath: string): ReadonlyMap<string, CookiePolicy> {
  const out = new Map<string, CookiePolicy>();
  for (const op of doc.operations) {
    out.set(`${op.method} ${basePath + (op.path === '/' ? '' : op.path)}`, cookiePolicy(op, doc));
  }
  return out;
}

/** The Cookie header to send upstream: only the allowed names; undefined when none is left. */
export function forwardedCookies(
  header: string | string[] | undefined,
  allowed: ReadonlySet<string> | null,
): string | undefined {
  if (header === undefined || allowed === null) return undefined;
  const kept: string[] = [];
  for (const line of Array.isArray(header) ? header : [header]) {
    for (const part of line.split(';')) {
      const eq = part.indexOf('=');
      if (eq < 0) continue;
      const name = part.slice(0, eq).trim();
      if (allowed.has(name)) kept.push(part.trim());
    }
  }
  return kept.length === 0 ? undefined : kept.join('; ');
}

/** The Set-Cookie lines an upstream may send on: none unless declared, never a reserved name. */
export function returnedSetCookies(
  value: string | string[] | undefined,
  policy: CookiePolicy,
): string[] | undefined {
  if (value === undefined || !policy.setCookie) return undefined;
  const kept: string[] = [];
  for (const line of Array.isArray(value) ? value : [value]) {
    const eq = line.indexOf('=');
    if (eq <= 0) continue;
    if (!isReservedCookie(line.slice(0, eq).trim())) kept.push(line);
  }
  return kept.length === 0 ? undefined : kept;
}
