/**
 * Load shedding: while the process is saturated, new requests are refused at once with 503
 * `unavailable` and a `Retry-After`, before any work is done for them, so that the requests
 * already admitted can finish and the process does not fall over.
 *
 * The process is sampled on a timer (not per request): the event-loop delay (p99 over the last
 * interval, from `perf_hooks.monitorEventLoopDelay`), the V8 heap in use against its limit, and the
 * resident set size. A request is shed when the last sample is over any configured threshold.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { getHeapStatistics } from 'node:v8';
import { Denial } from '../problems.ts';

type IntervalHistogram = ReturnType<typeof monitorEventLoopDelay>;

export interface LoadSheddingSettings {
  /** Shed while the event loop lags more than this (p99 over the sample interval). */
  readonly maxEventLoopDelayMs: number;
  /** Shed while the V8 heap in use is above this share of its limit; 100 effectively disables it. */
  readonly maxHeapUsedPercent: number;
  /** Shed while resident memory exceeds this; 0 means no bound. */
  readonly maxRssBytes: number;
  readonly retryAfterSeconds: number;
}

export interface PressureSample {
  readonly eventLoopDelayMs: number;
  readonly heapUsedPercent: number;
  readonly rssBytes: number;
}

export interface PressureMonitor {
  /** The last sample. */
  readonly sample: () => PressureSample;
  /** Throws a 503 {@link Denial} when the last sample is over a threshold. */
  check(settings: LoadSheddingSettings): void;
  stop(): void;
}

export interface PressureMonitorOptions {
  readonly intervalMs?: number;
  /** Replaces the process sampler (tests inject pressure through it). */
  readonly sampler?: () => PressureSample;
}

/** The reason a sample is over the thresholds, or undefined. */
export function overThreshold(sample: PressureSample, settings: LoadSheddingSettings): string | undefined {
  if (sample.eventLoopDelayMs > settings.maxEventLoopDelayMs) return 'overloaded-event-loop';
  if (sample.heapUsedPercent > settings.maxHeapUsedPercent) return 'overloaded-heap';
  if (settings.maxRssBytes > 0 && sample.rssBytes > settings.maxRssBytes) return 'overloaded-rss';
  return undefined;
}

function processSampler(histogram: IntervalHistogram): () => PressureSample {
  let rssBytes = 0;
  return () => {
    const delayMs = histogram.count > 0 ? histogram.percentile(99) / 1e6 : 0;
    histogram.reset();
    const heap = getHeapStatistics();
    try {
      // Reads /proc/self/statm: throws EMFILE when the process is out of descriptors (issue 12:
      // that uncaught throw used to end the process). Keep the last reading then.
      rssBytes = process.memoryUsage.rss();
    } catch {
      // the previous value stands
    }
    return {
      eventLoopDelayMs: delayMs,
      heapUsedPercent: (heap.used_heap_size / heap.heap_size_limit) * 100,
      rssBytes,
    };
  };
}

export function createPressureMonitor(options: PressureMonitorOptions = {}): PressureMonitor {
  let histogram: IntervalHistogram | undefined;
  let sampler = options.sampler;
  if (sampler === undefined) {
    histogram = monitorEventLoopDelay({ resolution: 10 });
    histogram.enable();
    sampler = processSampler(histogram);
  }
  const take = sampler;
  let last = take();
  const timer = setInterval(() => {
    try {
      last = take();
    } catch {
      // a sampler failure keeps the last sample; a timer never throws out of the process
    }
  }, options.intervalMs ?? 500);
  timer.unref();
  return {
    sample: () => last,
    check(settings) {
      const reason = overThreshold(last, settings);
      if (reason !== undefined) {
        throw new Denial('unavailable', reason, {
          headers: { 'retry-after': String(settings.retryAfterSeconds) },
        });
      }
    },
    stop() {
      clearInterval(timer);
      histogram?.disable();
    },
  };
}
