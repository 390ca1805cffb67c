/**
 * The client registry: OAuth clients in `oauth_clients`, managed with `portcullis clients`.
 *
 * - A client secret is 256 bits from the CSPRNG (base64url), returned once by
 *   {@link createClient} and never stored: the row keeps `keys.hmac('client-secret', secret)`.
 *   The authorization server compares presented secrets through the same HMAC
 *   ({@link clientSecretMatches}), in constant time.
 * - Authentication methods: `client_secret_basic` (default), `client_secret_post`,
 *   `private_key_jwt` (the client's public JWKS is registered) and `tls_client_auth` (the
 *   certificate subject DN is registered). `client_secret_jwt` is not offered: it would need the
 *   plaintext secret server-side. `none` is allowed only for native (public) clients of the
 *   authorization-code grant, which always use PKCE S256 (RFC 8252; OAuth 2.1 §2.1).
 * - Redirect URIs are matched exactly. At registration they must be absolute https URLs in
 *   canonical form, without fragment, userinfo or wildcard; plain http is accepted only for the
 *   loopback addresses 127.0.0.1 and [::1], and only for native clients (RFC 8252 §7.3).
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { Kysely } from 'kysely';
import type { JWK } from 'jose';
import type { PepperPurpose } from '../keys/types.ts';
import type { Database } from '../store/schema.ts';

export const CLIENT_GRANTS = ['authorization_code', 'client_credentials'] as const;
export type ClientGrant = (typeof CLIENT_GRANTS)[number];

export const CLIENT_AUTH_METHODS = [
  'client_secret_basic',
  'client_secret_post',
  'private_key_jwt',
  'tls_client_auth',
  'none',
] as const;
export type ClientAuthMethod = (typeof CLIENT_AUTH_METHODS)[number];

export type ApplicationType = 'web' | 'native';

/** The key manager's keyed hash, all the registry needs of it. */
export interface SecretHasher {
  hmac(purpose: PepperPurpose, value: string): string;
  /** Hashes under replaced peppers still in their grace period (pepper rotation). */
  hmacPrevious?(purpose: PepperPurpose, value: string): string[];
}

export interface NewClient {
  readonly name: string;
  readonly grantTypes: readonly ClientGrant[];
  /** Space-separated scopes the client may obtain (API scopes, and `openid` for sign-in). */
  readonly scope: string;
  readonly redirectUris?: readonly string[];
  readonly postLogoutRedirectUris?: readonly string[];
  /** Default `client_secret_basic`. */
  readonly authMethod?: ClientAuthMethod;
  /** Default `web`; `native` for apps on a device (loopback redirects, may be public). */
  readonly applicationType?: ApplicationType;
  /** private_key_jwt: the client's public keys. */
  readonly jwks?: { readonly keys: readonly JWK[] };
  /** tls_client_auth: the certificate subject DN (RFC 4514), e.g. `CN=billing,O=Example`. */
  readonly tlsSubjectDn?: string;
  /**
   * Authorization requests must be pushed first (RFC 9126 PAR, `/request`); a plain
   * authorization request from this client is refused. Authorization-code clients only.
   */
  readonly requirePushedAuthorizationRequests?: boolean;
  /**
   * The resources (APIs) the client may obtain tokens for: API names or audiences. Default: every
   * API that declares one of its scopes. With one, that is its default resource when a token
   * request names none (resources.ts).
   */
  readonly resources?: readonly string[];
  /**
   * OpenID Connect Back-Channel Logout: an https URL the authorization server POSTs a signed
   * logout token to when the user's session ends (sid included). Authorization-code clients only.
   */
  readonly backchannelLogoutUri?: string;
}

/** Registered metadata, RFC 7591 names. Never contains a secret. */
export interface ClientMetadata {
  readonly client_name: string;
  readonly application_type: ApplicationType;
  readonly grant_types: readonly ClientGrant[];
  readonly response_types: readonly 'code'[];
  readonly response_modes: readonly 'query'[];
  readonly redirect_uris: readonly string[];
  readonly post_logout_redirect_uris: readonly string[];
  readonly scope: string;
  readonly token_endpoint_auth_method: ClientAuthMethod;
  readonly jwks?: { readonly keys: readonly JWK[] };
  readonly tls_client_auth_subject_dn?: string;
  readonly require_pushed_authorization_requests?: boolean;
  /** API names or audiences; absent: derived from the scopes (resources.ts). */
  readonly resources?: readonly string[];
  readonly backchannel_logout_uri?: string;
  readonly backchannel_logout_session_required?: boolean;
}

export interface ClientRecord {
  readonly clientId: string;
  readonly metadata: ClientMetadata;
  /** Whether a secret (its HMAC) is registered. */
  readonly hasSecret: boolean;
  readonly createdAt: string;
}

