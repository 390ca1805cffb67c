/**
 * Roles held by users: grant, revoke, list. Called by `portcullis users grant-role|revoke-role`
 * (and `users create --role`) and by the admin API alike.
 *
 * Separation of duties, enforced here for every caller:
 * - a key custodian cannot grant or revoke roles (even if some other role of theirs could);
 * - one user may not hold both key custody and role administration;
 * - an administrator cannot change their own roles.
 */
import type { Kysely } from 'kysely';
import type { Database } from '../../store/schema.ts';
import type { AdminActor } from '../actor.ts';
import { holdsKeyCustody, holdsRoleAdministration, roleExists } from '../roles.ts';
import { AdminError, adminAction } from './context.ts';
import type { AdminServices } from './context.ts';

/** The roles of one user (by account id), sorted. */
export async function rolesOf(db: Kysely<Database>, userId: string): Promise<string[]> {
  const rows = await db
    .selectFrom('user_roles')
    .select('role')
    .where('user_id', '=', userId)
    .orderBy('role')
    .execute();
  return rows.map((r) => r.role);
}

/** Every user's roles, by account id. */
export async function allRoles(db: Kysely<Database>): Promise<Map<string, string[]>> {
  const rows = await db.selectFrom('user_roles').select(['user_id', 'role']).orderBy('role').execute();
  const out = new Map<string, string[]>();
  for (const r of rows) out.set(r.user_id, [...(out.get(r.user_id) ?? []), r.role]);
  return out;
}

async function userIdOf(db: Kysely<Database>, username: string): Promise<string> {
  const row = await db
    .selectFrom('users')
    .select('id')
    .where('username', '=', username.normalize('NFKC').trim().toLowerCase())
    .executeTakeFirst();
  if (!row) throw new AdminError('not-found', 'no-such-user', 'no such user');
  return row.id;
}

export interface RoleChange {
  readonly username: string;
  readonly userId: string;
  readonly role: string;
  /** The user's roles after the change. */
  readonly roles: readonly string[];
  /** false when the user already had (grant) or did not have (revoke) the role. */
  readonly changed: boolean;
}

function checkSeparation(actor: AdminActor, userId: string): void {
  if (holdsKeyCustody(actor.roles)) {
    throw new AdminError(
      'forbidden',
      'separation-of-duties',
      'a key custodian cannot grant or revoke roles (separation of duties)',
    );
  }
  if (actor.userId !== undefined && actor.userId === userId) {
    throw new AdminError(
      'forbidden',
      'separation-of-duties',
      'an administrator cannot change their own roles',
    );
  }
}

export async function grantRole(
  svc: AdminServices,
  actor: AdminActor,
  input: { username: string; role: string },
): Promise<RoleChange> {
  return adminAction(
    svc,
    actor,
    {
      action: 'role-grant',
      permission: 'roles:write',
      target: input.username,
      fields: { 'portcullis.role': input.role },
    },
    async () => {
      const userId = await userIdOf(svc.db, input.username);
      checkSeparation(actor, userId);
      if (!roleExists(svc.config(), input.role)) {
        throw new AdminError(
          'invalid-request',
          'unknown-role',
          `no role "${input.role}" (built in or under roles:)`,
        );
      }
      const held = await rolesOf(svc.db, userId);
      if (held.includes(input.role)) {
        return { username: input.username, userId, role: input.role, roles: held, changed: false };
      }
      const after = [...held, input.role];
      if (holdsKeyCustody(after) && holdsRoleAdministration(after)) {
        throw new AdminError(
          'conflict',
          'separation-of-duties',
          'one user may not hold both key custody and role administration (separation of duties)',
        );
      }
      await svc.db
        .insertInto('user_roles')
        .values({
          user_id: userId,
          role: input.role,
          granted_at: new Date().toISOString(),
          granted_by: actor.principal,
        })
        .onConflict((oc) => oc.columns(['user_id', 'role']).doNothing())
        .execute();
      return {
        username: input.username,
        userId,
        role: input.role,
        roles: await rolesOf(svc.db, userId),
        changed: true,
      };
    },
    (r) => ({ 'user.id': r.userId, ...(r.changed ? {} : { 'event.reason': 'already-held' }) }),
  );
}

export async function revokeRole(
  svc: AdminServices,
  actor: AdminActor,
  input: { username: string; role: string },
): Promise<RoleChange> {
  return adminAction(
    svc,
    actor,
    {
      action: 'role-revoke',
      permission: 'roles:write',
      target: input.username,
      fields: { 'portcullis.role': input.role },
    },
    async () => {
      const userId = await userIdOf(svc.db, input.username);
      checkSeparation(actor, userId);
      const result = await svc.db
        .deleteFrom('user_roles')
        .where('user_id', '=', userId)
        .where('role', '=', input.role)
        .executeTakeFirst();
      return {
        username: input.username,
        userId,
        role: input.role,
        roles: await rolesOf(svc.db, userId),
        changed: result.numDeletedRows > 0n,
      };
    },
    (r) => ({ 'user.id': r.userId, ...(r.changed ? {} : { 'event.reason': 'not-held' }) }),
  );
}
