/**
 * Upstream resilience: a circuit breaker per upstream (opossum) and bounded, jittered retries.
 *
 * Every attempt to reach the upstream passes through the breaker. An attempt fails when the
 * connection fails or times out, or when the upstream answers 5xx. When the failures exceed
 * `errorThresholdPercentage` of at least `volumeThreshold` attempts within the rolling window, the
 * circuit opens: requests then fail fast with 503 `unavailable` and a `Retry-After` until
 * `resetMs` has passed; the next request is a half-open probe, which closes the circuit when it
 * succeeds and opens it again when it fails (others meanwhile still fail fast).
 *
 * Retries (at most 2) are only for idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE), only
 * after a connection error or a 502/503/504, and always before anything was sent to the client
 * (the proxy stage has not answered yet). POST and PATCH are never retried: the upstream may have
 * acted on them. Time-outs waiting for response headers are not retried either (the upstream may
 * still be working, and a retry would add to its load).
 */
import CircuitBreaker from 'opossum';
import { errors as undiciErrors } from 'undici';
import { Denial } from '../problems.ts';

export type CircuitState = 'closed' | 'open' | 'half-open';

/** A change of a breaker's state; the lead turns it into a metric and an audit event. */
export interface CircuitStateChange {
  readonly api: string;
  readonly upstream: string;
  readonly from: CircuitState;
  readonly to: CircuitState;
  readonly at: Date;
}

export interface CircuitBreakerSettings {
  readonly errorThresholdPercentage: number;
  readonly volumeThreshold: number;
  readonly windowMs: number;
  readonly resetMs: number;
}

export interface RetrySettings {
  readonly max: number;
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
}

export interface GuardOptions {
  /** API name and upstream origin, for the state-change events. */
  readonly api: string;
  readonly upstream: string;
  readonly circuitBreaker?: CircuitBreakerSettings;
  readonly retries?: RetrySettings;
  readonly onStateChange?: (change: CircuitStateChange) => void;
  /** Waits between attempts (tests may replace it). */
  readonly sleep?: (ms: number) => Promise<void>;
}

export const DEFAULT_BREAKER: CircuitBreakerSettings = {
  errorThresholdPercentage: 50,
  volumeThreshold: 20,
  windowMs: 10_000,
  resetMs: 30_000,
};
export const DEFAULT_RETRIES: RetrySettings = { max: 2, baseDelayMs: 50, maxDelayMs: 1_000 };
/** The hard bound on retries, whatever the configuration says. */
export const MAX_RETRIES = 2;

export const IDEMPOTENT_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE']);
const RETRYABLE_STATUS: ReadonlySet<number> = new Set([502, 503, 504]);
const CONNECTION_CODES: ReadonlySet<string> = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_CLOSED',
]);

/** What an attempt resolves to: a status and a body that can be discarded (or was read whole). */
export interface AttemptResult {
  readonly statusCode: number;
  readonly body: { resume(): unknown } | Uint8Array;
}

/** An upstream 5xx, as a breaker failure. */
class UpstreamStatusError extends Error {
  readonly status: number;
  constructor(status: number) {
    super(`upstream answered ${String(status)}`);
    this.name = 'UpstreamStatusError';
    this.status = status;
  }
}

function errorCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string') return code;
  const cause = (err as { cause?: { code?: unknown } } | null)?.cause?.code;
  return typeof cause === 'string' ? cause : undefined;
}

/** Whether a failed attempt may be repeated (the method decides separately). */
export function isRetryableFailure(err: unknown): boolean {
  if (err instanceof UpstreamStatusError) return RETRYABLE_STATUS.has(err.status);
  if (err instanceof undiciErrors.HeadersTimeoutError || err instanceof undiciErrors.BodyTimeoutError) {
    return false;
  }
  const code = errorCode(err);
  return code !== undefined && CONNECTION_CODES.has(code);
}

/** Full jitter: a random wait up to base·2^attempt, capped. */
export function backoffMs(
  attempt: number,
  retries: RetrySettings,
  random: () => number = Math.random,
): number {
  const ceiling = Math.min(retries.maxDelayMs, retries.baseDelayMs * 2 ** attempt);
  return Math.floor(random() * ceiling);
}

