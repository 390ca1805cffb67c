/**
 * Users as administrators see them (never a secret): create (with roles), disable, list, show.
 * Called by `portcullis users …` and the admin API.
 */
import type { CreatedUser, UserRecord, Users } from '../../oauth/users.ts';
import type { AdminActor } from '../actor.ts';
import { roleExists } from '../roles.ts';
import { AdminError, adminAction } from './context.ts';
import type { AdminServices } from './context.ts';
import { allRoles, grantRole, rolesOf } from './roles.ts';

export interface UserView {
  readonly id: string;
  readonly username: string;
  readonly disabled: boolean;
  readonly totp: boolean;
  readonly federated: boolean;
  readonly createdAt: string;
  readonly lastLoginAt: string | null;
  readonly roles: readonly string[];
}

function view(u: UserRecord, roles: readonly string[]): UserView {
  return {
    id: u.id,
    username: u.username,
    disabled: u.disabled,
    totp: u.hasTotp,
    federated: u.federated,
    createdAt: u.createdAt,
    lastLoginAt: u.lastLoginAt,
    roles,
  };
}

/**
 * Creates a user, then grants each of `roles` (each grant is its own audited change, under the
 * same separation-of-duties rules as `grant-role`). Unknown roles are refused before anything
 * is created.
 */
export async function createUser(
  svc: AdminServices,
  users: Users,
  actor: AdminActor,
  input: { username: string; password: string; totp?: boolean; roles?: readonly string[] },
): Promise<CreatedUser & { roles: readonly string[] }> {
  const roles = input.roles ?? [];
  for (const role of roles) {
    if (!roleExists(svc.config(), role)) {
      throw new AdminError('invalid-request', 'unknown-role', `no role "${role}" (built in or under roles:)`);
    }
  }
  const created = await adminAction(
    svc,
    actor,
    {
      action: 'user-create',
      permission: 'users:write',
      category: 'credential-lifecycle',
      target: input.username,
      fields: { 'portcullis.credential.type': 'user' },
    },
    () => users.create({ username: input.username, password: input.password, totp: input.totp === true }),
    (c) => ({ 'user.id': c.user.id }),
  );
  let held: readonly string[] = [];
  for (const role of roles) {
    held = (await grantRole(svc, actor, { username: created.user.username, role })).roles;
  }
  return { ...created, roles: held };
}

export async function disableUser(
  svc: AdminServices,
  users: Users,
  actor: AdminActor,
  username: string,
): Promise<UserView> {
  return adminAction(
    svc,
    actor,
    {
      action: 'user-disable',
      permission: 'users:write',
      category: 'credential-lifecycle',
      target: username,
      fields: { 'portcullis.credential.type': 'user' },
    },
    async () => {
      await users.disable(username);
      const u = await users.show(username);
      return view(u, await rolesOf(svc.db, u.id));
    },
    (u) => ({ 'user.id': u.id }),
  );
}

export async function listUsers(svc: AdminServices, users: Users, actor: AdminActor): Promise<UserView[]> {
  return adminAction(svc, actor, { action: 'users-list', permission: 'users:read' }, async () => {
    const roles = await allRoles(svc.db);
    return (await users.list()).map((u) => view(u, roles.get(u.id) ?? []));
  });
}

export async function showUser(
  svc: AdminServices,
  users: Users,
  actor: AdminActor,
  username: string,
): Promise<UserView> {
  return adminAction(
    svc,
    actor,
    { action: 'user-show', permission: 'users:read', target: username },
    async () => {
      const u = await users.show(username);
      return view(u, await rolesOf(svc.db, u.id));
    },
  );
}
