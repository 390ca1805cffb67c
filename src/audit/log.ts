/**
 * The audit log: the one place events enter. Events go to the chain sink (store or file)
 * through a group-commit pipe, then, once committed, to every forward sink (file, stdout,
 * syslog) through a pipe each; checkpoints are signed every N records or T seconds.
 *
 * Durability:
 * - `emitDurable(input)` (configuration, admin, key and credential events) resolves only after
 *   the chain sink committed the event (fsync, database commit), or, while the chain sink is
 *   down, after it was fsynced into the spool under `<dataDir>/audit/spool/`. It rejects when
 *   the event could not be made durable (the spool is full): the operation must then fail.
 * - `emit(input)` (request events) is group-committed: delivered when 256 events are waiting or
 *   50 ms after the first one waited. A crash loses at most the events emitted in that window
 *   plus the batch being committed (docs/audit.md gives the measured figure). With
 *   `durability: 'strict'`, `emit` is `emitDurable`.
 */
import { Counter, Gauge, Registry } from 'prom-client';
import { join } from 'node:path';
import { signCheckpoint } from './chain.ts';
import type { AuditRecord, ChainHead, CheckpointSigner } from './chain.ts';
import { buildAuditEvent } from './event.ts';
import type { AuditEvent, AuditEventInput } from './event.ts';
import { Pipe, SpoolOverflowError } from './pipe.ts';
import type { ChainSink, ForwardSink } from './sinks/types.ts';
import { recordFromJson, recordToJson } from './chain.ts';

export { SpoolOverflowError };

export type Durability = 'batched' | 'strict';

export interface AuditLogOptions {
  /** The chain's record of truth (store sink, or the file sink when the store sink is off). */
  readonly chain: ChainSink;
  /** Sinks that receive committed records. */
  readonly forward?: readonly ForwardSink[];
  readonly signer: CheckpointSigner;
  /** Directory for the spools (`<dataDir>/audit/spool`). */
  readonly spoolDir: string;
  readonly durability?: Durability;
  /** Group commit: at most this many events per batch (default 256). */
  readonly maxBatch?: number;
  /** Group commit: at most this long before a waiting event is committed (default 50 ms). */
  readonly maxDelayMs?: number;
  /** A checkpoint after this many records (default 1000)… */
  readonly checkpointEvery?: number;
  /** …or this many seconds after the last one, when records were added (default 60). */
  readonly checkpointSeconds?: number;
  /** Spool limit per sink in bytes (default 64 MiB). */
  readonly spoolMaxBytes?: number;
  /** Retry backoff: first delay and cap (defaults 500 ms and 30 s). */
  readonly retryInitialMs?: number;
  readonly retryMaxMs?: number;
  /** Registry for the audit metrics (default: a registry of its own, see `metrics`). */
  readonly registry?: Registry;
  /** Problems the log handles itself (sink errors, retries); for the process logger. */
  readonly onError?: (error: unknown, sink: string) => void;
}

export type AuditListener = (record: AuditRecord) => void;

/** Metrics the log maintains (prom-client). */
export interface AuditMetrics {
  /** `portcullis_audit_events_total{category,outcome}`: events committed to the chain sink. */
  readonly events: Counter<'category' | 'outcome'>;
  /** `portcullis_audit_dropped_events_total{sink}`: events a full spool dropped. */
  readonly dropped: Counter<'sink'>;
  /** `portcullis_audit_sink_errors_total{sink}`: failed deliveries (each is retried). */
  readonly sinkErrors: Counter<'sink'>;
  /** `portcullis_audit_spooled_events{sink}`: events waiting in a spool. */
  readonly spooled: Gauge<'sink'>;
}

function positive(name: string, value: number | undefined, def: number): number {
  const v = value ?? def;
  if (!Number.isFinite(v) || v <= 0) throw new TypeError(`AuditLog: ${name} must be a positive number`);
  return v;
}

export class AuditLog {
  readonly durability: Durability;
  readonly registry: Registry;
  readonly metrics: AuditMetrics;
  readonly #o: AuditLogOptions;
  readonly #chainPipe: Pipe<AuditEvent>;
  readonly #forward: { sink: ForwardSink; pipe: Pipe<AuditRecord> }[];
  readonly #listeners = new Set<AuditListener>();
  readonly #checkpointEvery: number;
  readonly #checkpointMs: number;
  #head: ChainHead | undefined;
  #sinceCheckpoint = 0;
  #checkpointTimer: NodeJS.Timeout | undefined;
  #checkpointing: Promise<void> = Promise.resolve();
  #pendingDrops = new Map<string, number>();
  #closed = false;

