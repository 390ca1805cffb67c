/**
 * The audit search filters, shared by `portcullis audit search` and the admin API's
 * `GET /audit/events`: the same names, the same checks, the same store query.
 */
import { AUDIT_CATEGORIES, AUDIT_OUTCOMES } from './event.ts';
import type { AuditCategory, AuditOutcome } from './event.ts';
import type { AuditRecord } from './chain.ts';
import type { AuditQuery } from './sinks/store.ts';

export { MAX_QUERY_LIMIT, queryStoreLog } from './sinks/store.ts';
export type { AuditQuery } from './sinks/store.ts';

/** A filter value that does not parse; `message` names the expectation, never the value. */
export class AuditQueryError extends Error {
  readonly field: string;
  constructor(field: string, message: string) {
    super(message);
    this.name = 'AuditQueryError';
    this.field = field;
  }
}

const RELATIVE = /^([0-9]{1,6})([smhdw])$/;
const UNIT_MS: Readonly<Record<string, number>> = { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3, w: 604800e3 };

/**
 * An ISO-8601 date or date-time, or a time before `now` such as `90s`, `15m`, `1h`, `7d`, `2w`
 * → canonical ISO string.
 */
export function parseQueryDate(field: string, v: string, now: () => number = Date.now): string {
  const relative = RELATIVE.exec(v);
  if (relative !== null) {
    return new Date(now() - Number(relative[1]) * (UNIT_MS[relative[2] ?? 's'] ?? 1e3)).toISOString();
  }
  const d = new Date(v);
  if (v.length > 64 || Number.isNaN(d.getTime()))
    throw new AuditQueryError(
      field,
      'expected an ISO-8601 date or date-time, or a time ago such as 1h or 7d',
    );
  return d.toISOString();
}

export function parseQueryInt(field: string, v: string, max: number): number {
  const n = /^[0-9]{1,16}$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n < 1 || n > max)
    throw new AuditQueryError(field, `expected an integer 1..${String(max)}`);
  return n;
}

export function parseQueryOneOf<T extends string>(field: string, v: string, values: readonly T[]): T {
  if (!(values as readonly string[]).includes(v))
    throw new AuditQueryError(field, `expected one of ${values.join(', ')}`);
  return v as T;
}

export function parseQueryCategory(v: string): AuditCategory {
  return parseQueryOneOf('category', v, AUDIT_CATEGORIES);
}

export function parseQueryOutcome(v: string): AuditOutcome {
  return parseQueryOneOf('outcome', v, AUDIT_OUTCOMES);
}

function parseId(field: string, v: string): string {
  if (v.length < 1 || v.length > 256) throw new AuditQueryError(field, 'expected 1..256 characters');
  return v;
}

/** The filters as the admin API names them (query string parameters). */
export const AUDIT_QUERY_PARAMS = [
  'since',
  'until',
  'category',
  'outcome',
  'client',
  'correlationId',
  'limit',
  'before',
] as const;

/** Page size of `GET /audit/events` (default and most). */
export const DEFAULT_PAGE = 100;
export const MAX_PAGE = 1000;

/**
 * Parses query-string filters (`since`, `until`, `category`, `outcome`, `client`, `correlationId`,
 * `limit`, `before`). Unknown, repeated or malformed parameters throw {@link AuditQueryError}.
 */
export function parseAuditQuery(params: Readonly<Record<string, unknown>>): AuditQuery {
  const q: {
    -readonly [K in keyof AuditQuery]: AuditQuery[K];
  } = { limit: DEFAULT_PAGE };
  for (const [key, raw] of Object.entries(params)) {
    if (!(AUDIT_QUERY_PARAMS as readonly string[]).includes(key))
      throw new AuditQueryError(key, 'unknown parameter');
    if (typeof raw !== 'string') throw new AuditQueryError(key, 'expected a single value');
    switch (key as (typeof AUDIT_QUERY_PARAMS)[number]) {
      case 'since':
        q.since = parseQueryDate(key, raw);
        break;
      case 'until':
        q.until = parseQueryDate(key, raw);
        break;
      case 'category':
        q.category = parseQueryCategory(raw);
        break;
      case 'outcome':
        q.outcome = parseQueryOutcome(raw);
        break;
      case 'client':
        q.clientId = parseId(key, raw);
        break;
      case 'correlationId':
        q.correlationId = parseId(key, raw);
        break;
      case 'limit':
        q.limit = parseQueryInt(key, raw, MAX_PAGE);
        break;
      case 'before':
        q.beforeSeq = parseQueryInt(key, raw, Number.MAX_SAFE_INTEGER);
        break;
    }
  }
  return q;
}

/** The JSON shape of a record in `--json` output and in the admin API. */
export function recordView(r: AuditRecord): Record<string, unknown> {
  return { seq: r.seq, hash: r.hash, ...r.event };
}

/**
 * One page of the admin API: records in chain order (oldest first), the most recent `limit`
 * matching the filters (before `beforeSeq` when given); `next` is the `before` cursor of the
 * page of older records, or null when there are none.
 */
export function auditPage(
  records: readonly AuditRecord[],
  limit: number,
): { events: Record<string, unknown>[]; next: string | null } {
  const first = records[0];
  return {
    events: records.map(recordView),
    next: records.length >= limit && first !== undefined && first.seq > 1 ? String(first.seq) : null,
  };
}
