/**
 * Accounting of disclosures (HIPAA §164.528, issue 16): for one subject, which clients read or
 * changed their records, when and under which scopes, from the audit trail's store sink. Each
 * request the gateway let through with the subject's own token is one `authorization` / `allow`
 * event carrying `user.id`; only those are disclosures (refusals disclosed nothing). The
 * gateway's own privacy API is not a disclosure and is left out.
 */
import { sql } from 'kysely';
import type { Kysely } from 'kysely';
import type { AuditEvent } from '../audit/event.ts';
import type { Database } from '../store/schema.ts';

export interface Disclosure {
  readonly at: string;
  /** `read` for GET and HEAD, `change` for every other method. */
  readonly access: 'read' | 'change';
  readonly clientId: string | undefined;
  readonly api: string | undefined;
  readonly method: string | undefined;
  /** The route template (never the concrete path). */
  readonly route: string | undefined;
  readonly scopes: readonly string[];
  readonly status: number | undefined;
  readonly correlationId: string | undefined;
}

export interface DisclosureQuery {
  readonly subject: string;
  /** ISO-8601 lower bound (default: six years ago, HIPAA's accounting period). */
  readonly since?: string;
  readonly until?: string;
  /** At most this many, newest kept (default 1000, at most 10 000). */
  readonly limit?: number;
}

const SIX_YEARS_MS = 6 * 365.25 * 86_400_000;

/** `value` for a LIKE pattern with `\` as the escape character. */
function likeLiteral(value: string): string {
  return value.replace(/[\\%_]/g, (c) => `\\${c}`);
}

export async function accountDisclosures(db: Kysely<Database>, q: DisclosureQuery): Promise<Disclosure[]> {
  const since = q.since ?? new Date(Date.now() - SIX_YEARS_MS).toISOString();
  const limit = Math.min(Math.max(q.limit ?? 1000, 1), 10_000);
  // A coarse filter in the database (the subject as it appears in the event's JSON), the exact
  // check on the parsed event.
  const needle = `%${likeLiteral(`"user.id":${JSON.stringify(q.subject)}`)}%`;
  let query = db
    .selectFrom('audit_events')
    .select(['seq', 'event'])
    .where('category', '=', 'authorization')
    .where('outcome', '=', 'success')
    .where('ts', '>=', new Date(since).toISOString())
    .where(sql<boolean>`event like ${needle} escape '\\'`);
  if (q.until !== undefined) query = query.where('ts', '<=', new Date(q.until).toISOString());
  const rows = await query.orderBy('seq', 'desc').limit(limit).execute();
  const out: Disclosure[] = [];
  for (const row of rows.reverse()) {
    let e: AuditEvent;
    try {
      e = JSON.parse(row.event) as AuditEvent;
    } catch {
      continue;
    }
    if (e['user.id'] !== q.subject || e['event.action'] !== 'allow' || e['portcullis.api'] === 'privacy')
      continue;
    const method = e['http.request.method'];
    out.push({
      at: e['@timestamp'],
      access: method === 'GET' || method === 'HEAD' ? 'read' : 'change',
      clientId: e['portcullis.client_id'],
      api: e['portcullis.api'],
      method,
      route: e['url.path'],
      scopes: e['portcullis.scopes.granted'] ?? [],
      status: e['http.response.status_code'],
      correlationId: e['trace.id'],
    });
  }
  return out;
}