export interface CreatedClient {
  readonly client: ClientRecord;
  /** Shown once; undefined for methods without a shared secret. */
  readonly clientSecret: string | undefined;
}

/** A registration refused; `message` says what to change and never echoes a secret. */
export class ClientRegistrationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ClientRegistrationError';
  }
}

const SECRET_METHODS: ReadonlySet<ClientAuthMethod> = new Set(['client_secret_basic', 'client_secret_post']);
const SCOPE_TOKEN = /^[\x21\x23-\x5b\x5d-\x7e]{1,128}$/;
const NAME = /^[^\p{Cc}]{1,100}$/u;
const CLIENT_ID = /^[A-Za-z0-9_-]{1,64}$/;
const PRIVATE_JWK_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k', 'priv'];
const LOOPBACK_HOSTS = new Set(['127.0.0.1', '[::1]']);
const MAX_REDIRECT_URIS = 20;
const MAX_RESOURCES = 20;
const API_NAME = /^[a-z][a-z0-9-]{0,62}$/;

function fail(message: string): never {
  throw new ClientRegistrationError(message);
}

/**
 * Checks one redirect URI against the registration policy; returns it unchanged. Exported for
 * the CLI and tests.
 */
export function validateRedirectUri(uri: string, applicationType: ApplicationType): string {
  if (typeof uri !== 'string' || uri.length === 0 || uri.length > 2000) {
    fail('a redirect URI must be a non-empty URL of at most 2000 characters');
  }
  if (uri.includes('*')) fail(`redirect URI ${uri}: wildcards are not allowed (exact match only)`);
  if (uri.includes('#')) fail(`redirect URI ${uri}: a fragment is not allowed`);
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    fail(`redirect URI ${uri}: not an absolute URL`);
  }
  if (url.username !== '' || url.password !== '') fail(`redirect URI ${uri}: userinfo is not allowed`);
  if (url.protocol === 'http:') {
    if (!LOOPBACK_HOSTS.has(url.hostname)) {
      fail(`redirect URI ${uri}: http is allowed only for the loopback addresses 127.0.0.1 and [::1]`);
    }
    if (applicationType !== 'native') {
      fail(`redirect URI ${uri}: loopback http redirects are for native clients (--native)`);
    }
  } else if (url.protocol !== 'https:') {
    fail(`redirect URI ${uri}: only https (or loopback http for native clients) is allowed`);
  }
  if (url.href !== uri) fail(`redirect URI ${uri}: not in canonical form; register ${url.href}`);
  return uri;
}

function validateScope(scope: string): string {
  const parts = typeof scope === 'string' ? scope.split(' ') : [];
  if (parts.length === 0 || parts.length > 100 || !parts.every((s) => SCOPE_TOKEN.test(s))) {
    fail('scope must be one or more space-separated scope names (printable ASCII, no quotes or backslash)');
  }
  return [...new Set(parts)].join(' ');
}

/** Each resource is an API name or an absolute URI without fragment (RFC 8707 §2). */
function validateResources(resources: readonly string[]): string[] {
  const list = [...new Set(resources)];
  if (list.length > MAX_RESOURCES) fail(`at most ${String(MAX_RESOURCES)} resources`);
  for (const r of list) {
    if (typeof r !== 'string') fail('a resource is an API name or its audience URI');
    if (API_NAME.test(r)) continue;
    const url = URL.parse(r);
    if (url === null || r.length > 2000 || r.includes('#')) {
      fail(`resource ${r}: an API name or an absolute audience URI without fragment`);
    }
  }
  return list;
}

/** Array.isArray without narrowing (it would widen `readonly JWK[]` to `any[]`). */
function isArray(value: unknown): boolean {
  return Array.isArray(value);
}

function validateJwks(jwks: NewClient['jwks']): { keys: JWK[] } {
  const list: readonly JWK[] | undefined = jwks?.keys;
  if (list === undefined || !isArray(list) || list.length === 0 || list.length > 10) {
    fail('private_key_jwt needs the client’s public JWKS (1 to 10 keys)');
  }
  for (const key of list) {
    if (typeof key !== 'object' || typeof key.kty !== 'string') fail('each JWK needs a kty');
    if (key.kty === 'oct') fail('symmetric (oct) keys are not accepted; register a public key');
    if (PRIVATE_JWK_MEMBERS.some((m) => m in key)) {
      fail('the JWKS contains private key material; register the public keys only');
    }
  }
  return { keys: list.map((k) => ({ ...k })) };
}

