/**
 * The audit store as the audit worker thread sees it (`store-worker.ts`): its own connection to
 * the database the gateway uses (SQLite: a `DatabaseSync` on the same file, WAL, busy timeout;
 * PostgreSQL: a `pg.Client`), prepared statements, and the hash chain computed here rather than
 * on the event loop. The table layout is the store sink's (`sinks/store.ts`, migration
 * `005_audit`); several processes still share one gap-free chain: each append takes the same
 * lock as the store sink (SQLite `BEGIN IMMEDIATE`, PostgreSQL the transaction-level advisory
 * lock), skips events already recorded, reads the head and chains after it.
 *
 * Also the worker's side of retention (`prune.ts`): the prune plan, the archive of the pruned
 * range, the deletion, and the sizes the disk-usage metrics report.
 */
import { closeSync, fsyncSync, openSync, renameSync, statSync, writeSync } from 'node:fs';
import { DatabaseSync } from 'node:sqlite';
import type { StatementSync } from 'node:sqlite';
import { gzipSync } from 'node:zlib';
import pg from 'pg';
import { chainEvents, EMPTY_HEAD, recordToJson } from './chain.ts';
import type { ChainHead, Checkpoint } from './chain.ts';
import type { AuditEvent } from './event.ts';

/** Where the worker connects: what `parseStoreUrl` gives (never logged: a URL may hold a password). */
export type AuditDbTarget =
  | { readonly kind: 'sqlite'; readonly path: string }
  | { readonly kind: 'postgres'; readonly connectionString: string; readonly schema: string | undefined };

/**
 * What an append committed, without the events (the main thread still holds them): `kept` are
 * the indexes of the events chained (null: all of them; the others were already recorded),
 * `first` the seq of the first, `prev` the hash before it, `hashes` one per kept event.
 */
export interface AppendResult {
  readonly kept: number[] | null;
  readonly first: number;
  readonly prev: string;
  readonly hashes: string[];
}

/** The range a prune removes: records `from`…`through` (seq), the last one's hash. */
export interface PrunePlan {
  readonly from: number;
  readonly through: number;
  readonly hash: string;
  readonly records: number;
  /** The head before `from` (what the archive chains after). */
  readonly after: ChainHead;
  /** Checkpoints with seq ≤ `through` (they travel into the archive). */
  readonly checkpoints: number;
}

export interface ArchiveResult {
  readonly file: string;
  readonly bytes: number;
  readonly records: number;
}

export interface AuditDb {
  head(): Promise<ChainHead>;
  /** `fresh`: never delivered before, skip the duplicate check (see `ChainSink.append`). */
  append(events: readonly AuditEvent[], fresh?: boolean): Promise<AppendResult>;
  appendCheckpoint(cp: Checkpoint): Promise<void>;
  /** The records with `@timestamp` before `beforeIso`, from the oldest kept: undefined when none. */
  planPrune(beforeIso: string): Promise<PrunePlan | undefined>;
  /** Writes the plan's records and checkpoints to a gzip JSON Lines file (fsynced, 0600). */
  writeArchive(plan: PrunePlan, file: string, boundary: Checkpoint): Promise<ArchiveResult>;
  /** Deletes records with seq ≤ `through` (after the archive was written). */
  deleteThrough(through: number): Promise<number>;
  /** Bytes the audit data takes in the store (database file + WAL, or PostgreSQL relation sizes). */
  sizeBytes(): Promise<number>;
  close(): Promise<void>;
}

const AUDIT_LOCK_KEY = 0x41554454; // "AUDT", as in sinks/store.ts
const LOCK_CLASS = 0x50434c53;
/** Rows read per page while archiving. */
const PAGE = 2000;

interface Row {
  readonly seq: number;
  readonly event_id: string;
  readonly ts: string;
  readonly category: string;
  readonly outcome: string;
  readonly client_id: string | null;
  readonly trace_id: string | null;
  readonly prev: string;
  readonly hash: string;
  readonly event: string;
}

