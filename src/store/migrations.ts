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
import { adminMigrations } from '../admin/migrations.ts';

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
    '002_keys': {
      // The key manager (src/keys): a one-row state whose generation changes with every change
      // of the key set, signing keys (private JWK only wrapped by the KMS), and peppers (wrapped).
      async up(db: Kysely<unknown>): Promise<void> {
        await db.schema
          .createTable('key_set_state')
          .addColumn('id', 'integer', (col) => col.primaryKey().check(sql`id = 1`))
          .addColumn('generation', 'integer', (col) => col.notNull())
          .addColumn('updated_at', 'varchar(32)', (col) => col.notNull())
          .execute();
        await db.schema
          .createTable('signing_keys')
          .addColumn('kid', 'varchar(64)', (col) => col.primaryKey())
          .addColumn('alg', 'varchar(16)', (col) => col.notNull())
          .addColumn('status', 'varchar(16)', (col) =>
            col.notNull().check(sql`status in ('next', 'current', 'previous')`),
          )
          .addColumn('public_jwk', 'text', (col) => col.notNull())
          .addColumn('private_jwk_wrapped', 'text', (col) => col.notNull())
          .addColumn('kms', 'varchar(64)', (col) => col.notNull())
          .addColumn('created_at', 'varchar(32)', (col) => col.notNull())
          .addColumn('activated_at', 'varchar(32)')
          .addColumn('retires_at', 'varchar(32)')
          .execute();
        // At most one current and one next key, whatever a buggy writer does.
        await db.schema
          .createIndex('signing_keys_one_current_one_next_idx')
          .on('signing_keys')
          .column('status')
          .unique()
          .where(sql<boolean>`status in ('current', 'next')`)
          .execute();
        await db.schema
          .createTable('key_peppers')
          .addColumn('purpose', 'varchar(32)', (col) => col.primaryKey())
          .addColumn('wrapped', 'text', (col) => col.notNull())
          .addColumn('kms', 'varchar(64)', (col) => col.notNull())
          .addColumn('created_at', 'varchar(32)', (col) => col.notNull())
          .execute();
      },
    },
    '003_oauth': {
      // The authorization server (src/oauth): oidc-provider's models, registered clients (the
      // secret only as an HMAC), and the jtis of revoked JWT access tokens until they expire.
      // Timestamps are ISO-8601 UTC text with milliseconds, so they compare as strings.
      async up(db: Kysely<unknown>): Promise<void> {
        await db.schema
          .createTable('oauth_models')
          .addColumn('model', 'varchar(64)', (col) => col.notNull())
          .addColumn('id', 'varchar(400)', (col) => col.notNull())
          .addColumn('payload', 'text', (col) => col.notNull())
          .addColumn('grant_id', 'varchar(400)')
          .addColumn('uid', 'varchar(400)')
          .addColumn('user_code', 'varchar(400)')
          .addColumn('expires_at', 'varchar(32)')
          .addColumn('consumed_at', 'varchar(32)')
          .addPrimaryKeyConstraint('oauth_models_pk', ['model', 'id'])
          .execute();
        for (const column of ['grant_id', 'uid', 'user_code', 'expires_at']) {
          await db.schema
            .createIndex(`oauth_models_${column}_idx`)
            .on('oauth_models')
            .column(column)
            .execute();
        }
        await db.schema
          .createTable('oauth_clients')
          .addColumn('client_id', 'varchar(64)', (col) => col.primaryKey())
          .addColumn('metadata', 'text', (col) => col.notNull())
          .addColumn('secret_hash', 'varchar(128)')
          .addColumn('created_at', 'varchar(32)', (col) => col.notNull())
          .execute();
        await db.schema
          .createTable('revoked_tokens')
          .addColumn('jti', 'varchar(400)', (col) => col.primaryKey())
          .addColumn('client_id', 'varchar(64)', (col) => col.notNull())
          .addColumn('expires_at', 'varchar(32)', (col) => col.notNull())
          .addColumn('revoked_at', 'varchar(32)', (col) => col.notNull())
          .execute();
        await db.schema
          .createIndex('revoked_tokens_expires_at_idx')
          .on('revoked_tokens')
          .column('expires_at')
          .execute();
      },
    },
    '004_users': {
      // End users of the authorization server (src/oauth/users.ts) and login throttling counters.
      // Booleans are integers 0/1 and timestamps ISO-8601 text, so both backends read back alike.
      async up(db: Kysely<unknown>): Promise<void> {
        await db.schema
          .createTable('users')
          .addColumn('id', 'varchar(300)', (col) => col.primaryKey())
          .addColumn('username', 'varchar(300)', (col) => col.notNull().unique())
          .addColumn('password_hash', 'text')
          .addColumn('totp_secret_wrapped', 'text')
          .addColumn('totp_last_step', 'integer')
          .addColumn('federated_issuer', 'text')
          .addColumn('federated_subject', 'text')
          .addColumn('disabled', 'integer', (col) =>
            col
              .notNull()
              .defaultTo(0)
              .check(sql`disabled in (0, 1)`),
          )
          .addColumn('created_at', 'varchar(32)', (col) => col.notNull())
          .addColumn('password_changed_at', 'varchar(32)')
          .addColumn('last_login_at', 'varchar(32)')
          .execute();
        await db.schema
          .createTable('login_throttle')
          .addColumn('key', 'varchar(400)', (col) => col.primaryKey())
          .addColumn('failures', 'integer', (col) => col.notNull())
          .addColumn('window_start', 'varchar(32)', (col) => col.notNull())
          .addColumn('blocked_until', 'varchar(32)')
          .execute();
      },
    },
    '005_audit': {
      // The audit trail (src/audit): hash-chained records in insertion order (`id`), with the
      // columns the CLI searches by, and the signed checkpoints over the chain.
      async up(db: Kysely<unknown>): Promise<void> {
        await db.schema
          .createTable('audit_events')
          .addColumn('id', 'integer', (col) =>
            kind === 'sqlite'
              ? col.primaryKey().autoIncrement()
              : col.primaryKey().generatedByDefaultAsIdentity(),
          )
          .addColumn('seq', 'integer', (col) => col.notNull().unique())
          .addColumn('event_id', 'varchar(64)', (col) => col.notNull().unique())
          .addColumn('ts', 'varchar(32)', (col) => col.notNull())
          .addColumn('category', 'varchar(32)', (col) => col.notNull())
          .addColumn('outcome', 'varchar(16)', (col) => col.notNull())
          .addColumn('client_id', 'varchar(300)')
          .addColumn('trace_id', 'varchar(300)')
          .addColumn('prev', 'char(64)', (col) => col.notNull())
          .addColumn('hash', 'char(64)', (col) => col.notNull())
          .addColumn('event', 'text', (col) => col.notNull())
          .execute();
        for (const column of ['ts', 'client_id', 'trace_id']) {
          await db.schema
            .createIndex(`audit_events_${column}_idx`)
            .on('audit_events')
            .column(column)
            .execute();
        }
        await db.schema
          .createTable('audit_checkpoints')
          .addColumn('seq', 'integer', (col) => col.primaryKey())
          .addColumn('hash', 'char(64)', (col) => col.notNull())
          .addColumn('at', 'varchar(32)', (col) => col.notNull())
          .addColumn('kid', 'varchar(200)', (col) => col.notNull())
          .addColumn('sig', 'text', (col) => col.notNull())
          .execute();
      },
    },
    '006_api_keys': {
      // API keys (src/tokens/api-keys.ts): the key only as an HMAC under the key manager's
      // pepper, its restrictions (JSON arrays), lifecycle and usage; and the source networks
      // each key was used from (a new one is an anomaly).
      async up(db: Kysely<unknown>): Promise<void> {
        await db.schema
          .createTable('api_keys')
          .addColumn('id', 'varchar(64)', (col) => col.primaryKey())
          .addColumn('name', 'varchar(200)', (col) => col.notNull())
          .addColumn('key_hash', 'varchar(128)', (col) => col.notNull().unique())
          .addColumn('env', 'varchar(8)', (col) => col.notNull().check(sql`env in ('live', 'test')`))
          .addColumn('apis', 'text', (col) => col.notNull())
          .addColumn('operations', 'text', (col) => col.notNull())
          .addColumn('cidrs', 'text', (col) => col.notNull())
          .addColumn('created_at', 'varchar(32)', (col) => col.notNull())
          .addColumn('expires_at', 'varchar(32)', (col) => col.notNull())
          .addColumn('revoked_at', 'varchar(32)')
          .addColumn('replaced_by', 'varchar(64)')
          .addColumn('use_count', 'integer', (col) => col.notNull().defaultTo(0))
          .addColumn('last_used_at', 'varchar(32)')
          .addColumn('last_source_network', 'varchar(64)')
          .execute();
        await db.schema
          .createTable('api_key_networks')
          .addColumn('key_id', 'varchar(64)', (col) => col.notNull())
          .addColumn('network', 'varchar(64)', (col) => col.notNull())
          .addColumn('first_seen_at', 'varchar(32)', (col) => col.notNull())
          .addPrimaryKeyConstraint('api_key_networks_pk', ['key_id', 'network'])
          .execute();
      },
    },
    '007_audit_key': {
      // The key manager's audit-checkpoint key (src/keys): ES256, created once, the private JWK
      // only wrapped by the KMS. Rows are never deleted, so old checkpoints keep verifying.
      async up(db: Kysely<unknown>): Promise<void> {
        await db.schema
          .createTable('audit_keys')
          .addColumn('kid', 'varchar(64)', (col) => col.primaryKey())
          .addColumn('alg', 'varchar(16)', (col) => col.notNull())
          .addColumn('public_jwk', 'text', (col) => col.notNull())
          .addColumn('private_jwk_wrapped', 'text', (col) => col.notNull())
          .addColumn('kms', 'varchar(64)', (col) => col.notNull())
          .addColumn('created_at', 'varchar(32)', (col) => col.notNull())
          .addColumn('retired_at', 'varchar(32)')
          .execute();
        // At most one key in use.
        await db.schema
          .createIndex('audit_keys_one_active_idx')
          .on('audit_keys')
          .column(sql`(retired_at is null)`)
          .unique()
          .where(sql<boolean>`retired_at is null`)
          .execute();
      },
    },
    '008_idempotency_records': {
      // idempotency.backend: store. The primary key makes taking a key atomic (insert, or not).
      async up(db: Kysely<unknown>): Promise<void> {
        await db.schema
          .createTable('idempotency_records')
          .addColumn('record_key', 'varchar(64)', (col) => col.primaryKey())
          .addColumn('fingerprint', 'varchar(128)', (col) => col.notNull())
          .addColumn('state', 'varchar(1)', (col) => col.notNull())
          .addColumn('response', 'text')
          .addColumn('expires_at', 'varchar(32)', (col) => col.notNull())
          .execute();
        await db.schema
          .createIndex('idempotency_records_expires_idx')
          .on('idempotency_records')
          .column('expires_at')
          .execute();
      },
    },
    '009_master_key_rotations': {
      // `portcullis keys rotate-master`'s journal (src/keys/rotate-master.ts): one row per
      // rotation, keyed by the new master key's id; a row without finished_at is resumed.
      async up(db: Kysely<unknown>): Promise<void> {
        await db.schema
          .createTable('master_key_rotations')
          .addColumn('to_key', 'varchar(64)', (col) => col.primaryKey())
          .addColumn('from_key', 'varchar(64)', (col) => col.notNull())
          .addColumn('provider', 'varchar(32)', (col) => col.notNull())
          .addColumn('rewrapped', 'integer', (col) => col.notNull())
          .addColumn('started_at', 'varchar(32)', (col) => col.notNull())
          .addColumn('finished_at', 'varchar(32)')
          .execute();
      },
    },
    // issue 13 (sessions): artifacts of the authorization server rest only as keyed hashes and
    // sealed payloads, so rows written before are unreadable by the new adapter and hold raw
    // codes, tokens and ids: they are deleted (signed-in users sign in again). Per-user lookup
    // (account_id, hashed) and the session idle deadline are new columns.
    '010_oauth_hashed_artifacts': {
      async up(db: Kysely<unknown>): Promise<void> {
        await db.deleteFrom('oauth_models' as never).execute();
        await db.schema.alterTable('oauth_models').addColumn('account_id', 'varchar(64)').execute();
        await db.schema.alterTable('oauth_models').addColumn('idle_expires_at', 'varchar(32)').execute();
        await db.schema
          .createIndex('oauth_models_account_id_idx')
          .on('oauth_models')
          .column('account_id')
          .execute();
      },
    },
    // issue 13 (client secrets): a secret may expire, and the previous one stays valid for the
    // grace period of a rotation (src/oauth/client-secrets.ts). Both only as HMACs.
    '011_client_secret_rotation': {
      async up(db: Kysely<unknown>): Promise<void> {
        for (const column of ['secret_expires_at', 'previous_secret_expires_at']) {
          await db.schema.alterTable('oauth_clients').addColumn(column, 'varchar(32)').execute();
        }
        await db.schema
          .alterTable('oauth_clients')
          .addColumn('previous_secret_hash', 'varchar(128)')
          .execute();
      },
    },
    // --- key custody and data at rest (issue 18): 050-059 ---
    '050_pepper_rotation': {
      // `portcullis keys rotate-pepper`: the peppers a rotation replaced, still accepted until
      // retires_at (src/keys/index.ts); wrapped by the master key like the current ones.
      async up(db: Kysely<unknown>): Promise<void> {
        await db.schema
          .createTable('key_peppers_previous')
          .addColumn('id', 'varchar(32)', (col) => col.primaryKey())
          .addColumn('purpose', 'varchar(32)', (col) => col.notNull())
          .addColumn('wrapped', 'text', (col) => col.notNull())
          .addColumn('kms', 'varchar(64)', (col) => col.notNull())
          .addColumn('created_at', 'varchar(32)', (col) => col.notNull())
          .addColumn('retires_at', 'varchar(32)', (col) => col.notNull())
          .execute();
      },
    },
    '051_data_keys': {
      // Envelope encryption at rest (src/keys/envelope.ts): AES-256 data keys wrapped by the
      // master key; encrypted values name the data key they were sealed with.
      async up(db: Kysely<unknown>): Promise<void> {
        await db.schema
          .createTable('data_keys')
          .addColumn('id', 'varchar(32)', (col) => col.primaryKey())
          .addColumn('purpose', 'varchar(32)', (col) => col.notNull())
          .addColumn('wrapped', 'text', (col) => col.notNull())
          .addColumn('kms', 'varchar(64)', (col) => col.notNull())
          .addColumn('created_at', 'varchar(32)', (col) => col.notNull())
          .execute();
      },
    },
    '030_privacy_choices': {
      // Issue 16: the current consent and opt-out choices of each data subject
      // (src/privacy/store.ts); their history is the audit trail.
      async up(db: Kysely<unknown>): Promise<void> {
        await db.schema
          .createTable('privacy_choices')
          .addColumn('subject', 'varchar(1024)', (col) => col.notNull())
          .addColumn('kind', 'varchar(16)', (col) => col.notNull())
          .addColumn('name', 'varchar(32)', (col) => col.notNull())
          .addColumn('state', 'varchar(16)', (col) => col.notNull())
          .addColumn('notice_version', 'varchar(64)')
          .addColumn('source', 'varchar(16)', (col) => col.notNull())
          .addColumn('updated_at', 'varchar(32)', (col) => col.notNull())
          .addPrimaryKeyConstraint('privacy_choices_pk', ['subject', 'kind', 'name'])
          .execute();
      },
    },
    ...adminMigrations(), // 020–029: roles (src/admin/migrations.ts)
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

