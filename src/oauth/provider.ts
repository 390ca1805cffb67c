/**
 * The embedded OAuth 2.1 / OpenID Connect authorization server, on oidc-provider v9.
 *
 * Policy (DESIGN.md "Secure defaults"; seeds 003 and 004):
 * - response type `code` only; grants authorization_code, client_credentials, and refresh_token
 *   only when `oauth.refreshTokens.enabled` (rotated on every use, reuse revokes the grant, an
 *   absolute lifetime). Implicit, hybrid and password are not offered.
 * - PKCE S256 required for every client. PAR, DPoP, mTLS (tls_client_auth and
 *   certificate-bound tokens) on; dev interactions off; introspection needs client
 *   authentication; revocation on, for JWT access tokens too ({@link RevocationList}).
 * - Access tokens for a configured API are JWTs (RFC 9068, `typ: at+jwt`) audience-restricted to
 *   it: every API is a resource (RFC 8707) whose scopes are the OAuth scopes its OpenAPI
 *   document declares, intersected with the client's registered scope.
 * - Only asymmetric JOSE algorithms (ES256, PS256, EdDSA); no client_secret_jwt; client
 *   secrets are compared through the key manager's HMAC (clients.ts).
 * - Signing keys come from the key manager; when they change (rotation here or on another
 *   node) a new Provider instance is built and swapped in; requests in flight finish on the
 *   instance they started with, and state lives in the store, shared by both.
 */
import { ADMIN_SCOPE } from '../admin/roles.ts';
import { adminAudience } from '../admin/audience.ts';
import { EXTERNAL_SIGNING_FEATURE, oidcSigningKeys } from '../keys/oidc.ts';
import { X509Certificate, randomBytes } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import { createLocalJWKSet, jwtVerify } from 'jose';
import type { JWTPayload } from 'jose';
import { Provider, errors } from 'oidc-provider';
import type {
  AnyRequest,
  AnyResponse,
  ClientInstance,
  KoaContextWithOIDC,
  OIDCProviderError,
} from 'oidc-provider';
import type { LoadedConfig } from '../config/load.ts';
import { loadOpenApi } from '../gateway/openapi.ts';
import type { OpenApiDocument } from '../gateway/openapi.ts';
import type { KeyManager } from '../keys/types.ts';
import type { Logger } from '../log/index.ts';
import { describeError } from '../log/index.ts';
import type { Store } from '../store/index.ts';
import { createAdapterFactory, purgeExpired } from './adapter.ts';
import { modelCodecFromKeys } from './model-codec.ts';
import { clientSecretAccepted } from './client-secrets.ts';
import type { OidcAdapter } from './adapter.ts';
import { providerClientMetadata } from './clients.ts';
import { scopeSessionCookies } from './cookies.ts';
import { createGrantTokenTracker, refreshTokenTtl } from './grant-tokens.ts';
import { errorPage, layout } from './interactions/html.ts';
import { UNAVAILABLE_RETRY_AFTER_SECONDS, isDependencyUnavailable } from '../store/unavailable.ts';
import { isAuthorizationServerPath } from './paths.ts';
import {
  ResourceRefusal,
  checkScopes,
  checkTarget,
  chooseResource,
  registeredAudiences,
} from './resources.ts';
import type { Resource, ResourceCatalog, ResourceClient } from './resources.ts';
import { createRevocationList } from './revocation.ts';
import type { RevocationList } from './revocation.ts';
import { approvedJoseAlgs } from '../keys/fips.ts';

export type { AnyRequest, AnyResponse } from 'oidc-provider';
export { Provider } from 'oidc-provider';

/** Asymmetric signature algorithms allowed anywhere (issued tokens, client assertions, DPoP). */
export const ALLOWED_ALGS = ['ES256', 'PS256', 'EdDSA'] as const;

/** The longest lifetime of a private_key_jwt client assertion (exp - iat, and exp - now). */
export const MAX_CLIENT_ASSERTION_SECONDS = 300;

/**
 * private_key_jwt assertions (RFC 7523 §3, draft-ietf-oauth-rfc7523bis): `aud` is exactly the
 * issuer identifier, as a single string (oidc-provider would also take an array, the token
 * endpoint URL or the endpoint called), and the assertion is short-lived. Throws the generic
 * invalid_client; the reason stays in the error detail (server-side).
 */
export function checkClientAssertion(
  issuer: string,
  claims: { aud?: unknown; exp?: unknown; iat?: unknown },
  nowSeconds: number,
): void {
  if (typeof claims.aud !== 'string' || claims.aud !== issuer) {
    throw new errors.InvalidClientAuth('aud must be exactly the issuer identifier, as a single string');
  }
  const exp = claims.exp;
  if (typeof exp !== 'number' || exp - nowSeconds > MAX_CLIENT_ASSERTION_SECONDS) {
    throw new errors.InvalidClientAuth('exp must be at most 300 seconds ahead');
  }
  if (typeof claims.iat === 'number' && exp - claims.iat > MAX_CLIENT_ASSERTION_SECONDS) {
    throw new errors.InvalidClientAuth('the assertion lifetime (exp - iat) must be at most 300 seconds');
  }
}

/**
 * Whether introspecting `aud` may be answered for `client`: a resource the client is registered
 * for (its resource servers), checked by {@link resourceClient}'s audiences.
 */
