/**
 * Issue 13: TLS handshake failures on the listeners, counted and audited in aggregate.
 *
 * Every `tlsClientError` of a listener increments
 * `portcullis_tls_handshake_failures_total{listener, reason}` (a fixed set of reasons), and is
 * counted into a summary per (source address, reason). `windowSeconds` after its first failure
 * (the refusal aggregation window, `audit.aggregation.windowSeconds`) a summary becomes ONE audit event,
 * `validation` / `tls-handshake-failed`, with `portcullis.aggregate.count`, `event.start` /
 * `event.end`, the source as `client.ip` and the listener: a scanner or a flood of broken
 * handshakes costs one event per source and reason per window, never one per connection.
 * At most `maxSources` summaries are open; beyond that, failures are folded into one summary per
 * reason without a source. Nothing of the handshake (no certificate, no SNI, no bytes) is kept.
 *
 * @example
 * ```ts
 * const tlsFailures = watchTlsFailures(server, 'gateway', { metrics, observer, windowSeconds: 60 });
 * // on shutdown: records the open summaries
 * tlsFailures.stop();
 * ```
 */
import { isIP } from 'node:net';
import type { Socket } from 'node:net';
import { Counter } from 'prom-client';
import type { Registry } from 'prom-client';
import type { AuditEventInput } from '../audit/event.ts';

/** The reasons a handshake fails, as label values (bounded). */
export const TLS_FAILURE_REASONS = [
  'timeout',
  'reset',
  'plaintext-http',
  'protocol-version',
  'no-shared-cipher',
  'alpn',
  'client-rejected-certificate',
  'client-certificate-missing',
  'client-certificate-invalid',
  'malformed',
  'other',
] as const;
export type TlsFailureReason = (typeof TLS_FAILURE_REASONS)[number];

/** Maps a `tlsClientError` to its reason (by OpenSSL/Node error code, never its message text). */
export function tlsFailureReason(err: unknown): TlsFailureReason {
  const raw = (err as { code?: unknown } | null)?.code;
  const code = typeof raw === 'string' ? raw : '';
  if (code === 'ERR_TLS_HANDSHAKE_TIMEOUT' || code === 'ETIMEDOUT') return 'timeout';
  if (code === 'ECONNRESET' || code === 'EPIPE') return 'reset';
  if (code === 'ERR_SSL_HTTP_REQUEST' || code === 'ERR_SSL_HTTPS_PROXY_REQUEST') return 'plaintext-http';
  if (code === 'ERR_SSL_WRONG_VERSION_NUMBER') return 'malformed'; // not a TLS record
  if (/UNSUPPORTED_PROTOCOL|VERSION_TOO_LOW|PROTOCOL_VERSION|INAPPROPRIATE_FALLBACK/.test(code))
    return 'protocol-version';
  if (/NO_SHARED_CIPHER|NO_CIPHERS|NO_SUITABLE|HANDSHAKE_FAILURE|NO_SHARED_GROUP/.test(code))
    return 'no-shared-cipher';
  if (/APPLICATION_PROTOCOL|ALPN/.test(code)) return 'alpn';
  if (
    /ALERT_(UNKNOWN_CA|BAD_CERTIFICATE|CERTIFICATE_UNKNOWN|CERTIFICATE_EXPIRED|DECRYPT_ERROR|CERTIFICATE_REVOKED|UNSUPPORTED_CERTIFICATE)/.test(
      code,
    )
  )
    return 'client-rejected-certificate';
  if (/PEER_DID_NOT_RETURN_A_CERTIFICATE|CERTIFICATE_REQUIRED/.test(code))
    return 'client-certificate-missing';
  if (/CERTIFICATE_VERIFY_FAILED|UNABLE_TO_GET_ISSUER|SELF_SIGNED|CERT_/.test(code))
    return 'client-certificate-invalid';
  if (/RECORD|PACKET|DECODE|UNEXPECTED_MESSAGE|BAD_|LENGTH/.test(code)) return 'malformed';
  return 'other';
}

export interface TlsFailureDeps {
  /** The process metrics registry (`Metrics.registry`). */
  readonly metrics: { readonly registry: Registry };
  /** Where the summaries go (the gateway's observer: `observer.event`). */
  readonly observer?: { event(input: AuditEventInput): void } | undefined;
  /** The aggregation window (default 60 s). */
  readonly windowSeconds?: number;
  /** Open summaries before failures are folded per reason (default 10 000). */
  readonly maxSources?: number;
  readonly now?: () => number;
}

