/**
 * Readiness checks for `GET /readyz`. Each dependency reports `ok`, `degraded` (serving, with
 * reduced guarantees: Redis down and the limiter on local counters, an audit sink spooling to
 * disk, an upstream circuit open) or `failed` (this process should not get traffic: the store
 * does not answer, audit events are being dropped). Any `failed` check makes `/readyz` answer
 * 503. A check that does not answer within its deadline reports its `onTimeout` status: `failed`
 * unless its dependency's outage only degrades service.
 *
 * Details are short, fixed words and counts: never connection strings, hosts or errors.
 */
import { sql } from 'kysely';
import type { AuditMetrics } from '../audit/log.ts';
import type { Store } from '../store/index.ts';
import type { Metrics } from './metrics.ts';

export type HealthStatus = 'ok' | 'degraded' | 'failed';

export interface CheckResult {
  readonly status: HealthStatus;
  readonly detail?: string;
}

export interface HealthCheck {
  /** The key in the `/readyz` answer: `config`, `store`, `audit`, `redis`, `upstreams`, … */
  readonly name: string;
  check(): CheckResult | Promise<CheckResult>;
  /**
   * What a check that misses its deadline reports (default `failed`). A dependency whose outage
   * only degrades service (the store with Redis configured) is `degraded` when it is merely slow
   * or silent too: a blackholed server must not take every node out of the pool.
   */
  readonly onTimeout?: HealthStatus;
}

export interface Readiness {
  /** `ready` (all ok), `degraded` (none failed) or `not-ready` (503). */
  readonly status: 'ready' | 'degraded' | 'not-ready';
  readonly checks: Record<string, CheckResult>;
}

const DEFAULT_TIMEOUT_MS = 2000;

async function runOne(c: HealthCheck, timeoutMs: number): Promise<CheckResult> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<CheckResult>((ok) => {
    timer = setTimeout(() => {
      ok({ status: c.onTimeout ?? 'failed', detail: 'timeout' });
    }, timeoutMs);
  });
  try {
    return await Promise.race([Promise.resolve().then(() => c.check()), timeout]);
  } catch {
    return { status: 'failed', detail: 'error' };
  } finally {
    clearTimeout(timer);
  }
}

/** Runs every check concurrently, each within `timeoutMs`. */
export async function readiness(
  checks: readonly HealthCheck[],
  timeoutMs = DEFAULT_TIMEOUT_MS,
): Promise<Readiness> {
  const results = await Promise.all(checks.map((c) => runOne(c, timeoutMs)));
  const out: Record<string, CheckResult> = {};
  checks.forEach((c, i) => {
    out[c.name] = results[i] ?? { status: 'failed' };
  });
  const all = Object.values(out);
  const status = all.some((r) => r.status === 'failed')
    ? 'not-ready'
    : all.some((r) => r.status === 'degraded')
      ? 'degraded'
      : 'ready';
  return { status, checks: out };
}

/** The configuration in force (compiled; its version prefix as detail). */
export function configCheck(version: () => string): HealthCheck {
  return { name: 'config', check: () => ({ status: 'ok', detail: version().slice(0, 12) }) };
}

/**
 * The store answers a trivial query. Unreachable is `failed` by default; `degraded` where the
 * processes keep serving without it (several gateways on one PostgreSQL: tokens are checked on
 * cached keys and state changes are refused; taking every node out of the pool helps nobody).
 */
export function storeCheck(store: Store, options: { outage?: 'failed' | 'degraded' } = {}): HealthCheck {
  const down: HealthStatus = options.outage ?? 'failed';
  return {
    name: 'store',
    onTimeout: down,
    check: async () => {
      try {
        await sql`select 1`.execute(store.db);
        return { status: 'ok', detail: store.kind };
      } catch {
        return { status: down, detail: `${store.kind} unreachable` };
      }
    },
  };
}

/** What the audit check reads from the log (its prom-client metrics). */
export interface AuditHealthSource {
  readonly metrics: Pick<AuditMetrics, 'spooled' | 'dropped'>;
}

/**
 * The audit sinks: `degraded` while any sink spools to disk (nothing lost yet), `failed` when a
 * spool overflowed (events were dropped) within the last `dropWindowMs` (default 5 minutes).
 */
export function auditCheck(
  audit: AuditHealthSource,
  options: { dropWindowMs?: number; now?: () => number } = {},
): HealthCheck {
  const window = options.dropWindowMs ?? 5 * 60_000;
  const now = options.now ?? Date.now;
  let lastDropped = 0;
  let droppedAt: number | undefined;
  return {
    name: 'audit',
    check: async () => {
      const [spooled, dropped] = await Promise.all([
        audit.metrics.spooled.get(),
        audit.metrics.dropped.get(),
      ]);
      const totalDropped = dropped.values.reduce((n, v) => n + v.value, 0);
      if (totalDropped > lastDropped) {
        lastDropped = totalDropped;
        droppedAt = now();
      }
      if (droppedAt !== undefined && now() - droppedAt < window) {
        return { status: 'failed', detail: 'events dropped (spool full)' };
      }
      const spooling = spooled.values.filter((v) => v.value > 0).map((v) => String(v.labels.sink));
      if (spooling.length > 0)
        return { status: 'degraded', detail: `spooling: ${spooling.sort().join(', ')}` };
      return { status: 'ok' };
    },
  };
}

/** The subset of an ioredis client the Redis check uses. */
export interface PingableRedis {
  readonly status: string;
  ping(): Promise<string>;
}

/**
 * Redis answers PING. Unreachable is `degraded` by default (limits fall back to local counters);
 * pass `required: true` where Portcullis cannot work without it.
 */
export function redisCheck(redis: PingableRedis, options: { required?: boolean } = {}): HealthCheck {
  const down: HealthStatus = options.required === true ? 'failed' : 'degraded';
  return {
    name: 'redis',
    onTimeout: down,
    check: async () => {
      if (redis.status !== 'ready') return { status: down, detail: 'unreachable' };
      try {
        return (await redis.ping()) === 'PONG'
          ? { status: 'ok' }
          : { status: down, detail: 'unexpected reply' };
      } catch {
        return { status: down, detail: 'unreachable' };
      }
    },
  };
}

/** Upstream circuit breakers, as reported to the metrics: any open one is `degraded`. */
export function circuitsCheck(metrics: Pick<Metrics, 'circuits'>): HealthCheck {
  return {
    name: 'upstreams',
    check: () => {
      const open: string[] = [];
      let halfOpen = 0;
      for (const [name, state] of metrics.circuits()) {
        if (state === 'open') open.push(name);
        else if (state === 'half-open') halfOpen++;
      }
      if (open.length > 0) {
        return { status: 'degraded', detail: `open circuits: ${open.sort().slice(0, 20).join(', ')}` };
      }
      return halfOpen > 0 ? { status: 'ok', detail: `${String(halfOpen)} half-open` } : { status: 'ok' };
    },
  };
}
