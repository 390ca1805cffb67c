/**
 * Refusal aggregation: a source that is being rate-limited cannot turn every refused request
 * into its own durable audit row (issue: one source filled 192 MB in two minutes).
 *
 * - A request event is a refusal when its outcome is `failure`, it names a `client.ip` and its
 *   status is 4xx.
 * - A `rate-limit` refusal with status 429 marks its source as limited for `windowMs` (renewed
 *   by each further 429). The refusal that starts it is recorded as usual.
 * - While a source is limited, each of its refusals (429s, and also 401, 403, 404, … from it)
 *   is counted instead of recorded: one bucket per (source, category, action, reason, status).
 *   A bucket is flushed `windowMs` after its first refusal as ONE summary event with
 *   `portcullis.aggregate.count` (how many refusals it stands for), `event.start` / `event.end`
 *   (the first and last) and the first refusal's correlation id. The next refusal starts the
 *   next window.
 * - Memory is bounded: at most `maxSources` limited sources and as many buckets; when full the
 *   oldest bucket is flushed early and the least recently limited source forgotten. Nothing is
 *   dropped: every refusal is either recorded or counted into a summary.
 *
 * A crash loses the counts of the open buckets (at most one window per source and reason).
 */
import type { AuditEvent, AuditEventInput } from './event.ts';

export interface AggregatorOptions {
  readonly windowMs: number;
  readonly maxSources: number;
  /** Records a summary (the log's own emit). */
  readonly emit: (input: AuditEventInput) => void;
  /** Counts refusals folded into a summary (a metric). */
  readonly onAbsorbed?: () => void;
  readonly now?: () => number;
}

interface Bucket {
  readonly first: AuditEvent;
  readonly startMs: number;
  endMs: number;
  count: number;
}

function isRefusal(e: AuditEvent): boolean {
  const status = e['http.response.status_code'];
  return (
    e['event.outcome'] === 'failure' &&
    e['client.ip'] !== undefined &&
    status !== undefined &&
    status >= 400 &&
    status < 500
  );
}

export class RefusalAggregator {
  readonly #o: AggregatorOptions;
  readonly #now: () => number;
  /** Source → limited until (ms); ordered by last renewal. */
  readonly #limited = new Map<string, number>();
  /** Ordered by first refusal, so the first bucket is always the next one due. */
  readonly #buckets = new Map<string, Bucket>();
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(options: AggregatorOptions) {
    if (!(options.windowMs > 0) || !(options.maxSources > 0))
      throw new TypeError('RefusalAggregator: windowMs and maxSources must be positive');
    this.#o = options;
    this.#now = options.now ?? Date.now;
  }

  /** Sources currently limited, and open buckets (for tests and metrics). */
  get size(): { sources: number; buckets: number } {
    return { sources: this.#limited.size, buckets: this.#buckets.size };
  }

  /** True when `event` was counted into a summary (the caller must not record it). */
  offer(event: AuditEvent): boolean {
    if (this.#closed || !isRefusal(event)) return false;
    const ip = event['client.ip'] ?? '';
    const now = this.#now();
    const until = this.#limited.get(ip);
    const limited = until !== undefined && until > now;
    const is429 = event['event.category'] === 'rate-limit' && event['http.response.status_code'] === 429;
    if (is429) {
      this.#limited.delete(ip);
      if (this.#limited.size >= this.#o.maxSources) {
        const oldest = this.#limited.keys().next();
        if (oldest.done !== true) this.#limited.delete(oldest.value);
      }
      this.#limited.set(ip, now + this.#o.windowMs);
    } else if (until !== undefined && !limited) {
      this.#limited.delete(ip);
    }
    if (!limited) return false;
    const key = [
      ip,
      event['event.category'],
      event['event.action'],
      event['event.reason'] ?? '',
      String(event['http.response.status_code']),
    ].join('\0');
    const bucket = this.#buckets.get(key);
    if (bucket !== undefined) {
      bucket.count++;
      bucket.endMs = now;
    } else {
      if (this.#buckets.size >= this.#o.maxSources) {
        const oldest = this.#buckets.keys().next();
        if (oldest.done !== true) this.#flush(oldest.value);
      }
      this.#buckets.set(key, { first: event, startMs: now, endMs: now, count: 1 });
      this.#schedule();
    }
    this.#o.onAbsorbed?.();
    return true;
  }

  /** Flushes every bucket whose window ended (all of them with `all`). */
  flushDue(all = false): void {
    const now = this.#now();
    for (const [key, b] of this.#buckets) {
      if (!all && b.startMs + this.#o.windowMs > now) break;
      this.#flush(key);
    }
    this.#schedule();
  }

  /** Flushes every open bucket and stops (the log's close). */
  close(): void {
    this.flushDue(true);
    this.#closed = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #schedule(): void {
    if (this.#timer !== undefined || this.#closed) return;
    const next = this.#buckets.values().next();
    if (next.done === true) return;
    const wait = Math.max(0, next.value.startMs + this.#o.windowMs - this.#now());
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.flushDue();
    }, wait);
    this.#timer.unref();
  }

  #flush(key: string): void {
    const b = this.#buckets.get(key);
    if (b === undefined) return;
    this.#buckets.delete(key);
    const e = b.first;
    this.#o.emit({
      'event.category': e['event.category'],
      'event.action': e['event.action'],
      'event.outcome': 'failure',
      '@timestamp': new Date(b.endMs),
      'event.start': new Date(b.startMs).toISOString(),
      'event.end': new Date(b.endMs).toISOString(),
      'portcullis.aggregate.count': b.count,
      ...(e['event.reason'] === undefined ? {} : { 'event.reason': e['event.reason'] }),
      ...(e['client.ip'] === undefined ? {} : { 'client.ip': e['client.ip'] }),
      ...(e['http.response.status_code'] === undefined
        ? {}
        : { 'http.response.status_code': e['http.response.status_code'] }),
      ...(e['portcullis.listener'] === undefined ? {} : { 'portcullis.listener': e['portcullis.listener'] }),
      ...(e['portcullis.rate_limit.key'] === undefined
        ? {}
        : { 'portcullis.rate_limit.key': e['portcullis.rate_limit.key'] }),
      ...(e['trace.id'] === undefined ? {} : { 'trace.id': e['trace.id'] }),
    });
  }
}
