/**
 * The embedded authorization server end to end: openid-client as the relying party against the
 * real gateway over TLS, on SQLite. Every refusal the policy promises is exercised.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import {
  calculateJwkThumbprint,
  createLocalJWKSet,
  decodeProtectedHeader,
  decodeJwt,
  exportJWK,
  jwtVerify,
} from 'jose';
import type { JSONWebKeySet } from 'jose';
import * as oidc from 'openid-client';
import { Agent, fetch as undiciFetch } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createClient } from '../src/oauth/clients.ts';
import type { StoreKeyManager } from '../src/keys/index.ts';
import { startRecordingUpstream, startTestGateway } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';

const OPENAPI = {
  openapi: '3.1.0',
  info: { title: 'items', version: '1' },
  components: {
    securitySchemes: {
      oauth: {
        type: 'oauth2',
        flows: {
          clientCredentials: {
            tokenUrl: 'https://localhost/token',
            scopes: { 'items:read': 'read', 'items:write': 'write', 'items:admin': 'every record' },
          },
        },
      },
    },
  },
  paths: {
    '/records/{owner}': {
      get: {
        operationId: 'getRecord',
        parameters: [{ name: 'owner', in: 'path', required: true, schema: { type: 'string' } }],
        security: [{ oauth: ['items:read'] }],
        'x-portcullis-owner': { parameter: 'owner', claim: 'sub', bypassScopes: ['items:admin'] },
        responses: { '200': { description: 'ok' } },
      },
    },
    '/items': {
      get: {
        operationId: 'listItems',
        security: [{ oauth: ['items:read'] }],
        responses: { '200': { description: 'ok' } },
      },
    },
  },
};

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((ok) => server.close(() => ok()));
  return port;
}

let upstream: RecordingUpstream;
let gw: TestGateway;
let issuer: string;
let audience: string;
let agent: Agent;
let keys: StoreKeyManager;
const secrets: string[] = [];
const tokens: string[] = [];

let fetchFn: typeof fetch;
const opts = () => ({ [oidc.customFetch]: fetchFn as oidc.CustomFetch });

interface Registered {
  id: string;
  secret: string;
}

async function register(scope = 'items:read', extra: Partial<Parameters<typeof createClient>[2]> = {}) {
  const { client, clientSecret } = await createClient(gw.p.store.db, keys, {
    name: 'test',
    grantTypes: ['client_credentials'],
    scope,
    ...extra,
  });
  if (clientSecret !== undefined) secrets.push(clientSecret);
  return { id: client.clientId, secret: clientSecret ?? '' };
}

async function rp(c: Registered, auth: 'basic' | 'post' = 'basic'): Promise<oidc.Configuration> {
  const method = auth === 'basic' ? oidc.ClientSecretBasic(c.secret) : oidc.ClientSecretPost(c.secret);
  const config = await oidc.discovery(new URL(issuer), c.id, undefined, method, opts());
  config[oidc.customFetch] = fetchFn;
  return config;
}

async function ccToken(config: oidc.Configuration, params: Record<string, string> = {}) {
  const res = await oidc.clientCredentialsGrant(config, { scope: 'items:read', ...params });
  tokens.push(res.access_token);
  return res;
}

/** A raw form POST to the AS, for requests openid-client would refuse to send. */
async function post(path: string, form: Record<string, string>, headers: Record<string, string> = {}) {
  const res = await fetchFn(issuer + path, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    body: new URLSearchParams(form).toString(),
  });
  return { status: res.status, headers: res.headers, body: await res.text() };
}

function basic(c: Registered): string {
  return `Basic ${Buffer.from(`${encodeURIComponent(c.id)}:${encodeURIComponent(c.secret)}`).toString('base64')}`;
}

async function jwks(): Promise<JSONWebKeySet> {
  const res = await fetchFn(`${issuer}/jwks`);
  return (await res.json()) as JSONWebKeySet;
}

