/**
 * The Portcullis store: one Kysely query layer over embedded SQLite (`node:sqlite`) or
 * PostgreSQL (`pg`), migrated to the latest schema when opened.
 */
import { closeSync, fchmodSync, fstatSync, mkdirSync, openSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { CompiledQuery, Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { migrateToLatest } from './migrations.ts';
import type { StoreKind } from './migrations.ts';
import type { Database } from './schema.ts';
import { createNodeSqliteDialect } from './sqlite-dialect.ts';

export type { StoreKind } from './migrations.ts';
export type { Database } from './schema.ts';
export { listConfigVersions, recordConfigVersion, MAX_LIST_LIMIT } from './config-versions.ts';
export type { ConfigVersion, NewConfigVersion } from './config-versions.ts';

export interface StoreOptions {
  /**
   * `sqlite:FILE` (relative to `dataDir`, or absolute), `sqlite::memory:`, or a
   * `postgres://` / `postgresql://` URL. On PostgreSQL, `?schema=NAME` selects (and creates
   * if missing) a schema through the connections' search_path.
   */
  readonly url: string;
  /** The data directory; relative SQLite paths are resolved against it. */
  readonly dataDir: string;
  /**
   * PostgreSQL only: called when an idle pooled connection fails (the pool drops it and
   * opens a new one on demand). Without it such errors are ignored rather than crashing
   * the process.
   */
  readonly onPoolError?: (error: Error) => void;
  /**
   * PostgreSQL only: how long a serving process waits for a pooled connection and for a query
   * before the operation fails (and the caller answers 503). Migrations always run on their own
   * connection with the maintenance waits, so a short serving bound never interrupts them.
   * Default: the maintenance waits (connect 5 s, query 30 s), right for CLI work.
   */
  readonly waits?: StoreWaits;
}

/** Bounds on waiting for PostgreSQL (see `StoreOptions.waits`). */
export interface StoreWaits {
  readonly connectMs: number;
  readonly queryMs: number;
}

/** What CLI and maintenance work waits for (long batch updates, prunes, migrations). */
export const MAINTENANCE_WAITS: StoreWaits = { connectMs: 5_000, queryMs: 30_000 };

export interface Store {
  readonly db: Kysely<Database>;
  readonly kind: StoreKind;
  /** Migrations this open applied, in order (empty when the database was up to date). */
  readonly appliedMigrations: readonly string[];
  /** Closes the database (idempotent). */
  close(): Promise<void>;
}

export type ParsedStoreUrl =
  | { readonly kind: 'sqlite'; readonly path: string }
  | {
      readonly kind: 'postgres';
      /** The URL without Portcullis's own `schema` parameter. */
      readonly connectionString: string;
      readonly schema: string | undefined;
    };

/** SQLite waits this long for another process's lock before failing with SQLITE_BUSY. */
export const SQLITE_BUSY_TIMEOUT_MS = 5000;

const MEMORY = ':memory:';
const SCHEMA_NAME = /^(?!pg_)[A-Za-z_][A-Za-z0-9_]{0,62}$/;
const SCHEME = /^([A-Za-z][A-Za-z0-9+.-]{0,30}):/;
const EXPECTED = 'expected sqlite:FILE, sqlite::memory:, postgres://… or postgresql://…';

/**
 * Parses and checks a store URL. Throws an Error naming the problem; messages never
 * contain the URL itself, so a password in it cannot leak into logs.
 */
export function parseStoreUrl(url: string, dataDir: string): ParsedStoreUrl {
  if (typeof url !== 'string' || url.length === 0) {
    throw new TypeError('store URL must be a non-empty string');
  }
  const scheme = SCHEME.exec(url)?.[1]?.toLowerCase();
  if (scheme === undefined) {
    throw new Error(`store URL has no scheme; ${EXPECTED}`);
  }
  if (scheme === 'sqlite') return parseSqliteUrl(url.slice('sqlite:'.length), dataDir);
  if (scheme === 'postgres' || scheme === 'postgresql') return parsePostgresUrl(url);
  throw new Error(`unsupported store URL scheme "${scheme}:"; ${EXPECTED}`);
}

function parseSqliteUrl(rest: string, dataDir: string): ParsedStoreUrl {
  if (rest === MEMORY) return { kind: 'sqlite', path: MEMORY };
  if (rest.length === 0) throw new Error('sqlite store URL has no file name; use sqlite:FILE');
  if (rest.startsWith('//')) {
    throw new Error(
      'sqlite store URL must be sqlite:FILE (relative to the data directory) or sqlite:/absolute/path',
    );
  }
  if (/[?#\0]/.test(rest)) {
    throw new Error('sqlite store URL takes no parameters (?, #) and no NUL characters');
  }
  if (typeof dataDir !== 'string' || dataDir.length === 0) {
    throw new TypeError('dataDir must be a non-empty string for a sqlite:FILE store URL');
  }
  return { kind: 'sqlite', path: resolve(dataDir, rest) };
}

function parsePostgresUrl(url: string): ParsedStoreUrl {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    // Deliberately no `cause`: the URL parser's error carries the whole input.
    throw new Error('PostgreSQL store URL is malformed (not a valid URL)');
  }
  const schemas = parsed.searchParams.getAll('schema');
  if (schemas.length > 1) {
    throw new Error('PostgreSQL store URL has more than one schema parameter');
  }
  const schema = schemas[0];
  if (schema !== undefined && !SCHEMA_NAME.test(schema)) {
    throw new Error(
      'PostgreSQL store URL has an invalid schema parameter: use 1-63 letters, digits or ' +
        'underscores, not starting with a digit or pg_',
    );
  }
  parsed.searchParams.delete('schema');
  return { kind: 'postgres', connectionString: parsed.href, schema };
}

/** Creates (or tightens) the database file so that only the owner can read it. */
function prepareSqliteFile(path: string): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const fd = openSync(path, 'a', 0o600);
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) throw new Error('sqlite store path is not a regular file');
    if ((stat.mode & 0o077) !== 0) fchmodSync(fd, 0o600);
  } finally {
    closeSync(fd);
  }
}