  private constructor(options: AuditLogOptions) {
    this.#o = options;
    this.durability = options.durability ?? 'batched';
    const maxBatch = positive('maxBatch', options.maxBatch, 256);
    const maxDelayMs = positive('maxDelayMs', options.maxDelayMs, 50);
    const spoolMaxBytes = positive('spoolMaxBytes', options.spoolMaxBytes, 64 * 1024 * 1024);
    const retryInitialMs = positive('retryInitialMs', options.retryInitialMs, 500);
    const retryMaxMs = positive('retryMaxMs', options.retryMaxMs, 30_000);
    this.#checkpointEvery = positive('checkpointEvery', options.checkpointEvery, 1000);
    this.#checkpointMs = positive('checkpointSeconds', options.checkpointSeconds, 60) * 1000;
    this.registry = options.registry ?? new Registry();
    const registers = [this.registry];
    this.metrics = {
      events: new Counter({
        name: 'portcullis_audit_events_total',
        help: 'Audit events committed to the audit chain',
        labelNames: ['category', 'outcome'],
        registers,
      }),
      dropped: new Counter({
        name: 'portcullis_audit_dropped_events_total',
        help: 'Audit events dropped because a sink spool was full',
        labelNames: ['sink'],
        registers,
      }),
      sinkErrors: new Counter({
        name: 'portcullis_audit_sink_errors_total',
        help: 'Failed audit sink deliveries (retried from the spool)',
        labelNames: ['sink'],
        registers,
      }),
      spooled: new Gauge({
        name: 'portcullis_audit_spooled_events',
        help: 'Audit events waiting in a sink spool',
        labelNames: ['sink'],
        registers,
        collect: () => {
          this.metrics.spooled.set({ sink: options.chain.name }, this.#chainPipe.spooled);
          for (const f of this.#forward) this.metrics.spooled.set({ sink: f.sink.name }, f.pipe.spooled);
        },
      }),
    };
    const common = { maxDelayMs, spoolMaxBytes, retryInitialMs, retryMaxMs, maxSpoolBytes: spoolMaxBytes };
    this.#chainPipe = new Pipe<AuditEvent>({
      ...common,
      name: options.chain.name,
      maxBatch,
      spoolFile: join(options.spoolDir, `${options.chain.name}.chain.spool.jsonl`),
      deliver: (events) => this.#commit(events),
      encode: (e) => JSON.stringify(e),
      decode: (line) => JSON.parse(line) as AuditEvent,
      onOverflow: (n) => this.#overflow(options.chain.name, n),
      onError: (err) => this.#error(err, options.chain.name),
    });
    this.#forward = (options.forward ?? []).map((sink) => ({
      sink,
      pipe: new Pipe<AuditRecord>({
        ...common,
        name: sink.name,
        maxBatch,
        spoolFile: join(options.spoolDir, `${sink.name}.spool.jsonl`),
        deliver: (records) => sink.deliver(records),
        encode: (r) => JSON.stringify(recordToJson(r)),
        decode: (line) => recordFromJson(JSON.parse(line)),
        onOverflow: (n) => this.#overflow(sink.name, n),
        onError: (err) => this.#error(err, sink.name),
      }),
    }));
  }

  /**
   * Opens the log. Events spooled before a crash or outage are delivered first (in order).
   *
   * @example
   * ```ts
   * const audit = await AuditLog.open({ chain: storeSink(store), signer, spoolDir: join(dataDir, 'audit', 'spool') });
   * await audit.emitDurable({ 'event.category': 'key-lifecycle', 'event.action': 'key-rotate', 'event.outcome': 'success', 'portcullis.key.kid': kid });
   * void audit.emit({ 'event.category': 'authentication', 'event.action': 'token-verify', 'event.outcome': 'failure', 'event.reason': 'expired', 'trace.id': id });
   * ```
   */
  static async open(options: AuditLogOptions): Promise<AuditLog> {
    const log = new AuditLog(options);
    log.#head = await options.chain.head();
    return log;
  }

  /**
   * Records a request event. Batched mode: queues it and resolves at once (never rejects;
   * delivery problems go to `onError`, spool and metrics). Strict mode: as `emitDurable`.
   * Throws `TypeError` synchronously for a malformed event (a programming error).
   */
  emit(input: AuditEventInput): Promise<void> {
    const event = buildAuditEvent(input);
    if (this.durability === 'strict') return this.#push(event, true);
    this.#push(event, false).catch(() => undefined);
    return Promise.resolve();
  }

  /** Records an event and resolves once it is durable (see the module comment). */
  emitDurable(input: AuditEventInput): Promise<void> {
    return this.#push(buildAuditEvent(input), true);
  }

  /** Calls `listener` with every record once committed (alerting, metrics, live tail). */
  onEvent(listener: AuditListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Resolves when everything emitted so far reached the chain sink (or its spool) and the forward sinks (or theirs). */
  async flush(): Promise<void> {
    await this.#chainPipe.flush();
    await Promise.all(this.#forward.map((f) => f.pipe.flush()));
    await this.#checkpointing;
  }

  /** Retries every spool now; true when all of them are empty. */
  async retryNow(): Promise<boolean> {
    const chainOk = await this.#chainPipe.retryNow();
    await this.#chainPipe.flush();
    const results = await Promise.all(this.#forward.map((f) => f.pipe.retryNow()));
    return chainOk && results.every(Boolean);
  }

  /** The chain head as this process last committed it. */
  get head(): ChainHead | undefined {
    return this.#head;
  }

  /** Flushes, writes a final checkpoint and closes the sinks. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#chainPipe.close();
    await Promise.all(this.#forward.map((f) => f.pipe.close()));
    if (this.#checkpointTimer !== undefined) clearTimeout(this.#checkpointTimer);
    await this.#checkpointing;
    this.#scheduleCheckpoint();
    await this.#checkpointing;
    for (const f of this.#forward) await f.sink.close();
    await this.#o.chain.close();
  }

  #push(event: AuditEvent, urgent: boolean, force = false): Promise<void> {
    if (this.#closed) return Promise.reject(new Error('audit log is closed'));
    return this.#chainPipe.push(event, urgent, force);
  }

  async #commit(events: AuditEvent[]): Promise<void> {
    const records = await this.#o.chain.append(events);
    const last = records.at(-1);
    if (last === undefined) return;
    this.#head = { seq: last.seq, hash: last.hash };
    for (const r of records) {
      this.metrics.events.inc({ category: r.event['event.category'], outcome: r.event['event.outcome'] });
      // Events about the audit trail itself bypass the spool limit, or an overflow would
      // feed itself.
      const force = r.event['event.category'] === 'audit';
      for (const f of this.#forward) f.pipe.push(r, false, force).catch(() => undefined);
      for (const l of this.#listeners) {
        try {
          l(r);
        } catch (error) {
          this.#error(error, 'listener');
        }
      }
    }
    this.#sinceCheckpoint += records.length;
    if (this.#sinceCheckpoint >= this.#checkpointEvery) {
      this.#scheduleCheckpoint();
    } else if (this.#checkpointTimer === undefined) {
      this.#checkpointTimer = setTimeout(() => {
        this.#checkpointTimer = undefined;
        this.#scheduleCheckpoint();
      }, this.#checkpointMs);
      this.#checkpointTimer.unref();
    }
  }

  /** Queues a checkpoint over the current head (checkpoints are written one at a time, in order). */
  #scheduleCheckpoint(): void {
    const head = this.#head;
    if (head === undefined || head.seq === 0 || this.#sinceCheckpoint === 0) return;
    const count = this.#sinceCheckpoint;
    this.#sinceCheckpoint = 0;
    this.#checkpointing = this.#checkpointing.then(async () => {
      try {
        await this.#o.chain.appendCheckpoint(await signCheckpoint(this.#o.signer, head));
      } catch (error) {
        // Try again with the next records (or at close).
        this.#sinceCheckpoint += count;
        this.#error(error, 'checkpoint');
      }
    });
  }

  #error(error: unknown, sink: string): void {
    if (sink !== 'listener' && sink !== 'checkpoint') this.metrics.sinkErrors.inc({ sink });
    this.#o.onError?.(error, sink);
  }

  #overflow(sink: string, dropped: number): void {
    this.metrics.dropped.inc({ sink }, dropped);
    const first = this.#pendingDrops.size === 0;
    this.#pendingDrops.set(sink, (this.#pendingDrops.get(sink) ?? 0) + dropped);
    if (!first) return;
    setImmediate(() => {
      const drops = [...this.#pendingDrops];
      this.#pendingDrops.clear();
      for (const [name, n] of drops) {
        const event = buildAuditEvent({
          'event.category': 'audit',
          'event.action': 'spool-overflow',
          'event.outcome': 'failure',
          'event.reason': 'sink unavailable and spool full',
          'portcullis.audit.sink': name,
          'portcullis.audit.dropped': n,
        });
        this.#push(event, true, true).catch((err: unknown) => this.#error(err, name));
      }
    });
  }
}