async function oauthError(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    const e = err as { error?: unknown; cause?: unknown };
    if (typeof e.error === 'string') return e.error;
    // A 401 with WWW-Authenticate arrives as a challenge error.
    const challenge = Array.isArray(e.cause)
      ? (e.cause[0] as { parameters?: { error?: string } })
      : undefined;
    return challenge?.parameters?.error ?? (err as Error).message;
  }
  throw new Error('expected a refusal');
}

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  const port = await freePort();
  issuer = `https://localhost:${String(port)}`;
  audience = `${issuer}/v1`;
  gw = await startTestGateway(
    {
      gateway: { port, publicUrl: issuer },
      apis: [{ name: 'items', basePath: '/v1', openapi: 'api.yaml', upstream: { url: upstream.url } }],
    },
    { openapi: OPENAPI },
  );
  const k = gw.p.keys;
  if (k === undefined) throw new Error('the key manager should be running');
  keys = k;
  const ca = gw.p.tls.source === 'development' ? gw.p.tls.caCertPem : undefined;
  agent = new Agent({ connect: { ca } });
  // undici's fetch with an Agent that trusts the development CA (openid-client's customFetch).
  fetchFn = async (url: string | URL | Request, init?: RequestInit) => {
    const res = await undiciFetch(url as string, { ...(init as object), dispatcher: agent });
    return new Response(res.body as ReadableStream<Uint8Array> | null, {
      status: res.status,
      statusText: res.statusText,
      headers: Object.fromEntries(res.headers),
    });
  };
}, 60_000);

afterAll(async () => {
  // Nothing secret in the logs: no client secret, no token.
  const logs = gw.logs();
  for (const s of [...secrets, ...tokens]) expect(logs).not.toContain(s);
  await gw.close();
  await agent.close();
  await upstream.close();
});

describe('discovery', () => {
  it('advertises the policy: code + S256 only, asymmetric algorithms, PAR, DPoP, mTLS', async () => {
    const res = await fetchFn(`${issuer}/.well-known/openid-configuration`);
    expect(res.status).toBe(200);
    const d = (await res.json()) as Record<string, unknown>;
    expect(d.issuer).toBe(issuer);
    expect(d.code_challenge_methods_supported).toEqual(['S256']);
    expect(d.response_types_supported).toEqual(['code']);
    const grants = d.grant_types_supported as string[];
    expect(grants.sort()).toEqual(['authorization_code', 'client_credentials']);
    const methods = d.token_endpoint_auth_methods_supported as string[];
    expect(methods).not.toContain('client_secret_jwt');
    expect(methods).toEqual(
      expect.arrayContaining([
        'client_secret_basic',
        'client_secret_post',
        'private_key_jwt',
        'tls_client_auth',
      ]),
    );
    for (const [key, value] of Object.entries(d)) {
      if (key.endsWith('alg_values_supported')) {
        for (const alg of value as string[]) expect(['ES256', 'PS256', 'EdDSA']).toContain(alg);
      }
    }
    expect(d.pushed_authorization_request_endpoint).toBe(`${issuer}/request`);
    expect(d.dpop_signing_alg_values_supported).toEqual(expect.arrayContaining(['ES256']));
    expect(d.tls_client_certificate_bound_access_tokens).toBe(true);
    expect(d.introspection_endpoint).toBe(`${issuer}/token/introspection`);
    expect(d.revocation_endpoint).toBe(`${issuer}/token/revocation`);
    // The gateway's security headers are on authorization-server responses too.
    expect(res.headers.get('strict-transport-security')).toMatch(/max-age=\d+/);
    expect(res.headers.get('x-content-type-options')).toBe('nosniff');
    expect(res.headers.get('referrer-policy')).toBe('no-referrer');
    expect(res.headers.get('content-security-policy')).toContain("frame-ancestors 'none'");
  });

  it('publishes public keys only', async () => {
    const set = await jwks();
    expect(set.keys.length).toBeGreaterThanOrEqual(1);
    for (const key of set.keys) {
      for (const member of ['d', 'p', 'q', 'dp', 'dq', 'qi', 'k']) expect(key).not.toHaveProperty(member);
      expect(key.kid).toEqual(expect.any(String));
    }
  });
});