export interface TlsFailureWatch {
  /** Records the open summaries now (tests; the window timer does this on its own). */
  flush(): void;
  /** Stops watching and records the open summaries. */
  stop(): void;
}

interface Summary {
  readonly ip: string | undefined;
  readonly reason: TlsFailureReason;
  count: number;
  readonly first: number;
  last: number;
}

const counters = new WeakMap<Registry, Counter<'listener' | 'reason'>>();
function counterFor(registry: Registry): Counter<'listener' | 'reason'> {
  let c = counters.get(registry);
  if (c === undefined) {
    c = new Counter({
      name: 'portcullis_tls_handshake_failures_total',
      help: 'TLS handshakes that failed on a listener, by reason',
      labelNames: ['listener', 'reason'],
      registers: [registry],
    });
    counters.set(registry, c);
  }
  return c;
}

/** A source address as recorded (IPv4-mapped IPv6 as IPv4); undefined when unknown. */
function sourceOf(socket: Socket | undefined): string | undefined {
  const raw = socket?.remoteAddress ?? (socket as { _parent?: Socket } | undefined)?._parent?.remoteAddress;
  if (raw === undefined) return undefined;
  const ip = raw.startsWith('::ffff:') && isIP(raw.slice(7)) === 4 ? raw.slice(7) : raw;
  return isIP(ip) === 0 ? undefined : ip;
}

/** Watches one TLS listener's failed handshakes (call once per listener, before `listen`). */
export function watchTlsFailures(
  server: {
    on(event: 'tlsClientError', listener: (err: Error, socket: Socket) => void): unknown;
    off(event: 'tlsClientError', listener: (err: Error, socket: Socket) => void): unknown;
  },
  listener: string,
  deps: TlsFailureDeps,
): TlsFailureWatch {
  const counter = counterFor(deps.metrics.registry);
  const now = deps.now ?? Date.now;
  const windowMs = (deps.windowSeconds ?? 60) * 1000;
  const maxSources = deps.maxSources ?? 10_000;
  const open = new Map<string, Summary>();

  const record = (s: Summary) => {
    deps.observer?.event({
      'event.category': 'validation',
      'event.action': 'tls-handshake-failed',
      'event.outcome': 'failure',
      'event.reason': s.reason,
      'portcullis.listener': listener,
      'portcullis.aggregate.count': s.count,
      'event.start': new Date(s.first).toISOString(),
      'event.end': new Date(s.last).toISOString(),
      ...(s.ip === undefined ? {} : { 'client.ip': s.ip }),
    });
  };
  const flush = () => {
    const due = [...open.values()];
    open.clear();
    for (const s of due) record(s);
  };
  /** Records the summaries whose window (from their first failure) has ended. */
  const flushDue = () => {
    const t = now();
    for (const [key, s] of open) {
      if (t - s.first < windowMs) continue;
      open.delete(key);
      record(s);
    }
  };
  const onFailure = (err: Error, socket: Socket) => {
    try {
      const reason = tlsFailureReason(err);
      counter.inc({ listener, reason });
      const ip = sourceOf(socket);
      const t = now();
      const key = `${ip ?? ''}\0${reason}`;
      const existing = open.get(key);
      if (existing !== undefined) {
        existing.count++;
        existing.last = t;
        return;
      }
      if (open.size >= maxSources && ip !== undefined) {
        // Too many sources at once: count this one per reason only.
        const folded = open.get(`\0${reason}`);
        if (folded !== undefined) {
          folded.count++;
          folded.last = t;
        } else open.set(`\0${reason}`, { ip: undefined, reason, count: 1, first: t, last: t });
        return;
      }
      open.set(key, { ip, reason, count: 1, first: t, last: t });
    } catch {
      // never thrown into the listener
    }
  };
  server.on('tlsClientError', onFailure);
  const timer = setInterval(flushDue, Math.max(250, Math.floor(windowMs / 4)));
  timer.unref();
  return {
    flush,
    stop() {
      clearInterval(timer);
      server.off('tlsClientError', onFailure);
      flush();
    },
  };
}
