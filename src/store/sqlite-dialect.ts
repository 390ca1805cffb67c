/**
 * A Kysely dialect over Node's built-in `node:sqlite` (`DatabaseSync`), so the embedded
 * store needs no native addon.
 *
 * Kysely's own {@link SqliteDialect} drives any object shaped like better-sqlite3's
 * `Database`; {@link adaptDatabaseSync} wraps a `DatabaseSync` into that shape.
 */
import type { DatabaseSync, SQLInputValue, StatementSync } from 'node:sqlite';
import { SqliteDialect } from 'kysely';
import type { DatabaseConnection, SqliteDatabase, SqliteStatement } from 'kysely';

/**
 * Converts one Kysely parameter into a value `node:sqlite` can bind.
 * Booleans become 0/1 (SQLite has no boolean type). Anything that SQLite cannot store as
 * it is (Dates, plain objects, undefined) is refused with a TypeError instead of being
 * silently coerced: a plain object in first position would otherwise be taken by
 * `node:sqlite` as a named-parameter map.
 */
function toSqliteValue(value: unknown, index: number): SQLInputValue {
  switch (typeof value) {
    case 'string':
    case 'number':
    case 'bigint':
      return value;
    case 'boolean':
      return value ? 1 : 0;
    case 'object':
      if (value === null) return null;
      if (value instanceof Uint8Array) return value;
      if (value instanceof Date) {
        throw new TypeError(`SQLite parameter ${index + 1} is a Date; store timestamps as ISO-8601 strings`);
      }
      break;
    default:
      break;
  }
  throw new TypeError(`SQLite parameter ${index + 1} has unsupported type ${typeof value}`);
}

function toSqliteParams(parameters: readonly unknown[]): SQLInputValue[] {
  return parameters.map(toSqliteValue);
}

/** Rows from `node:sqlite` have a null prototype; hand out ordinary objects like `pg` does. */
function toPlainRow(row: unknown): unknown {
  if (typeof row !== 'object' || row === null) return row;
  return Object.fromEntries(Object.entries(row));
}

function adaptStatement(stmt: StatementSync): SqliteStatement {
  return {
    reader: stmt.columns().length > 0,
    all(parameters) {
      return stmt.all(...toSqliteParams(parameters)).map(toPlainRow);
    },
    run(parameters) {
      const { changes, lastInsertRowid } = stmt.run(...toSqliteParams(parameters));
      return { changes, lastInsertRowid };
    },
    *iterate(parameters) {
      for (const row of stmt.iterate(...toSqliteParams(parameters))) {
        yield toPlainRow(row);
      }
    },
  };
}

/**
 * Wraps a `node:sqlite` `DatabaseSync` in the better-sqlite3-shaped interface that
 * Kysely's {@link SqliteDialect} expects. `close()` closes the underlying database.
 */
export function adaptDatabaseSync(database: DatabaseSync): SqliteDatabase {
  return {
    prepare(sql) {
      return adaptStatement(database.prepare(sql));
    },
    close() {
      if (database.isOpen) database.close();
    },
  };
}

export interface NodeSqliteDialectConfig {
  /** An open `DatabaseSync`; Kysely's `destroy()` closes it. */
  readonly database: DatabaseSync;
  /** Called once, when Kysely creates its (single) connection. */
  readonly onCreateConnection?: (connection: DatabaseConnection) => Promise<void>;
}

/**
 * Creates a Kysely dialect for a `node:sqlite` database.
 *
 * @example
 * ```ts
 * const db = new Kysely<Database>({
 *   dialect: createNodeSqliteDialect({ database: new DatabaseSync(':memory:') }),
 * });
 * ```
 */
export function createNodeSqliteDialect(config: NodeSqliteDialectConfig): SqliteDialect {
  const { database, onCreateConnection } = config;
  return new SqliteDialect({
    database: adaptDatabaseSync(database),
    ...(onCreateConnection ? { onCreateConnection } : {}),
  });
}