/** A migration that failed; `sqlState` is PostgreSQL's error code when there is one. */
export class MigrationError extends Error {
  readonly sqlState: string | undefined;
  constructor(message: string, sqlState: string | undefined, cause: unknown) {
    super(message, { cause });
    this.name = 'MigrationError';
    this.sqlState = sqlState;
  }
}

/**
 * PostgreSQL failures worth another attempt; nothing of a failed attempt is kept.
 * - 3F000 invalid_schema_name and 42P01 undefined_table: Kysely's migrator looks for its tables
 *   by introspecting every table of the database, and the catalog functions it calls fail when
 *   another session drops some other schema at that moment (tests do, in parallel; so can any
 *   tenant of a shared database). The attempts are bounded, so a migration that really refers
 *   to a missing table still fails.
 * - class 40 (serialization failure, deadlock detected) and 55P03 lock_not_available, when
 *   several processes migrate schemas of one database at once.
 */
export function isTransient(err: unknown): boolean {
  const state = err instanceof MigrationError ? err.sqlState : undefined;
  return (
    state !== undefined &&
    (state === '3F000' || state === '42P01' || state.startsWith('40') || state === '55P03')
  );
}

const MIGRATION_ATTEMPTS = 3;

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
    // The SQLSTATE (never the message, which can name hosts or values) tells an operator what kind
    // of failure it was.
    const code = (error as { code?: unknown }).code;
    const state = typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? ` (SQLSTATE ${code})` : '';
    throw new MigrationError(
      (failed === undefined ? 'store migration failed' : `store migration ${failed} failed`) + state,
      typeof code === 'string' ? code : undefined,
      error,
    );
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
      for (let attempt = 1; ; attempt++) {
        try {
          applied = await runMigrator(conn, 'postgres', target);
          break;
        } catch (error) {
          if (attempt >= MIGRATION_ATTEMPTS || !isTransient(error)) throw error;
          await new Promise((resolve) => setTimeout(resolve, 50 * attempt));
        }
      }
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
