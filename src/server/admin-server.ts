/**
 * The admin listener: HTTPS (HTTP/1.1), loopback by default (a non-loopback `admin.host` needs a
 * documented admin-loopback exception). It serves `/healthz` and `/readyz` anonymously, and
 * `/metrics` and the admin API (`/admin/v1/…`, `/audit/events`) only to an authenticated
 * administrator: an admin-API access token, or a client certificate when
 * `admin.clientCertificates` is set (the handshake then asks for one, never requires it).
 */
import { readFileSync } from 'node:fs';
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
import { registerAdminApi } from '../admin/api/index.ts';
import type { AdminApiOptions } from '../admin/api/index.ts';
import type { KeySummary } from '../keys/index.ts';
import type { Users } from '../oauth/users.ts';
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
  /** The built-in authorization server's tokens (admin-API bearer tokens); none: certificates only. */
  readonly tokens?: AdminApiOptions['tokens'];
  /** The user directory (admin tokens name users; the admin API manages them). */
  readonly users?: Users | undefined;
  /** Reloads the configuration (`POST /admin/v1/config/reload`). */
  readonly reload?: AdminApiOptions['reload'];
  /** The signing keys (`GET /admin/v1/keys`). */
  readonly keys?: { list(): KeySummary[] } | undefined;
}

export type AdminApp = FastifyInstance<Server>;

export function createAdminServer(options: AdminServerOptions): AdminApp {
  const loaded = options.holder.current.loaded;
  const clientCas = (loaded.config.admin.clientCertificates?.caFiles ?? []).map((f) =>
    readFileSync(loaded.resolvePath(f), 'utf8'),
  );
  const app: AdminApp = fastify({
    https: {
      ...secureContextOptions(options.tls, { alpn: 'http/1.1' }),
      ...(clientCas.length === 0 ? {} : { requestCert: true, rejectUnauthorized: false, ca: clientCas }),
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
  void app.register(async (scope) => {
    // Bodies reach the admin API's validator as bytes (the gateway's validator parses them).
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, done) => {
      done(null, body);
    });
    const audit = options.audit ?? { emitDurable: () => Promise.resolve() };
    const guard = await registerAdminApi(scope, {
      loaded: () => options.holder.current.loaded,
      store: options.store,
      audit,
      users: options.users,
      keys: options.keys,
      tokens: options.tokens,
      reload: options.reload,
    });
    registerAdminRoutes(scope, {
      metrics,
      checks: () => checks,
      guard,
      onNotReady: (result) => {
        const problems = Object.entries(result.checks).filter(([, c]) => c.status !== 'ok');
        options.logger.warn(
          { event: 'readiness', status: result.status, checks: Object.fromEntries(problems) },
          'not fully ready',
        );
      },
    });
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
