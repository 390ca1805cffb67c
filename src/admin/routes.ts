/**
 * The admin listener's observability routes (loopback by default):
 *
 * - `GET /healthz`: the process is alive (200 `{"status":"ok"}`); anonymous.
 * - `GET /readyz`: every dependency as `ok | degraded | failed`; 503 when any one failed; anonymous.
 * - `GET /metrics`: Prometheus text exposition of the process registry, for an administrator's
 *   bearer token or client certificate (src/admin/api/auth.ts), as Prometheus scrapes do.
 *
 * `GET /audit/events` and everything under `/admin/v1` are the admin API (src/admin/api).
 */
import type { FastifyInstance } from 'fastify';
import type { AdminGuard } from './api/index.ts';
import { readiness } from './health.ts';
import type { HealthCheck, Readiness } from './health.ts';
import type { Metrics } from './metrics.ts';

export interface AdminRoutesOptions {
  readonly metrics: Metrics;
  readonly checks: () => readonly HealthCheck[];
  /** Authenticates `/metrics`. */
  readonly guard: AdminGuard;
  /** Called with the answer when `/readyz` is not `ready` (for a log line). */
  readonly onNotReady?: ((result: Readiness) => void) | undefined;
}

export function registerAdminRoutes(app: FastifyInstance, options: AdminRoutesOptions): void {
  app.get('/healthz', async () => ({ status: 'ok' }));

  app.get('/readyz', async (_request, reply) => {
    const result = await readiness(options.checks());
    if (result.status !== 'ready') options.onNotReady?.(result);
    reply.code(result.status === 'not-ready' ? 503 : 200);
    return result;
  });

  app.get('/metrics', async (request, reply) => {
    await options.guard.protect(request, reply, '/metrics', 'metrics:read');
    const text = await options.metrics.text();
    reply.header('content-type', options.metrics.contentType);
    return text;
  });
}
