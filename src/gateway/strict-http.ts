/**
 * Strict request framing checks the HTTP parser leaves to the application (RFC 9110 §7.2,
 * RFC 9112 §3.2, RFC 9113 §8.3.1). A pure function over what the parser produced:
 *
 * - HTTP/1.x: the version must be 1.0 or 1.1 (an HTTP/0.9-style line, or `HTTP/2.0` on an
 *   HTTP/1.1 connection, is refused); exactly one `Host` header, of valid syntax;
 * - HTTP/2: `:authority` (or `Host`), and if both are present they agree;
 * - the host must be one this gateway serves: the host of `gateway.publicUrl`, one of
 *   `gateway.hostAliases`, or the literal IP address the client connected to. The port is not
 *   compared (port mappings and load balancers change it). A host that is well-formed but not
 *   ours is 421 Misdirected Request (RFC 9110 §15.5.20): the client reached the wrong server;
 *   everything malformed is 400.
 *
 * @example
 * ```ts
 * const hosts = allowedHosts(config.gateway.publicUrl, config.gateway.hostAliases);
 * const denial = checkRequest(req, hosts);
 * if (denial) throw denial;
 * ```
 */
import { canonicalIp } from './forwarded.ts';
import { Denial } from './problems.ts';

/** What the check reads of a request (node:http IncomingMessage or Http2ServerRequest). */
export interface FramedRequest {
  readonly httpVersionMajor: number;
  readonly httpVersionMinor: number;
  readonly rawHeaders: readonly string[];
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  /** Set on HTTP/2 compatibility requests only. */
  readonly stream?: unknown;
  readonly socket?: { readonly localAddress?: string | undefined } | null;
}

/** A host name or bracketed IPv6 literal, then an optional port. */
const HOST = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)(?::([0-9]{1,5}))?$/;

/** The host names (lower case, without port) a gateway answers for. */
export function allowedHosts(publicUrl: string, aliases: readonly string[] = []): ReadonlySet<string> {
  const names = new Set<string>();
  names.add(normalizeName(new URL(publicUrl).hostname));
  for (const alias of aliases) names.add(normalizeName(alias));
  return names;
}

function normalizeName(name: string): string {
  const lower = name.toLowerCase();
  const unbracketed = lower.startsWith('[') && lower.endsWith(']') ? lower.slice(1, -1) : lower;
  return unbracketed.endsWith('.') ? unbracketed.slice(0, -1) : unbracketed;
}

function hostCount(rawHeaders: readonly string[]): number {
  let n = 0;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i];
    if (name !== undefined && name.length === 4 && name.toLowerCase() === 'host') n += 1;
  }
  return n;
}

/** The refusal for a request whose framing or host is not acceptable, or undefined. */
export function checkRequest(req: FramedRequest, allowed: ReadonlySet<string>): Denial | undefined {
  let authority: string | undefined;
  if (req.stream !== undefined && req.httpVersionMajor === 2) {
    const a = req.headers[':authority'];
    const h = req.headers.host;
    if (Array.isArray(a) || Array.isArray(h)) return new Denial('bad-request', 'duplicate-host');
    if (a !== undefined && h !== undefined && a !== h)
      return new Denial('bad-request', 'authority-host-mismatch');
    authority = a ?? h;
  } else {
    if (req.httpVersionMajor !== 1 || (req.httpVersionMinor !== 0 && req.httpVersionMinor !== 1)) {
      return new Denial('bad-request', 'unsupported-http-version');
    }
    const hosts = hostCount(req.rawHeaders);
    if (hosts > 1) return new Denial('bad-request', 'duplicate-host');
    const h = req.headers.host;
    authority = typeof h === 'string' ? h : undefined;
  }
  if (authority === undefined || authority === '') return new Denial('bad-request', 'missing-host');
  const m = HOST.exec(authority);
  const hostPart = m?.[1];
  if (hostPart === undefined || (m?.[2] !== undefined && Number(m[2]) > 65535)) {
    return new Denial('bad-request', 'bad-host');
  }
  const name = normalizeName(hostPart);
  if (allowed.has(name)) return undefined;
  const local = req.socket?.localAddress;
  if (local !== undefined && normalizeName(canonicalIp(local)) === name) return undefined;
  return new Denial('misdirected-request', 'host-not-served');
}
