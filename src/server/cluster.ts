/**
 * What a gateway process needs to be one of several: the shared revocation denylist and DPoP
 * replay cache on Redis, the signal bus that keeps every process's caches in step, and the
 * readiness checks and metrics that say when a shared part is missing.
 *
 * Without `redis` in the configuration everything here is per process (one gateway).
 *
 * Signals received, and what they do here:
 *   token-revoked    the token is refused from the next request
 *   api-key-changed  the cached key record is dropped (read again from the store)
 *   keys-changed     the signing keys are re-read (signing, JWKS and verification follow)
 *   config-applied   this process re-reads its configuration file
 * After a gap in the subscription (Redis was unreachable) every cache is revalidated, because a
 * signal may have been missed; and the key set is re-read every `keyRefreshMs` regardless.
 */
import { Counter, Gauge } from 'prom-client';
import type { HealthCheck } from '../admin/health.ts';
import { redisCheck } from '../admin/health.ts';
import type { Metrics } from '../admin/metrics.ts';
import type { Config } from '../config/schema.ts';
import type { LimitBackends } from '../gateway/stages/rate-limit/index.ts';
import type { StoreKeyManager } from '../keys/index.ts';
import { createRevocationList } from '../oauth/revocation.ts';
import type { RevocationList } from '../oauth/revocation.ts';
import { createSignalBus } from '../store/signals.ts';
import type { Signal, SignalBus } from '../store/signals.ts';
import type { Store } from '../store/index.ts';
import { createMemoryReplayCache, createRedisReplayCache } from '../tokens/dpop.ts';
import type { ReplayCache } from '../tokens/dpop.ts';
import type { Logger } from '../log/index.ts';
import { describeError } from '../log/index.ts';

export interface ClusterParts {
  readonly keys: StoreKeyManager;
  readonly apiKeys: { invalidate(id?: string): void };
  /** Re-reads the configuration file (a signal from another process). */
  readonly reload: (trigger: string) => Promise<unknown>;
  /** The configuration version in force. */
  readonly version: () => string;
  /** Cached consents and opt-outs (issue 16). */
  readonly privacy?: { invalidate(): void };
}

export interface Cluster {
  /** The signal bus; undefined without Redis. */
  readonly bus: SignalBus | undefined;
  readonly revocations: RevocationList;
  readonly dpopReplay: ReplayCache;
  /** Readiness checks: Redis, the signal subscription and the rate limiter's mode. */
  readonly checks: readonly HealthCheck[];
  /** Connects the signals to the parts they invalidate (once they exist). */
  attach(parts: ClusterParts): void;
  /** Tells the other processes this one applied configuration `version`. */
  configApplied(version: string): void;
  /** Tells the other processes that a subject's consents or opt-outs changed here. */
  privacyChanged(): void;
  close(): Promise<void>;
}

export interface ClusterOptions {
  readonly config: Config;
  readonly store: Store;
  readonly backends: LimitBackends;
  readonly metrics: Metrics;
  readonly logger: Logger;
  /** How often the key set is re-read whatever the signals say (default 30 s). */
  readonly keyRefreshMs?: number;
}