function rows(events: readonly AuditEvent[], head: ChainHead): { result: AppendResult; rows: Row[] } {
  const records = chainEvents(head, events);
  const out: Row[] = records.map((r) => ({
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
  }));
  return {
    rows: out,
    result: { kept: null, first: head.seq + 1, prev: head.hash, hashes: records.map((r) => r.hash) },
  };
}

/** One archive line per record (the flat record JSON), then one per checkpoint. */
function archiveHeader(plan: PrunePlan, boundary: Checkpoint): string {
  return (
    JSON.stringify({
      type: 'portcullis-audit-archive',
      version: 1,
      after: plan.after,
      through: { seq: plan.through, hash: plan.hash },
      records: plan.records,
      boundary,
    }) + '\n'
  );
}

/** Writes gzip members (a valid multi-member gzip stream) to `file` via a temporary name. */
class ArchiveWriter {
  readonly file: string;
  readonly #tmp: string;
  readonly #fd: number;
  #bytes = 0;
  constructor(file: string) {
    this.file = file;
    this.#tmp = `${file}.tmp`;
    this.#fd = openSync(this.#tmp, 'w', 0o600);
  }
  write(text: string): void {
    if (text === '') return;
    const gz = gzipSync(text);
    writeSync(this.#fd, gz);
    this.#bytes += gz.length;
  }
  finish(): number {
    fsyncSync(this.#fd);
    closeSync(this.#fd);
    renameSync(this.#tmp, this.file);
    return this.#bytes;
  }
}

function recordLine(row: { seq: number; prev: string; hash: string; event: string }): string {
  let event: AuditEvent;
  try {
    event = JSON.parse(row.event) as AuditEvent;
  } catch {
    event = {} as AuditEvent;
  }
  return JSON.stringify(recordToJson({ seq: row.seq, prev: row.prev, hash: row.hash, event })) + '\n';
}

function checkpointLine(cp: Checkpoint): string {
  return (
    JSON.stringify({ type: 'checkpoint', seq: cp.seq, hash: cp.hash, at: cp.at, kid: cp.kid, sig: cp.sig }) +
    '\n'
  );
}

// ---------------------------------------------------------------------------------------------
// SQLite

class SqliteAuditDb implements AuditDb {
  readonly #db: DatabaseSync;
  readonly #path: string;
  readonly #known: StatementSync;
  readonly #head: StatementSync;
  readonly #insert: StatementSync;
  readonly #checkpoint: StatementSync;

  constructor(path: string) {
    this.#path = path;
    this.#db = new DatabaseSync(path, { timeout: 5000 });
    this.#db.exec('PRAGMA busy_timeout = 5000');
    this.#db.prepare('PRAGMA journal_mode = WAL').get();
    this.#known = this.#db.prepare('select 1 as x from audit_events where event_id = ?');
    this.#head = this.#db.prepare('select seq, hash from audit_events order by seq desc limit 1');
    this.#insert = this.#db.prepare(
      'insert into audit_events (seq, event_id, ts, category, outcome, client_id, trace_id, prev, hash, event) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
    );
    this.#checkpoint = this.#db.prepare(
      'insert into audit_checkpoints (seq, hash, at, kid, sig) values (?, ?, ?, ?, ?) on conflict (seq) do nothing',
    );
  }

  #readHead(): ChainHead {
    const row = this.#head.get() as { seq: number; hash: string } | undefined;
    return row === undefined ? EMPTY_HEAD : { seq: row.seq, hash: row.hash };
  }

  head(): Promise<ChainHead> {
    return Promise.resolve(this.#readHead());
  }

  append(events: readonly AuditEvent[], unseen = false): Promise<AppendResult> {
    this.#db.exec('begin immediate');
    try {
      const kept: number[] = [];
      let fresh: readonly AuditEvent[] = events;
      if (!unseen) {
        const chosen: AuditEvent[] = [];
        events.forEach((e, i) => {
          if (this.#known.get(e['event.id']) === undefined) {
            kept.push(i);
            chosen.push(e);
          }
        });
        fresh = chosen;
      }
      const { result, rows: out } = rows(fresh, this.#readHead());
      for (const r of out) {
        this.#insert.run(
          r.seq,
          r.event_id,
          r.ts,
          r.category,
          r.outcome,
          r.client_id,
          r.trace_id,
          r.prev,
          r.hash,
          r.event,
        );
      }
      this.#db.exec('commit');
      return Promise.resolve(fresh.length === events.length ? result : { ...result, kept });
    } catch (error) {
      try {
        this.#db.exec('rollback');
      } catch {
        // no transaction left to roll back
      }
      return Promise.reject(error instanceof Error ? error : new Error(String(error)));
    }
  }

  appendCheckpoint(cp: Checkpoint): Promise<void> {
    this.#checkpoint.run(cp.seq, cp.hash, cp.at, cp.kid, cp.sig);
    return Promise.resolve();
  }

  planPrune(beforeIso: string): Promise<PrunePlan | undefined> {
    const first = this.#db.prepare('select seq, prev from audit_events order by seq asc limit 1').get() as
      { seq: number; prev: string } | undefined;
    if (first === undefined) return Promise.resolve(undefined);
    // Records are pruned by seq: up to the record before the first one not older than the cut.
    const keep = this.#db
      .prepare('select min(seq) as seq from audit_events where ts >= ?')
      .get(beforeIso) as { seq: number | null };
    const last = this.#readHead();
    const through = keep.seq === null ? last.seq : keep.seq - 1;
    if (through < first.seq) return Promise.resolve(undefined);
    const row = this.#db.prepare('select hash from audit_events where seq = ?').get(through) as
      { hash: string } | undefined;
    if (row === undefined) return Promise.resolve(undefined);
    const count = this.#db.prepare('select count(*) as n from audit_events where seq <= ?').get(through) as {
      n: number;
    };
    const cps = this.#db
      .prepare('select count(*) as n from audit_checkpoints where seq <= ?')
      .get(through) as { n: number };
    return Promise.resolve({
      from: first.seq,
      through,
      hash: row.hash,
      records: count.n,
      after: { seq: first.seq - 1, hash: first.prev },
      checkpoints: cps.n,
    });
  }

  writeArchive(plan: PrunePlan, file: string, boundary: Checkpoint): Promise<ArchiveResult> {
    const w = new ArchiveWriter(file);
    w.write(archiveHeader(plan, boundary));
    const page = this.#db.prepare(
      'select seq, prev, hash, event from audit_events where seq > ? and seq <= ? order by seq limit ?',
    );
    let after = plan.from - 1;
    let n = 0;
    for (;;) {
      const got = page.all(after, plan.through, PAGE) as unknown as {
        seq: number;
        prev: string;
        hash: string;
        event: string;
      }[];
      if (got.length === 0) break;
      w.write(got.map((r) => recordLine(r)).join(''));
      n += got.length;
      after = Number(got[got.length - 1]?.seq);
    }
    const cps = this.#db
      .prepare('select seq, hash, at, kid, sig from audit_checkpoints where seq <= ? order by seq')
      .all(plan.through) as unknown as Checkpoint[];
    w.write(cps.map((c) => checkpointLine(c)).join(''));
    return Promise.resolve({ file, bytes: w.finish(), records: n });
  }

