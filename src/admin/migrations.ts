/**
 * The admin plane's tables (issues 13 and 15), spread into src/store/migrations.ts. Names use
 * the 020–029 range.
 */
import type { Kysely } from 'kysely';
import type { Migration } from 'kysely/migration';

export function adminMigrations(): Record<string, Migration> {
  return {
    '020_user_roles': {
      // Roles held by users (src/admin/service/roles.ts): end-user entitlements and admin roles.
      async up(db: Kysely<unknown>): Promise<void> {
        await db.schema
          .createTable('user_roles')
          .addColumn('user_id', 'varchar(300)', (col) => col.notNull())
          .addColumn('role', 'varchar(64)', (col) => col.notNull())
          .addColumn('granted_at', 'varchar(32)', (col) => col.notNull())
          .addColumn('granted_by', 'varchar(200)', (col) => col.notNull())
          .addPrimaryKeyConstraint('user_roles_pk', ['user_id', 'role'])
          .execute();
      },
    },
    '021_exceptions': {
      // The exceptions registry (src/admin/service/exceptions.ts): requested, approved by someone
      // else, renewed, revoked; beside the exceptions written in the configuration file.
      async up(db: Kysely<unknown>): Promise<void> {
        await db.schema
          .createTable('admin_exceptions')
          .addColumn('id', 'varchar(64)', (col) => col.primaryKey())
          .addColumn('control', 'varchar(64)', (col) => col.notNull())
          .addColumn('scope', 'varchar(500)', (col) => col.notNull())
          .addColumn('rationale', 'text', (col) => col.notNull())
          .addColumn('compensating_controls', 'text', (col) => col.notNull())
          .addColumn('owner', 'varchar(200)', (col) => col.notNull())
          .addColumn('requested_by', 'varchar(200)', (col) => col.notNull())
          .addColumn('approver', 'varchar(200)')
          .addColumn('status', 'varchar(16)', (col) => col.notNull())
          .addColumn('expires', 'varchar(10)', (col) => col.notNull())
          .addColumn('created_at', 'varchar(32)', (col) => col.notNull())
          .addColumn('updated_at', 'varchar(32)', (col) => col.notNull())
          .addColumn('warned_at', 'varchar(32)')
          .addColumn('expired_at', 'varchar(32)')
          .execute();
      },
    },
  };
}