export async function setupCluster(options: ClusterOptions): Promise<Cluster> {
  const { config, store, backends, metrics, logger } = options;
  const nodes = config.cluster.nodes;
  const registers = [metrics.registry];
  new Gauge({
    name: 'portcullis_rate_limit_local',
    help: '1 while Redis is unreachable and rate limits are enforced per process (limit / cluster.nodes)',
    registers,
    aggregator: 'max', // --workers: 1 when any worker is on local limits
    collect() {
      this.set(backends.degraded().length > 0 ? 1 : 0);
    },
  });
  const limiterCheck: HealthCheck = {
    name: 'rateLimits',
    check: () => {
      const down = backends.degraded();
      return down.length > 0
        ? { status: 'degraded', detail: `local limits: 1/${String(nodes)} of each limit per process` }
        : { status: 'ok', detail: config.rateLimits.backend };
    },
  };
  // A change made elsewhere (the CLI, another process) shows within this time even unsignalled.
  let timer: NodeJS.Timeout | undefined;
  const refreshEvery = (refresh: () => Promise<unknown>) => {
    timer = setInterval(() => void refresh().catch(() => undefined), options.keyRefreshMs ?? 30_000);
    timer.unref();
  };
  const redis = config.redis;
  if (redis === undefined) {
    return {
      bus: undefined,
      // Without Redis no signal reaches this process: a revocation made elsewhere (the CLI:
      // `users revoke`) must show within 1 s, so "not revoked" answers are reused for 0.5 s only.
      revocations: createRevocationList({ db: store.db, cacheTtlMs: 500 }),
      dpopReplay: createMemoryReplayCache(),
      checks: [limiterCheck],
      attach: ({ keys }) => {
        refreshEvery(() => keys.refresh());
      },
      configApplied: () => undefined,
      privacyChanged: () => undefined,
      close: () => {
        clearInterval(timer);
        return Promise.resolve();
      },
    };
  }

  new Gauge({
    name: 'portcullis_signals_subscribed',
    help: '1 while this process receives signals from the others (Redis pub/sub)',
    registers,
    aggregator: 'min', // --workers: 0 when any worker misses signals
    collect() {
      this.set(bus.subscribed ? 1 : 0);
    },
  });
  const received = new Counter({
    name: 'portcullis_signals_received_total',
    help: 'Signals received from other processes, by kind (invalid: not a valid signal)',
    labelNames: ['kind'],
    registers,
  });
  const published = new Counter({
    name: 'portcullis_signals_published_total',
    help: 'Signals published, by kind and outcome (failed: Redis unreachable)',
    labelNames: ['kind', 'outcome'],
    registers,
  });
  const resyncs = new Counter({
    name: 'portcullis_signals_resyncs_total',
    help: 'Caches revalidated after a gap in the signal subscription',
    registers,
  });

  const bus = createSignalBus({
    url: redis.url,
    keyPrefix: redis.keyPrefix,
    onState: (state, error) => {
      if (state === 'down') {
        revocations.forgetUnrevoked();
        logger.warn(
          { event: 'signals-down', error },
          'signal subscription lost: caches fall back to short lifetimes until it is back',
        );
      } else logger.info({ event: 'signals-up' }, 'signal subscription live');
    },
    onInvalid: () => received.inc({ kind: 'invalid' }),
  });
  const publish = async (signal: Signal): Promise<boolean> => {
    const ok = await bus.publish(signal);
    published.inc({ kind: signal.kind, outcome: ok ? 'ok' : 'failed' });
    if (!ok) {
      logger.warn(
        { event: 'signal-not-published', kind: signal.kind },
        'signal not published (Redis unreachable); other processes catch up when it is back',
      );
    }
    return ok;
  };
  const client = await backends.redis.get(redis.url);
  const revocations = createRevocationList({
    db: store.db,
    denylist: { redis: client, keyPrefix: redis.keyPrefix },
    signals: {
      get subscribed() {
        return bus.subscribed;
      },
      publish,
    },
    onError: (what, err) =>
      logger.warn(
        { event: 'revocation-propagation-failed', what, error: describeError(err) },
        'a revocation is in the store but could not be shared through Redis yet',
      ),
  });
  const signalsCheck: HealthCheck = {
    name: 'signals',
    check: () =>
      bus.subscribed ? { status: 'ok' } : { status: 'degraded', detail: 'not subscribed: caches may lag' },
  };

  const offs: (() => void)[] = [];
  return {
    bus,
    revocations,
    dpopReplay: createRedisReplayCache(client, redis.keyPrefix),
    checks: [redisCheck(client), signalsCheck, limiterCheck],
    attach(parts) {
      const { keys, apiKeys } = parts;
      let refreshingForSignal = 0;
      const refreshKeys = async (why: string) => {
        refreshingForSignal++;
        try {
          await keys.refresh();
        } catch (err) {
          logger.warn({ event: 'keys-refresh-failed', why, error: describeError(err) }, 'key refresh failed');
        } finally {
          refreshingForSignal--;
        }
      };
      offs.push(
        bus.subscribe((signal) => {
          received.inc({ kind: signal.kind });
          switch (signal.kind) {
            case 'token-revoked':
              revocations.noteRevoked(signal.jti, signal.exp);
              break;
            case 'api-key-changed':
              apiKeys.invalidate(signal.id);
              break;
            case 'keys-changed':
              void refreshKeys('signal');
              break;
            case 'config-applied':
              if (signal.version !== parts.version()) void parts.reload('cluster-signal');
              break;
            case 'privacy-changed':
              parts.privacy?.invalidate();
              break;
          }
        }),
        bus.onResync(() => {
          resyncs.inc();
          logger.info({ event: 'signals-resync' }, 'revalidating caches after a gap in the signals');
          apiKeys.invalidate();
          parts.privacy?.invalidate();
          void refreshKeys('resync');
          revocations.resync().then(
            (copied) => logger.info({ event: 'denylist-resynced', copied }, 'revocation denylist resynced'),
            (err: unknown) =>
              logger.warn(
                { event: 'denylist-resync-failed', error: describeError(err) },
                'revocation denylist not resynced',
              ),
          );
        }),
        // Rotations made here (timer, admin) are announced; re-reads caused by a signal are not.
        keys.onChange(() => {
          if (refreshingForSignal === 0) void publish({ kind: 'keys-changed' });
        }),
      );
      refreshEvery(() => refreshKeys('interval'));
    },
    configApplied(version) {
      void publish({ kind: 'config-applied', version });
    },
    privacyChanged() {
      void publish({ kind: 'privacy-changed' });
    },
    async close() {
      clearInterval(timer);
      for (const off of offs) off();
      await bus.close();
    },
  };
}
