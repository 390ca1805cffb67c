/**
 * The admin listener: HTTPS (HTTP/1.1), loopback by default. For now it serves health:
 * `/healthz` (the process is alive) and `/readyz` (configuration compiled and the store
 * answering). The admin API and metrics join it with the audit and console work.
 */
import { randomUUID } from 'node:crypto';
import type { Server } from 'node:https';
import { fastify } from 'fastify';
import type { FastifyInstance } from 'fastify';
import { sql } from 'kysely';
import { Denial, isDenial, problemBody } from '../gateway/problems.ts';
import { applySecurityHeaders } from '../gateway/stages/headers/index.ts';
import type { Store } from '../store/index.ts';
import type { RuntimeHolder } from './gateway-server.ts';
import type { Logger } from './logging.ts';
import { describeError } from './logging.ts';
import { hardenTlsServer, secureContextOptions } from './tls.ts';

export interface AdminServerOptions {
  readonly holder: RuntimeHolder;
  readonly store: Store;
  readonly logger: Logger;
  readonly tls: { certPem: string; keyPem: string };
}

export type AdminApp = FastifyInstance<Server>;

export function createAdminServer(options: AdminServerOptions): AdminApp {
  const app: AdminApp = fastify({
    https: secureContextOptions(options.tls, { alpn: 'http/1.1' }),
    logger: false,
    requestTimeout: 30_000,
    connectionTimeout: 60_000,
    keepAliveTimeout: 5_000,
    bodyLimit: 64 * 1024,
    forceCloseConnections: 'idle',
    return503OnClosing: true,
  });
  hardenTlsServer(app.server);

  app.get('/healthz', async () => ({ status: 'ok' }));

  app.get('/readyz', async (_request, reply) => {
    const checks: Record<string, { status: 'ok' | 'failed'; detail?: string }> = {
      config: { status: 'ok', detail: options.holder.current.version.slice(0, 12) },
    };
    try {
      await sql`select 1`.execute(options.store.db);
      checks.store = { status: 'ok', detail: options.store.kind };
    } catch (err) {
      options.logger.warn(
        { event: 'readiness', check: 'store', error: describeError(err) },
        'store not ready',
      );
      checks.store = { status: 'failed', detail: options.store.kind };
    }
    const ready = Object.values(checks).every((c) => c.status === 'ok');
    reply.code(ready ? 200 : 503);
    return { status: ready ? 'ready' : 'degraded', checks };
  });

  app.setNotFoundHandler(async () => {
    throw new Denial('not-found', 'admin-unrouted');
  });
  app.setErrorHandler(async (err: unknown, _request, reply) => {
    const denial = isDenial(err) ? err : new Denial('internal', 'admin-error', { cause: err });
    if (!isDenial(err))
      options.logger.error({ event: 'admin-error', error: describeError(err) }, 'admin error');
    reply.code(denial.status).header('content-type', 'application/problem+json');
    return reply.send(JSON.stringify(problemBody(denial.code, randomUUID())));
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
