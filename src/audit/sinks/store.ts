/**
 * The store sink: audit records in `audit_events`, checkpoints in `audit_checkpoints` (SQLite or
 * PostgreSQL). Several gateway processes may append to one database: each append takes a lock
 * (PostgreSQL: a transaction-level advisory lock; SQLite: `BEGIN IMMEDIATE`), reads the head and
 * chains after it, so the processes share one gap-free chain. A committed append is durable.
 */
import { sql } from 'kysely';
import type { Kysely, Transaction } from 'kysely';
import type { Database, Store } from '../../store/index.ts';
import { chainEvents, EMPTY_HEAD } from '../chain.ts';
import type { AuditRecord, ChainHead, Checkpoint } from '../chain.ts';
import type { AuditCategory, AuditEvent, AuditOutcome } from '../event.ts';
import type { ChainSink } from './types.ts';

/** Second key of the advisory lock the appends take (the first is the store's "PCLS"). */
const AUDIT_LOCK_KEY = 0x41554454; // "AUDT"
const LOCK_CLASS = 0x50434c53;
const INSERT_CHUNK = 100;

type Db = Kysely<Database> | Transaction<Database>;

async function readHead(db: Db): Promise<ChainHead> {
  const row = await db
    .selectFrom('audit_events')
    .select(['seq', 'hash'])
    .orderBy('seq', 'desc')
    .limit(1)
    .executeTakeFirst();
  return row === undefined ? EMPTY_HEAD : { seq: row.seq, hash: row.hash };
}

async function appendLocked(db: Db, events: readonly AuditEvent[]): Promise<AuditRecord[]> {
  const ids = events.map((e) => e['event.id']);
  const known = new Set<string>();
  for (let i = 0; i < ids.length; i += INSERT_CHUNK) {
    const rows = await db
      .selectFrom('audit_events')
      .select('event_id')
      .where('event_id', 'in', ids.slice(i, i + INSERT_CHUNK))
      .execute();
    for (const r of rows) known.add(r.event_id);
  }
  const fresh = events.filter((e) => !known.has(e['event.id']));
  if (fresh.length === 0) return [];
  const records = chainEvents(await readHead(db), fresh);
  for (let i = 0; i < records.length; i += INSERT_CHUNK) {
    await db
      .insertInto('audit_events')
      .values(
        records.slice(i, i + INSERT_CHUNK).map((r) => ({
          seq: r.seq,
          event_id: r.event['event.id'],
          ts: r.event['@timestamp'],
          category: r.event['event.category'],
          outcome: r.event['event.outcome'],
          client_id: r.event['portcullis.client_id'] ?? null,
          trace_id: r.event['trace.id'] ?? null,
          prev: r.prev,
          hash: r.hash,
          event: JSON.stringify(r.event),
        })),
      )
      .execute();
  }
  return records;
}

/** Opens the store sink over an open (migrated) store. */
export function storeSink(store: Store): ChainSink {
  const { db } = store;
  return {
    name: 'store',
    head: () => readHead(db),
    async append(events) {
      if (events.length === 0) return [];
      if (store.kind === 'postgres') {
        return db.transaction().execute(async (trx) => {
          await sql`select pg_advisory_xact_lock(${LOCK_CLASS}, ${AUDIT_LOCK_KEY})`.execute(trx);
          return appendLocked(trx, events);
        });
      }
      return db.connection().execute(async (conn) => {
        await sql`begin immediate`.execute(conn);
        try {
          const records = await appendLocked(conn, events);
          await sql`commit`.execute(conn);
          return records;
        } catch (error) {
          await sql`rollback`.execute(conn).catch(() => undefined);
          throw error;
        }
      });
    },
    async appendCheckpoint(cp) {
      await db
        .insertInto('audit_checkpoints')
        .values({ seq: cp.seq, hash: cp.hash, at: cp.at, kid: cp.kid, sig: cp.sig })
        .onConflict((oc) => oc.column('seq').doNothing())
        .execute();
    },
    close: () => Promise.resolve(),
  };
}

function rowToRecord(row: { seq: number; prev: string; hash: string; event: string }): AuditRecord {
  let event: AuditEvent;
  try {
    event = JSON.parse(row.event) as AuditEvent;
  } catch {
    // An unparsable event can only come from an edit; verification reports it as edited.
    event = {} as AuditEvent;
  }
  return { seq: row.seq, prev: row.prev, hash: row.hash, event };
}

/** Every record in insertion order, and every checkpoint (for verification). */
export async function readStoreLog(
  db: Kysely<Database>,
): Promise<{ records: AuditRecord[]; checkpoints: Checkpoint[] }> {
  const records: AuditRecord[] = [];
  let after = -1;
  for (;;) {
    const rows = await db
      .selectFrom('audit_events')
      .select(['id', 'seq', 'prev', 'hash', 'event'])
      .where('id', '>', after)
      .orderBy('id')
      .limit(5000)
      .execute();
    for (const row of rows) records.push(rowToRecord(row));
    const last = rows.at(-1);
    if (last === undefined) break;
    after = last.id;
  }
  const cps = await db.selectFrom('audit_checkpoints').selectAll().orderBy('seq').execute();
  return { records, checkpoints: cps };
}

export interface AuditQuery {
  /** ISO-8601 bounds on `@timestamp` (inclusive). */
  readonly since?: string;
  readonly until?: string;
  readonly category?: AuditCategory;
  readonly outcome?: AuditOutcome;
  readonly clientId?: string;
  readonly correlationId?: string;
  /** Most recent N (default 100, at most 10 000). */
  readonly limit?: number;
  /** Only records after this seq (for `tail --follow`). */
  readonly afterSeq?: number;
  /** Only records before this seq (the admin API's page cursor). */
  readonly beforeSeq?: number;
}

export const MAX_QUERY_LIMIT = 10_000;

/** Searches the store sink; results in chain order (oldest first). */
export async function queryStoreLog(db: Kysely<Database>, q: AuditQuery): Promise<AuditRecord[]> {
  const limit = Math.min(Math.max(q.limit ?? 100, 1), MAX_QUERY_LIMIT);
  let query = db.selectFrom('audit_events').select(['seq', 'prev', 'hash', 'event']);
  if (q.since !== undefined) query = query.where('ts', '>=', new Date(q.since).toISOString());
  if (q.until !== undefined) query = query.where('ts', '<=', new Date(q.until).toISOString());
  if (q.category !== undefined) query = query.where('category', '=', q.category);
  if (q.outcome !== undefined) query = query.where('outcome', '=', q.outcome);
  if (q.clientId !== undefined) query = query.where('client_id', '=', q.clientId);
  if (q.correlationId !== undefined) query = query.where('trace_id', '=', q.correlationId);
  if (q.afterSeq !== undefined) query = query.where('seq', '>', q.afterSeq);
  if (q.beforeSeq !== undefined) query = query.where('seq', '<', q.beforeSeq);
  const rows = await query.orderBy('seq', 'desc').limit(limit).execute();
  return rows.reverse().map(rowToRecord);
}
