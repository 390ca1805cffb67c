/**
 * The admin API, `/admin/v1/…` on the admin listener. Every request goes through the same steps:
 *
 * 1. rate limit per client address (`admin.rateLimit`), 429 with `Retry-After`;
 * 2. authentication (src/admin/api/auth.ts): 401, audited, without a usable credential;
 * 3. request validation against the admin API's OpenAPI document (src/admin/api/openapi.ts) by
 *    the gateway's own validator: 400/415 problems;
 * 4. the handler calls a service function (src/admin/service), which checks the permission the
 *    operation needs (403, audited) and records the action with the administrator, the role used
 *    and the source.
 *
 * Errors are RFC 9457 problems (the admin listener's error handler).
 */
import { randomUUID } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { AuditEventInput } from '../../audit/event.ts';
import { AuditQueryError, parseAuditQuery } from '../../audit/query.ts';
import type { LoadedConfig } from '../../config/load.ts';
import type { GatewayRequest, Stage } from '../../gateway/context.ts';
import { loadOpenApi, parseOpenApi } from '../../gateway/openapi.ts';
import type { OpenApiDocument } from '../../gateway/openapi.ts';
import { normalizeTarget } from '../../gateway/path.ts';
import { Denial } from '../../gateway/problems.ts';
import { compileRequestValidation } from '../../gateway/stages/validate/index.ts';
import type { KeySummary } from '../../keys/index.ts';
import { UserError } from '../../oauth/users.ts';
import type { Users } from '../../oauth/users.ts';
import type { Store } from '../../store/index.ts';
import type { AdminActor } from '../actor.ts';
import { adminAudience } from '../audience.ts';
import { ADMIN_ROLES, roleGranting } from '../roles.ts';
import type { Permission } from '../roles.ts';
import { clientDelete, clientShow, clientsList } from '../service/clients.ts';
import { AdminError, adminAction } from '../service/context.ts';
import type { AdminServices } from '../service/context.ts';
import {
  alertRules,
  apiKeysList,
  auditSearch,
  auditVerify,
  effectiveConfig,
  listInventory,
  signingKeys,
} from '../service/reads.ts';
import { grantRole, revokeRole } from '../service/roles.ts';
import {
  approveException,
  listExceptions,
  renewException,
  requestException,
  revokeException,
} from '../service/exceptions.ts';
import type { ExceptionRequest } from '../service/exceptions.ts';
import { createUser, disableUser, listUsers, showUser } from '../service/users.ts';
import { AdminAuthError, createAdminAuthenticator } from './auth.ts';
import type { AdminAuthOptions } from './auth.ts';
import { ADMIN_OPENAPI } from './openapi.ts';

export const ADMIN_BASE = '/admin/v1';

export interface AdminApiOptions {
  readonly loaded: () => LoadedConfig;
  readonly store: Store;
  readonly audit: { emitDurable(input: AuditEventInput): Promise<void> };
  readonly users?: Users | undefined;
  readonly keys?: { list(): KeySummary[] } | undefined;
  readonly tokens?: AdminAuthOptions['tokens'];
  /** The gateway's configuration reload (the same as SIGHUP); `trigger` names the administrator. */
  readonly reload?:
    | ((trigger: string) => Promise<{ status: string; version: string; issues?: readonly string[] }>)
    | undefined;
  readonly now?: () => number;
}

/** What a route handler gets: the authenticated actor and the validated request parts. */
interface Call {
  readonly actor: AdminActor;
  readonly params: Readonly<Record<string, string>>;
  readonly query: Readonly<Record<string, unknown>>;
  readonly body: unknown;
  readonly reply: FastifyReply;
}

/** Fixed-window counters per client address; the first refusal of a window is audited. */
function createLimiter(now: () => number) {
  const windows = new Map<string, { start: number; count: number; audited: boolean }>();
  return (ip: string, points: number, seconds: number) => {
    const t = now();
    let w = windows.get(ip);
    if (w === undefined || t - w.start >= seconds * 1000) {
      if (windows.size > 10_000) windows.clear();
      w = { start: t, count: 0, audited: false };
      windows.set(ip, w);
    }
    w.count++;
    if (w.count <= points) return { ok: true as const };
    const first = !w.audited;
    w.audited = true;
    return { ok: false as const, retryAfter: Math.ceil((w.start + seconds * 1000 - t) / 1000), first };
  };
}

