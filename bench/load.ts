/**
 * One load run with autocannon, with exact latencies: autocannon's own histogram keeps whole
 * milliseconds, which is too coarse on loopback, so every response time (a float in ms) is kept
 * here and the percentiles computed from them.
 */
import autocannon from 'autocannon';
import type { Instance } from 'autocannon';

export interface LoadTarget {
  /** Row name in the table. */
  name: string;
  url: string;
  /** The status every response must have. */
  expectStatus: number;
  /** For https: SNI name and the CA to trust. */
  servername?: string;
  ca?: string;
  /** Default GET without a body. */
  method?: 'GET' | 'POST';
  headers?: Record<string, string>;
  /** A Buffer for bytes that are not valid UTF-8. */
  body?: string | Buffer;
}

export interface LoadOptions {
  durationS: number;
  connections: number;
}

export interface Measurement {
  target: string;
  /** Responses per second (all statuses) over the run. */
  rps: number;
  /** Latency percentiles in ms, over every response. */
  p50: number;
  p99: number;
  responses: number;
  /** Responses whose status was not the expected one. */
  unexpected: number;
  /** Connection errors, timeouts included. */
  errors: number;
  /** Responses by status code. */
  statuses: Record<number, number>;
}

let active: Instance | undefined;

/** Stops the load run in progress, if any (Ctrl-C). */
export function stopActiveLoad(): void {
  active?.stop();
}

/** Exact percentile (nearest rank) of sorted values. */
export function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

export function measure(target: LoadTarget, options: LoadOptions): Promise<Measurement> {
  let latencies = new Float64Array(1 << 16);
  let count = 0;
  let unexpected = 0;
  const statuses: Record<number, number> = {};
  return new Promise((ok, fail) => {
    const https = target.url.startsWith('https:');
    const instance = autocannon(
      {
        url: target.url,
        connections: options.connections,
        pipelining: 1,
        duration: options.durationS,
        timeout: 10,
        ...(target.method === undefined ? {} : { method: target.method }),
        ...(target.headers === undefined ? {} : { headers: target.headers }),
        ...(target.body === undefined ? {} : { body: target.body }),
        // autocannon 8 passes tlsOptions to tls.connect but forces rejectUnauthorized: false
        // (lib/httpClient.js), so run.ts verifies the certificate against the CA once beforehand.
        ...(https ? { servername: target.servername, tlsOptions: { ca: target.ca } } : {}),
      },
      (error, result) => {
        active = undefined;
        if (error) {
          fail(error);
          return;
        }
        const sorted = latencies.subarray(0, count).sort();
        ok({
          target: target.name,
          rps: result.duration > 0 ? count / result.duration : 0,
          p50: percentile(sorted, 50),
          p99: percentile(sorted, 99),
          responses: count,
          unexpected,
          errors: result.errors,
          statuses,
        });
      },
    );
    active = instance;
    instance.on('response', (_client, statusCode, _bytes, responseTime) => {
      if (count === latencies.length) {
        const bigger = new Float64Array(latencies.length * 2);
        bigger.set(latencies);
        latencies = bigger;
      }
      latencies[count++] = responseTime;
      statuses[statusCode] = (statuses[statusCode] ?? 0) + 1;
      if (statusCode !== target.expectStatus) unexpected++;
    });
  });
}
