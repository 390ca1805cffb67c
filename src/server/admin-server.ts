/**
 * The admin listener: HTTPS (HTTP/1.1), loopback by default. It serves `/healthz`, `/readyz`
 * (each dependency `ok | degraded | failed`), `/metrics` (Prometheus) and `/audit/events` (see
 * src/admin/routes.ts). It has NO authentication yet: it must stay on loopback (a non-loopback
 * `admin.host` needs a documented admin-loopback exception).
 */
import { randomUUID } from 'node:crypto';
import type { Server } from 'node:https';
import { fastify } from 'fastify';
import type { FastifyInstance } from 'fastify';
import { Denial, isDenial, problemBody } from '../gateway/problems.ts';
import { applySecurityHeaders } from '../gateway/stages/headers/index.ts';
import type { AuditEventInput } from '../audit/event.ts';
import { auditCheck, circuitsCheck, configCheck, storeCheck } from '../admin/health.ts';
import type { AuditHealthSource, HealthCheck } from '../admin/health.ts';
import { createMetrics } from '../admin/metrics.ts';
import type { Metrics } from '../admin/metrics.ts';
import { registerAdminRoutes } from '../admin/routes.ts';
import type { Store } from '../store/index.ts';
import type { RuntimeHolder } from './gateway-server.ts';
import type { Logger } from '../log/index.ts';
import { describeError } from '../log/index.ts';
import { hardenTlsServer, secureContextOptions } from './tls.ts';
import { ADMIN_HANDSHAKE_TIMEOUT_MS } from './protect-listeners.ts';

export interface AdminServerOptions {
  readonly holder: RuntimeHolder;
  readonly store: Store;
  readonly logger: Logger;
  readonly tls: { certPem: string; keyPem: string };
  /** The process metrics (default: a registry of the admin server's own). */
  readonly metrics?: Metrics | undefined;
  /** The audit log: its sinks join `/readyz`, and `/audit/events` reads are audited. */
  readonly audit?: (AuditHealthSource & { emitDurable(input: AuditEventInput): Promise<void> }) | undefined;
  /** More readiness checks (Redis, …) beside config, store, audit and upstream circuits. */
  readonly checks?: readonly HealthCheck[] | undefined;
  /** What a store outage makes `/readyz` say (default `failed`; see storeCheck). */
  readonly storeOutage?: 'failed' | 'degraded' | undefined;
}

export type AdminApp = FastifyInstance<Server>;

export function createAdminServer(options: AdminServerOptions): AdminApp {
  const app: AdminApp = fastify({
    https: {
      ...secureContextOptions(options.tls, { alpn: 'http/1.1' }),
      handshakeTimeout: ADMIN_HANDSHAKE_TIMEOUT_MS, // issue 12
    },
    logger: false,
    requestTimeout: 30_000,
    connectionTimeout: 60_000,
    keepAliveTimeout: 5_000,
    bodyLimit: 64 * 1024,
    forceCloseConnections: 'idle',
    return503OnClosing: true,
  });
  hardenTlsServer(app.server);

  const metrics = options.metrics ?? createMetrics();
  const checks: HealthCheck[] = [
    configCheck(() => options.holder.current.version),
    storeCheck(options.store, { outage: options.storeOutage ?? 'failed' }),
    ...(options.audit === undefined ? [] : [auditCheck(options.audit)]),
    circuitsCheck(metrics),
    ...(options.checks ?? []),
  ];
  registerAdminRoutes(app, {
    metrics,
    checks: () => checks,
    store: options.store,
    auditInStore: () => options.holder.current.loaded.config.audit.store.enabled,
    audit: options.audit,
    onNotReady: (result) => {
      const problems = Object.entries(result.checks).filter(([, c]) => c.status !== 'ok');
      options.logger.warn(
        { event: 'readiness', status: result.status, checks: Object.fromEntries(problems) },
        'not fully ready',
      );
    },
  });

  app.setNotFoundHandler(async () => {
    throw new Denial('not-found', 'admin-unrouted');
  });
  app.setErrorHandler(async (err: unknown, _request, reply) => {
    const denial = isDenial(err) ? err : new Denial('internal', 'admin-error', { cause: err });
    if (!isDenial(err))
      options.logger.error({ event: 'admin-error', error: describeError(err) }, 'admin error');
    reply.code(denial.status).header('content-type', 'application/problem+json');
    return reply.send(JSON.stringify(problemBody(denial.code, randomUUID(), denial.errors)));
  });
  app.addHook('onSend', async (_request, reply, payload) => {
    applySecurityHeaders(
      (n, v) => {
        reply.header(n, v);
      },
      (n) => reply.getHeader(n),
      (n) => {
        reply.removeHeader(n);
      },
      { authenticated: true, error: reply.statusCode >= 400 },
    );
    return payload;
  });
  return app;
}