function audienceRegistered(client: ClientInstance, aud: unknown): boolean {
  const { audiences } = resourceClient(client);
  const list = Array.isArray(aud) ? aud : [aud];
  return list.some((a) => typeof a === 'string' && audiences.has(a));
}

/**
 * What the login/consent implementation (src/oauth/interactions) plugs in. The provider in
 * force is passed per request, because it is rebuilt when signing keys change.
 */
export interface InteractionHooks {
  /** Handles every request whose path starts with `/interaction/`. */
  handle(
    req: AnyRequest,
    res: AnyResponse,
    provider: Provider,
    context?: { readonly clientIp?: string; readonly correlationId?: string },
  ): Promise<void>;
  /** oidc-provider's `findAccount`: the account for a subject, with a `claims()` function. */
  findAccount?: (ctx: KoaContextWithOIDC, sub: string, token?: unknown) => Promise<unknown>;
  /** oidc-provider's `claims` (scope → claim names), e.g. `{ profile: ['name'], email: [...] }`. */
  claims?: Readonly<Record<string, readonly string[]>>;
  /**
   * Further oidc-provider options the interaction layer owns (e.g. `loadExistingGrant`,
   * `interactions.policy`, `features.rpInitiatedLogout.logoutSource`). Merged last, except
   * that security policy (grants, algorithms, PKCE, client authentication) cannot be set here.
   */
  providerOptions?: Readonly<Record<string, unknown>>;
  /**
   * The scopes an account is entitled to (roles, src/admin/roles.ts). Tokens issued under a
   * user's grant carry only these, at every issuance (a revoked role stops refreshes too).
   */
  entitlement?: ((accountId: string) => Promise<(scope: string) => boolean>) | undefined;
}

export interface AuthorizationServerOptions {
  readonly loaded: LoadedConfig;
  readonly store: Store;
  readonly keys: KeyManager;
  readonly logger: Logger;
  readonly interactions?: InteractionHooks;
  /** How often expired rows are purged; default 10 minutes. */
  readonly purgeIntervalMs?: number;
  /** Issuance, revocation and refusals, for the audit trail and metrics (never tokens). */
  readonly onEvent?: (event: AuthorizationServerEvent, context: RequestContext) => void;
  /** The revocation list shared with the gateway (default: one on the store alone). */
  readonly revocations?: RevocationList;
}

export interface AuthorizationServerEvent {
  readonly type: 'token-issued' | 'code-issued' | 'grant-revoked' | 'refused' | 'logout' | 'server-error';
  readonly clientId?: string | undefined;
  /** `logout`: the account whose session ended. */
  readonly accountId?: string | undefined;
  readonly grantType?: string | undefined;
  readonly endpoint?: string | undefined;
  readonly error?: string | undefined;
}

export interface RequestContext {
  readonly clientIp?: string | undefined;
  readonly correlationId?: string | undefined;
}

/** The gateway's view of each request (client IP after trusted proxies, correlation id). */
const requestContexts = new WeakMap<object, RequestContext>();
function contextOf(ctx: KoaContextWithOIDC | undefined): RequestContext {
  const req = (ctx as { req?: object } | undefined)?.req;
  return (req === undefined ? undefined : requestContexts.get(req)) ?? {};
}

export interface AuthorizationServer {
  /** Whether a request path (without query) belongs to the authorization server. */
  handles(pathname: string): boolean;
  /**
   * Serves one request (the caller has set the security headers). `context` carries the client
   * address after trusted-proxy processing (login throttling counts per it) and the correlation id.
   */
  handle(
    req: AnyRequest,
    res: AnyResponse,
    context?: { readonly clientIp?: string; readonly correlationId?: string },
  ): Promise<void>;
  /** Applies a new configuration (APIs, scopes, TTLs); throws and keeps the old one on failure. */
  reload(loaded: LoadedConfig): Promise<void>;
  /** The provider in force. */
  provider(): Provider;
  /** Revoked JWT access tokens, for the gateway's token check. */
  readonly revocations: RevocationList;
  /** Whether a JWT access token's jti was revoked. */
  isRevoked(jti: string): Promise<boolean>;
  /** Stops timers and listeners (the store and key manager belong to the caller). */
  close(): Promise<void>;
}

export { isAuthorizationServerPath };

interface Settings {
  readonly issuer: string;
  readonly resources: ReadonlyMap<string, Resource>;
  readonly loaded: LoadedConfig;
}

/** OAuth scopes an OpenAPI document declares in its oauth2 security schemes. */
export function declaredScopes(document: OpenApiDocument): Set<string> {
  return new Set(declaredScopeDescriptions(document).keys());
}

/** The scopes the document's oauth2 flows declare, with the description each gives (may be ''). */
export function declaredScopeDescriptions(document: OpenApiDocument): Map<string, string> {
  const scopes = new Map<string, string>();
  for (const scheme of Object.values(document.securitySchemes)) {
    if (scheme.type !== 'oauth2') continue;
    const flows = scheme.flows;
    if (typeof flows !== 'object' || flows === null) continue;
    for (const flow of Object.values(flows as Record<string, unknown>)) {
      const declared = (flow as { scopes?: unknown } | null)?.scopes;
      if (typeof declared !== 'object' || declared === null) continue;
      for (const [name, text] of Object.entries(declared as Record<string, unknown>)) {
        const description = typeof text === 'string' ? text.trim() : '';
        if (!scopes.has(name) || (scopes.get(name) === '' && description !== ''))
          scopes.set(name, description);
      }
    }
  }
  return scopes;
}

