/**
 * Schema migrations, defined in code and applied when the store opens.
 *
 * Safe when several gateway processes start together:
 * - PostgreSQL: the whole migration (schema creation included) runs under a session-level
 *   `pg_advisory_lock` keyed by the target schema, and each migration runs in a transaction
 *   (PostgreSQL has transactional DDL).
 * - SQLite: the whole migration runs in one `BEGIN IMMEDIATE` transaction, so a second
 *   process waits (busy_timeout) for the first to finish and then finds nothing to do.
 */
import { sql } from 'kysely';
import type { Kysely } from 'kysely';
import { Migrator } from 'kysely/migration';
import type { Migration, MigrationProvider } from 'kysely/migration';

export type StoreKind = 'sqlite' | 'postgres';

/** Kysely's bookkeeping tables, named for Portcullis so they are recognisable in a shared database. */
export const MIGRATION_TABLE = 'portcullis_migration';
export const MIGRATION_LOCK_TABLE = 'portcullis_migration_lock';

/** First key of the two-key advisory lock ("PCLS"); the second is a hash of the schema name. */
export const ADVISORY_LOCK_CLASS = 0x50434c53;

/**
 * All migrations, in order. Names sort lexically; never rename or edit an applied one,
 * add a new one instead. Column types are chosen to read back identically on both
 * backends (see `schema.ts`).
 */
export function migrations(kind: StoreKind): Record<string, Migration> {
  return {
    '001_config_versions': {
      async up(db: Kysely<unknown>): Promise<void> {
        await db.schema
          .createTable('config_versions')
          .addColumn('id', 'integer', (col) =>
            kind === 'sqlite'
              ? col.primaryKey().autoIncrement()
              : col.primaryKey().generatedByDefaultAsIdentity(),
          )
          .addColumn('sha256', 'char(64)', (col) => col.notNull())
          .addColumn('source', 'text', (col) => col.notNull())
          .addColumn('applied_at', 'varchar(32)', (col) => col.notNull())
          .addColumn('summary', 'text', (col) => col.notNull())
          .execute();
        await db.schema
          .createIndex('config_versions_sha256_idx')
          .on('config_versions')
          .column('sha256')
          .execute();
      },
    },
  };
}

function provider(kind: StoreKind): MigrationProvider {
  return { getMigrations: () => Promise.resolve(migrations(kind)) };
}

export interface MigrateOptions {
  readonly kind: StoreKind;
  /**
   * PostgreSQL only: the schema to migrate, created if missing. The connections must
   * already have it in their search_path. Defaults to the connection's current schema.
   */
  readonly schema?: string;
}

/** Names of the migrations this call applied (empty when the store was up to date). */
export type AppliedMigrations = string[];

async function runMigrator<DB>(
  db: Kysely<DB>,
  kind: StoreKind,
  schema: string | undefined,
): Promise<AppliedMigrations> {
  const migrator = new Migrator({
    db,
    provider: provider(kind),
    migrationTableName: MIGRATION_TABLE,
    migrationLockTableName: MIGRATION_LOCK_TABLE,
    ...(schema === undefined ? {} : { migrationTableSchema: schema }),
  });
  const { error, results } = await migrator.migrateToLatest();
  if (error !== undefined) {
    const failed = results?.find((r) => r.status === 'Error')?.migrationName;
    throw new Error(failed === undefined ? 'store migration failed' : `store migration ${failed} failed`, {
      cause: error,
    });
  }
  return (results ?? []).filter((r) => r.status === 'Success').map((r) => r.migrationName);
}

async function migratePostgres<DB>(db: Kysely<DB>, schema: string | undefined): Promise<AppliedMigrations> {
  return db.connection().execute(async (conn) => {
    let target = schema;
    if (target === undefined) {
      const { rows } = await sql<{
        schema: string | null;
      }>`select current_schema() as schema`.execute(conn);
      const current = rows[0]?.schema ?? null;
      if (current === null) {
        throw new Error('PostgreSQL store: no schema in the search_path exists');
      }
      target = current;
    }
    const unlock = async (): Promise<void> => {
      await sql`select pg_advisory_unlock(${ADVISORY_LOCK_CLASS}, hashtext(${target}))`.execute(conn);
    };
    await sql`select pg_advisory_lock(${ADVISORY_LOCK_CLASS}, hashtext(${target}))`.execute(conn);
    let applied: AppliedMigrations;
    try {
      if (schema !== undefined) {
        // Look before creating: CREATE SCHEMA IF NOT EXISTS still needs the CREATE
        // privilege on the database, which a least-privilege role may lack.
        const { rows } = await sql`select 1 from pg_namespace where nspname = ${schema}`.execute(conn);
        if (rows.length === 0) await sql`create schema ${sql.id(schema)}`.execute(conn);
      }
      applied = await runMigrator(conn, 'postgres', target);
    } catch (error) {
      // Keep the migration error; an unlock failure here means the session is gone,
      // and PostgreSQL releases session locks with it.
      await unlock().catch(() => undefined);
      throw error;
    }
    await unlock();
    return applied;
  });
}

async function migrateSqlite<DB>(db: Kysely<DB>): Promise<AppliedMigrations> {
  return db.connection().execute(async (conn) => {
    await sql`begin immediate`.execute(conn);
    let applied: AppliedMigrations;
    try {
      applied = await runMigrator(conn, 'sqlite', undefined);
    } catch (error) {
      // Keep the migration error; the store is closed after a failed migration anyway.
      await sql`rollback`.execute(conn).catch(() => undefined);
      throw error;
    }
    await sql`commit`.execute(conn);
    return applied;
  });
}

/**
 * Applies every pending migration. Idempotent; safe to call from several processes at
 * once against the same database. Throws when a migration fails (nothing of a failed
 * migration is kept: PostgreSQL rolls the migration back, SQLite the whole run).
 */
export async function migrateToLatest<DB>(
  db: Kysely<DB>,
  options: MigrateOptions,
): Promise<AppliedMigrations> {
  if (options.kind === 'postgres') return migratePostgres(db, options.schema);
  if (options.schema !== undefined) {
    throw new TypeError('migrateToLatest: schema applies to PostgreSQL stores only');
  }
  return migrateSqlite(db);
}
