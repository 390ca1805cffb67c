/**
 * Who made a control-plane change, as audit fields. One small function so that it can be
 * swapped for the shared `controlPlaneActor()` (src/audit/actor.ts, issue 13) when that lands.
 */
import { hostname, userInfo } from 'node:os';
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
    'portcullis.admin.principal': actor.principal,
    'portcullis.admin.via': actor.via,
    ...(roleUsed === undefined ? {} : { 'portcullis.admin.role': roleUsed }),
    ...(actor.userId === undefined ? {} : { 'user.id': actor.userId }),
    ...(actor.ip === undefined ? {} : { 'client.ip': actor.ip }),
  };
}