async function buildSettings(loaded: LoadedConfig): Promise<Settings> {
  const { config } = loaded;
  const issuer = config.gateway.publicUrl;
  const resources = new Map<string, Resource>();
  for (const api of config.apis) {
    const document = await loadOpenApi(loaded.resolvePath(api.openapi));
    const audience = api.audience ?? `${issuer}${api.basePath}`;
    resources.set(audience, { name: api.name, audience, scopes: declaredScopes(document) });
  }
  // The admin API (issue 15) is a resource too; only admin roles are entitled to its scope.
  if (config.admin.enabled) {
    const audience = adminAudience(config);
    resources.set(audience, { name: 'admin', audience, scopes: new Set([ADMIN_SCOPE]) });
  }
  return { issuer, resources, loaded };
}

const GENERIC_ERROR_PAGE =
  '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Request not completed</title></head>' +
  '<body><h1>The request could not be completed</h1>' +
  '<p>Return to the application and try again.</p></body></html>';

/** The logout confirmation (`form` is oidc-provider's, with its xsrf field): no script. */
const LOGOUT_PAGE = (form: string, nonce: string) =>
  layout(
    'Sign out',
    nonce,
    `<h1>Sign out?</h1>${form}<div class="row">` +
      '<button type="submit" form="op.logoutForm">No, stay signed in</button>' +
      '<button type="submit" form="op.logoutForm" value="yes" name="logout" class="primary">Yes, sign me out</button></div>',
  );

const LOGGED_OUT_PAGE = (nonce: string) => layout('Signed out', nonce, '<h1>You are signed out</h1>');

/**
 * The Content-Security-Policy of the authorization server's own responses. Pages oidc-provider
 * renders with an inline script (the `form_post` response mode, and the logout form it submits by
 * itself when there is no session) add that script's hash to `script-src`; our pages use the
 * per-response nonce for their stylesheet. Nothing else runs or loads. Without a `script-src`
 * (the gateway's API policy, `default-src 'none'`) those pages stayed blank in browsers.
 */
export function authorizationServerCsp(nonce: string): string {
  return `default-src 'none'; script-src 'nonce-${nonce}'; style-src 'nonce-${nonce}'; img-src 'none'; frame-ancestors 'none'; base-uri 'none'`;
}

/** The per-response nonce of each request the provider serves. */
const nonces = new WeakMap<object, string>();
function nonceOf(ctx: KoaContextWithOIDC): string {
  return nonces.get(ctx.req) ?? '';
}

function peerSocket(ctx: KoaContextWithOIDC): TLSSocket | undefined {
  const socket = ctx.req.socket as Partial<TLSSocket> | undefined;
  return typeof socket?.getPeerCertificate === 'function' ? (socket as TLSSocket) : undefined;
}

function peerCertificate(ctx: KoaContextWithOIDC): X509Certificate | undefined {
  const raw = peerSocket(ctx)?.getPeerCertificate(false).raw;
  return raw instanceof Buffer && raw.length > 0 ? new X509Certificate(raw) : undefined;
}

/** RFC 4514-ish normalisation for comparing a registered DN with a certificate's subject. */
function normalizeDn(dn: string): string {
  return dn
    .split(/[,\n]/)
    .map((part) => {
      const i = part.indexOf('=');
      return i < 0 ? part.trim() : `${part.slice(0, i).trim().toUpperCase()}=${part.slice(i + 1).trim()}`;
    })
    .filter((p) => p.length > 0)
    .sort()
    .join(',');
}

function subjectMatches(ctx: KoaContextWithOIDC, property: string, expected: string): boolean {
  const cert = peerCertificate(ctx);
  if (cert === undefined) return false;
  if (property === 'tls_client_auth_subject_dn') return normalizeDn(cert.subject) === normalizeDn(expected);
  const prefix = {
    tls_client_auth_san_dns: 'DNS:',
    tls_client_auth_san_uri: 'URI:',
    tls_client_auth_san_ip: 'IP Address:',
    tls_client_auth_san_email: 'email:',
  }[property];
  if (prefix === undefined) return false;
  const names = (cert.subjectAltName ?? '').split(', ');
  return names.some((n) => n.startsWith(prefix) && n.slice(prefix.length) === expected);
}

function errorOf(err: unknown): { error: string; description: string | undefined } {
  const e = err as Partial<OIDCProviderError> | undefined;
  return {
    error: typeof e?.error === 'string' ? e.error : 'server_error',
    description: typeof e?.error_description === 'string' ? e.error_description : undefined,
  };
}

function paramOf(ctx: KoaContextWithOIDC, name: string): string | undefined {
  const value = ctx.oidc?.params?.[name];
  return typeof value === 'string' ? value : undefined;
}

/** The client metadata property carrying the audiences a client is registered for. */
const CLIENT_RESOURCES = 'portcullis_resources';

function resourceClient(client: ClientInstance): ResourceClient {
  const audiences = (client as unknown as Record<string, unknown>)[CLIENT_RESOURCES];
  return {
    scope: client.scope ?? '',
    audiences: new Set(Array.isArray(audiences) ? audiences.filter((a) => typeof a === 'string') : []),
  };
}

