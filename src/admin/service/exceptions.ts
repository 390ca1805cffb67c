/**
 * The exceptions registry: a documented exception to a control (seed 000 §15.13) requested by
 * one administrator, approved by ANOTHER, renewed (which needs a new approval) and revoked,
 * each with owner, approver, rationale, compensating controls and expiry. Called by
 * `portcullis exceptions …` and the admin API. Exceptions written in the configuration file keep
 * working beside these.
 *
 * Lifecycle events are `configuration` events (the built-in `configuration-change` alert rule
 * fires on each): `exception-request`, `-approve`, `-renew`, `-revoke`, and from the sweep,
 * `exception-expiring` (before expiry, once per expiry date) and `exception-expired`.
 */
import { CONTROLS } from '../../config/schema.ts';
import type { AdminActor } from '../actor.ts';
import { AdminError, adminAction } from './context.ts';
import type { AdminServices } from './context.ts';

export interface ExceptionView {
  readonly id: string;
  readonly control: string;
  readonly scope: string;
  readonly rationale: string;
  readonly compensatingControls: readonly string[];
  readonly owner: string;
  readonly requestedBy: string;
  readonly approver: string | null;
  readonly status: 'requested' | 'approved' | 'revoked' | 'expired';
  readonly expires: string;
}

export interface ExceptionRequest {
  readonly id: string;
  readonly control: string;
  readonly scope: string;
  readonly rationale: string;
  readonly compensatingControls: readonly string[];
  readonly owner: string;
  readonly expires: string;
}

const DAY_MS = 86_400_000;
const endOfDay = (date: string) => Date.parse(`${date}T23:59:59.999Z`);

function checkExpiry(expires: string, now: number): void {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(expires) || Number.isNaN(endOfDay(expires))) {
    throw new AdminError('invalid-request', 'bad-expiry', 'expires must be a date, YYYY-MM-DD');
  }
  if (endOfDay(expires) < now)
    throw new AdminError('invalid-request', 'expiry-past', 'expires is in the past');
  if (endOfDay(expires) - now > 366 * DAY_MS) {
    throw new AdminError('invalid-request', 'expiry-too-far', 'an exception lasts at most a year; renew it');
  }
}

type Row = {
  id: string;
  control: string;
  scope: string;
  rationale: string;
  compensating_controls: string;
  owner: string;
  requested_by: string;
  approver: string | null;
  status: string;
  expires: string;
};

function view(row: Row, now: number): ExceptionView {
  const expired = row.status === 'approved' && endOfDay(row.expires) < now;
  return {
    id: row.id,
    control: row.control,
    scope: row.scope,
    rationale: row.rationale,
    compensatingControls: JSON.parse(row.compensating_controls) as string[],
    owner: row.owner,
    requestedBy: row.requested_by,
    approver: row.approver,
    status: expired ? 'expired' : (row.status as ExceptionView['status']),
    expires: row.expires,
  };
}

async function rowOf(svc: AdminServices, id: string): Promise<Row> {
  const row = await svc.db.selectFrom('admin_exceptions').selectAll().where('id', '=', id).executeTakeFirst();
  if (!row) throw new AdminError('not-found', 'no-such-exception', 'no such exception');
  return row;
}

const spec = (action: string, id: string) =>
  ({ action, permission: 'exceptions:write', category: 'configuration', target: id }) as const;

export function requestException(
  svc: AdminServices,
  actor: AdminActor,
  input: ExceptionRequest,
  now: number = Date.now(),
): Promise<ExceptionView> {
  return adminAction(svc, actor, spec('exception-request', input.id), async () => {
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(input.id)) {
      throw new AdminError('invalid-request', 'bad-id', 'id: 1-64 letters, digits, . _ -');
    }
    if (!(CONTROLS as readonly string[]).includes(input.control)) {
      throw new AdminError(
        'invalid-request',
        'unknown-control',
        `control must be one of ${CONTROLS.join(', ')}`,
      );
    }
    if (input.rationale.length < 10) {
      throw new AdminError(
        'invalid-request',
        'rationale-too-short',
        'the rationale needs at least 10 characters',
      );
    }
    if (input.compensatingControls.length === 0) {
      throw new AdminError(
        'invalid-request',
        'no-compensating-controls',
        'name at least one compensating control',
      );
    }
    checkExpiry(input.expires, now);
    if (svc.config().exceptions.some((e) => e.id === input.id)) {
      throw new AdminError('conflict', 'exception-exists', 'the configuration has an exception with that id');
    }
    const at = new Date(now).toISOString();
    const row = {
      id: input.id,
      control: input.control,
      scope: input.scope.slice(0, 500),
      rationale: input.rationale.slice(0, 2000),
      compensating_controls: JSON.stringify(input.compensatingControls.map((c) => c.slice(0, 500))),
      owner: input.owner.slice(0, 200),
      requested_by: actor.principal,
      approver: null,
      status: 'requested',
      expires: input.expires,
      created_at: at,
      updated_at: at,
      warned_at: null,
      expired_at: null,
    };
    const existing = await svc.db
      .selectFrom('admin_exceptions')
      .select('id')
      .where('id', '=', input.id)
      .executeTakeFirst();
    if (existing) throw new AdminError('conflict', 'exception-exists', 'an exception with that id exists');
    await svc.db.insertInto('admin_exceptions').values(row).execute();
    return view(row, now);
  });
}

