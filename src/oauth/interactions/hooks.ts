/**
 * Plugs the login/consent implementation into the authorization server
 * (`createAuthorizationServer({ …, interactions: createInteractionHooks(…) })`): the
 * `/interaction/` handler, `findAccount`, and the interaction policy additions from
 * `config.oauth.session`.
 */
import * as oidc from 'oidc-provider';
import type { AnyRequest, AnyResponse, KoaContextWithOIDC, Provider } from 'oidc-provider';
import type { LoadedConfig } from '../../config/load.ts';
import type { Config } from '../../config/schema.ts';
import type { StoreKeyManager } from '../../keys/index.ts';
import type { Logger } from '../../log/index.ts';
import type { Store } from '../../store/index.ts';
import { loadOpenApi } from '../../gateway/openapi.ts';
import { declaredScopeDescriptions } from '../provider.ts';
import { createUsers, kmsSecretWrapper } from '../users.ts';
import { ADMIN_SCOPE, bypassScopesOf, entitlementOf } from '../../admin/roles.ts';
import type { Entitlement } from '../../admin/roles.ts';
import { rolesOf } from '../../admin/service/roles.ts';
import type { Users } from '../users.ts';
import { createFederation, loadCa } from './federation.ts';
import type { Federation } from './federation.ts';
import type { SignInAuditSink } from './audit.ts';
import { createInteractionHandler } from './index.ts';
import type { InteractionProvider, InteractionRequestContext } from './index.ts';

/** The shape of oidc-provider's `interactionPolicy` export used here. */
interface CheckInstance {
  readonly reason: string;
}
interface PolicyModule {
  readonly Check: new (
    reason: string,
    description: string,
    check: (ctx: PolicyContext) => boolean | Promise<boolean>,
  ) => CheckInstance;
  readonly base: () => PolicyPrompts;
}
interface PolicyPrompts extends Iterable<unknown> {
  get(name: string): { readonly checks: { add(check: CheckInstance): void } } | undefined;
}
interface PolicyContext {
  readonly oidc: {
    readonly session: { readonly accountId?: string; past(age: number): boolean };
    readonly result?: { readonly login?: unknown };
    readonly requestParamOIDCScopes: ReadonlySet<string> | readonly string[];
    readonly requestParamScopes: ReadonlySet<string> | readonly string[];
    readonly grant?: {
      getOIDCScopeEncountered(): string;
      getResourceScopeEncountered(resource: string): string;
    };
    readonly resourceServers?: Readonly<Record<string, unknown>>;
  };
}

const policyModule = (oidc as unknown as { interactionPolicy: PolicyModule }).interactionPolicy;

/** Whether the request asks for a scope the user has not yet granted (consent would be asked). */
function asksForNewAccess(ctx: PolicyContext): boolean {
  const { grant } = ctx.oidc;
  if (!grant) return true;
  const known = new Set(grant.getOIDCScopeEncountered().split(' '));
  for (const s of ctx.oidc.requestParamOIDCScopes) if (!known.has(s)) return true;
  for (const resource of Object.keys(ctx.oidc.resourceServers ?? {})) {
    const rs = new Set(grant.getResourceScopeEncountered(resource).split(' '));
    for (const s of ctx.oidc.requestParamScopes) if (!rs.has(s)) return true;
  }
  return false;
}

/**
 * oidc-provider's base policy plus two login checks from `config.oauth.session`:
 * - `session_too_old`: a login older than `maxAgeSeconds` is never reused (defence in depth
 *   beside the session TTL);
 * - `reauthentication_required`: granting new access (a consent) is a privileged action and
 *   needs a login newer than `reauthenticateAfterSeconds`.
 * `max_age` and `prompt=login` are the base policy's (`max_age` check, requestable login).
 */