/** A resource-policy refusal as the OAuth error oidc-provider renders (and audits). */
function asOAuthError(err: unknown): Error {
  if (!(err instanceof ResourceRefusal))
    return err instanceof Error ? err : new Error('resource check failed');
  return err.error === 'invalid_scope'
    ? new errors.InvalidScope(err.description, '')
    : new errors.InvalidTarget(err.description);
}

function resourceParams(ctx: KoaContextWithOIDC, indicator: string): string[] {
  const value: unknown = ctx.oidc?.params?.resource;
  if (typeof value === 'string') return [value];
  if (Array.isArray(value)) return value.filter((v): v is string => typeof v === 'string');
  return [indicator];
}

interface Instance {
  readonly provider: Provider;
  readonly callback: (req: AnyRequest, res: AnyResponse) => Promise<void>;
}

/**
 * Creates the authorization server. Serve it by routing {@link AuthorizationServer.handles}
 * paths to {@link AuthorizationServer.handle}.
 *
 * @example
 * ```ts
 * const as = await createAuthorizationServer({ loaded, store, keys, logger });
 * if (as.handles(pathname)) await as.handle(req, res);
 * ```
 */
export async function createAuthorizationServer(
  options: AuthorizationServerOptions,
): Promise<AuthorizationServer> {
  const { store, keys, logger, interactions } = options;
  const log = logger.child({ component: 'oauth' });
  const revocations = options.revocations ?? createRevocationList({ db: store.db });
  // JWT access tokens issued under a grant, revoked with it (grant-tokens.ts).
  const codec = modelCodecFromKeys(keys);
  const grantTokens = createGrantTokenTracker({ db: store.db, revocations, codec });
  const revokeGrantTokens = async (grantId: string) => {
    const count = await grantTokens.revokeGrant(grantId);
    if (count > 0) {
      log.info(
        { event: 'oauth-grant-tokens-revoked', grantId, count },
        'access tokens of a revoked grant revoked',
      );
    }
  };
  /**
   * A single-use artifact was presented twice at the same time and this request lost the race
   * (oidc-provider's own reuse check runs before consume, so both requests passed it). Treated as
   * the reuse it is: a code or refresh token revokes its grant, as on sequential reuse.
   */
  const lostConsumeRace = async (
    models: (model: string) => OidcAdapter,
    model: string,
    grantId: string | undefined,
  ): Promise<Error> => {
    if (model === 'PushedAuthorizationRequest') {
      return new errors.InvalidRequestUri('request_uri is invalid, expired, or was already used');
    }
    if (grantId !== undefined) {
      for (const m of ['AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode']) {
        await models(m).revokeByGrantId(grantId);
      }
      await models('Grant').destroy(grantId);
      await revokeGrantTokens(grantId);
      log.info({ event: 'oauth-grant-revoked', grantId, reason: 'concurrent-reuse' }, 'grant revoked');
    }
    return new errors.InvalidGrant(`${model === 'RefreshToken' ? 'refresh token' : 'grant'} already used`);
  };
  let settings = await buildSettings(options.loaded);

  const build = (s: Settings): Instance => {
    const { config } = s.loaded;
    const oauth = config.oauth;
    const refresh = oauth.refreshTokens.enabled;
    const alg = keys.current().alg;
    // Keys on an HSM sign through PKCS#11 as oidc-provider ExternalSigningKeys (src/keys/oidc.ts).
    const jwks = oidcSigningKeys(keys);
    const external = keys.signers().some((k) => k.external);
    const signingAlgs = approvedJoseAlgs(ALLOWED_ALGS).filter((a) => jwks.keys.some((k) => k.alg === a));
    const asymmetric = approvedJoseAlgs(ALLOWED_ALGS);
    const cookieKey = keys.hmac('client-secret', 'portcullis/oidc-provider/cookie-signing/v1');
    const claims: Record<string, readonly string[] | null> = { ...(interactions?.claims ?? {}) };
    // Every scope an API declares, plus OpenID Connect's own: the only values a client may hold.
    const scopes = new Set(refresh ? ['openid', 'offline_access'] : ['openid']);
    for (const name of Object.keys(claims)) scopes.add(name);
    for (const r of s.resources.values()) for (const x of r.scopes) scopes.add(x);
    const catalog: ResourceCatalog = {
      resources: s.resources,
      oidcScopes: new Set(['openid', 'offline_access', ...Object.keys(claims)]),
    };
    const storeAdapter = createAdapterFactory({
      db: store.db,
      codec,
      sessionIdleSeconds: () => oauth.session.idleTimeoutSeconds,
      alreadyConsumed: (model, grantId) => lostConsumeRace(storeAdapter, model, grantId),
      clients: async (id) => {
        const metadata = await providerClientMetadata(store.db, id, {
          refreshTokens: refresh,
          idTokenAlg: alg,
        });
        if (metadata === undefined) return undefined;
        // A scope no API declares any more is dropped rather than invalidating the client.
        const { resources: registered, ...rest } = metadata;
        const held = typeof rest.scope === 'string' ? rest.scope.split(' ') : [];
        const scope = held.filter((x) => scopes.has(x)).join(' ') || 'openid';
        return {
          ...rest,
          scope,
          [CLIENT_RESOURCES]: [
            ...registeredAudiences(
              catalog,
              scope,
              Array.isArray(registered) ? registered.filter((r) => typeof r === 'string') : undefined,
            ),
          ],
          // RFC 8705 §3: a client that authenticates with its certificate gets tokens bound to
          // it (cnf.x5t#S256); secret- and key-authenticated clients get unbound tokens.
          tls_client_certificate_bound_access_tokens:
            metadata.token_endpoint_auth_method === 'tls_client_auth',
        };
      },
    });
    // oidc-provider revokes a grant through AccessToken.revokeByGrantId (and the other models);
    // JWT access tokens are not stored, so their recorded jtis go on the revocation list there.
    const adapter = (model: string): OidcAdapter => {
      const inner = storeAdapter(model);
      if (model !== 'AccessToken') return inner;
      return {
        upsert: (id, payload, expiresIn) => inner.upsert(id, payload, expiresIn),
        find: (id) => inner.find(id),
        findByUid: (uid) => inner.findByUid(uid),
        findByUserCode: (code) => inner.findByUserCode(code),
        consume: (id) => inner.consume(id),
        destroy: (id) => inner.destroy(id),
        revokeByGrantId: async (grantId) => {
          await inner.revokeByGrantId(grantId);
          await revokeGrantTokens(grantId);
        },
      };
    };
    const theirFeatures = (interactions?.providerOptions?.features ?? {}) as Record<string, unknown>;
    const configuration: Record<string, unknown> = {
      ...(interactions?.providerOptions ?? {}),
      adapter,
      jwks,
      findAccount: interactions?.findAccount ?? (() => Promise.resolve(undefined)),
      claims: { ...claims, openid: ['sub'] },
      scopes: [...scopes],
      responseTypes: ['code'],
      pkce: { required: () => true },
      clientAuthMethods: [
        'client_secret_basic',
        'client_secret_post',
        'private_key_jwt',
        'tls_client_auth',
        'none',
      ],
      clientDefaults: {
        grant_types: ['authorization_code'],
        response_types: ['code'],
        token_endpoint_auth_method: 'client_secret_basic',
        id_token_signed_response_alg: alg,
      },
      clientBasedCORS: () => false,
      assertJwtClientAuthClaimsAndHeader: (_ctx: unknown, claims: Record<string, unknown>) => {
        checkClientAssertion(s.issuer, claims, Math.floor(Date.now() / 1000));
        return Promise.resolve();
      },
      extraClientMetadata: { properties: [CLIENT_RESOURCES] },
      enabledJWA: {
        clientAuthSigningAlgValues: asymmetric,
        idTokenSigningAlgValues: signingAlgs,
        requestObjectSigningAlgValues: asymmetric,
        userinfoSigningAlgValues: signingAlgs,
        introspectionSigningAlgValues: signingAlgs,
        authorizationSigningAlgValues: signingAlgs,
        dPoPSigningAlgValues: asymmetric,
        idTokenEncryptionAlgValues: [],
        requestObjectEncryptionAlgValues: [],
        userinfoEncryptionAlgValues: [],
        introspectionEncryptionAlgValues: [],
        authorizationEncryptionAlgValues: [],
        idTokenEncryptionEncValues: [],
        requestObjectEncryptionEncValues: [],
        userinfoEncryptionEncValues: [],
        introspectionEncryptionEncValues: [],
        authorizationEncryptionEncValues: [],
      },
      formats: {
        customizers: {
          // Remember which grant each JWT access token belongs to, so revoking the grant revokes it.
          jwt: async (
            _ctx: unknown,
            token: { grantId?: unknown },
            structured: { payload: Record<string, unknown> },
          ) => {
            const { jti, exp, client_id: clientId } = structured.payload;
            if (typeof token.grantId !== 'string' || typeof jti !== 'string' || typeof exp !== 'number')
              return;
            await grantTokens.record({
              grantId: token.grantId,
              jti,
              exp,
              clientId: typeof clientId === 'string' ? clientId : '',
            });
          },
        },
      },
      cookies: {
        keys: [cookieKey],
        long: { httpOnly: true, sameSite: 'lax', secure: true },
        short: { httpOnly: true, sameSite: 'lax', secure: true },
      },
      features: {
        ...theirFeatures,
        ...(external ? { externalSigningSupport: EXTERNAL_SIGNING_FEATURE } : {}),
        devInteractions: { enabled: false },
        introspection: {
          enabled: true,
          // Public clients cannot introspect: introspection needs real client authentication. A
          // confidential client learns only about its own tokens and those for the resources it
          // is registered for; anything else is {active: false}. (JWT access tokens: below.)
          allowedPolicy: (
            _ctx: unknown,
            client: ClientInstance,
            token: { clientId?: unknown; aud?: unknown; resourceServer?: { audience?: unknown } },
          ) =>
            Promise.resolve(
              client.clientAuthMethod !== 'none' &&
                (token.clientId === client.clientId ||
                  audienceRegistered(client, token.resourceServer?.audience ?? token.aud)),
            ),
        },
        revocation: { enabled: true },
        clientCredentials: { enabled: true },
        pushedAuthorizationRequests: {
          enabled: true,
          requirePushedAuthorizationRequests: false,
          allowUnregisteredRedirectUris: false,
        },
        dPoP: { enabled: true, allowReplay: false },
        mTLS: {
          enabled: true,
          certificateBoundAccessTokens: true,
          tlsClientAuth: true,
          selfSignedTlsClientAuth: false,
          getCertificate: peerCertificate,
          certificateAuthorized: (ctx: KoaContextWithOIDC) => peerSocket(ctx)?.authorized === true,
          certificateSubjectMatches: subjectMatches,
        },
        // resources.ts: a client gets tokens only for the APIs it is registered for, only with
        // scopes it holds, and a request without `resource` gets the audience its scopes name.
        resourceIndicators: {
          enabled: true,
          defaultResource: (ctx: KoaContextWithOIDC, client: ClientInstance, oneOf?: string[]) => {
            try {
              return Promise.resolve(
                chooseResource(catalog, resourceClient(client), paramOf(ctx, 'scope'), {
                  oneOf,
                  openIdOnly: ctx.oidc?.route !== 'token',
                }),
              );
            } catch (err) {
              return Promise.reject(asOAuthError(err));
            }
          },
          useGrantedResource: () => Promise.resolve(true),
          getResourceServerInfo: (ctx: KoaContextWithOIDC, indicator: string, client: ClientInstance) => {
            let resource: Resource;
            try {
              const rc = resourceClient(client);
              resource = checkTarget(catalog, rc, indicator);
              checkScopes(catalog, rc, resourceParams(ctx, indicator), paramOf(ctx, 'scope'));
            } catch (err) {
              return Promise.reject(asOAuthError(err));
            }
            const allowed = new Set((client.scope ?? '').split(' '));
            const scopes = [...resource.scopes].filter((x) => allowed.has(x));
            const accountId = (ctx.oidc as { entities?: { Grant?: { accountId?: unknown } } } | undefined)
              ?.entities?.Grant?.accountId;
            const entitlement = interactions?.entitlement;
            if (typeof accountId === 'string' && entitlement !== undefined) {
              return entitlement(accountId).then((entitled) => ({
                scope: scopes.filter((x) => entitled(x)).join(' '),
                audience: resource.audience,
                accessTokenTTL: oauth.accessTokenTtlSeconds,
                accessTokenFormat: 'jwt',
                jwt: { sign: { alg } },
              }));
            }
            return Promise.resolve({
              scope: scopes.join(' '),
              audience: resource.audience,
              accessTokenTTL: oauth.accessTokenTtlSeconds,
              accessTokenFormat: 'jwt',
              jwt: { sign: { alg } },
            });
          },
        },
        userinfo: { enabled: true },
        // OpenID Connect Back-Channel Logout 1.0: clients registered with a backchannel_logout_uri
        // get a signed logout token (with sid) when the session ends. oidc-provider's outgoing
        // requests refuse special-use addresses (loopback, private ranges): SSRF protection.
        backchannelLogout: { enabled: true },
        rpInitiatedLogout: {
          enabled: true,
          logoutSource: (ctx: KoaContextWithOIDC, form: string) => {
            ctx.type = 'html';
            ctx.body = LOGOUT_PAGE(form, nonceOf(ctx));
            return Promise.resolve();
          },
          postLogoutSuccessSource: (ctx: KoaContextWithOIDC) => {
            ctx.type = 'html';
            ctx.body = LOGGED_OUT_PAGE(nonceOf(ctx));
            return Promise.resolve();
          },
          ...(theirFeatures.rpInitiatedLogout as Record<string, unknown> | undefined),
        },
        registration: { enabled: false },
        claimsParameter: { enabled: false },
        requestObjects: { enabled: false },
        encryption: { enabled: false },
      },
      ...(refresh
        ? {
            issueRefreshToken: (_ctx: unknown, client: ClientInstance) =>
              Promise.resolve(client.grantTypeAllowed('refresh_token')),
            rotateRefreshToken: () => true,
          }
        : {}),
      ttl: {
        AccessToken: () => oauth.accessTokenTtlSeconds,
        ClientCredentials: () => oauth.accessTokenTtlSeconds,
        AuthorizationCode: () => oauth.authorizationCodeTtlSeconds,
        IdToken: () => oauth.idTokenTtlSeconds,
        // The chain's absolute lifetime, counted from its first token (iiat survives rotation).
        RefreshToken: (_ctx: unknown, token: { iiat?: unknown } | undefined) =>
          refreshTokenTtl(
            typeof token?.iiat === 'number' ? token.iiat : undefined,
            Math.floor(Date.now() / 1000),
            oauth.refreshTokens.absoluteTtlSeconds,
          ),
        Grant: () => Math.max(oauth.refreshTokens.absoluteTtlSeconds, oauth.session.maxAgeSeconds),
        Session: () => oauth.session.maxAgeSeconds,
        Interaction: () => 900,
      },
      renderError: (ctx: KoaContextWithOIDC) => {
        ctx.type = 'html';
        // The sign-in pages' look, under the nonce this response's CSP names, with the
        // correlation id for support; never the error's own text (it may name internals).
        const nonce = nonces.get(ctx.req) ?? randomBytes(18).toString('base64url');
        ctx.body = layout(
          'Request not completed',
          nonce,
          errorPage('The request could not be completed.', contextOf(ctx).correlationId),
        );
        return Promise.resolve();
      },
    };
    const provider = new Provider(s.issuer, configuration);
    const Client = provider.Client;
    // The current secret unless expired, or the previous one within its rotation grace period
    // (client-secrets.ts): both looked up in the registry, compared in constant time.
    Client.prototype.compareClientSecret = function compareClientSecret(
      this: ClientInstance,
      actual: string,
    ) {
      return clientSecretAccepted(store.db, keys, this.clientId, actual);
    };
    provider.use((ctx, next) => {
      const nonce = randomBytes(18).toString('base64url');
      nonces.set(ctx.req, nonce);
      ctx.set('content-security-policy', authorizationServerCsp(nonce));
      return next();
    });
    provider.use((ctx, next) => unavailableAs503(ctx, next));
    provider.use((ctx, next) => ownPathCookies(ctx, next, provider));
    provider.use((ctx, next) => structuredTokens(ctx, next, s));
    observe(provider);
    return { provider, callback: provider.callback() };
  };

  /**
   * The store (or Redis) unreachable: every state-changing endpoint fails closed, answered 503
   * with Retry-After instead of oidc-provider's 500, so clients retry rather than give up.
   */
  const unavailable = new WeakSet<object>();
  const unavailableAs503 = async (ctx: KoaContextWithOIDC, next: () => Promise<void>) => {
    try {
      await next();
    } catch (err) {
      if (!isDependencyUnavailable(err)) throw err;
      log.warn(
        { event: 'oauth-unavailable', error: describeError(err) },
        'authorization server dependency down',
      );
      unavailable.add(ctx);
      ctx.body = { error: 'server_error', error_description: 'temporarily unavailable; retry later' };
    }
    if (unavailable.has(ctx)) {
      ctx.status = 503;
      ctx.set('retry-after', String(UNAVAILABLE_RETRY_AFTER_SECONDS));
      ctx.set('cache-control', 'no-store');
    }
  };

  /** The session cookie on the paths that read it, never `Path=/` (cookies.ts). */
  const ownPathCookies = async (ctx: KoaContextWithOIDC, next: () => Promise<void>, provider: Provider) => {
    await next();
    const set = ctx.res.getHeader('set-cookie');
    if (!Array.isArray(set) || set.length === 0) return;
    ctx.res.setHeader('set-cookie', scopeSessionCookies(set, provider.cookieName('session')));
  };

  /**
   * Revocation and introspection of JWT access tokens, which oidc-provider refuses with
   * unsupported_token_type after it authenticated the client.
   */
  const structuredTokens = async (ctx: KoaContextWithOIDC, next: () => Promise<void>, s: Settings) => {
    await next();
    const route = ctx.oidc?.route;
    if (route !== 'revocation' && route !== 'introspection') return;
    const body = ctx.body as { error?: unknown } | undefined;
    const client = ctx.oidc?.client;
    const token = paramOf(ctx, 'token');
    if (ctx.status !== 400 || body?.error !== 'unsupported_token_type' || !client || token === undefined)
      return;
    let payload: JWTPayload | undefined;
    try {
      ({ payload } = await jwtVerify(token, createLocalJWKSet(keys.publicJwks()), {
        issuer: s.issuer,
        algorithms: approvedJoseAlgs(ALLOWED_ALGS),
        typ: 'at+jwt',
      }));
    } catch {
      payload = undefined; // invalid, expired or not ours: nothing to revoke, inactive
    }
    const jti = typeof payload?.jti === 'string' ? payload.jti : undefined;
    const exp = typeof payload?.exp === 'number' ? payload.exp : undefined;
    const owner = typeof payload?.client_id === 'string' ? payload.client_id : undefined;
    if (route === 'introspection') {
      ctx.status = 200;
      ctx.set('cache-control', 'no-store');
      if (
        client.clientAuthMethod === 'none' ||
        payload === undefined ||
        jti === undefined ||
        !audienceRegistered(client, payload.aud)
      ) {
        ctx.body = { active: false };
        return;
      }
      if (await revocations.isRevoked(jti)) {
        ctx.body = { active: false };
        return;
      }
      const cnf = payload.cnf as Record<string, unknown> | undefined;
      ctx.body = {
        active: true,
        client_id: owner,
        scope: payload.scope,
        sub: payload.sub,
        aud: payload.aud,
        iss: payload.iss,
        exp,
        iat: payload.iat,
        jti,
        token_type: cnf?.jkt === undefined ? 'Bearer' : 'DPoP',
        ...(cnf === undefined ? {} : { cnf }),
      };
      return;
    }
    if (payload !== undefined && jti !== undefined && exp !== undefined) {
      if (owner !== client.clientId) {
        log.info(
          { event: 'oauth-revocation-refused', clientId: client.clientId, reason: 'not-token-owner' },
          'token revocation refused',
        );
        if (client.clientAuthMethod !== 'none') {
          ctx.status = 400;
          ctx.body = {
            error: 'invalid_request',
            error_description: 'client is not authorized to revoke the presented token',
          };
          return;
        }
      } else {
        await revocations.revoke(jti, client.clientId, exp);
        log.info({ event: 'oauth-token-revoked', clientId: client.clientId, jti }, 'access token revoked');
      }
    }
    ctx.status = 200;
    ctx.body = '';
  };

  const observe = (provider: Provider) => {
    provider.on('grant.success', (ctx: KoaContextWithOIDC) => {
      options.onEvent?.(
        { type: 'token-issued', clientId: ctx.oidc?.client?.clientId, grantType: paramOf(ctx, 'grant_type') },
        contextOf(ctx),
      );
      log.info(
        {
          event: 'oauth-token-issued',
          clientId: ctx.oidc?.client?.clientId,
          grantType: paramOf(ctx, 'grant_type'),
          resource: paramOf(ctx, 'resource'),
        },
        'token issued',
      );
    });
    provider.on('authorization.success', (ctx: KoaContextWithOIDC) => {
      options.onEvent?.({ type: 'code-issued', clientId: ctx.oidc?.client?.clientId }, contextOf(ctx));
      log.info(
        { event: 'oauth-code-issued', clientId: ctx.oidc?.client?.clientId },
        'authorization code issued',
      );
    });
    provider.on('grant.revoked', (ctx: KoaContextWithOIDC, grantId: string) => {
      options.onEvent?.({ type: 'grant-revoked', clientId: ctx.oidc?.client?.clientId }, contextOf(ctx));
      log.info({ event: 'oauth-grant-revoked', grantId }, 'grant revoked');
    });
    for (const name of [
      'grant.error',
      'authorization.error',
      'pushed_authorization_request.error',
      'introspection.error',
      'revocation.error',
      'userinfo.error',
      'end_session.error',
      'end_session_confirm.error', // issue 13: a refused logout confirmation
      'discovery.error',
      'jwks.error',
    ]) {
      provider.on(name, (ctx: KoaContextWithOIDC, err: unknown) => {
        const { error, description } = errorOf(err);
        // A refused JWT revocation/introspection is answered by structuredTokens above.
        if (error === 'unsupported_token_type') return;
        options.onEvent?.(
          {
            type: 'refused',
            endpoint: name.slice(0, name.indexOf('.')),
            clientId: ctx.oidc?.client?.clientId,
            grantType: name === 'grant.error' ? paramOf(ctx, 'grant_type') : undefined,
            error,
          },
          contextOf(ctx),
        );
        log.info(
          {
            event: 'oauth-request-refused',
            endpoint: name.slice(0, name.indexOf('.')),
            clientId: ctx.oidc?.client?.clientId,
            grantType: name === 'grant.error' ? paramOf(ctx, 'grant_type') : undefined,
            error,
            description,
          },
          'authorization server refused a request',
        );
      });
    }
    // Issue 13: logout and server errors on the audit trail (the observer maps them).
    provider.on('end_session.success', (ctx: KoaContextWithOIDC) => {
      const session = (ctx.oidc as { session?: { accountId?: unknown } } | undefined)?.session;
      const accountId = typeof session?.accountId === 'string' ? session.accountId : undefined;
      options.onEvent?.({ type: 'logout', clientId: ctx.oidc?.client?.clientId, accountId }, contextOf(ctx));
    });
    provider.on('server_error', (ctx: KoaContextWithOIDC, err: unknown) => {
      const dependency = isDependencyUnavailable(err);
      options.onEvent?.(
        {
          type: 'server-error',
          clientId: ctx.oidc?.client?.clientId,
          error: dependency ? 'dependency-unavailable' : 'server_error',
        },
        contextOf(ctx),
      );
      if (dependency) unavailable.add(ctx);
      log.error({ event: 'oauth-server-error', error: describeError(err) }, 'authorization server error');
    });
  };

  let current = build(settings);
  const rebuild = (why: string) => {
    try {
      current = build(settings);
      log.info(
        { event: 'oauth-provider-rebuilt', reason: why, kid: keys.current().kid },
        'authorization server updated',
      );
    } catch (err) {
      log.error(
        { event: 'oauth-provider-rebuild-failed', reason: why, error: describeError(err) },
        'authorization server kept its previous keys and settings',
      );
    }
  };
  const unsubscribe = keys.onChange(() => {
    rebuild('keys-changed');
  });
  const purge = setInterval(
    () => {
      purgeExpired(store.db).catch((err: unknown) => {
        log.warn({ event: 'oauth-purge-failed', error: describeError(err) }, 'could not purge expired rows');
      });
    },
    options.purgeIntervalMs ?? 10 * 60_000,
  );
  purge.unref();

  return {
    handles: isAuthorizationServerPath,
    async handle(req, res, context) {
      if (context !== undefined) requestContexts.set(req, context);
      const instance = current;
      const url = req.url ?? '/';
      const q = url.indexOf('?');
      const path = q < 0 ? url : url.slice(0, q);
      if (path.startsWith('/interaction/')) {
        if (interactions === undefined) {
          res.statusCode = 404;
          res.setHeader('content-type', 'text/html; charset=utf-8');
          res.end(GENERIC_ERROR_PAGE);
          return;
        }
        await interactions.handle(req, res, instance.provider, context);
        return;
      }
      await instance.callback(req, res);
    },
    async reload(loaded) {
      const next = await buildSettings(loaded);
      const built = build(next);
      settings = next;
      current = built;
    },
    provider: () => current.provider,
    revocations,
    isRevoked: (jti) => revocations.isRevoked(jti),
    close() {
      clearInterval(purge);
      unsubscribe();
      return Promise.resolve();
    },
  };
}
