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
 * - A refusal from a source that is being rate-limited is counted into one summary event per
 *   source, reason and window instead (`aggregate.ts`, when `aggregation` is set).
 *
 * The store chain sink normally runs on a worker thread (`sinks/worker-store.ts`); retention
 * (`prune`) and disk usage (`diskUsage`, `checkDiskUsage`) use it too.
 */
import type { ControlPlaneActorFields } from './actor.ts';
import { Counter, Gauge, Registry } from 'prom-client';
import { mkdir, readdir, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { RefusalAggregator } from './aggregate.ts';
import { signCheckpoint } from './chain.ts';
import type { AuditRecord, ChainHead, CheckpointSigner } from './chain.ts';
import { buildAuditEvent } from './event.ts';
import type { AuditEvent, AuditEventInput } from './event.ts';
import { Pipe, SpoolOverflowError } from './pipe.ts';
import type { ChainSink, ForwardSink } from './sinks/types.ts';
import type { PrunableStore } from './sinks/worker-store.ts';
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
  /**
   * Events waiting in memory per sink while a delivery runs (default `maxBatch`); beyond it the
   * oldest waiting batch goes to the spool (`portcullis_audit_queue_spilled_events_total`).
   */
  readonly queueMaxEvents?: number;
  /** Retry backoff: first delay and cap (defaults 500 ms and 30 s). */
  readonly retryInitialMs?: number;
  readonly retryMaxMs?: number;
  /** Registry for the audit metrics (default: a registry of its own, see `metrics`). */
  readonly registry?: Registry;
  /** Problems the log handles itself (sink errors, retries); for the process logger. */
  readonly onError?: (error: unknown, sink: string) => void;
  /** Refusals from a rate-limited source become one summary per window (see `aggregate.ts`). */
  readonly aggregation?: { readonly windowMs: number; readonly maxSources: number } | undefined;
  /**
   * Retention of the store chain: `prune()` archives and removes records older than `days`;
   * with `intervalMs`, the log prunes on that schedule (the work runs on the audit worker).
   */
  readonly retention?:
    | { readonly days: number; readonly archiveDir: string; readonly intervalMs?: number | undefined }
    | undefined;
  /**
   * Disk usage: `portcullis_audit_disk_bytes{sink}` for the store, the spools and `paths` (file
   * sink, archives); above `alertBytes` (checked every `checkMs`) an `audit` /
   * `disk-usage-high` event is recorded (at most hourly).
   */
  readonly disk?:
    | {
        /** Per sink, the files and directories its data takes (listed at each measurement). */
        readonly paths: readonly { readonly sink: string; readonly list: () => Promise<readonly string[]> }[];
        readonly alertBytes: number;
        readonly checkMs: number;
      }
    | undefined;
}

/** What a prune did (or, with `dryRun`, would do). */
export interface PruneResult {
  /** Records archived and removed (0: nothing older than the cut). */
  readonly records: number;
  readonly from?: number;
  readonly through?: number;
  /** The archive file written. */
  readonly archive?: string;
  readonly archiveBytes?: number;
  readonly dryRun: boolean;
}

export interface PruneOptions {
  /** Records with `@timestamp` before this are pruned. */
  readonly before: Date;
  readonly dryRun?: boolean;
  /** Where the archive goes (default: the retention's `archiveDir`). */
  readonly archiveDir?: string;
  /** Called at each step (plan, checkpoint, archive, record, delete). */
  readonly onProgress?: (step: string, detail: Record<string, unknown>) => void;
  /** Who pruned (issue 13: `controlPlaneActor()` from the CLI), added to the prune event. */
  readonly actor?: ControlPlaneActorFields;
  /** Which component pruned (`portcullis.listener`). */
  readonly listener?: string;
}

/** The bytes a file or directory tree takes (0 when missing). */
export async function diskBytes(path: string): Promise<number> {
  let st;
  try {
    st = await stat(path);
  } catch {
    return 0;
  }
  if (!st.isDirectory()) return st.size;
  let total = 0;
  for (const name of await readdir(path).catch(() => [] as string[]))
    total += await diskBytes(join(path, name));
  return total;
}

function isPrunable(sink: ChainSink): sink is ChainSink & PrunableStore {
  return typeof (sink as Partial<PrunableStore>).planPrune === 'function';
}

