/**
 * The store sink off the event loop: the same `audit_events` / `audit_checkpoints` chain as
 * `store.ts`, written by a worker thread (`../store-worker.ts`) that owns its own connection
 * (SQLite: its own `DatabaseSync` on the same file, WAL, busy timeout; PostgreSQL: its own
 * `pg.Client`) and uses prepared statements. The main thread posts each group-commit batch of
 * typed events and gets back only the seqs and hashes the worker computed; canonical JSON,
 * SHA-256 and SQL never run on the event loop.
 *
 * Durability is unchanged: `append` resolves only after the worker's transaction committed, so
 * the audit log's batched and strict modes (and `emitDurable`) mean what they meant with the
 * in-thread sink. A worker that dies fails its pending requests (the log spools and retries
 * them, in order) and is started again on the next request.
 */
import { Worker } from 'node:worker_threads';
import type { AuditRecord, ChainHead, Checkpoint } from '../chain.ts';
import type { AuditEvent } from '../event.ts';
import type { AppendResult, ArchiveResult, AuditDbTarget, PrunePlan } from '../store-db.ts';
import type { ChainSink } from './types.ts';

/** A request to the worker. */
export type WorkerRequest = { readonly id: number } & (
  | { readonly op: 'head' }
  | { readonly op: 'append'; readonly events: readonly AuditEvent[]; readonly fresh: boolean }
  | { readonly op: 'checkpoint'; readonly checkpoint: Checkpoint }
  | { readonly op: 'plan-prune'; readonly before: string }
  | {
      readonly op: 'write-archive';
      readonly plan: PrunePlan;
      readonly file: string;
      readonly boundary: Checkpoint;
    }
  | { readonly op: 'delete-through'; readonly through: number }
  | { readonly op: 'size' }
  | { readonly op: 'close' }
);

export type WorkerReply =
  | { readonly id: number; readonly ok: true; readonly value: unknown }
  | { readonly id: number; readonly ok: false; readonly error: { message: string; code?: string } };

type RequestBody = WorkerRequest extends infer R ? (R extends { id: number } ? Omit<R, 'id'> : never) : never;

/** An error the worker reported (its message and code; never a connection string). */
export class AuditWorkerError extends Error {
  readonly code: string;
  constructor(message: string, code = 'AUDIT_WORKER') {
    super(message);
    this.code = code;
  }
}

/** The retention side of a store that can prune (see `prune.ts`). */
export interface PrunableStore {
  planPrune(before: Date): Promise<PrunePlan | undefined>;
  writeArchive(plan: PrunePlan, file: string, boundary: Checkpoint): Promise<ArchiveResult>;
  deleteThrough(through: number): Promise<number>;
  sizeBytes(): Promise<number>;
}

export interface WorkerStoreSink extends ChainSink, PrunableStore {}

/** The worker module beside this one: `.ts` from source, `.js` from a build (`npm run build`). */
const WORKER_URL = new URL(
  `../store-worker${import.meta.url.endsWith('.js') ? '.js' : '.ts'}`,
  import.meta.url,
);

class WorkerClient {
  readonly #target: AuditDbTarget;
  #worker: Worker | undefined;
  readonly #pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  #next = 1;

  constructor(target: AuditDbTarget) {
    this.#target = target;
  }

  #start(): Worker {
    const worker = new Worker(WORKER_URL, {
      name: 'portcullis-audit',
      workerData: { target: this.#target },
      execArgv: ['--disable-warning=ExperimentalWarning'],
    });
    worker.on('message', (reply: WorkerReply) => {
      const p = this.#pending.get(reply.id);
      if (p === undefined) return;
      this.#pending.delete(reply.id);
      if (this.#pending.size === 0) worker.unref();
      if (reply.ok) p.resolve(reply.value);
      else p.reject(new AuditWorkerError(reply.error.message, reply.error.code));
    });
    const fail = (error: Error) => {
      if (this.#worker === worker) this.#worker = undefined;
      const pending = [...this.#pending.values()];
      this.#pending.clear();
      for (const p of pending) p.reject(new AuditWorkerError(`audit worker stopped: ${error.message}`));
    };
    worker.on('error', fail);
    worker.on('exit', (code) => {
      fail(new Error(`exit code ${String(code)}`));
    });
    worker.unref();
    return worker;
  }

  call<T>(body: RequestBody): Promise<T> {
    const worker = (this.#worker ??= this.#start());
    const id = this.#next++;
    return new Promise<T>((resolve, reject) => {
      if (this.#pending.size === 0) worker.ref();
      this.#pending.set(id, { resolve: resolve, reject });
      worker.postMessage({ ...body, id });
    });
  }

  async close(): Promise<void> {
    const worker = this.#worker;
    if (worker === undefined) return;
    await this.call({ op: 'close' }).catch(() => undefined);
    this.#worker = undefined;
    await worker.terminate();
  }
}

/** Rebuilds the records of an append from the events the main thread kept and the worker's hashes. */
function toRecords(events: readonly AuditEvent[], r: AppendResult): AuditRecord[] {
  const chosen = r.kept === null ? events : r.kept.map((i) => events[i] as AuditEvent);
  const out: AuditRecord[] = [];
  let prev = r.prev;
  chosen.forEach((event, i) => {
    const hash = r.hashes[i] ?? '';
    out.push({ seq: r.first + i, prev, hash, event });
    prev = hash;
  });
  return out;
}

/**
 * Opens the store sink on a worker thread. `target` names the database the store opened (and
 * migrated); the worker opens its own connection to it.
 */
export function workerStoreSink(target: AuditDbTarget): WorkerStoreSink {
  const client = new WorkerClient(target);
  return {
    name: 'store',
    head: () => client.call<ChainHead>({ op: 'head' }),
    async append(events, fresh = false) {
      if (events.length === 0) return [];
      return toRecords(events, await client.call<AppendResult>({ op: 'append', events, fresh }));
    },
    async appendCheckpoint(checkpoint) {
      await client.call({ op: 'checkpoint', checkpoint });
    },
    async planPrune(before) {
      return (
        (await client.call<PrunePlan | null>({ op: 'plan-prune', before: before.toISOString() })) ?? undefined
      );
    },
    writeArchive: (plan, file, boundary) =>
      client.call<ArchiveResult>({ op: 'write-archive', plan, file, boundary }),
    deleteThrough: (through) => client.call<number>({ op: 'delete-through', through }),
    sizeBytes: () => client.call<number>({ op: 'size' }),
    close: () => client.close(),
  };
}