export function approveException(
  svc: AdminServices,
  actor: AdminActor,
  id: string,
  now: number = Date.now(),
): Promise<ExceptionView> {
  return adminAction(svc, actor, spec('exception-approve', id), async () => {
    const row = await rowOf(svc, id);
    if (row.status !== 'requested') {
      throw new AdminError(
        'conflict',
        'not-requested',
        `the exception is ${row.status}, not awaiting approval`,
      );
    }
    if (row.requested_by === actor.principal) {
      throw new AdminError(
        'forbidden',
        'separation-of-duties',
        'the administrator who requested an exception cannot approve it (separation of duties)',
      );
    }
    checkExpiry(row.expires, now);
    const at = new Date(now).toISOString();
    await svc.db
      .updateTable('admin_exceptions')
      .set({ status: 'approved', approver: actor.principal, updated_at: at })
      .where('id', '=', id)
      .where('status', '=', 'requested')
      .execute();
    return view(await rowOf(svc, id), now);
  });
}

/** A new expiry date; it needs a new approval (by someone other than the renewer). */
export function renewException(
  svc: AdminServices,
  actor: AdminActor,
  id: string,
  expires: string,
  now: number = Date.now(),
): Promise<ExceptionView> {
  return adminAction(svc, actor, spec('exception-renew', id), async () => {
    const row = await rowOf(svc, id);
    if (row.status === 'revoked')
      throw new AdminError('conflict', 'revoked', 'a revoked exception cannot be renewed');
    checkExpiry(expires, now);
    await svc.db
      .updateTable('admin_exceptions')
      .set({
        status: 'requested',
        expires,
        requested_by: actor.principal,
        approver: null,
        warned_at: null,
        expired_at: null,
        updated_at: new Date(now).toISOString(),
      })
      .where('id', '=', id)
      .execute();
    return view(await rowOf(svc, id), now);
  });
}

export function revokeException(
  svc: AdminServices,
  actor: AdminActor,
  id: string,
  now: number = Date.now(),
): Promise<ExceptionView> {
  return adminAction(svc, actor, spec('exception-revoke', id), async () => {
    await rowOf(svc, id);
    await svc.db
      .updateTable('admin_exceptions')
      .set({ status: 'revoked', updated_at: new Date(now).toISOString() })
      .where('id', '=', id)
      .execute();
    return view(await rowOf(svc, id), now);
  });
}

export function listExceptions(
  svc: AdminServices,
  actor: AdminActor,
  now: number = Date.now(),
): Promise<ExceptionView[]> {
  return adminAction(svc, actor, { action: 'exceptions-list', permission: 'exceptions:read' }, async () => {
    const rows = await svc.db.selectFrom('admin_exceptions').selectAll().orderBy('id').execute();
    return rows.map((r) => view(r, now));
  });
}

/** Approved, unexpired registry exceptions now (what a control check may honour). */
export async function activeExceptions(svc: Pick<AdminServices, 'db'>, now: number = Date.now()) {
  const rows = await svc.db
    .selectFrom('admin_exceptions')
    .selectAll()
    .where('status', '=', 'approved')
    .execute();
  return rows.filter((r) => endOfDay(r.expires) >= now).map((r) => view(r, now));
}

/**
 * Records what time did: an approved exception within `warnDays` of its expiry gets one
 * `exception-expiring` event (per expiry date), and one past it an `exception-expired` event.
 * Both are `configuration` events, so the built-in `configuration-change` alert rule fires.
 * Run periodically by the gateway (src/server/lifecycle.ts); returns the ids that changed.
 */
export async function sweepExceptions(
  svc: Pick<AdminServices, 'db' | 'audit'>,
  options: { now?: number; warnDays?: number } = {},
): Promise<{ warned: string[]; expired: string[] }> {
  const now = options.now ?? Date.now();
  const warnMs = (options.warnDays ?? 14) * DAY_MS;
  const at = new Date(now).toISOString();
  const rows = await svc.db
    .selectFrom('admin_exceptions')
    .selectAll()
    .where('status', '=', 'approved')
    .execute();
  const out = { warned: [] as string[], expired: [] as string[] };
  for (const row of rows) {
    const end = endOfDay(row.expires);
    const base = {
      'event.category': 'configuration',
      'portcullis.listener': 'admin',
      'portcullis.admin.target': row.id,
      'portcullis.admin.principal': row.approver ?? row.requested_by,
      'portcullis.admin.via': 'system',
    } as const;
    if (end < now && row.expired_at === null) {
      const moved = await svc.db
        .updateTable('admin_exceptions')
        .set({ expired_at: at })
        .where('id', '=', row.id)
        .where('expired_at', 'is', null)
        .executeTakeFirst();
      if (moved.numUpdatedRows === 0n) continue; // another process recorded it
      await svc.audit.emitDurable({
        ...base,
        'event.action': 'exception-expired',
        'event.outcome': 'success',
        'event.reason': `${row.control} back in force (expired ${row.expires})`,
      });
      out.expired.push(row.id);
    } else if (end >= now && end - now <= warnMs && row.warned_at === null) {
      const moved = await svc.db
        .updateTable('admin_exceptions')
        .set({ warned_at: at })
        .where('id', '=', row.id)
        .where('warned_at', 'is', null)
        .executeTakeFirst();
      if (moved.numUpdatedRows === 0n) continue;
      await svc.audit.emitDurable({
        ...base,
        'event.action': 'exception-expiring',
        'event.outcome': 'unknown',
        'event.reason': `${row.control} exception expires on ${row.expires}`,
      });
      out.warned.push(row.id);
    }
  }
  return out;
}
