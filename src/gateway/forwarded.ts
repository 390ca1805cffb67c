/**
 * Who the client is. Forwarding headers (`X-Forwarded-For`, `Forwarded`) and an incoming
 * correlation id are believed only from configured trusted proxies; from anyone else they are
 * dropped, so a client cannot choose the address that rate limits and audit records see.
 */
import { BlockList, isIP } from 'node:net';

export interface TrustedProxies {
  /** Whether `ip` is a configured trusted proxy. */
  trusts(ip: string): boolean;
  readonly empty: boolean;
}

export function compileTrustedProxies(cidrs: readonly string[]): TrustedProxies {
  const list = new BlockList();
  for (const entry of cidrs) {
    const [addr = '', bits] = entry.split('/');
    const family = isIP(addr) === 6 ? 'ipv6' : 'ipv4';
    if (bits === undefined) list.addAddress(addr, family);
    else list.addSubnet(addr, Number(bits), family);
  }
  const empty = cidrs.length === 0;
  return {
    empty,
    trusts: (ip) => {
      if (empty) return false;
      const family = isIP(ip);
      if (family === 0) return false;
      if (list.check(ip, family === 6 ? 'ipv6' : 'ipv4')) return true;
      // An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d.
      const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
      return mapped?.[1] !== undefined && list.check(mapped[1], 'ipv4');
    },
  };
}

/** Strips an IPv4-mapped prefix so one address has one spelling in logs and limits. */
export function canonicalIp(ip: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  return mapped?.[1] ?? ip;
}

function headerList(value: string | string[] | undefined): string[] {
  if (value === undefined) return [];
  const joined = Array.isArray(value) ? value.join(',') : value;
  return joined.split(',').map((s) => s.trim());
}

/** Addresses from `Forwarded: for=…` (RFC 7239), in order; an obfuscated or bad one is ''. */
function forwardedFor(value: string | string[] | undefined): string[] {
  const out: string[] = [];
  for (const element of headerList(value)) {
    const pair = element
      .split(';')
      .map((p) => p.trim())
      .find((p) => p.toLowerCase().startsWith('for='));
    if (pair === undefined) continue;
    let v = pair.slice(4).trim();
    if (v.startsWith('"') && v.endsWith('"')) v = v.slice(1, -1);
    const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(v);
    if (bracketed?.[1] !== undefined) v = bracketed[1];
    else if (/^\d+\.\d+\.\d+\.\d+:\d+$/.test(v)) v = v.slice(0, v.lastIndexOf(':'));
    out.push(isIP(v) ? v : '');
  }
  return out;
}

/**
 * The client address: the socket peer unless the peer is a trusted proxy, in which case the
 * forwarding chain is walked from the right, skipping trusted hops; the first untrusted address
 * is the client. A malformed entry stops the walk at the last address we could believe.
 */
export function deriveClientIp(
  peerIp: string,
  headers: Readonly<Record<string, string | string[] | undefined>>,
  trusted: TrustedProxies,
): string {
  const peer = canonicalIp(peerIp);
  if (!trusted.trusts(peer)) return peer;
  const xff = headerList(headers['x-forwarded-for']).filter((s) => s !== '');
  const chain = xff.length > 0 ? xff : forwardedFor(headers.forwarded);
  let client = peer;
  for (let i = chain.length - 1; i >= 0; i--) {
    const hop = canonicalIp(chain[i] ?? '');
    if (isIP(hop) === 0) return client;
    client = hop;
    if (!trusted.trusts(hop)) return hop;
  }
  return client;
}

const CORRELATION_ID = /^[A-Za-z0-9._:-]{8,128}$/;

/** An incoming correlation id is kept only from a trusted proxy and only if well-formed. */
export function acceptCorrelationId(
  peerIp: string,
  value: string | string[] | undefined,
  trusted: TrustedProxies,
): string | undefined {
  if (typeof value !== 'string' || !CORRELATION_ID.test(value)) return undefined;
  return trusted.trusts(canonicalIp(peerIp)) ? value : undefined;
}