function openSqlite(path: string): OpenedDatabase {
  if (path !== MEMORY) prepareSqliteFile(path);
  const database = new DatabaseSync(path, {
    timeout: SQLITE_BUSY_TIMEOUT_MS,
    enableForeignKeyConstraints: true,
  });
  try {
    database.exec(`PRAGMA busy_timeout = ${String(SQLITE_BUSY_TIMEOUT_MS)}`);
    database.exec('PRAGMA foreign_keys = ON');
    if (path !== MEMORY) {
      const row = database.prepare('PRAGMA journal_mode = WAL').get();
      if (row?.journal_mode !== 'wal') {
        throw new Error('sqlite store: could not enable WAL journal mode');
      }
    }
  } catch (error) {
    database.close();
    throw error;
  }
  const db = new Kysely<Database>({ dialect: createNodeSqliteDialect({ database }) });
  return { db, close: closeOnce(db) };
}

function openPostgres(
  connectionString: string,
  schema: string | undefined,
  onPoolError: ((error: Error) => void) | undefined,
  waits: StoreWaits,
): OpenedDatabase {
  // Bounded waits: an unreachable or partitioned server fails a request within seconds (503)
  // instead of holding it. `query_timeout` is a client-side timer, so it also ends a query on a
  // connection opened before a silent partition (no reset), which the server's
  // statement_timeout could not; keep-alive notices a dead peer on an idle connection.
  const pool = new pg.Pool({
    connectionString,
    application_name: 'portcullis',
    connectionTimeoutMillis: waits.connectMs,
    query_timeout: waits.queryMs,
    keepAlive: true,
  });
  pool.on('error', (error) => onPoolError?.(error));
  // A checked-out client's failure is reported to its query; without this listener the client's
  // own 'error' event (a reset mid-query) would be an uncaught exception that ends the process.
  pool.on('connect', (client) => {
    client.on('error', () => undefined);
  });
  const searchPath = schema === undefined ? undefined : `"${schema}"`;
  const db = new Kysely<Database>({
    dialect: new PostgresDialect({
      pool,
      ...(searchPath === undefined
        ? {}
        : {
            onCreateConnection: async (connection) => {
              await connection.executeQuery(
                CompiledQuery.raw('select set_config($1, $2, false)', ['search_path', searchPath]),
              );
            },
          }),
    }),
  });
  return { db, close: closeOnce(db) };
}

interface OpenedDatabase {
  readonly db: Kysely<Database>;
  close(): Promise<void>;
}

function closeOnce(db: Kysely<Database>): () => Promise<void> {
  let closing: Promise<void> | undefined;
  return () => {
    closing ??= db.destroy();
    return closing;
  };
}

/**
 * Opens the store named by `options.url` and applies pending migrations. Several
 * processes may open the same database at once; exactly one applies each migration.
 *
 * @example
 * ```ts
 * const store = await openStore({ url: 'sqlite:portcullis.db', dataDir: '.portcullis' });
 * await recordConfigVersion(store.db, { sha256, source: 'portcullis.yaml', summary: '3 APIs' });
 * await store.close();
 * ```
 */
export async function openStore(options: StoreOptions): Promise<Store> {
  const target = parseStoreUrl(options.url, options.dataDir);
  const waits = options.waits ?? MAINTENANCE_WAITS;
  // Short serving waits would cut a long migration short: migrate on a maintenance pool first.
  const separateMigrations =
    target.kind === 'postgres' &&
    (waits.connectMs < MAINTENANCE_WAITS.connectMs || waits.queryMs < MAINTENANCE_WAITS.queryMs);
  const opened =
    target.kind === 'sqlite'
      ? openSqlite(target.path)
      : openPostgres(
          target.connectionString,
          target.schema,
          options.onPoolError,
          separateMigrations ? MAINTENANCE_WAITS : waits,
        );
  let appliedMigrations: string[];
  try {
    appliedMigrations = await migrateToLatest(
      opened.db,
      target.kind === 'sqlite' ? { kind: 'sqlite' } : { kind: 'postgres', schema: target.schema },
    );
  } catch (error) {
    await opened.close();
    throw error;
  }
  if (separateMigrations) {
    await opened.close();
    const serving = openPostgres(target.connectionString, target.schema, options.onPoolError, waits);
    return { db: serving.db, kind: target.kind, appliedMigrations, close: () => serving.close() };
  }
  return { db: opened.db, kind: target.kind, appliedMigrations, close: () => opened.close() };
}