/** Guards the listener's routes outside `/admin/v1` (`/metrics`). */
export interface AdminGuard {
  /**
   * Rate limit, authenticate and check `permission` (refusals audited; a permitted read is not,
   * so that a scrape every few seconds does not flood the trail). Throws a Denial.
   */
  protect(
    request: FastifyRequest,
    reply: FastifyReply,
    template: string,
    permission: Permission,
  ): Promise<AdminActor>;
}

/**
 * Registers the admin API (and `GET /audit/events`, its older alias) and returns the guard for
 * the listener's other protected routes.
 */
export async function registerAdminApi(app: FastifyInstance, options: AdminApiOptions): Promise<AdminGuard> {
  const now = options.now ?? Date.now;
  const initial = options.loaded();
  const auth = await createAdminAuthenticator({
    admin: initial.config.admin,
    audience: adminAudience(initial.config),
    tokens: options.tokens,
    users: options.users,
    db: options.store.db,
    resolvePath: (p) => initial.resolvePath(p),
  });
  const svc: AdminServices = {
    db: options.store.db,
    config: () => options.loaded().config,
    audit: options.audit,
  };
  const limiter = createLimiter(now);
  const document = await parseOpenApi(JSON.stringify(ADMIN_OPENAPI), 'admin-openapi.json');
  const validators = new Map<string, Stage | null>();
  for (const op of document.operations) {
    validators.set(`${op.method} ${op.path}`, compileRequestValidation(op, document));
  }

  // Contracts of the APIs, per configuration (for the inventory).
  const contracts = new WeakMap<LoadedConfig, Promise<Map<string, OpenApiDocument>>>();
  const documentsOf = (loaded: LoadedConfig) => {
    let p = contracts.get(loaded);
    if (p === undefined) {
      p = (async () => {
        const out = new Map<string, OpenApiDocument>();
        for (const api of loaded.config.apis)
          out.set(api.name, await loadOpenApi(loaded.resolvePath(api.openapi)));
        return out;
      })();
      contracts.set(loaded, p);
    }
    return p;
  };

  const refusal = (request: FastifyRequest, template: string, err: AdminAuthError) =>
    options.audit.emitDurable({
      'event.category': 'authentication',
      'event.action': 'admin-authenticate',
      'event.outcome': 'failure',
      'event.reason': err.reason,
      'portcullis.listener': 'admin',
      'portcullis.admin.via': err.via,
      ...(err.principal === undefined ? {} : { 'portcullis.admin.principal': err.principal }),
      'client.ip': request.ip,
      'url.path': template,
      'http.request.method': request.method,
      'http.response.status_code': err.status,
    });

  async function authenticate(
    request: FastifyRequest,
    reply: FastifyReply,
    template: string,
  ): Promise<AdminActor> {
    const header = request.headers.authorization;
    try {
      return await auth.authenticate({
        authorization: typeof header === 'string' ? header : undefined,
        socket: 'getPeerCertificate' in request.raw.socket ? (request.raw.socket as TLSSocket) : undefined,
        ip: request.ip,
      });
    } catch (err) {
      if (!(err instanceof AdminAuthError)) throw err;
      await refusal(request, template, err);
      if (err.status === 403) throw new Denial('forbidden', err.reason);
      reply.header(
        'www-authenticate',
        err.via === 'oauth'
          ? 'Bearer realm="portcullis-admin", error="invalid_token"'
          : 'Bearer realm="portcullis-admin"',
      );
      throw new Denial('unauthenticated', err.reason);
    }
  }

  async function admit(request: FastifyRequest, reply: FastifyReply, template: string): Promise<AdminActor> {
    const { points, seconds } = options.loaded().config.admin.rateLimit;
    const limit = limiter(request.ip, points, seconds);
    if (!limit.ok) {
      reply.header('retry-after', String(limit.retryAfter));
      if (limit.first) {
        await options.audit.emitDurable({
          'event.category': 'rate-limit',
          'event.action': 'admin-rate-limit',
          'event.outcome': 'failure',
          'event.reason': 'admin-rate-limit',
          'portcullis.listener': 'admin',
          'portcullis.rate_limit.key': 'ip',
          'portcullis.rate_limit.retry_after': limit.retryAfter,
          'client.ip': request.ip,
          'url.path': template,
          'http.request.method': request.method,
        });
      }
      throw new Denial('too-many-requests', 'admin-rate-limit');
    }
    return authenticate(request, reply, template);
  }

  function route(
    method: 'GET' | 'POST' | 'PUT' | 'DELETE',
    path: string,
    handler: (call: Call) => Promise<unknown>,
    status = 200,
    alias?: string,
  ): void {
    const validate = validators.get(`${method} ${path}`);
    if (validate === undefined)
      throw new Error(`admin API: ${method} ${path} is not in the OpenAPI document`);
    const template = ADMIN_BASE + path;
    for (const url of [template, ...(alias === undefined ? [] : [alias])]) {
      app.route({
        method,
        url: url.replace(/\{([^}]+)\}/g, ':$1'),
        handler: async (request, reply) => {
          const actor = await admit(request, reply, template);
          const params = request.params as Record<string, string>;
          const body = Buffer.isBuffer(request.body) && request.body.length > 0 ? request.body : undefined;
          if (validate !== null) {
            const gw: GatewayRequest = {
              correlationId: randomUUID(),
              method,
              target: normalizeTarget(request.url, 8192),
              headers: request.headers,
              peerIp: request.ip,
              clientIp: request.ip,
              operation: {
                api: { name: 'admin', basePath: ADMIN_BASE },
                method,
                template,
                operationId: undefined,
                security: [],
                protected: true,
              },
              params,
              body,
              credentialPresented: true,
              peerCertificate: () => undefined,
              responseHeaders: {},
            };
            await validate(gw);
          }
          let parsed: unknown;
          if (body !== undefined) parsed = JSON.parse(body.toString('utf8')) as unknown;
          try {
            const result = await handler({
              actor,
              params,
              query: request.query as Record<string, unknown>,
              body: parsed,
              reply,
            });
            reply.code(status).header('cache-control', 'no-store');
            return result ?? {};
          } catch (err) {
            throw toDenial(err);
          }
        },
      });
    }
  }

  // --- routes --------------------------------------------------------------------------------
  route('GET', '/openapi.json', ({ actor }) =>
    adminAction(svc, actor, { action: 'openapi-read', permission: 'apis:read' }, () =>
      Promise.resolve(ADMIN_OPENAPI),
    ),
  );
  route('GET', '/apis', async ({ actor }) => ({
    apis: await listInventory(svc, actor, await documentsOf(options.loaded())),
  }));
  route('GET', '/clients', async ({ actor }) => ({ clients: await clientsList(svc, actor) }));
  route('GET', '/clients/{clientId}', ({ actor, params }) => clientShow(svc, actor, params.clientId ?? ''));
  route('DELETE', '/clients/{clientId}', async ({ actor, params }) => {
    await clientDelete(svc, actor, params.clientId ?? '');
    return { clientId: params.clientId, deleted: true };
  });

  const users = () => {
    if (options.users === undefined) throw new Denial('not-found', 'admin-no-user-directory');
    return options.users;
  };
  route('GET', '/users', async ({ actor }) => ({ users: await listUsers(svc, users(), actor) }));
  route(
    'POST',
    '/users',
    async ({ actor, body }) => {
      const b = body as { username: string; password: string; totp?: boolean; roles?: string[] };
      const created = await createUser(svc, users(), actor, b);
      return {
        id: created.user.id,
        username: created.user.username,
        roles: created.roles,
        ...(created.totpUri === undefined ? {} : { totpUri: created.totpUri }),
      };
    },
    201,
  );
  route('GET', '/users/{username}', ({ actor, params }) =>
    showUser(svc, users(), actor, params.username ?? ''),
  );
  route('POST', '/users/{username}/disable', ({ actor, params }) =>
    disableUser(svc, users(), actor, params.username ?? ''),
  );
  route('PUT', '/users/{username}/roles/{role}', ({ actor, params }) =>
    grantRole(svc, actor, { username: params.username ?? '', role: params.role ?? '' }),
  );
  route('DELETE', '/users/{username}/roles/{role}', ({ actor, params }) =>
    revokeRole(svc, actor, { username: params.username ?? '', role: params.role ?? '' }),
  );
  route('GET', '/roles', ({ actor }) =>
    adminAction(svc, actor, { action: 'roles-list', permission: 'users:read' }, () =>
      Promise.resolve({
        admin: ADMIN_ROLES,
        configured: svc.config().roles,
        entitlements: svc.config().entitlements,
      }),
    ),
  );
  route('GET', '/api-keys', async ({ actor }) => ({
    apiKeys: (await apiKeysList(svc, actor, options.store)).map((k) => ({
      id: k.id,
      name: k.name,
      env: k.env,
      apis: k.apis,
      operations: k.operations,
      cidrs: k.cidrs,
      createdAt: k.createdAt.toISOString(),
      expiresAt: k.expiresAt.toISOString(),
      revokedAt: k.revokedAt?.toISOString() ?? null,
      lastUsedAt: k.lastUsedAt?.toISOString() ?? null,
    })),
  }));
  route(
    'GET',
    '/audit/events',
    ({ actor, query }) => auditSearch(svc, actor, auditQuery(query)),
    200,
    '/audit/events',
  );
  route('POST', '/audit/verify', ({ actor }) => auditVerify(svc, actor));
  route('GET', '/config', ({ actor }) => effectiveConfig(svc, actor));
  route('GET', '/keys', async ({ actor }) => ({
    keys: (await signingKeys(svc, actor, options.keys)).map((k) => ({
      kid: k.kid,
      alg: k.alg,
      status: k.status,
      createdAt: k.createdAt.toISOString(),
      activatedAt: k.activatedAt?.toISOString() ?? null,
      retiresAt: k.retiresAt?.toISOString() ?? null,
    })),
  }));
  route('GET', '/alerts', ({ actor }) => alertRules(svc, actor));
  route('POST', '/config/reload', ({ actor }) =>
    adminAction(
      svc,
      actor,
      { action: 'config-reload-request', permission: 'config:reload', category: 'configuration' },
      async () => {
        if (options.reload === undefined)
          throw new AdminError('not-found', 'no-reload', 'reload is not available');
        return options.reload(`admin:${actor.principal}`);
      },
      (r) => ({ 'portcullis.config.version': r.version, 'event.reason': r.status }),
    ),
  );
  route('GET', '/exceptions', async ({ actor }) => ({ exceptions: await listExceptions(svc, actor, now()) }));
  route(
    'POST',
    '/exceptions',
    ({ actor, body }) => requestException(svc, actor, body as ExceptionRequest, now()),
    201,
  );
  route('POST', '/exceptions/{id}/approve', ({ actor, params }) =>
    approveException(svc, actor, params.id ?? '', now()),
  );
  route('POST', '/exceptions/{id}/renew', ({ actor, params, body }) =>
    renewException(svc, actor, params.id ?? '', (body as { expires: string }).expires, now()),
  );
  route('POST', '/exceptions/{id}/revoke', ({ actor, params }) =>
    revokeException(svc, actor, params.id ?? '', now()),
  );

  // Audit records are append-only: no route edits or deletes them, for any role.
  for (const method of ['PUT', 'PATCH', 'DELETE'] as const) {
    app.route({
      method,
      url: `${ADMIN_BASE}/audit/events`,
      handler: async (request, reply) => {
        const actor = await admit(request, reply, `${ADMIN_BASE}/audit/events`);
        await options.audit.emitDurable({
          'event.category': 'admin',
          'event.action': 'audit-modify',
          'event.outcome': 'failure',
          'event.reason': 'audit-append-only',
          'portcullis.listener': 'admin',
          'portcullis.admin.principal': actor.principal,
          'portcullis.admin.via': actor.via,
          'portcullis.admin.role': actor.roles.join(',') || 'none',
          ...(actor.userId === undefined ? {} : { 'user.id': actor.userId }),
          'client.ip': request.ip,
          'http.request.method': method,
        });
        reply.header('allow', 'GET');
        throw new Denial('method-not-allowed', 'audit-append-only');
      },
    });
  }

  return {
    async protect(request, reply, template, permission) {
      const actor = await admit(request, reply, template);
      if (roleGranting(actor.roles, permission) === undefined) {
        await adminAction(svc, actor, { action: 'metrics-read', permission }, () => Promise.resolve());
      }
      return actor;
    },
  };
}

function auditQuery(query: Readonly<Record<string, unknown>>) {
  try {
    return parseAuditQuery(query);
  } catch (err) {
    if (err instanceof AuditQueryError) {
      throw new Denial('invalid-request', 'audit-query', {
        errors: [{ in: 'query', pointer: `/${err.field}`, rule: err.message }],
      });
    }
    throw err;
  }
}

/** A service error as the problem the admin API answers with. */
function toDenial(err: unknown): unknown {
  if (err instanceof AdminError) {
    switch (err.code) {
      case 'forbidden':
        return new Denial('forbidden', err.reason);
      case 'not-found':
        return new Denial('not-found', err.reason);
      case 'conflict':
        return new Denial('conflict', err.reason);
      case 'invalid-request':
        return new Denial('unprocessable', err.reason);
    }
  }
  if (err instanceof UserError) {
    if (err.code === 'not-found') return new Denial('not-found', 'no-such-user');
    if (err.code === 'exists') return new Denial('conflict', 'user-exists');
    return new Denial('unprocessable', err.code);
  }
  return err;
}