const HOUR_MS = 3_600_000;
const RESOLVED: Promise<void> = Promise.resolve();

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
  /** `portcullis_audit_queue_spilled_events_total{sink}`: events a full in-memory queue moved to the spool. */
  readonly spilled: Counter<'sink'>;
  /** `portcullis_audit_aggregated_refusals_total`: refusals counted into a summary event. */
  readonly aggregated: Counter;
  /** `portcullis_audit_disk_bytes{sink}`: bytes of the store's audit data, the spools, files and archives. */
  readonly diskBytes: Gauge<'sink'>;
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
  readonly #aggregator: RefusalAggregator | undefined;
  #pruneTimer: NodeJS.Timeout | undefined;
  #pruning: Promise<PruneResult> | undefined;
  #diskTimer: NodeJS.Timeout | undefined;
  #diskAlertedAt = 0;

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
      spilled: new Counter({
        name: 'portcullis_audit_queue_spilled_events_total',
        help: 'Audit events moved from a full in-memory queue to the disk spool (the sink was slower than the producers)',
        labelNames: ['sink'],
        registers,
      }),
      aggregated: new Counter({
        name: 'portcullis_audit_aggregated_refusals_total',
        help: 'Refusals from rate-limited sources counted into a summary audit event instead of recorded one by one',
        registers,
      }),
      diskBytes: new Gauge({
        name: 'portcullis_audit_disk_bytes',
        help: 'Bytes the audit data takes on disk: store, spool, file sink, archive',
        labelNames: ['sink'],
        registers,
        collect: async () => {
          for (const [sink, bytes] of await this.diskUsage()) this.metrics.diskBytes.set({ sink }, bytes);
        },
      }),
    };
    const agg = options.aggregation;
    this.#aggregator =
      agg === undefined
        ? undefined
        : new RefusalAggregator({
            windowMs: agg.windowMs,
            maxSources: agg.maxSources,
            emit: (input) => {
              this.#push(buildAuditEvent(input), this.durability === 'strict').catch(() => undefined);
            },
            onAbsorbed: () => {
              this.metrics.aggregated.inc();
            },
          });
    const maxQueue = positive('queueMaxEvents', options.queueMaxEvents, maxBatch);
    const common = {
      maxDelayMs,
      spoolMaxBytes,
      retryInitialMs,
      retryMaxMs,
      maxSpoolBytes: spoolMaxBytes,
      maxQueue,
    };
    this.#chainPipe = new Pipe<AuditEvent>({
      ...common,
      name: options.chain.name,
      maxBatch,
      spoolFile: join(options.spoolDir, `${options.chain.name}.chain.spool.jsonl`),
      deliver: (events, fresh) => this.#commit(events, fresh),
      encode: (e) => JSON.stringify(e),
      decode: (line) => JSON.parse(line) as AuditEvent,
      onOverflow: (n) => this.#overflow(options.chain.name, n),
      onError: (err) => this.#error(err, options.chain.name),
      onSpill: (n) => this.metrics.spilled.inc({ sink: options.chain.name }, n),
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
        onSpill: (n) => this.metrics.spilled.inc({ sink: sink.name }, n),
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
    log.#startTimers();
    return log;
  }

  /**
   * Records a request event. Batched mode: queues it and resolves at once (never rejects;
   * delivery problems go to `onError`, spool and metrics). Strict mode: as `emitDurable`.
   * Throws `TypeError` synchronously for a malformed event (a programming error).
   */
  emit(input: AuditEventInput): Promise<void> {
    const event = buildAuditEvent(input);
    // A refusal from a rate-limited source is counted into its window's summary event.
    if (this.#aggregator?.offer(event) === true) return Promise.resolve();
    if (this.durability === 'strict') return this.#push(event, true);
    if (!this.#closed) this.#chainPipe.enqueue(event);
    return RESOLVED;
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
    if (this.#pruneTimer !== undefined) clearTimeout(this.#pruneTimer);
    if (this.#diskTimer !== undefined) clearInterval(this.#diskTimer);
    await this.#pruning?.catch(() => undefined);
    this.#aggregator?.close();
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

  /**
   * Retention: archives the records older than `before` to a gzip JSON Lines file (with their
   * hashes and checkpoints), signs a checkpoint at the boundary, records an `audit` / `prune`
   * event (durably) naming the boundary and the archive, then deletes the range. The heavy
   * work (reading, compressing, deleting) runs on the audit worker. One prune at a time.
   * Throws when the chain sink cannot prune (the file sink, an in-thread store sink).
   */
  prune(options: PruneOptions): Promise<PruneResult> {
    const run = (this.#pruning ?? Promise.resolve()).catch(() => undefined).then(() => this.#prune(options));
    this.#pruning = run;
    void run
      .finally(() => {
        if (this.#pruning === run) this.#pruning = undefined;
      })
      .catch(() => undefined);
    return run;
  }

  async #prune(o: PruneOptions): Promise<PruneResult> {
    const sink = this.#o.chain;
    if (!isPrunable(sink))
      throw new Error('audit prune: the chain sink cannot prune (only the store sink can)');
    const archiveDir = o.archiveDir ?? this.#o.retention?.archiveDir;
    if (archiveDir === undefined) throw new TypeError('audit prune: no archive directory');
    const progress = o.onProgress ?? (() => undefined);
    await this.flush();
    const plan = await sink.planPrune(o.before);
    progress('plan', { before: o.before.toISOString(), ...(plan ?? { records: 0 }) });
    const dryRun = o.dryRun === true;
    if (plan === undefined) return { records: 0, dryRun };
    if (dryRun) return { records: plan.records, from: plan.from, through: plan.through, dryRun };
    const boundary = await signCheckpoint(this.#o.signer, { seq: plan.through, hash: plan.hash });
    await sink.appendCheckpoint(boundary);
    progress('checkpoint', { seq: boundary.seq });
    await mkdir(archiveDir, { recursive: true, mode: 0o700 });
    const name = `audit-${String(plan.from).padStart(12, '0')}-${String(plan.through).padStart(12, '0')}.jsonl.gz`;
    const archive = await sink.writeArchive(plan, join(archiveDir, name), boundary);
    progress('archive', { file: archive.file, bytes: archive.bytes, records: archive.records });
    if (archive.records !== plan.records)
      throw new Error(
        `audit prune: the archive holds ${String(archive.records)} records, expected ${String(plan.records)}; nothing deleted`,
      );
    // Recorded before the deletion: the remaining chain verifies from this boundary.
    await this.emitDurable({
      'event.category': 'audit',
      'event.action': 'prune',
      'event.outcome': 'success',
      ...o.actor,
      ...(o.listener === undefined ? {} : { 'portcullis.listener': o.listener }),
      'event.reason': `records before ${o.before.toISOString()} archived and removed`,
      'portcullis.audit.pruned': plan.records,
      'portcullis.audit.boundary.seq': plan.through,
      'portcullis.audit.boundary.hash': plan.hash,
      'portcullis.audit.archive': basename(archive.file),
    });
    progress('record', { seq: this.#head?.seq ?? 0 });
    const deleted = await sink.deleteThrough(plan.through);
    progress('delete', { records: deleted });
    return {
      records: plan.records,
      from: plan.from,
      through: plan.through,
      archive: archive.file,
      archiveBytes: archive.bytes,
      dryRun,
    };
  }

  /** Bytes of audit data per sink: the store, the spools, and the configured paths. */
  async diskUsage(): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    const chain = this.#o.chain;
    if (isPrunable(chain)) out.set(chain.name, await chain.sizeBytes().catch(() => 0));
    out.set('spool', await diskBytes(this.#o.spoolDir));
    for (const p of this.#o.disk?.paths ?? [])
      for (const path of await p.list()) out.set(p.sink, (out.get(p.sink) ?? 0) + (await diskBytes(path)));
    return out;
  }

  /** Checks disk usage against the threshold; records `disk-usage-high` (at most hourly) above it. */
  async checkDiskUsage(): Promise<number> {
    const limit = this.#o.disk?.alertBytes;
    let total = 0;
    for (const bytes of (await this.diskUsage()).values()) total += bytes;
    if (limit !== undefined && total > limit && Date.now() - this.#diskAlertedAt >= HOUR_MS) {
      this.#diskAlertedAt = Date.now();
      await this.emit({
        'event.category': 'audit',
        'event.action': 'disk-usage-high',
        'event.outcome': 'unknown',
        'event.reason': 'audit data on disk passed audit.disk.alertBytes; prune or raise the limit',
        'portcullis.audit.disk.bytes': total,
        'portcullis.audit.disk.limit': limit,
      });
    } else if (limit !== undefined && total <= limit) {
      this.#diskAlertedAt = 0;
    }
    return total;
  }

  #startTimers(): void {
    const r = this.#o.retention;
    if (r?.intervalMs !== undefined && isPrunable(this.#o.chain)) {
      const interval = r.intervalMs;
      const tick = (delay: number) => {
        this.#pruneTimer = setTimeout(() => {
          const before = new Date(Date.now() - r.days * 86_400_000);
          this.prune({ before })
            .catch((error: unknown) => {
              this.#error(error, 'prune');
            })
            .finally(() => {
              if (!this.#closed) tick(interval);
            });
        }, delay);
        this.#pruneTimer.unref();
      };
      tick(Math.min(interval, 60_000));
    }
    const d = this.#o.disk;
    if (d !== undefined) {
      this.#diskTimer = setInterval(() => {
        this.checkDiskUsage().catch((error: unknown) => {
          this.#error(error, 'disk');
        });
      }, d.checkMs);
      this.#diskTimer.unref();
    }
  }

  #push(event: AuditEvent, urgent: boolean, force = false): Promise<void> {
    if (this.#closed) return Promise.reject(new Error('audit log is closed'));
    return this.#chainPipe.push(event, urgent, force);
  }

  async #commit(events: AuditEvent[], fresh: boolean): Promise<void> {
    const records = await this.#o.chain.append(events, fresh);
    const last = records.at(-1);
    if (last === undefined) return;
    this.#head = { seq: last.seq, hash: last.hash };
    // One counter update per category and outcome in the batch, not one per record.
    const counts = new Map<string, number>();
    for (const r of records) {
      const key = `${r.event['event.category']}\0${r.event['event.outcome']}`;
      counts.set(key, (counts.get(key) ?? 0) + 1);
    }
    for (const [key, n] of counts) {
      const [category = '', outcome = ''] = key.split('\0');
      this.metrics.events.inc({ category, outcome }, n);
    }
    for (const r of records) {
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
    if (sink !== 'listener' && sink !== 'checkpoint' && sink !== 'prune' && sink !== 'disk')
      this.metrics.sinkErrors.inc({ sink });
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