describe('client credentials', () => {
  it('issues an RFC 9068 JWT for the API, signed by a published key', async () => {
    const c = await register();
    const res = await ccToken(await rp(c));
    expect(res.token_type.toLowerCase()).toBe('bearer');
    const header = decodeProtectedHeader(res.access_token);
    expect(header.typ).toBe('at+jwt');
    expect(['ES256', 'PS256', 'EdDSA']).toContain(header.alg);
    const set = await jwks();
    expect(set.keys.map((k) => k.kid)).toContain(header.kid);
    const { payload } = await jwtVerify(res.access_token, createLocalJWKSet(set), {
      issuer,
      audience,
      typ: 'at+jwt',
    });
    expect(payload.scope).toBe('items:read');
    expect(payload.client_id).toBe(c.id);
    expect(payload.jti).toEqual(expect.any(String));
    expect((payload.exp ?? 0) - (payload.iat ?? 0)).toBeLessThanOrEqual(600);
    expect(res.expires_in).toBeLessThanOrEqual(600);
  });

  it('works with client_secret_post and answers with Cache-Control: no-store', async () => {
    const c = await register();
    const res = await post('/token', {
      grant_type: 'client_credentials',
      client_id: c.id,
      client_secret: c.secret,
      scope: 'items:read',
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('cache-control')).toBe('no-store');
    tokens.push((JSON.parse(res.body) as { access_token: string }).access_token);
  });

  it('grants only the scopes the client is registered for', async () => {
    const c = await register('items:read');
    expect(await oauthError(ccToken(await rp(c), { scope: 'items:read items:write' }))).toBe('invalid_scope');
    const both = await register('items:read items:write');
    const res = await ccToken(await rp(both), { scope: 'items:write' });
    expect(decodeJwt(res.access_token).scope).toBe('items:write');
  });

  it('refuses a wrong secret and an unknown client with invalid_client', async () => {
    const c = await register();
    const wrong = { id: c.id, secret: `${c.secret.slice(0, -2)}AA` };
    expect(await oauthError(ccToken(await rp(wrong)))).toBe('invalid_client');
    const unknown = await post(
      '/token',
      { grant_type: 'client_credentials' },
      { authorization: basic({ id: 'pc_unknown', secret: c.secret }) },
    );
    expect(unknown.status).toBe(401);
    expect(JSON.parse(unknown.body)).toMatchObject({ error: 'invalid_client' });
    expect(unknown.headers.get('cache-control')).toBe('no-store');
  });

  it('refuses an unknown resource with invalid_target', async () => {
    const c = await register();
    const config = await rp(c);
    expect(await oauthError(ccToken(config, { resource: 'https://elsewhere.example/api' }))).toBe(
      'invalid_target',
    );
  });

  it('does not offer the password grant or the implicit flow', async () => {
    const c = await register();
    const pw = await post(
      '/token',
      { grant_type: 'password', username: 'alice', password: 'correct horse battery' },
      { authorization: basic(c) },
    );
    expect(pw.status).toBe(400);
    expect(JSON.parse(pw.body)).toMatchObject({ error: 'unsupported_grant_type' });

    const web = await register('openid items:read', {
      grantTypes: ['authorization_code'],
      redirectUris: ['https://app.example/cb'],
    });
    const implicit = await fetchFn(
      `${issuer}/auth?${new URLSearchParams({
        client_id: web.id,
        response_type: 'token',
        response_mode: 'query',
        redirect_uri: 'https://app.example/cb',
        scope: 'openid',
        state: 'st',
      }).toString()}`,
      { redirect: 'manual' },
    );
    expect(implicit.status).toBe(303);
    const location = new URL(implicit.headers.get('location') ?? '');
    expect(location.origin + location.pathname).toBe('https://app.example/cb');
    const params = new URLSearchParams(location.hash.slice(1) || location.search);
    // oidc-provider refuses `token` before or after the response-mode check, by request shape.
    expect(['unsupported_response_type', 'invalid_request']).toContain(params.get('error'));
    expect(params.get('access_token')).toBeNull();
    expect(params.get('state')).toBe('st');
  });

  it('never redirects to an unregistered redirect URI', async () => {
    const web = await register('openid', {
      grantTypes: ['authorization_code'],
      redirectUris: ['https://app.example/cb'],
    });
    const res = await fetchFn(
      `${issuer}/auth?${new URLSearchParams({
        client_id: web.id,
        response_type: 'code',
        redirect_uri: 'https://evil.example/cb',
        scope: 'openid',
        code_challenge: 'x'.repeat(43),
        code_challenge_method: 'S256',
      }).toString()}`,
      { redirect: 'manual' },
    );
    expect(res.status).toBe(400);
    expect(res.headers.get('location')).toBeNull();
    const body = await res.text();
    expect(body).not.toContain('evil.example');
    expect(body).not.toContain('redirect_uri');
  });

  it('requires PKCE S256 on the authorization endpoint', async () => {
    const web = await register('openid', {
      grantTypes: ['authorization_code'],
      redirectUris: ['https://app.example/cb'],
    });
    const base = {
      client_id: web.id,
      response_type: 'code',
      redirect_uri: 'https://app.example/cb',
      scope: 'openid',
    };
    const variants: Record<string, string>[] = [
      {},
      { code_challenge: 'x'.repeat(43), code_challenge_method: 'plain' },
    ];
    for (const extra of variants) {
      const res = await fetchFn(`${issuer}/auth?${new URLSearchParams({ ...base, ...extra }).toString()}`, {
        redirect: 'manual',
      });
      expect(res.status).toBe(303);
      expect(new URL(res.headers.get('location') ?? '').searchParams.get('error')).toBe('invalid_request');
    }
  });

  it('binds a DPoP token to the client’s key (cnf.jkt)', async () => {
    const c = await register();
    const config = await rp(c);
    const pair = await oidc.randomDPoPKeyPair('ES256');
    const res = await oidc.clientCredentialsGrant(
      config,
      { scope: 'items:read' },
      { DPoP: oidc.getDPoPHandle(config, pair) },
    );
    tokens.push(res.access_token);
    expect(res.token_type.toLowerCase()).toBe('dpop');
    const jkt = await calculateJwkThumbprint(await exportJWK(pair.publicKey));
    expect(decodeJwt(res.access_token).cnf).toEqual({ jkt });
  });
});

describe('introspection and revocation', () => {
  it('introspection requires client authentication', async () => {
    const c = await register();
    const { access_token: token } = await ccToken(await rp(c));
    const anonymous = await post('/token/introspection', { token });
    expect(anonymous.status).toBe(400);
    expect(JSON.parse(anonymous.body)).toMatchObject({ error: 'invalid_request' });
    const noSecret = await post('/token/introspection', { token, client_id: c.id });
    expect(noSecret.status).toBe(401);
    expect(JSON.parse(noSecret.body)).toMatchObject({ error: 'invalid_client' });
    const wrong = await post(
      '/token/introspection',
      { token },
      { authorization: basic({ id: c.id, secret: 'x'.repeat(43) }) },
    );
    expect(wrong.status).toBe(401);
    expect(anonymous.body + noSecret.body + wrong.body).not.toContain('"active"');
    const config = await rp(c);
    const info = await oidc.tokenIntrospection(config, token);
    expect(info).toMatchObject({ active: true, client_id: c.id, scope: 'items:read', aud: audience });
  });

  it('revocation by the owning client records the jti; another client’s does not', async () => {
    const owner = await register();
    const other = await register();
    const { access_token: token } = await ccToken(await rp(owner));
    const jti = String(decodeJwt(token).jti);

    const foreign = await post('/token/revocation', { token }, { authorization: basic(other) });
    expect(foreign.status).toBe(400);
    expect(JSON.parse(foreign.body)).toMatchObject({ error: 'invalid_request' });
    expect(
      await gw.p.store.db.selectFrom('revoked_tokens').selectAll().where('jti', '=', jti).execute(),
    ).toEqual([]);
    expect(await gw.p.authorizationServer?.isRevoked(jti)).toBe(false);

    const anonymous = await post('/token/revocation', { token, client_id: owner.id });
    expect(anonymous.status).toBe(401);

    await oidc.tokenRevocation(await rp(owner), token);
    const rows = await gw.p.store.db
      .selectFrom('revoked_tokens')
      .selectAll()
      .where('jti', '=', jti)
      .execute();
    expect(rows).toHaveLength(1);
    expect(rows[0]?.client_id).toBe(owner.id);
    expect(Date.parse(rows[0]?.expires_at ?? '')).toBe(Number(decodeJwt(token).exp) * 1000);
    expect(await gw.p.authorizationServer?.isRevoked(jti)).toBe(true);
    const info = await oidc.tokenIntrospection(await rp(owner), token);
    expect(info.active).toBe(false);
  });

  it('a forged token revokes nothing', async () => {
    const owner = await register();
    const { access_token: token } = await ccToken(await rp(owner));
    const [h, p] = token.split('.');
    const forged = `${h ?? ''}.${p ?? ''}.${Buffer.from('not a signature').toString('base64url')}`;
    const res = await post('/token/revocation', { token: forged }, { authorization: basic(owner) });
    expect(res.status).toBe(200);
    expect(await gw.p.authorizationServer?.isRevoked(String(decodeJwt(token).jti))).toBe(false);
  });
});

describe('secrets at rest and key rotation', () => {
  it('stores the client secret only as an HMAC', async () => {
    const c = await register();
    const rows = await gw.p.store.db.selectFrom('oauth_clients').selectAll().execute();
    const text = JSON.stringify(rows);
    expect(text).toContain(c.id);
    for (const s of secrets) expect(text).not.toContain(s);
    const dataDir = join(gw.dir, 'data');
    for (const file of readdirSync(dataDir).filter((f) => f.includes('.db'))) {
      const bytes = readFileSync(join(dataDir, file)).toString('latin1');
      for (const s of secrets) expect(bytes).not.toContain(s);
    }
  });

  it('rotation changes the signing kid; tokens issued before still verify against /jwks', async () => {
    const c = await register();
    const before = await ccToken(await rp(c));
    const oldKid = decodeProtectedHeader(before.access_token).kid;
    await keys.rotate('test rotation');
    const after = await ccToken(await rp(c));
    const newKid = decodeProtectedHeader(after.access_token).kid;
    expect(newKid).not.toBe(oldKid);
    const set = createLocalJWKSet(await jwks());
    await expect(jwtVerify(before.access_token, set, { issuer, audience })).resolves.toBeDefined();
    await expect(jwtVerify(after.access_token, set, { issuer, audience })).resolves.toBeDefined();
  });
});

describe('the gateway accepts the server’s access tokens, and only those that fit', () => {
  async function callItems(authorization?: string) {
    return gw.request('/v1/items', { headers: authorization === undefined ? {} : { authorization } });
  }

  it('a client-credentials token with the required scope reaches the upstream, without the token', async () => {
    const config = await rp(await register('items:read'));
    const { access_token } = await ccToken(config);
    upstream.received.length = 0;
    const res = await callItems(`Bearer ${access_token}`);
    expect(res.status).toBe(200);
    expect(upstream.received).toHaveLength(1);
    expect(upstream.received[0]!.headers.authorization).toBeUndefined();
    expect(res.headers['cache-control']).toBe('no-store');
  });

  it('a valid token without the required scope is 403 insufficient_scope, naming the scope', async () => {
    const config = await rp(await register('items:write'));
    const res = await oidc.clientCredentialsGrant(config, { scope: 'items:write' });
    tokens.push(res.access_token);
    upstream.received.length = 0;
    const call = await callItems(`Bearer ${res.access_token}`);
    expect(call.status).toBe(403);
    expect(call.headers['www-authenticate']).toContain(
      'Bearer realm="items", error="insufficient_scope", scope="items:read"',
    );
    expect(upstream.received).toHaveLength(0);
  });

  it('a revoked token is refused from the next request on', async () => {
    const config = await rp(await register('items:read'));
    const { access_token } = await ccToken(config);
    expect((await callItems(`Bearer ${access_token}`)).status).toBe(200);
    await oidc.tokenRevocation(config, access_token);
    const res = await callItems(`Bearer ${access_token}`);
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toContain('error="invalid_token"');
    const line = gw
      .logLines()
      .find((l) => l.event === 'access' && l.correlationId === res.headers['x-request-id']);
    expect(line?.reason).toBe('token-revoked');
  });

  it('refuses altered tokens, tokens in the query string and key-bound tokens without proof', async () => {
    const config = await rp(await register('items:read'));
    const { access_token } = await ccToken(config);
    const [h, p, s] = access_token.split('.');
    const claims = JSON.parse(Buffer.from(p!, 'base64url').toString('utf8')) as Record<string, unknown>;
    const forged = `${h!}.${Buffer.from(JSON.stringify({ ...claims, scope: 'items:read items:write' })).toString('base64url')}.${s!}`;
    expect((await callItems(`Bearer ${forged}`)).status).toBe(401);
    expect((await gw.request(`/v1/items?access_token=${access_token}`)).status).toBe(401);
    expect((await callItems(`Basic ${Buffer.from('a:b').toString('base64')}`)).status).toBe(401);
    const dpop = await oidc.clientCredentialsGrant(
      config,
      { scope: 'items:read' },
      { DPoP: oidc.getDPoPHandle(config, await oidc.randomDPoPKeyPair()) },
    );
    tokens.push(dpop.access_token);
    expect((await callItems(`Bearer ${dpop.access_token}`)).status).toBe(401);
  });
});

describe('object-level authorization with the server’s tokens', () => {
  it('lets a caller reach only its own record unless it holds the privileged scope', async () => {
    const alice = await register('items:read');
    const bob = await register('items:read');
    const staff = await register('items:read items:admin');
    const aliceToken = (await ccToken(await rp(alice))).access_token;
    const staffToken = (
      await oidc.clientCredentialsGrant(await rp(staff), { scope: 'items:read items:admin' })
    ).access_token;
    tokens.push(staffToken);
    const get = (owner: string, token: string) =>
      gw.request(`/v1/records/${encodeURIComponent(owner)}`, {
        headers: { authorization: `Bearer ${token}` },
      });

    upstream.received.length = 0;
    expect((await get(alice.id, aliceToken)).status).toBe(200);
    const other = await get(bob.id, aliceToken);
    expect(other.status).toBe(403);
    expect(JSON.parse(other.body)).toMatchObject({ type: 'urn:portcullis:problem:forbidden' });
    expect(other.body).not.toContain(bob.id);
    expect((await get(`${alice.id}x`, aliceToken)).status).toBe(403);
    expect((await get(bob.id, staffToken)).status).toBe(200);
    // Only the two allowed calls reached the upstream.
    expect(upstream.received.map((r) => r.url)).toEqual([
      `/records/${encodeURIComponent(alice.id)}`,
      `/records/${encodeURIComponent(bob.id)}`,
    ]);
    const denied = gw
      .logLines()
      .find((l) => l.event === 'access' && l.correlationId === other.headers['x-request-id']);
    expect(denied?.reason).toBe('object-not-owned');
  });
});