/** Validates a registration and builds its metadata. Throws ClientRegistrationError. */
export function buildClientMetadata(input: NewClient): ClientMetadata {
  const name = typeof input.name === 'string' ? input.name.trim() : '';
  if (!NAME.test(name)) fail('name must be 1 to 100 characters without control characters');
  const grants = [...new Set(input.grantTypes)];
  if (grants.length === 0 || !grants.every((g) => (CLIENT_GRANTS as readonly string[]).includes(g))) {
    fail(`grant must be ${CLIENT_GRANTS.join(' or ')} (implicit and password are not offered)`);
  }
  const type: string = input.applicationType ?? 'web';
  if (type !== 'web' && type !== 'native') fail('application type is web or native');
  const applicationType: ApplicationType = type;
  const method = input.authMethod ?? 'client_secret_basic';
  if (!(CLIENT_AUTH_METHODS as readonly string[]).includes(method)) {
    fail(`authentication method must be one of ${CLIENT_AUTH_METHODS.join(', ')}`);
  }
  const code = grants.includes('authorization_code');
  if (method === 'none') {
    if (applicationType !== 'native' || grants.length !== 1 || !code) {
      fail('public clients (no authentication) are only for native apps of the authorization_code grant');
    }
  }
  const redirectUris = [...new Set(input.redirectUris ?? [])];
  const postLogout = [...new Set(input.postLogoutRedirectUris ?? [])];
  if (code && redirectUris.length === 0)
    fail('the authorization_code grant needs at least one --redirect-uri');
  if (!code && (redirectUris.length > 0 || postLogout.length > 0)) {
    fail('redirect URIs only apply to the authorization_code grant');
  }
  if (redirectUris.length > MAX_REDIRECT_URIS || postLogout.length > MAX_REDIRECT_URIS) {
    fail(`at most ${String(MAX_REDIRECT_URIS)} redirect URIs`);
  }
  for (const uri of [...redirectUris, ...postLogout]) validateRedirectUri(uri, applicationType);
  const requirePar = input.requirePushedAuthorizationRequests === true;
  if (requirePar && !code) fail('requiring pushed authorization requests applies to authorization_code');
  const backchannel = input.backchannelLogoutUri;
  if (backchannel !== undefined) {
    if (!code) fail('back-channel logout applies to authorization_code clients');
    validateRedirectUri(backchannel, 'web'); // https, exact, canonical, no fragment or userinfo
  }
  const metadata: ClientMetadata = {
    client_name: name,
    application_type: applicationType,
    grant_types: grants,
    response_types: code ? ['code'] : [],
    response_modes: ['query'],
    redirect_uris: redirectUris,
    post_logout_redirect_uris: postLogout,
    scope: validateScope(input.scope),
    token_endpoint_auth_method: method,
    ...(method === 'private_key_jwt' ? { jwks: validateJwks(input.jwks) } : {}),
    ...(requirePar ? { require_pushed_authorization_requests: true } : {}),
    ...(backchannel === undefined
      ? {}
      : { backchannel_logout_uri: backchannel, backchannel_logout_session_required: true }),
    ...(input.resources !== undefined && input.resources.length > 0
      ? { resources: validateResources(input.resources) }
      : {}),
  };
  if (method === 'tls_client_auth') {
    const dn = input.tlsSubjectDn?.trim() ?? '';
    if (dn.length === 0 || dn.length > 500 || !dn.includes('=')) {
      fail('tls_client_auth needs the certificate subject DN, e.g. CN=billing,O=Example');
    }
    return { ...metadata, tls_client_auth_subject_dn: dn };
  }
  if (input.jwks !== undefined && method !== 'private_key_jwt')
    fail('a JWKS applies to private_key_jwt only');
  if (input.tlsSubjectDn !== undefined) fail('a subject DN applies to tls_client_auth only');
  return metadata;
}

function toRecord(row: {
  client_id: string;
  metadata: string;
  secret_hash: string | null;
  created_at: string;
}): ClientRecord {
  return {
    clientId: row.client_id,
    metadata: JSON.parse(row.metadata) as ClientMetadata,
    hasSecret: row.secret_hash !== null,
    createdAt: row.created_at,
  };
}

/**
 * Registers a client. The secret (for secret-based methods) is returned here and only here.
 *
 * @example
 * ```ts
 * const { client, clientSecret } = await createClient(store.db, keys, {
 *   name: 'billing', grantTypes: ['client_credentials'], scope: 'patients:read',
 * });
 * ```
 */
