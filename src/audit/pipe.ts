/**
 * A delivery pipe in front of one sink: group commit, and a disk spool when the sink is down.
 *
 * - Items are delivered in batches of at most `maxBatch`, at most `maxDelayMs` after the first
 *   one waited; an urgent push (a durable event) is delivered at once with whatever is queued.
 * - A failed delivery appends the batch to the spool file (fsynced) and retries with exponential
 *   backoff. While the spool holds anything, new batches go to the spool too, so order is kept.
 *   On restart, a spool left behind is delivered first.
 * - The spool is bounded (`maxSpoolBytes`): what does not fit is dropped and reported through
 *   `onOverflow` (the log turns it into an audit event and a metric); `push` then rejects, so a
 *   durable emit never reports success for a dropped event. Nothing is dropped silently.
 */
import {
  closeSync,
  existsSync,
  fsyncSync,
  openSync,
  readFileSync,
  renameSync,
  statSync,
  truncateSync,
  writeSync,
} from 'node:fs';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';

export interface PipeOptions<T> {
  readonly name: string;
  readonly spoolFile: string;
  readonly maxBatch: number;
  readonly maxDelayMs: number;
  readonly maxSpoolBytes: number;
  readonly retryInitialMs: number;
  readonly retryMaxMs: number;
  /**
   * Delivers a batch. `fresh`: the items come straight from the queue and were never handed
   * to the sink before (a redelivery always comes from the spool), so the sink may skip its
   * duplicate check.
   */
  deliver(items: T[], fresh: boolean): Promise<void>;
  encode(item: T): string;
  decode(line: string): T;
  onOverflow(dropped: number): void;
  onError(error: unknown): void;
  /**
   * At most this many items wait in memory while a delivery runs (default: unbounded); beyond
   * it the oldest waiting batch goes to the spool (fsynced, delivered in order) and `onSpill`
   * is told how many items it held.
   */
  readonly maxQueue?: number;
  onSpill?(items: number): void;
}

interface Waiting<T> {
  readonly item: T;
  readonly force: boolean;
  resolve(): void;
  reject(error: Error): void;
}

const IGNORE = (): void => undefined;

export class SpoolOverflowError extends Error {
  readonly code = 'AUDIT_SPOOL_FULL';
}

export class Pipe<T> {
  readonly #o: PipeOptions<T>;
  #queue: Waiting<T>[] = [];
  #timer: NodeJS.Timeout | undefined;
  #retry: NodeJS.Timeout | undefined;
  #backoff: number;
  #running: Promise<void> | undefined;
  #spoolBytes = 0;
  #spooled = 0;
  #closed = false;
  /** The last delivery attempt failed (the sink is down, not merely behind). */
  #failing = false;
  #idle: (() => void)[] = [];

