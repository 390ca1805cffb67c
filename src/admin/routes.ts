/**
 * The admin API's observability routes, served on the admin listener (loopback by default; it
 * has no authentication yet, so it must stay on loopback):
 *
 * - `GET /healthz`: the process is alive (200 `{"status":"ok"}`).
 * - `GET /readyz`: every dependency as `ok | degraded | failed`; 503 when any one failed.
 * - `GET /metrics`: Prometheus text exposition of the process registry.
 * - `GET /audit/events`: the audit search of `portcullis audit search` as JSON, paginated.
 */
import type { FastifyInstance, RawServerBase } from 'fastify';
import type { AuditEventInput } from '../audit/event.ts';
import { AuditQueryError, auditPage, DEFAULT_PAGE, parseAuditQuery, queryStoreLog } from '../audit/query.ts';
import { Denial } from '../gateway/problems.ts';
import type { Store } from '../store/index.ts';
import { readiness } from './health.ts';
import type { HealthCheck, Readiness } from './health.ts';
import type { Metrics } from './metrics.ts';

export interface AdminRoutesOptions {
  readonly metrics: Metrics;
  readonly checks: () => readonly HealthCheck[];
  readonly store: Store;
  /** Whether the store sink holds the audit trail (`audit.store.enabled`). */
  readonly auditInStore: () => boolean;
  /** Records reads of the audit trail (an admin action, durable before the answer). */
  readonly audit?: { emitDurable(input: AuditEventInput): Promise<void> } | undefined;
  /** Called with the answer when `/readyz` is not `ready` (for a log line). */
  readonly onNotReady?: ((result: Readiness) => void) | undefined;
}

export function registerAdminRoutes<S extends RawServerBase>(
  app: FastifyInstance<S>,
  options: AdminRoutesOptions,
): void {
  app.get('/healthz', async () => ({ status: 'ok' }));

  app.get('/readyz', async (_request, reply) => {
    const result = await readiness(options.checks());
    if (result.status !== 'ready') options.onNotReady?.(result);
    reply.code(result.status === 'not-ready' ? 503 : 200);
    return result;
  });

  app.get('/metrics', async (_request, reply) => {
    const text = await options.metrics.text();
    reply.header('content-type', options.metrics.contentType);
    return text;
  });

  app.get('/audit/events', async (request, reply) => {
    if (!options.auditInStore()) throw new Denial('not-found', 'audit-store-sink-off');
    let q;
    try {
      q = parseAuditQuery(request.query as Record<string, unknown>);
    } catch (err) {
      if (err instanceof AuditQueryError) {
        throw new Denial('invalid-request', 'audit-query', {
          errors: [{ in: 'query', pointer: `/${err.field}`, rule: err.message }],
        });
      }
      throw err;
    }
    const records = await queryStoreLog(options.store.db, q);
    await options.audit?.emitDurable({
      'event.category': 'admin',
      'event.action': 'audit-search',
      'event.outcome': 'success',
      'portcullis.listener': 'admin',
      'client.ip': request.ip,
      'url.path': '/audit/events',
      'http.request.method': 'GET',
    });
    reply.header('cache-control', 'no-store');
    return auditPage(records, q.limit ?? DEFAULT_PAGE);
  });
}
