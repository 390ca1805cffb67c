/**
 * Who made a control-plane change, as audit fields: the administrator and how they authenticated
 * (`portcullis.admin.*`), plus the shared actor fields of every control-plane event
 * (`controlPlaneActor()`, src/audit/actor.ts: OS user, sudo user, host, admin identity).
 */
import { hostname, userInfo } from 'node:os';
import { controlPlaneActor } from '../audit/actor.ts';
import type { AuditEventInput } from '../audit/event.ts';

/** How the administrator authenticated: an admin-API token, a client certificate, or the host CLI. */
export type AdminVia = 'oauth' | 'mtls' | 'cli';

export interface AdminActor {
  /** The administrator: a username, a certificate principal, or `<os user>@<host>` on the CLI. */
  readonly principal: string;
  /** The user account (admin-API tokens only). */
  readonly userId?: string | undefined;
  /** Admin roles held now (none on the CLI: the host operator is trusted by the host). */
  readonly roles: readonly string[];
  readonly via: AdminVia;
  /** The source address (admin API). */
  readonly ip?: string | undefined;
}

/** The actor of a CLI command: the OS user and host that ran it. */
export function cliActor(): AdminActor {
  let user = 'unknown';
  try {
    user = userInfo().username;
  } catch {
    // no passwd entry (containers): keep `unknown`
  }
  return { principal: `${user}@${hostname()}`.slice(0, 200), roles: [], via: 'cli' };
}

/** The audit fields naming `actor` and the role used for the action (if any). */
export function actorFields(actor: AdminActor, roleUsed?: string): Partial<AuditEventInput> {
  return {
    ...controlPlaneActor(actor.via === 'cli' ? {} : { admin: actor.principal }),
    'portcullis.admin.principal': actor.principal,
    'portcullis.admin.via': actor.via,
    ...(roleUsed === undefined ? {} : { 'portcullis.admin.role': roleUsed }),
    ...(actor.userId === undefined ? {} : { 'user.id': actor.userId }),
    ...(actor.ip === undefined ? {} : { 'client.ip': actor.ip }),
  };
}