export function interactionPolicy(session: Config['oauth']['session'], policy: PolicyModule = policyModule) {
  const prompts = policy.base();
  const login = prompts.get('login');
  if (!login) throw new Error('oidc-provider base policy has no login prompt');
  const fresh = (ctx: PolicyContext) => ctx.oidc.result?.login !== undefined;
  login.checks.add(
    new policy.Check(
      'session_too_old',
      'End-User authentication is too old',
      (ctx) =>
        ctx.oidc.session.accountId !== undefined &&
        !fresh(ctx) &&
        ctx.oidc.session.past(session.maxAgeSeconds),
    ),
  );
  login.checks.add(
    new policy.Check(
      'reauthentication_required',
      'a recent End-User authentication is required to grant access',
      (ctx) =>
        ctx.oidc.session.accountId !== undefined &&
        !fresh(ctx) &&
        ctx.oidc.session.past(session.reauthenticateAfterSeconds) &&
        asksForNewAccess(ctx),
    ),
  );
  return prompts;
}

export interface InteractionHooksOptions {
  readonly users: Users;
  readonly config: () => Pick<Config, 'gateway' | 'oauth'>;
  readonly logger: Logger;
  readonly federation?: Federation | undefined;
  /** See InteractionHandlerOptions.csrfKey. */
  readonly csrfKey?: Uint8Array;
  /** See InteractionHandlerOptions.contractScopeDescriptions. */
  readonly contractScopeDescriptions?: () => Promise<Readonly<Record<string, string>>>;
  readonly now?: () => number;
  /** Sign-in decisions for the audit trail (issue 13). */
  readonly audit?: SignInAuditSink | undefined;
  /** The scopes a user may consent to and carry (src/admin/roles.ts); default: all. */
  readonly entitlement?: ((accountId: string) => Promise<Entitlement>) | undefined;
}

export interface InteractionHooksResult {
  handle(
    req: AnyRequest,
    res: AnyResponse,
    provider: Provider,
    context?: InteractionRequestContext,
  ): Promise<void>;
  findAccount(ctx: KoaContextWithOIDC, sub: string): Promise<unknown>;
  claims: Readonly<Record<string, readonly string[]>>;
  providerOptions: Readonly<Record<string, unknown>>;
  entitlement?: ((accountId: string) => Promise<Entitlement>) | undefined;
}

export function createInteractionHooks(options: InteractionHooksOptions): InteractionHooksResult {
  const { users } = options;
  const handler = createInteractionHandler({
    users,
    config: options.config,
    logger: options.logger,
    federation: options.federation,
    entitlement: options.entitlement,
    ...(options.csrfKey === undefined ? {} : { csrfKey: options.csrfKey }),
    ...(options.contractScopeDescriptions === undefined
      ? {}
      : { contractScopeDescriptions: options.contractScopeDescriptions }),
    ...(options.now === undefined ? {} : { now: options.now }),
    audit: options.audit,
  });
  return {
    handle: (req, res, provider, context) =>
      handler(req, res, { ...context, provider: provider as unknown as InteractionProvider }),
    async findAccount(_ctx, sub) {
      const user = await users.find(sub);
      if (!user) return undefined;
      return {
        accountId: user.id,
        claims: () => Promise.resolve({ sub: user.id, preferred_username: user.username }),
      };
    },
    claims: { profile: ['preferred_username'] },
    entitlement: options.entitlement,
    providerOptions: {
      interactions: {
        url: (_ctx: unknown, interaction: { uid: string }) => `/interaction/${interaction.uid}`,
        policy: interactionPolicy(options.config().oauth.session),
      },
    },
  };
}

export interface ServerInteractionsOptions {
  /** The configuration in force (a getter: reloads swap it). */
  readonly loaded: () => LoadedConfig;
  readonly store: Store;
  /** The key manager: its key ring (local or HSM, `keys.provider`) wraps users' TOTP seeds. */
  readonly keys: StoreKeyManager;
  /** The data directory. */
  readonly dataDir: string;
  readonly logger: Logger;
  /** Sign-in decisions for the audit trail (issue 13): the gateway's `observer.event`. */
  readonly audit?: SignInAuditSink | undefined;
}

