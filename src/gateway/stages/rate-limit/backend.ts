/**
 * Where counters live. Memory limiters are kept per process and reused across configuration
 * reloads (same name and window: same counters), so a reload neither forgives an offender nor
 * resets a budget. Redis limiters (`RateLimiterRedis`) count for every gateway on the same Redis
 * and carry a memory limiter as insurance: while Redis is unreachable each process enforces its
 * share of each limit locally — the limit divided by `cluster.nodes`, so that N processes together
 * stay within it — and says so once per outage (a log line and {@link onDegraded}), and again when
 * Redis is back ({@link onRestored}).
 */
import { RateLimiterMemory, RateLimiterRedis } from 'rate-limiter-flexible';
import type { RateLimiterAbstract } from 'rate-limiter-flexible';
import type { Logger } from '../../../log/index.ts';
import { createRedisConnections, redactRedisUrl } from '../../../store/redis.ts';
import type { RedisConnections } from '../../../store/redis.ts';
import type { Dimension, Window } from './config.ts';

export type Limiter = RateLimiterAbstract;

export interface DegradedEvent {
  /** The Redis endpoint (scheme, host and port; never credentials). */
  readonly redis: string;
  /** A short error code, e.g. `ECONNREFUSED`. */
  readonly error: string;
}

export interface LimitedEvent {
  readonly dimension: Dimension;
  /** `enforced` answered 429; `shadow` would have. */
  readonly outcome: 'enforced' | 'shadow';
  /** Tarpit: how long the key is now blocked, and how many violations it has in the window. */
  readonly blockSeconds?: number;
  readonly violations?: number;
}

type Listener<T> = (event: T) => void;
const degradedListeners = new Set<Listener<DegradedEvent>>();
const restoredListeners = new Set<Listener<{ readonly redis: string }>>();
const limitedListeners = new Set<Listener<LimitedEvent>>();

/**
 * Calls `listener` each time a Redis used for rate limits becomes unreachable (once per outage),
 * e.g. to count it as a metric. Returns a function that removes the listener.
 */
export function onDegraded(listener: Listener<DegradedEvent>): () => void {
  degradedListeners.add(listener);
  return () => degradedListeners.delete(listener);
}

/** Calls `listener` when a Redis used for rate limits is reachable again after an outage. */
export function onRestored(listener: Listener<{ readonly redis: string }>): () => void {
  restoredListeners.add(listener);
  return () => restoredListeners.delete(listener);
}

/** Calls `listener` for every request refused (or, in shadow mode, that would be) by a limit. */
export function onLimited(listener: Listener<LimitedEvent>): () => void {
  limitedListeners.add(listener);
  return () => limitedListeners.delete(listener);
}

export function emitLimited(event: LimitedEvent): void {
  for (const l of limitedListeners) l(event);
}

export interface RedisTarget {
  readonly url: string;
  readonly keyPrefix: string;
}

/** Counters and connections that outlive a configuration version. */
export interface LimitBackends {
  readonly logger: Logger | undefined;
  readonly redis: RedisConnections;
  /** A limiter counting `window` under `name`; with `redis`, shared through it. */
  limiter(name: string, window: Window, redis?: RedisTarget): Promise<Limiter>;
  /** Redis endpoints used for rate limits that are unreachable now (limits are local). */
  degraded(): readonly string[];
  /** A value kept across configuration versions (e.g. an in-memory idempotency store). */
  memo<T>(key: string, create: () => T): T;
  close(): Promise<void>;
}

/** Violations are counted, not limited: the limiter never refuses. */
export const UNLIMITED = 1_000_000_000;

/** The share of `points` one of `nodes` processes enforces alone (at least 1). */
export function localShare(points: number, nodes: number): number {
  if (points >= UNLIMITED || nodes <= 1) return points;
  return Math.max(1, Math.floor(points / nodes));
}

export function createLimitBackends(options: { logger?: Logger; nodes?: number } = {}): LimitBackends {
  const { logger } = options;
  const nodes = options.nodes ?? 1;
  /** Redis endpoints some limiter counts on: only their outages degrade rate limiting. */
  const limiting = new Set<string>();
  /** Unreachable endpoints and the error that said so. */
  const degraded = new Map<string, string>();
  const redis = createRedisConnections({
    listener: {
      down: (url, error) => {
        if (degraded.has(url)) return;
        degraded.set(url, error);
        logger?.warn(
          { event: 'redis-unavailable', redis: url, error },
          'Redis unreachable: rate limits fall back to per-process limits; Redis-backed idempotency refuses with 503',
        );
        if (limiting.has(url)) {
          for (const l of degradedListeners) l({ redis: url, error });
        }
      },
      up: (url) => {
        if (!degraded.delete(url)) return;
        logger?.info(
          { event: 'redis-available', redis: url },
          'Redis reachable again: shared limits restored',
        );
        if (limiting.has(url)) {
          for (const l of restoredListeners) l({ redis: url });
        }
      },
    },
  });
  const memory = new Map<string, Limiter>();
  const memos = new Map<string, unknown>();
  const stored = new Map<string, Promise<Limiter>>();
  const memoryLimiter = (name: string, window: Window): Limiter => {
    const id = `${name}:${String(window.points)}:${String(window.seconds)}`;
    let limiter = memory.get(id);
    if (limiter === undefined) {
      limiter = new RateLimiterMemory({ keyPrefix: id, points: window.points, duration: window.seconds });
      memory.set(id, limiter);
    }
    return limiter;
  };
  return {
    logger,
    redis,
    limiter: (name, window, target) => {
      if (target === undefined) return Promise.resolve(memoryLimiter(name, window));
      const id = `${target.url}|${target.keyPrefix}|${name}:${String(window.points)}:${String(window.seconds)}`;
      let limiter = stored.get(id);
      if (limiter === undefined) {
        const shown = redactRedisUrl(target.url);
        // Already known to be down (another part connected first): this outage now degrades limits.
        const error = degraded.get(shown);
        if (!limiting.has(shown) && error !== undefined) {
          for (const l of degradedListeners) l({ redis: shown, error });
        }
        limiting.add(shown);
        limiter = redis.get(target.url).then((client) => {
          return new RateLimiterRedis({
            storeClient: client,
            keyPrefix: `${target.keyPrefix}rl:${name}:${String(window.points)}:${String(window.seconds)}`,
            points: window.points,
            duration: window.seconds,
            rejectIfRedisNotReady: true,
            insuranceLimiter: memoryLimiter(`insurance:${name}`, {
              points: localShare(window.points, nodes),
              seconds: window.seconds,
            }),
          });
        });
        stored.set(id, limiter);
      }
      return limiter;
    },
    degraded: () => [...degraded.keys()].filter((url) => limiting.has(url)),
    memo: <T>(key: string, create: () => T): T => {
      if (!memos.has(key)) memos.set(key, create());
      return memos.get(key) as T;
    },
    close: () => redis.close(),
  };
}