  constructor(options: PipeOptions<T>) {
    this.#o = options;
    this.#backoff = options.retryInitialMs;
    mkdirSync(dirname(options.spoolFile), { recursive: true, mode: 0o700 });
    if (existsSync(options.spoolFile)) {
      this.#spoolBytes = statSync(options.spoolFile).size;
      this.#spooled = this.#readSpool().length;
      if (this.#spooled > 0) this.#scheduleRetry(0);
    }
  }

  /** Items waiting in the spool for the sink to come back. */
  get spooled(): number {
    return this.#spooled;
  }

  /**
   * Queues `item`; resolves once it was delivered or spooled durably, rejects with
   * {@link SpoolOverflowError} when it was dropped. `force` bypasses the spool limit (the
   * overflow event itself).
   */
  push(item: T, urgent: boolean, force = false): Promise<void> {
    if (this.#closed) return Promise.reject(new Error(`audit sink ${this.#o.name} is closed`));
    return new Promise<void>((resolve, reject) => {
      this.#add({ item, force, resolve, reject }, urgent);
    });
  }

  /**
   * Queues `item` like a non-urgent {@link push} whose outcome nobody awaits (batched request
   * events): no promise per item. A drop is still reported through `onOverflow`; a closed pipe
   * ignores the item, as a rejected `push` would have been ignored.
   */
  enqueue(item: T): void {
    if (this.#closed) return;
    this.#add({ item, force: false, resolve: IGNORE, reject: IGNORE }, false);
  }

  #add(waiting: Waiting<T>, urgent: boolean): void {
    this.#queue.push(waiting);
    const max = this.#o.maxQueue;
    if (max !== undefined && this.#running !== undefined && this.#queue.length > max) {
      // The sink is slower than the producers: memory stays bounded, the spool takes the
      // oldest waiting batch (order kept: while the spool holds anything, batches follow it).
      const batch = this.#queue.splice(0, this.#o.maxBatch);
      this.#o.onSpill?.(batch.length);
      this.#spool(batch);
      // The sink works, it is only behind: deliver the spool as soon as it is free.
      this.#scheduleRetry(this.#failing ? this.#backoff : 0);
    }
    if (urgent || this.#queue.length >= this.#o.maxBatch) this.#kick();
    else this.#timer ??= setTimeout(this.#onTimer, this.#o.maxDelayMs);
  }

  readonly #onTimer = (): void => {
    this.#kick();
  };

  /** Resolves when everything queued so far was delivered or spooled. */
  flush(): Promise<void> {
    if (this.#queue.length === 0 && this.#running === undefined) return Promise.resolve();
    this.#kick();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  /** Attempts to deliver the spool now (tests, and after an operator fixed the sink). */
  async retryNow(): Promise<boolean> {
    if (this.#retry !== undefined) clearTimeout(this.#retry);
    this.#retry = undefined;
    await this.#drainSpool();
    return this.#spooled === 0;
  }

  async close(): Promise<void> {
    await this.flush();
    // What a full queue spilled while the sink was up is delivered now, not at the next start.
    if (this.#spooled > 0 && !this.#failing) await this.retryNow();
    this.#closed = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    if (this.#retry !== undefined) clearTimeout(this.#retry);
  }

  #kick(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#running ??= this.#run().finally(() => {
      this.#running = undefined;
      if (this.#queue.length > 0) this.#kick();
      else for (const f of this.#idle.splice(0)) f();
    });
  }

  async #run(): Promise<void> {
    while (this.#queue.length > 0) {
      const batch = this.#queue.splice(0, this.#o.maxBatch);
      if (this.#spooled === 0) {
        try {
          await this.#o.deliver(
            batch.map((w) => w.item),
            true,
          );
          this.#failing = false;
          for (const w of batch) w.resolve();
          continue;
        } catch (error) {
          this.#failing = true;
          this.#o.onError(error);
        }
      }
      this.#spool(batch);
      this.#scheduleRetry(this.#backoff);
    }
  }

  #spool(batch: Waiting<T>[]): void {
    const kept: Waiting<T>[] = [];
    const dropped: Waiting<T>[] = [];
    let text = '';
    // Counted as lines are added (measuring the growing text each time was quadratic).
    let textBytes = 0;
    for (const w of batch) {
      const line = this.#o.encode(w.item) + '\n';
      const bytes = Buffer.byteLength(line);
      if (!w.force && this.#spoolBytes + textBytes + bytes > this.#o.maxSpoolBytes) {
        dropped.push(w);
        continue;
      }
      text += line;
      textBytes += bytes;
      kept.push(w);
    }
    try {
      if (text !== '') {
        const fd = openSync(this.#o.spoolFile, 'a', 0o600);
        try {
          writeSync(fd, text);
          fsyncSync(fd);
        } finally {
          closeSync(fd);
        }
        this.#spoolBytes += textBytes;
        this.#spooled += kept.length;
      }
      for (const w of kept) w.resolve();
    } catch (error) {
      // The disk itself failed: these items are lost too; say so.
      this.#o.onError(error);
      dropped.push(...kept);
    }
    if (dropped.length > 0) {
      const err = new SpoolOverflowError(
        `audit sink ${this.#o.name}: spool full, ${String(dropped.length)} events dropped`,
      );
      for (const w of dropped) w.reject(err);
      this.#o.onOverflow(dropped.length);
    }
  }

  /** The spool's lines, as written (one encoded item each; a torn last line too). */
  #spoolLines(): string[] {
    return readFileSync(this.#o.spoolFile, 'utf8')
      .split('\n')
      .filter((line) => line !== '');
  }

  #readSpool(lines: readonly string[] = this.#spoolLines()): T[] {
    const items: T[] = [];
    for (const line of lines) {
      try {
        items.push(this.#o.decode(line));
      } catch (error) {
        // A torn last line from a crash during the append (never acknowledged).
        this.#o.onError(error);
      }
    }
    return items;
  }

  #scheduleRetry(ms: number): void {
    if (this.#retry !== undefined || this.#closed) return;
    this.#retry = setTimeout(() => {
      this.#retry = undefined;
      void this.#drainSpool();
    }, ms);
    this.#retry.unref();
  }

  #draining: Promise<void> | undefined;

  #drainSpool(): Promise<void> {
    this.#draining ??= this.#drainOnce().finally(() => {
      this.#draining = undefined;
    });
    return this.#draining;
  }

  async #drainOnce(): Promise<void> {
    // Wait for the batch in flight so the spool is not appended to while it is read.
    await this.#running;
    if (this.#spooled === 0) return;
    const lines = this.#spoolLines();
    const items = this.#readSpool(lines);
    // Every line decoded: the delivered ones are the first `done` lines of the file.
    const whole = items.length === lines.length;
    let done = 0;
    try {
      while (done < items.length) {
        const chunk = items.slice(done, done + this.#o.maxBatch);
        await this.#o.deliver(chunk, false);
        done += chunk.length;
      }
      this.#failing = false;
    } catch (error) {
      this.#failing = true;
      this.#o.onError(error);
    }
    // Rewrite the spool with what is left (new items may have been appended meanwhile).
    await this.#running;
    // What is left is rewritten as it was written (lines appended meanwhile are whole: they
    // were written by this process); only after a torn line is everything decoded again.
    const rest = whole
      ? this.#spoolLines().slice(done)
      : this.#readSpool()
          .slice(done)
          .map((i) => this.#o.encode(i));
    const text = rest.map((line) => line + '\n').join('');
    if (text === '') {
      // Everything was delivered: empty the spool in place. No fsync is needed: should the
      // truncation be lost in a crash, the next start redelivers records the sink already
      // holds, and the replay path skips them by event id.
      truncateSync(this.#o.spoolFile, 0);
    } else {
      const tmp = `${this.#o.spoolFile}.tmp`;
      const fd = openSync(tmp, 'w', 0o600);
      try {
        writeSync(fd, text);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      renameSync(tmp, this.#o.spoolFile);
    }
    this.#spoolBytes = Buffer.byteLength(text);
    this.#spooled = rest.length;
    if (rest.length === 0) {
      this.#backoff = this.#o.retryInitialMs;
      if (this.#queue.length > 0) this.#kick();
    } else {
      this.#backoff = Math.min(this.#backoff * 2, this.#o.retryMaxMs);
      this.#scheduleRetry(this.#backoff);
    }
  }
}