/**
 * Everything the gateway process needs, from its store, key manager and configuration:
 * `createAuthorizationServer({ …, interactions: createServerInteractions({ … }) })`.
 */
export function createServerInteractions(options: ServerInteractionsOptions): InteractionHooksResult & {
  readonly users: Users;
} {
  const loaded = options.loaded();
  const { config } = loaded;
  const users = createUsers({
    db: options.store.db,
    wrapper: kmsSecretWrapper(options.keys.kms),
    login: config.oauth.login,
    issuerName: new URL(config.gateway.publicUrl).host,
  });
  const fed = config.oauth.federation;
  const federation =
    fed === undefined
      ? undefined
      : createFederation(fed, {
          publicUrl: config.gateway.publicUrl,
          ...(fed.caFile === undefined ? {} : { caPem: loadCa(loaded.resolvePath(fed.caFile)) }),
        });
  const hooks = createInteractionHooks({
    users,
    config: () => options.loaded().config,
    logger: options.logger.child({ component: 'interactions' }),
    federation,
    csrfKey: Buffer.from(options.keys.hmac('client-secret', 'portcullis/interaction-csrf/v1'), 'base64url'),
    contractScopeDescriptions: () => contractScopeDescriptions(options.loaded()),
    audit: options.audit,
    entitlement: storeEntitlements(options),
  });
  return { ...hooks, users };
}

/** Per configuration in force: what its APIs' documents say each scope is for. */
const scopeDescriptionsByConfig = new WeakMap<LoadedConfig, Promise<Readonly<Record<string, string>>>>();

/**
 * The descriptions of the scopes declared in the oauth2 flows of every API's OpenAPI document
 * (`flows.*.scopes: {name: description}`), read once per configuration. A document that cannot
 * be read contributes nothing here: the configuration loader has already refused it.
 */
function contractScopeDescriptions(loaded: LoadedConfig): Promise<Readonly<Record<string, string>>> {
  let found = scopeDescriptionsByConfig.get(loaded);
  if (found === undefined) {
    found = (async () => {
      const out: Record<string, string> = {};
      for (const api of loaded.config.apis) {
        const document = await loadOpenApi(loaded.resolvePath(api.openapi)).catch(() => undefined);
        if (document === undefined) continue;
        for (const [name, text] of declaredScopeDescriptions(document)) {
          if (text !== '') out[name] ??= text;
        }
      }
      return out;
    })();
    scopeDescriptionsByConfig.set(loaded, found);
  }
  return found;
}

/** OpenID Connect's own scopes: never restricted by roles. */
const OIDC_SCOPES: ReadonlySet<string> = new Set(['openid', 'offline_access', 'profile']);

/**
 * Entitlements from the store's `user_roles` and the configuration in force: the privileged
 * scopes (every owner-binding bypass scope of every contract, plus the admin scope) are computed
 * once per configuration.
 */
export function storeEntitlements(
  options: Pick<ServerInteractionsOptions, 'loaded' | 'store'>,
): (accountId: string) => Promise<Entitlement> {
  const privileged = new WeakMap<LoadedConfig, Promise<Set<string>>>();
  const privilegedOf = (loaded: LoadedConfig) => {
    let p = privileged.get(loaded);
    if (p === undefined) {
      p = (async () => {
        const out = new Set<string>([ADMIN_SCOPE]);
        for (const api of loaded.config.apis) {
          for (const s of bypassScopesOf(await loadOpenApi(loaded.resolvePath(api.openapi)))) out.add(s);
        }
        return out;
      })();
      privileged.set(loaded, p);
    }
    return p;
  };
  return async (accountId) => {
    const loaded = options.loaded();
    const [set, roles] = await Promise.all([privilegedOf(loaded), rolesOf(options.store.db, accountId)]);
    return entitlementOf(loaded.config, set, roles, OIDC_SCOPES);
  };
}