export async function createClient(
  db: Kysely<Database>,
  keys: SecretHasher,
  input: NewClient,
): Promise<CreatedClient> {
  const metadata = buildClientMetadata(input);
  const clientId = `pc_${randomBytes(16).toString('base64url')}`;
  const clientSecret = SECRET_METHODS.has(metadata.token_endpoint_auth_method)
    ? randomBytes(32).toString('base64url')
    : undefined;
  const row = {
    client_id: clientId,
    metadata: JSON.stringify(metadata),
    secret_hash: clientSecret === undefined ? null : keys.hmac('client-secret', clientSecret),
    created_at: new Date().toISOString(),
  };
  await db.insertInto('oauth_clients').values(row).execute();
  return { client: toRecord(row), clientSecret };
}

export async function listClients(db: Kysely<Database>): Promise<ClientRecord[]> {
  const rows = await db
    .selectFrom('oauth_clients')
    .selectAll()
    .orderBy('created_at')
    .orderBy('client_id')
    .execute();
  return rows.map(toRecord);
}

export async function getClient(db: Kysely<Database>, clientId: string): Promise<ClientRecord | undefined> {
  if (!CLIENT_ID.test(clientId)) return undefined;
  const row = await db
    .selectFrom('oauth_clients')
    .selectAll()
    .where('client_id', '=', clientId)
    .executeTakeFirst();
  return row === undefined ? undefined : toRecord(row);
}

/** Deletes a client; true when it existed. Its tokens fail client lookup from then on. */
export async function deleteClient(db: Kysely<Database>, clientId: string): Promise<boolean> {
  if (!CLIENT_ID.test(clientId)) return false;
  const result = await db.deleteFrom('oauth_clients').where('client_id', '=', clientId).executeTakeFirst();
  return Number(result.numDeletedRows) > 0;
}

export interface ProviderClientOptions {
  /** Whether refresh tokens are on (authorization-code clients then also get refresh_token). */
  readonly refreshTokens: boolean;
  /** The ID-token signature algorithm. */
  readonly idTokenAlg: string;
}

/**
 * The client as oidc-provider sees it. `client_secret` carries the stored HMAC, never a
 * plaintext: secrets are only compared through {@link clientSecretMatches}, and the algorithms
 * that would use the secret as a key (client_secret_jwt, HS*) are disabled.
 */
export async function providerClientMetadata(
  db: Kysely<Database>,
  clientId: string,
  options: ProviderClientOptions,
): Promise<Record<string, unknown> | undefined> {
  if (!CLIENT_ID.test(clientId)) return undefined;
  const row = await db
    .selectFrom('oauth_clients')
    .selectAll()
    .where('client_id', '=', clientId)
    .executeTakeFirst();
  if (row === undefined) return undefined;
  const metadata = JSON.parse(row.metadata) as ClientMetadata;
  const grants: string[] = [...metadata.grant_types];
  if (options.refreshTokens && grants.includes('authorization_code')) grants.push('refresh_token');
  return {
    ...metadata,
    grant_types: grants,
    client_id: row.client_id,
    id_token_signed_response_alg: options.idTokenAlg,
    ...(row.secret_hash === null ? {} : { client_secret: row.secret_hash }),
  };
}

/** Constant-time comparison of a presented secret with the stored HMAC. */
export function clientSecretMatches(keys: SecretHasher, storedHash: unknown, presented: unknown): boolean {
  return clientSecretMatch(keys, storedHash, presented) !== undefined;
}

/**
 * Which pepper a presented secret matches the stored HMAC under: `current`, `previous` (a pepper
 * a rotation replaced, still in its grace period: re-hash with {@link rehashClientSecret}), or
 * undefined (no match). Constant-time per comparison.
 */
export function clientSecretMatch(
  keys: SecretHasher,
  storedHash: unknown,
  presented: unknown,
): 'current' | 'previous' | undefined {
  if (typeof storedHash !== 'string' || typeof presented !== 'string' || presented.length === 0)
    return undefined;
  if (presented.length > 512) return undefined;
  const b = Buffer.from(storedHash);
  const same = (hash: string) => {
    const a = Buffer.from(hash);
    return a.length === b.length && timingSafeEqual(a, b);
  };
  if (same(keys.hmac('client-secret', presented))) return 'current';
  for (const hash of keys.hmacPrevious?.('client-secret', presented) ?? []) if (same(hash)) return 'previous';
  return undefined;
}

/**
 * Replaces a client's secret hash made under a replaced pepper by the current pepper's (the
 * secret was just presented and matched): after the grace period the client keeps working.
 */
export async function rehashClientSecret(
  db: Kysely<Database>,
  keys: SecretHasher,
  clientId: string,
  oldHash: string,
  presented: string,
): Promise<boolean> {
  const r = await db
    .updateTable('oauth_clients')
    .set({ secret_hash: keys.hmac('client-secret', presented) })
    .where('client_id', '=', clientId)
    .where('secret_hash', '=', oldHash)
    .executeTakeFirst();
  return r.numUpdatedRows > 0n;
}