const realSleep = (ms: number) =>
  new Promise<void>((ok) => {
    setTimeout(ok, ms);
  });

function stateOf(breaker: CircuitBreaker): CircuitState {
  if (breaker.opened) return 'open';
  if (breaker.halfOpen) return 'half-open';
  return 'closed';
}

export class UpstreamGuard {
  readonly breaker: CircuitBreaker<[() => Promise<AttemptResult>], AttemptResult>;
  private readonly retries: RetrySettings;
  private readonly resetMs: number;
  private readonly sleep: (ms: number) => Promise<void>;
  private openedAt = 0;
  private last: CircuitState = 'closed';

  constructor(options: GuardOptions) {
    const settings = options.circuitBreaker ?? DEFAULT_BREAKER;
    const retries = options.retries ?? DEFAULT_RETRIES;
    this.retries = { ...retries, max: Math.min(MAX_RETRIES, Math.max(0, retries.max)) };
    this.resetMs = settings.resetMs;
    this.sleep = options.sleep ?? realSleep;
    const buckets = 10;
    this.breaker = new CircuitBreaker(
      async (attempt: () => Promise<AttemptResult>) => {
        const res = await attempt();
        if (res.statusCode >= 500) {
          // Upstream error bodies can carry stack traces and internal hosts: never pass them on.
          if (!(res.body instanceof Uint8Array)) res.body.resume();
          throw new UpstreamStatusError(res.statusCode);
        }
        return res;
      },
      {
        name: `${options.api}:${options.upstream}`,
        timeout: false, // the upstream pool's own connect/headers/body time-outs apply
        errorThresholdPercentage: settings.errorThresholdPercentage,
        volumeThreshold: settings.volumeThreshold,
        rollingCountTimeout: settings.windowMs,
        rollingCountBuckets: buckets,
        resetTimeout: settings.resetMs,
        rollingPercentilesEnabled: false,
        enableSnapshots: false,
      },
    );
    const changed = () => {
      const to = stateOf(this.breaker);
      if (to === 'open') this.openedAt = Date.now();
      if (to === this.last) return;
      const from = this.last;
      this.last = to;
      options.onStateChange?.({ api: options.api, upstream: options.upstream, from, to, at: new Date() });
    };
    this.breaker.on('open', changed);
    this.breaker.on('halfOpen', changed);
    this.breaker.on('close', changed);
  }

  get state(): CircuitState {
    return stateOf(this.breaker);
  }

  /** Seconds until the open circuit lets a probe through (at least 1). */
  retryAfterSeconds(now: number = Date.now()): number {
    return Math.max(1, Math.ceil((this.openedAt + this.resetMs - now) / 1000));
  }

  /**
   * Sends through the breaker, retrying as allowed. Resolves with a response below 500; rejects
   * with a {@link Denial} for an open circuit or an upstream 5xx, or with the last attempt's error
   * (for the caller to classify).
   */
  async send<T extends AttemptResult>(method: string, attempt: () => Promise<T>): Promise<T> {
    const maxRetries = IDEMPOTENT_METHODS.has(method) ? this.retries.max : 0;
    for (let i = 0; ; i++) {
      try {
        // The breaker's action returns what the attempt returned.
        return (await this.breaker.fire(attempt)) as T;
      } catch (err) {
        if ((err as { code?: unknown }).code === 'EOPENBREAKER') {
          throw new Denial('unavailable', 'circuit-open', {
            headers: { 'retry-after': String(this.retryAfterSeconds()) },
          });
        }
        if (i < maxRetries && isRetryableFailure(err)) {
          await this.sleep(backoffMs(i, this.retries));
          continue;
        }
        if (err instanceof UpstreamStatusError) {
          throw new Denial('bad-gateway', `upstream-status-${String(err.status)}`);
        }
        throw err;
      }
    }
  }

  shutdown(): void {
    this.breaker.shutdown();
  }
}

/** The default hook: one log line per state change (the lead adds the metric and audit event). */
export function logCircuitStateChanges(logger: {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}): (change: CircuitStateChange) => void {
  return (change) => {
    const line = { event: 'circuit-state', ...change, at: change.at.toISOString() };
    if (change.to === 'closed') logger.info(line, 'upstream circuit closed');
    else logger.warn(line, `upstream circuit ${change.to}`);
  };
}
