/**
 * What every admin service function needs, and the one way an admin action runs: check the
 * actor's permission (admin API), run the change, record a durable audit event naming the
 * administrator, the role used and the source — refusals and failures too. The CLI and the admin
 * API call the same service functions, so each change has one implementation and one audit
 * record.
 */
import type { Kysely } from 'kysely';
import type { AuditCategory, AuditEventInput } from '../../audit/event.ts';
import type { Config } from '../../config/schema.ts';
import type { Database } from '../../store/schema.ts';
import { actorFields } from '../actor.ts';
import type { AdminActor } from '../actor.ts';
import { roleGranting } from '../roles.ts';
import type { Permission } from '../roles.ts';

export interface AdminServices {
  readonly db: Kysely<Database>;
  /** The configuration in force (a getter: reloads swap it). */
  readonly config: () => Config;
  readonly audit: { emitDurable(input: AuditEventInput): Promise<void> };
}

/** Why an admin action was not done; `code` maps to a problem type on the admin API. */
export class AdminError extends Error {
  readonly code: 'forbidden' | 'not-found' | 'conflict' | 'invalid-request';
  /** A stable reason for the audit trail and logs (e.g. `separation-of-duties`). */
  readonly reason: string;
  constructor(code: AdminError['code'], reason: string, message: string) {
    super(message);
    this.name = 'AdminError';
    this.code = code;
    this.reason = reason;
  }
}

export type ActionFields = Partial<
  Omit<AuditEventInput, 'event.category' | 'event.action' | 'event.outcome' | 'portcullis.listener'>
>;

export interface ActionSpec {
  readonly action: string;
  readonly permission: Permission;
  readonly category?: AuditCategory;
  /** What the action is about (a username, client id, …), recorded on every outcome. */
  readonly target?: string;
  readonly fields?: ActionFields;
}

/**
 * Runs an admin action for `actor`. On the admin API the actor must hold a role granting
 * `spec.permission` (else AdminError('forbidden'), audited); the CLI's host operator is not
 * checked. The event is durable before this returns; a change whose event cannot be made durable
 * rejects, so the caller never reports success without its record.
 */
export async function adminAction<T>(
  svc: AdminServices,
  actor: AdminActor,
  spec: ActionSpec,
  run: (roleUsed: string | undefined) => Promise<T>,
  describe?: (result: T) => ActionFields,
): Promise<T> {
  const roleUsed = actor.via === 'cli' ? undefined : roleGranting(actor.roles, spec.permission);
  const base = (role: string | undefined): AuditEventInput => ({
    ...spec.fields,
    ...actorFields(actor, role),
    ...(spec.target === undefined ? {} : { 'portcullis.admin.target': spec.target }),
    'event.category': spec.category ?? 'admin',
    'event.action': spec.action,
    'event.outcome': 'success',
    'portcullis.listener': actor.via === 'cli' ? 'cli' : 'admin',
  });
  if (actor.via !== 'cli' && roleUsed === undefined) {
    await svc.audit.emitDurable({
      ...base(actor.roles.length === 0 ? 'none' : actor.roles.join(',')),
      'event.outcome': 'failure',
      'event.reason': `missing-permission ${spec.permission}`,
    });
    throw new AdminError('forbidden', 'missing-permission', `this needs the ${spec.permission} permission`);
  }
  let result: T;
  try {
    result = await run(roleUsed);
  } catch (err) {
    const code = (err as { reason?: unknown; code?: unknown } | null) ?? {};
    const reason =
      typeof code.reason === 'string'
        ? code.reason
        : typeof code.code === 'string'
          ? code.code
          : err instanceof Error
            ? err.message.slice(0, 200)
            : 'error';
    await svc.audit
      .emitDurable({ ...base(roleUsed), 'event.outcome': 'failure', 'event.reason': reason })
      .catch(() => undefined);
    throw err;
  }
  await svc.audit.emitDurable({ ...base(roleUsed), ...describe?.(result) });
  return result;
}
