/**
 * Who is calling the admin listener. Two ways in, nothing anonymous (except `/healthz` and
 * `/readyz`):
 *
 * - **An access token** from the built-in authorization server for the admin audience
 *   (`admin.audience`, default publicUrl + `/admin`) carrying the `admin` scope. The user must be
 *   active, hold at least one admin role NOW (roles are read per request, so a revocation applies
 *   at once) and have a TOTP second factor: an administrator without one is refused even with a
 *   valid token (every sign-in of a user with TOTP passed it).
 * - **A client certificate** chaining to `admin.clientCertificates.caFiles` (the gateway's
 *   certificate checks: chain, validity, key usage, clientAuth EKU) whose subject CN or a SAN is
 *   mapped to a principal and its admin roles in `admin.clientCertificates.principals`. A CA
 *   alone is not authorisation.
 *
 * A presented credential that fails is a 401 even if the other kind would be accepted: the
 * caller chose how to authenticate.
 */
import type { DetailedPeerCertificate, PeerCertificate, TLSSocket } from 'node:tls';
import type { Kysely } from 'kysely';
import type { Config } from '../../config/schema.ts';
import type { Users } from '../../oauth/users.ts';
import type { Database } from '../../store/schema.ts';
import { TokenError, createAccessTokenVerifier } from '../../tokens/access-token.ts';
import type { AccessTokenVerifier } from '../../tokens/access-token.ts';
import { compileClientCertPolicy } from '../../tokens/mtls.ts';
import type { ClientCertPolicy } from '../../tokens/mtls.ts';
import type { JSONWebKeySet } from 'jose';
import type { AdminActor } from '../actor.ts';
import { ADMIN_SCOPE, isAdminRole } from '../roles.ts';
import { rolesOf } from '../service/roles.ts';

/** Why a caller was not authenticated (401) or may not use the admin API at all (403). */
export class AdminAuthError extends Error {
  readonly status: 401 | 403;
  readonly reason: string;
  readonly via: 'oauth' | 'mtls' | 'none';
  /** The principal, when it is known (a valid token of a user who may not administer). */
  readonly principal: string | undefined;
  constructor(status: 401 | 403, reason: string, via: AdminAuthError['via'], principal?: string) {
    super(reason);
    this.name = 'AdminAuthError';
    this.status = status;
    this.reason = reason;
    this.via = via;
    this.principal = principal;
  }
}

export interface AdminAuthOptions {
  readonly admin: Config['admin'];
  readonly audience: string;
  /** The built-in authorization server's tokens; undefined when OAuth is off (certificates only). */
  readonly tokens?:
    | {
        readonly issuer: string;
        readonly keys: () => JSONWebKeySet;
        readonly isRevoked: (jti: string) => boolean | Promise<boolean>;
      }
    | undefined;
  readonly users?: Users | undefined;
  readonly db: Kysely<Database>;
  /** Resolves a configured path (CA files) against the configuration file. */
  readonly resolvePath: (p: string) => string;
}

export interface AdminAuthenticator {
  authenticate(input: {
    authorization: string | undefined;
    socket: TLSSocket | undefined;
    ip: string;
  }): Promise<AdminActor>;
}

const BEARER = /^Bearer ([A-Za-z0-9\-._~+/]+=*)$/i;

function commonName(subject: string): string | undefined {
  for (const part of subject.split(/,\s*/)) {
    if (part.startsWith('CN=')) return part.slice(3);
  }
  return undefined;
}

function subjectAltNames(peer: PeerCertificate | DetailedPeerCertificate): string[] {
  const raw = peer.subjectaltname;
  if (typeof raw !== 'string') return [];
  return raw
    .split(/,\s*/)
    .map((e) => e.slice(e.indexOf(':') + 1))
    .filter((v) => v !== '');
}

export async function createAdminAuthenticator(options: AdminAuthOptions): Promise<AdminAuthenticator> {
  const { admin } = options;
  const certs = admin.clientCertificates;
  const policy: ClientCertPolicy | undefined =
    certs === undefined
      ? undefined
      : await compileClientCertPolicy({ caFiles: certs.caFiles.map((f) => options.resolvePath(f)) });
  const verify: AccessTokenVerifier | undefined =
    options.tokens === undefined
      ? undefined
      : createAccessTokenVerifier({ ...options.tokens, audience: options.audience });

  async function byToken(token: string, ip: string): Promise<AdminActor> {
    if (verify === undefined || options.users === undefined) {
      throw new AdminAuthError(401, 'token-not-accepted', 'oauth');
    }
    let verified;
    try {
      verified = await verify(token);
    } catch (err) {
      throw new AdminAuthError(
        401,
        err instanceof TokenError ? `token-${err.reason}` : 'token-invalid',
        'oauth',
      );
    }
    const sub = verified.subject;
    if (!verified.scopes.has(ADMIN_SCOPE)) {
      throw new AdminAuthError(401, 'token-not-admin', 'oauth');
    }
    const user = await options.users.find(sub);
    if (user === undefined) throw new AdminAuthError(401, 'user-unknown-or-disabled', 'oauth');
    const roles = (await rolesOf(options.db, sub)).filter(isAdminRole);
    if (roles.length === 0) throw new AdminAuthError(403, 'no-admin-role', 'oauth', user.username);
    if (!user.hasTotp) throw new AdminAuthError(403, 'second-factor-required', 'oauth', user.username);
    return { principal: user.username, userId: user.id, roles, via: 'oauth', ip };
  }

  function byCertificate(socket: TLSSocket, ip: string): AdminActor | undefined {
    if (policy === undefined || certs === undefined) return undefined;
    const peer = socket.getPeerCertificate(true);
    if (Object.keys(peer).length === 0) return undefined; // none presented
    const outcome = policy.verify(peer);
    if (!outcome.ok) throw new AdminAuthError(401, `certificate-${outcome.reason}`, 'mtls');
    const cn = commonName(outcome.certificate.subject);
    const sans = subjectAltNames(peer);
    const match = certs.principals.find(
      (p) => (p.subject !== undefined && p.subject === cn) || (p.san !== undefined && sans.includes(p.san)),
    );
    if (match === undefined) throw new AdminAuthError(401, 'certificate-not-mapped', 'mtls');
    return { principal: match.name, roles: [...match.roles], via: 'mtls', ip };
  }

  return {
    async authenticate({ authorization, socket, ip }) {
      if (authorization !== undefined) {
        const m = BEARER.exec(authorization);
        if (!m?.[1]) throw new AdminAuthError(401, 'malformed-authorization', 'oauth');
        return byToken(m[1], ip);
      }
      const actor = socket === undefined ? undefined : byCertificate(socket, ip);
      if (actor !== undefined) return actor;
      throw new AdminAuthError(401, 'credential-missing', 'none');
    },
  };
}
