/**
 * The audit worker thread: owns its own connection to the store (`store-db.ts`) and does the
 * expensive part of every append there — the canonical JSON, the SHA-256 chain and the SQL —
 * so the gateway's event loop only builds the typed event and posts the batch. Requests are
 * handled one at a time, in the order they arrive (appends, checkpoints and prunes never
 * interleave). Started by `sinks/worker-store.ts`; never imported by the main thread.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { openAuditDb } from './store-db.ts';
import type { AuditDb, AuditDbTarget } from './store-db.ts';
import type { WorkerReply, WorkerRequest } from './sinks/worker-store.ts';

const port = parentPort;
if (port === null) throw new Error('store-worker.ts runs as a worker thread');

const target = (workerData as { target: AuditDbTarget }).target;
let db: AuditDb | undefined;
let queue: Promise<void> = Promise.resolve();

function errorOf(error: unknown): { message: string; code?: string } {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return { message: error.message, ...(typeof code === 'string' ? { code } : {}) };
  }
  return { message: String(error) };
}

async function handle(req: WorkerRequest): Promise<unknown> {
  db ??= openAuditDb(target);
  switch (req.op) {
    case 'head':
      return db.head();
    case 'append':
      return db.append(req.events, req.fresh);
    case 'checkpoint':
      await db.appendCheckpoint(req.checkpoint);
      return null;
    case 'plan-prune':
      return (await db.planPrune(req.before)) ?? null;
    case 'write-archive':
      return db.writeArchive(req.plan, req.file, req.boundary);
    case 'delete-through':
      return db.deleteThrough(req.through);
    case 'size':
      return db.sizeBytes();
    case 'close': {
      const d = db;
      db = undefined;
      await d.close();
      return null;
    }
  }
}

port.on('message', (req: WorkerRequest) => {
  queue = queue.then(async () => {
    let reply: WorkerReply;
    try {
      reply = { id: req.id, ok: true, value: await handle(req) };
    } catch (error) {
      reply = { id: req.id, ok: false, error: errorOf(error) };
    }
    port.postMessage(reply);
  });
});