  deleteThrough(through: number): Promise<number> {
    this.#db.exec('begin immediate');
    try {
      const r = this.#db.prepare('delete from audit_events where seq <= ?').run(through);
      this.#db.exec('commit');
      return Promise.resolve(Number(r.changes));
    } catch (error) {
      try {
        this.#db.exec('rollback');
      } catch {
        // nothing to roll back
      }
      return Promise.reject(error instanceof Error ? error : new Error(String(error)));
    }
  }

  sizeBytes(): Promise<number> {
    let total = 0;
    for (const f of [this.#path, `${this.#path}-wal`]) {
      try {
        total += statSync(f).size;
      } catch {
        // no WAL right now
      }
    }
    return Promise.resolve(total);
  }

  close(): Promise<void> {
    if (this.#db.isOpen) this.#db.close();
    return Promise.resolve();
  }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

const PG_INSERT = `insert into audit_events (seq, event_id, ts, category, outcome, client_id, trace_id, prev, hash, event)
select seq, event_id, ts, category, outcome, client_id, trace_id, prev, hash, event
from unnest($1::integer[], $2::varchar[], $3::varchar[], $4::varchar[], $5::varchar[], $6::varchar[], $7::varchar[], $8::char(64)[], $9::char(64)[], $10::text[])
  with ordinality as t(seq, event_id, ts, category, outcome, client_id, trace_id, prev, hash, event, ord)
order by ord`;

class PostgresAuditDb implements AuditDb {
  readonly #target: Extract<AuditDbTarget, { kind: 'postgres' }>;
  #client: pg.Client | undefined;
  #connecting: Promise<pg.Client> | undefined;

  constructor(target: Extract<AuditDbTarget, { kind: 'postgres' }>) {
    this.#target = target;
  }

  /** One connection, opened on first use and again after it failed. */
  #conn(): Promise<pg.Client> {
    if (this.#client !== undefined) return Promise.resolve(this.#client);
    this.#connecting ??= (async () => {
      const client = new pg.Client({
        connectionString: this.#target.connectionString,
        application_name: 'portcullis-audit',
        connectionTimeoutMillis: 5_000,
        query_timeout: 30_000,
        keepAlive: true,
      });
      client.on('error', () => {
        if (this.#client === client) this.#client = undefined;
      });
      client.on('end', () => {
        if (this.#client === client) this.#client = undefined;
      });
      try {
        await client.connect();
        if (this.#target.schema !== undefined) {
          await client.query('select set_config($1, $2, false)', ['search_path', `"${this.#target.schema}"`]);
        }
      } catch (error) {
        await client.end().catch(() => undefined);
        throw error;
      }
      this.#client = client;
      return client;
    })().finally(() => {
      this.#connecting = undefined;
    });
    return this.#connecting;
  }

  async #tx<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
    const c = await this.#conn();
    await c.query('begin');
    try {
      await c.query({
        name: 'audit-lock',
        text: 'select pg_advisory_xact_lock($1, $2)',
        values: [LOCK_CLASS, AUDIT_LOCK_KEY],
      });
      const out = await fn(c);
      await c.query('commit');
      return out;
    } catch (error) {
      await c.query('rollback').catch(() => undefined);
      throw error;
    }
  }

  static async #readHead(c: pg.Client): Promise<ChainHead> {
    const r = await c.query<{ seq: number; hash: string }>({
      name: 'audit-head',
      text: 'select seq, hash from audit_events order by seq desc limit 1',
    });
    const row = r.rows[0];
    return row === undefined ? EMPTY_HEAD : { seq: row.seq, hash: row.hash };
  }

  async head(): Promise<ChainHead> {
    return PostgresAuditDb.#readHead(await this.#conn());
  }

  append(events: readonly AuditEvent[]): Promise<AppendResult> {
    return this.#tx(async (c) => {
      const known = await c.query<{ event_id: string }>({
        name: 'audit-known',
        text: 'select event_id from audit_events where event_id = any($1::varchar[])',
        values: [events.map((e) => e['event.id'])],
      });
      const seen = new Set(known.rows.map((r) => r.event_id));
      const kept: number[] = [];
      const fresh: AuditEvent[] = [];
      events.forEach((e, i) => {
        if (!seen.has(e['event.id'])) {
          kept.push(i);
          fresh.push(e);
        }
      });
      const { result, rows: out } = rows(fresh, await PostgresAuditDb.#readHead(c));
      if (out.length > 0) {
        await c.query({
          name: 'audit-insert',
          text: PG_INSERT,
          values: [
            out.map((r) => r.seq),
            out.map((r) => r.event_id),
            out.map((r) => r.ts),
            out.map((r) => r.category),
            out.map((r) => r.outcome),
            out.map((r) => r.client_id),
            out.map((r) => r.trace_id),
            out.map((r) => r.prev),
            out.map((r) => r.hash),
            out.map((r) => r.event),
          ],
        });
      }
      return fresh.length === events.length ? result : { ...result, kept };
    });
  }

