/**
 * Kysely table types for the Portcullis store. The same shapes hold on SQLite and
 * PostgreSQL: migrations only use column types that read back identically on both
 * (integer ids, text, ISO-8601 timestamps stored as text).
 */
import type { Generated, Insertable, Selectable } from 'kysely';

/** One configuration version the gateway applied (migration 001). */
export interface ConfigVersionsTable {
  /** Surrogate key, increasing in the order versions were recorded. */
  id: Generated<number>;
  /** Lower-case hex SHA-256 of the configuration text. */
  sha256: string;
  /** Where the configuration came from (file path or other source label). */
  source: string;
  /** When it was applied, ISO-8601 UTC with milliseconds (`2025-01-01T00:00:00.000Z`). */
  applied_at: string;
  /** Short human-readable summary of the version. */
  summary: string;
}

export interface Database {
  config_versions: ConfigVersionsTable;
}

export type ConfigVersionRow = Selectable<ConfigVersionsTable>;
export type NewConfigVersionRow = Insertable<ConfigVersionsTable>;
