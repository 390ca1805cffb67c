/**
 * Who made a control-plane change (issue 13): every CLI change, and every admin-API change once
 * the admin API authenticates (issue 12), names its actor on its audit event.
 *
 * - `user.name`: the operating-system account running the process (`os.userInfo().username`);
 * - `portcullis.actor.sudo_user`: with sudo, the account that invoked it (`SUDO_USER`), i.e. the
 *   person behind `root`;
 * - `host.name`: the host (`os.hostname()`);
 * - `portcullis.actor.admin`: the authenticated admin identity, when the change came through the
 *   admin API.
 *
 * @example
 * ```ts
 * await audit.emitDurable({ ...controlPlaneActor({ admin: session.adminId }), 'event.category': 'admin', … });
 * ```
 */
import { hostname, userInfo } from 'node:os';
import type { AuditEventInput } from './event.ts';

export type ControlPlaneActorFields = Pick<
  AuditEventInput,
  'user.name' | 'host.name' | 'portcullis.actor.sudo_user' | 'portcullis.actor.admin'
>;

export interface ControlPlaneActorOptions {
  /** The authenticated admin identity (admin API). */
  readonly admin?: string | undefined;
  /** The environment to read `SUDO_USER` from (default `process.env`). */
  readonly env?: Readonly<Record<string, string | undefined>>;
}

function osUser(): string | undefined {
  try {
    const name = userInfo().username;
    return name === '' ? undefined : name;
  } catch {
    // No passwd entry for the uid (some containers): the uid still identifies the account.
    return typeof process.getuid === 'function' ? `uid:${String(process.getuid())}` : undefined;
  }
}

/** The actor fields of a control-plane event (never throws; absent values are left out). */
export function controlPlaneActor(options: ControlPlaneActorOptions = {}): ControlPlaneActorFields {
  const env = options.env ?? process.env;
  const user = osUser();
  const sudo = env.SUDO_USER;
  const host = hostname();
  return {
    ...(user === undefined ? {} : { 'user.name': user }),
    ...(sudo === undefined || sudo === '' ? {} : { 'portcullis.actor.sudo_user': sudo }),
    ...(host === '' ? {} : { 'host.name': host }),
    ...(options.admin === undefined || options.admin === ''
      ? {}
      : { 'portcullis.actor.admin': options.admin }),
  };
}
