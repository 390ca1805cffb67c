/**
 * Issue 12 wiring: the connection guard (connection-guard.ts) and the HTTP/2 limits
 * (http2-guard.ts) for each listener, with their refusals counted in the metrics and summarised
 * once per window in the log and the audit trail. One call per listener, before `listen`.
 *
 * The admin and redirect listeners get fixed, smaller caps (they serve operators and redirects).
 *
 * @example
 * ```ts
 * const guard = protectGateway(server, config.gateway, deps);
 * await listen(server, port, host);
 * // forced shutdown:
 * guard.destroyAll();
 * ```
 */
import type { Server } from 'node:net';
import type { Http2SecureServer } from 'node:http2';
import type { Metrics } from '../admin/metrics.ts';
import type { Config } from '../config/schema.ts';
import { guardConnections } from './connection-guard.ts';
import type { ConnectionGuard, ConnectionGuardHooks, RefusalSummary } from './connection-guard.ts';
import { guardHttp2 } from './http2-guard.ts';
import type { Logger } from '../log/index.ts';
import { describeError } from '../log/index.ts';
import type { Observer } from './observe.ts';

export interface ProtectionDeps {
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly observer?: Observer | undefined;
}

/** Admin listener caps: operators and a scraper, never a crowd. */
export const ADMIN_LIMITS = { maxConnections: 128, perIp: 32 } as const;
/** Plain-HTTP redirect listener caps. */
export const REDIRECT_LIMITS = { maxConnections: 1024, perIp: 64 } as const;
/** The TLS handshake timeout of the admin listener. */
export const ADMIN_HANDSHAKE_TIMEOUT_MS = 10_000;

function describe(summary: RefusalSummary): string {
  const reasons = Object.entries(summary.reasons)
    .map(([reason, n]) => `${reason} ${String(n)}`)
    .join(', ');
  const top = summary.topSources.map((s) => `${s.ip} ${String(s.count)}`).join(', ');
  return `${String(summary.total)} connections refused in ${String(summary.windowMs / 1000)} s (${reasons}); most from ${top === '' ? 'n/a' : top}`;
}

function hooksFor(deps: ProtectionDeps): ConnectionGuardHooks {
  return {
    refused: (listener, reason) => {
      deps.metrics.connectionRefused(listener, reason);
    },
    summary: (summary) => {
      deps.logger.warn(
        {
          event: 'connections-refused',
          listener: summary.listener,
          total: summary.total,
          reasons: summary.reasons,
          topSources: summary.topSources,
        },
        'connections refused',
      );
      const top = summary.topSources[0];
      deps.observer?.event({
        'event.category': 'rate-limit',
        'event.action': 'connections-refused',
        'event.outcome': 'failure',
        'event.reason': describe(summary),
        ...(top === undefined || top.ip === 'other' ? {} : { 'client.ip': top.ip.replace(/::\/64$/, '::') }),
        'portcullis.listener': summary.listener,
      });
    },
    error: (err) => {
      deps.logger.warn({ event: 'listener-error', error: describeError(err) }, 'listener error');
    },
  };
}

/** The gateway listener: configured caps, HTTP/2 stream and reset limits. */
export function protectGateway(
  server: Http2SecureServer,
  gateway: Config['gateway'],
  deps: ProtectionDeps & { readonly correlationHeader: () => string },
): ConnectionGuard {
  const limits = gateway.connections;
  const h2 = guardHttp2(
    server,
    {
      maxConcurrentStreams: limits.http2MaxConcurrentStreams,
      maxResets: limits.http2MaxResets,
      requestMs: gateway.timeouts.requestMs,
      correlationHeader: deps.correlationHeader,
    },
    {
      resetFlood: (ip, penalized) => {
        deps.metrics.connectionRefused('gateway', 'http2-reset-flood');
        deps.logger.warn(
          { event: 'http2-reset-flood', clientIp: ip, sourcePenalized: penalized },
          'HTTP/2 connection closed: streams reset faster than completed',
        );
      },
    },
  );
  const guard = guardConnections(
    server,
    {
      listener: 'gateway',
      maxConnections: limits.max,
      perIp: limits.perIp,
      connectionsCheckingIntervalMs: checkingInterval(gateway.timeouts.headersMs),
    },
    { ...hooksFor(deps), penalized: h2.penalized },
  );
  deps.metrics.connectionsOpen('gateway', guard.open);
  return {
    open: guard.open,
    effectiveMax: guard.effectiveMax,
    destroyAll: () => {
      guard.destroyAll();
    },
    stop: () => {
      guard.stop();
      h2.stop();
    },
  };
}

/** The admin listener (HTTPS, HTTP/1.1). */
export function protectAdmin(server: Server, deps: ProtectionDeps): ConnectionGuard {
  const guard = guardConnections(server, { listener: 'admin', ...ADMIN_LIMITS }, hooksFor(deps));
  deps.metrics.connectionsOpen('admin', guard.open);
  return guard;
}

/** The plain-HTTP redirect listener. */
export function protectRedirect(server: Server, deps: ProtectionDeps): ConnectionGuard {
  const guard = guardConnections(server, { listener: 'redirect', ...REDIRECT_LIMITS }, hooksFor(deps));
  deps.metrics.connectionsOpen('redirect', guard.open);
  return guard;
}

/**
 * The period of Node's HTTP/1.1 timeout checks: a quarter of the headers timeout, between
 * 250 ms and 1 s, so a timeout fires within 1.25× its setting (Node's default period is 30 s).
 */
export function checkingInterval(headersMs: number): number {
  return Math.min(1_000, Math.max(250, Math.floor(headersMs / 4)));
}