  async appendCheckpoint(cp: Checkpoint): Promise<void> {
    const c = await this.#conn();
    await c.query({
      name: 'audit-checkpoint',
      text: 'insert into audit_checkpoints (seq, hash, at, kid, sig) values ($1, $2, $3, $4, $5) on conflict (seq) do nothing',
      values: [cp.seq, cp.hash, cp.at, cp.kid, cp.sig],
    });
  }

  async planPrune(beforeIso: string): Promise<PrunePlan | undefined> {
    const c = await this.#conn();
    const first = (
      await c.query<{ seq: number; prev: string }>(
        'select seq, prev from audit_events order by seq asc limit 1',
      )
    ).rows[0];
    if (first === undefined) return undefined;
    const keep = (
      await c.query<{ seq: number | null }>('select min(seq) as seq from audit_events where ts >= $1', [
        beforeIso,
      ])
    ).rows[0];
    const last = await PostgresAuditDb.#readHead(c);
    const through = keep?.seq === null || keep === undefined ? last.seq : keep.seq - 1;
    if (through < first.seq) return undefined;
    const row = (await c.query<{ hash: string }>('select hash from audit_events where seq = $1', [through]))
      .rows[0];
    if (row === undefined) return undefined;
    const count = (
      await c.query<{ n: string }>('select count(*) as n from audit_events where seq <= $1', [through])
    ).rows[0];
    const cps = (
      await c.query<{ n: string }>('select count(*) as n from audit_checkpoints where seq <= $1', [through])
    ).rows[0];
    return {
      from: first.seq,
      through,
      hash: row.hash,
      records: Number(count?.n ?? 0),
      after: { seq: first.seq - 1, hash: first.prev },
      checkpoints: Number(cps?.n ?? 0),
    };
  }

