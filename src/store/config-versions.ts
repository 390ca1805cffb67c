/**
 * Repository for `config_versions`: each configuration version the gateway applies.
 */
import type { Kysely } from 'kysely';
import type { ConfigVersionRow, Database } from './schema.ts';

export interface ConfigVersion {
  readonly id: number;
  /** Lower-case hex SHA-256 of the configuration text. */
  readonly sha256: string;
  readonly source: string;
  readonly appliedAt: Date;
  readonly summary: string;
}

export interface NewConfigVersion {
  /** Hex SHA-256 of the configuration text (64 hex digits; stored lower-case). */
  readonly sha256: string;
  /** Where the configuration came from, e.g. its file path. */
  readonly source: string;
  /** Short human-readable summary. */
  readonly summary: string;
  /** When it was applied; defaults to now. */
  readonly appliedAt?: Date;
}

/** Upper bound for {@link listConfigVersions}'s `limit`. */
export const MAX_LIST_LIMIT = 1000;

const SHA256_HEX = /^[0-9a-fA-F]{64}$/;

function toConfigVersion(row: ConfigVersionRow): ConfigVersion {
  return {
    id: row.id,
    sha256: row.sha256,
    source: row.source,
    appliedAt: new Date(row.applied_at),
    summary: row.summary,
  };
}

/**
 * Records that a configuration version was applied and returns the stored record.
 * Throws TypeError when `sha256` is not 64 hex digits or a field is not a string.
 */
export async function recordConfigVersion(
  db: Kysely<Database>,
  version: NewConfigVersion,
): Promise<ConfigVersion> {
  const { sha256, source, summary, appliedAt = new Date() } = version;
  if (typeof sha256 !== 'string' || !SHA256_HEX.test(sha256)) {
    throw new TypeError('recordConfigVersion: sha256 must be 64 hexadecimal digits');
  }
  if (typeof source !== 'string') {
    throw new TypeError('recordConfigVersion: source must be a string');
  }
  if (typeof summary !== 'string') {
    throw new TypeError('recordConfigVersion: summary must be a string');
  }
  if (!(appliedAt instanceof Date) || Number.isNaN(appliedAt.getTime())) {
    throw new TypeError('recordConfigVersion: appliedAt must be a valid Date');
  }
  const row = await db
    .insertInto('config_versions')
    .values({ sha256: sha256.toLowerCase(), source, summary, applied_at: appliedAt.toISOString() })
    .returningAll()
    .executeTakeFirstOrThrow();
  return toConfigVersion(row);
}

/**
 * The most recently recorded configuration versions, newest first.
 * `limit` must be an integer from 1 to {@link MAX_LIST_LIMIT}.
 */
export async function listConfigVersions(db: Kysely<Database>, limit: number): Promise<ConfigVersion[]> {
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_LIST_LIMIT) {
    throw new TypeError(`listConfigVersions: limit must be an integer from 1 to ${MAX_LIST_LIMIT}`);
  }
  const rows = await db
    .selectFrom('config_versions')
    .selectAll()
    .orderBy('id', 'desc')
    .limit(limit)
    .execute();
  return rows.map(toConfigVersion);
}
