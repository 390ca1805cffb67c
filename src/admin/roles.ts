/**
 * Roles: what a user holding them may do. Two kinds, one mechanism (the `user_roles` table):
 *
 * - **Entitlement roles** from `roles:` in the configuration grant OAuth scopes. The consent
 *   page offers, and the token carries, only scopes the client holds AND the user is entitled
 *   to (see {@link entitlementOf}).
 * - **Admin roles** are built in and grant admin-API permissions:
 *   `auditor` (read audit, verify, read config), `operator` (clients, API keys, reload),
 *   `security-officer` (users, roles, exceptions), `key-custodian` (signing and master keys).
 *   Every admin role entitles its holder to the admin scope (so an administrator can obtain an
 *   admin-API token); no other role can.
 *
 * Separation of duties is enforced where a change is made (src/admin/service/roles.ts), not
 * advised: a key custodian cannot grant roles, and no one user may hold both key custody and
 * role administration. No permission edits or deletes audit records: there is none to grant.
 */
import type { Config } from '../config/schema.ts';
import { ADMIN_ROLE_NAMES } from '../config/admin-schema.ts';
import type { OpenApiDocument } from '../gateway/openapi.ts';
import { OWNER_EXTENSION } from '../gateway/stages/authorize/index.ts';

export { ADMIN_ROLE_NAMES };
export type AdminRole = (typeof ADMIN_ROLE_NAMES)[number];

/** The scope an admin-API access token carries (the admin resource's only scope). */
export const ADMIN_SCOPE = 'admin';

export const PERMISSIONS = [
  'apis:read',
  'audit:read',
  'audit:verify',
  'config:read',
  'config:reload',
  'alerts:read',
  'clients:read',
  'clients:write',
  'apikeys:read',
  'apikeys:write',
  'users:read',
  'users:write',
  'roles:write',
  'exceptions:read',
  'exceptions:write',
  'keys:read',
  'keys:rotate',
  'metrics:read',
] as const;
export type Permission = (typeof PERMISSIONS)[number];

export const ADMIN_ROLES: Readonly<Record<AdminRole, readonly Permission[]>> = {
  auditor: ['apis:read', 'audit:read', 'audit:verify', 'config:read', 'alerts:read', 'metrics:read'],
  operator: [
    'apis:read',
    'clients:read',
    'clients:write',
    'apikeys:read',
    'apikeys:write',
    'config:reload',
    'alerts:read',
    'metrics:read',
  ],
  'security-officer': [
    'apis:read',
    'users:read',
    'users:write',
    'roles:write',
    'exceptions:read',
    'exceptions:write',
    'alerts:read',
    'metrics:read',
  ],
  'key-custodian': ['keys:read', 'keys:rotate', 'metrics:read'],
};

export function isAdminRole(role: string): role is AdminRole {
  return (ADMIN_ROLE_NAMES as readonly string[]).includes(role);
}

/** Whether `role` exists: built in, or under `roles:` in the configuration. */
export function roleExists(config: Pick<Config, 'roles'>, role: string): boolean {
  return isAdminRole(role) || Object.hasOwn(config.roles, role);
}

/** The first of `roles` that grants `permission` (the role the action is attributed to). */
export function roleGranting(roles: readonly string[], permission: Permission): AdminRole | undefined {
  return roles.filter(isAdminRole).find((r) => ADMIN_ROLES[r].includes(permission));
}

/** Whether the holder of `roles` is a key custodian (the separation-of-duties rules look). */
export function holdsKeyCustody(roles: readonly string[]): boolean {
  return roles.some((r) => isAdminRole(r) && ADMIN_ROLES[r].some((p) => p.startsWith('keys:')));
}

/** Whether the holder of `roles` may grant roles. */
export function holdsRoleAdministration(roles: readonly string[]): boolean {
  return roleGranting(roles, 'roles:write') !== undefined;
}

/**
 * Scopes that bypass an owner binding (`x-portcullis-owner.bypassScopes`) in a document: holding
 * one reaches every object, so only a role may entitle a user to it.
 */
export function bypassScopesOf(document: OpenApiDocument): Set<string> {
  const out = new Set<string>();
  for (const op of document.operations) {
    const raw = op.definition[OWNER_EXTENSION];
    if (typeof raw !== 'object' || raw === null) continue;
    const list = (raw as { bypassScopes?: unknown }).bypassScopes;
    if (Array.isArray(list)) for (const s of list) if (typeof s === 'string') out.add(s);
  }
  return out;
}

/** Decides, for one user, whether a scope may be consented to and carried by a token. */
export type Entitlement = (scope: string) => boolean;

/**
 * The entitlement of a user holding `roles`:
 * - a scope a held role lists: yes;
 * - a privileged scope (configured, an owner-binding bypass, or the admin scope): no otherwise;
 * - the admin scope: yes for a holder of any admin role;
 * - any other scope: when `entitlements.defaultScopes` lists it, or lists `*`.
 * OpenID Connect's own scopes (`openid`, `profile`, `offline_access`, …) are never restricted.
 */
export function entitlementOf(
  config: Pick<Config, 'roles' | 'entitlements'>,
  privileged: ReadonlySet<string>,
  roles: readonly string[],
  oidcScopes: ReadonlySet<string>,
): Entitlement {
  const granted = new Set<string>();
  for (const r of roles) for (const s of config.roles[r]?.scopes ?? []) granted.add(s);
  const admin = roles.some(isAdminRole);
  const defaults = new Set(config.entitlements.defaultScopes);
  const configured = new Set(config.entitlements.privilegedScopes);
  return (scope) => {
    if (scope === ADMIN_SCOPE) return admin;
    if (oidcScopes.has(scope)) return true;
    if (granted.has(scope)) return true;
    if (privileged.has(scope) || configured.has(scope)) return false;
    return defaults.has('*') || defaults.has(scope);
  };
}