  async writeArchive(plan: PrunePlan, file: string, boundary: Checkpoint): Promise<ArchiveResult> {
    const c = await this.#conn();
    const w = new ArchiveWriter(file);
    w.write(archiveHeader(plan, boundary));
    let after = plan.from - 1;
    let n = 0;
    for (;;) {
      const got = (
        await c.query<{ seq: number; prev: string; hash: string; event: string }>(
          'select seq, prev, hash, event from audit_events where seq > $1 and seq <= $2 order by seq limit $3',
          [after, plan.through, PAGE],
        )
      ).rows;
      if (got.length === 0) break;
      w.write(got.map((r) => recordLine({ ...r, seq: r.seq })).join(''));
      n += got.length;
      after = Number(got[got.length - 1]?.seq);
    }
    const cps = (
      await c.query<Checkpoint>(
        'select seq, hash, at, kid, sig from audit_checkpoints where seq <= $1 order by seq',
        [plan.through],
      )
    ).rows;
    w.write(cps.map((cp) => checkpointLine({ ...cp, seq: cp.seq })).join(''));
    return { file, bytes: w.finish(), records: n };
  }

  deleteThrough(through: number): Promise<number> {
    return this.#tx(async (c) => {
      const r = await c.query('delete from audit_events where seq <= $1', [through]);
      return r.rowCount ?? 0;
    });
  }

  async sizeBytes(): Promise<number> {
    const c = await this.#conn();
    const r = await c.query<{ n: string | null }>(
      "select coalesce(pg_total_relation_size(to_regclass('audit_events')), 0) + coalesce(pg_total_relation_size(to_regclass('audit_checkpoints')), 0) as n",
    );
    return Number(r.rows[0]?.n ?? 0);
  }

  async close(): Promise<void> {
    const c = this.#client;
    this.#client = undefined;
    if (c !== undefined) await c.end().catch(() => undefined);
  }
}

/** Opens the worker's connection to the store (the store was opened and migrated by the caller). */
export function openAuditDb(target: AuditDbTarget): AuditDb {
  return target.kind === 'sqlite' ? new SqliteAuditDb(target.path) : new PostgresAuditDb(target);
}
