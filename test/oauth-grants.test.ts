/**
 * Refresh tokens, pushed authorization requests and private_key_jwt, end to end: openid-client as
 * the relying party against the real gateway over TLS (startTestGateway, SQLite), the
 * authorization-code flow driven over HTTP through the real login and consent pages, and the
 * issued access tokens used on an API behind the gateway.
 *
 * Two gateways: one with `oauth.refreshTokens.enabled: true`, one with the defaults (refresh
 * tokens off).
 */
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { decodeJwt, exportJWK, generateKeyPair, SignJWT } from 'jose';
import * as oidc from 'openid-client';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { openKms } from '../src/keys/kms.ts';
import { createSealers, modelAad, openText } from '../src/keys/envelope.ts';
import { createClient } from '../src/oauth/clients.ts';
import type { NewClient } from '../src/oauth/clients.ts';
import { ISSUED_JWT_MODEL } from '../src/oauth/grant-tokens.ts';
import { createUsers, kmsSecretWrapper } from '../src/oauth/users.ts';
import { startRecordingUpstream, startTestGateway } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';
import { authorize, createFlow, exchange, Jar, oauthError } from './oauth-flow.ts';
import type { Flow } from './oauth-flow.ts';

const OPENAPI = {
  openapi: '3.1.0',
  info: { title: 'items', version: '1' },
  components: {
    securitySchemes: {
      oauth: {
        type: 'oauth2',
        flows: {
          authorizationCode: {
            authorizationUrl: 'https://localhost/auth',
            tokenUrl: 'https://localhost/token',
            scopes: { 'items:read': 'read' },
          },
        },
      },
    },
  },
  paths: {
    '/items': {
      get: {
        operationId: 'listItems',
        security: [{ oauth: ['items:read'] }],
        responses: { '200': { description: 'ok' } },
      },
    },
  },
};

const REDIRECT = 'https://app.example/cb';
const GENEROUS = { burst: { points: 10_000, seconds: 1 }, sustained: { points: 100_000, seconds: 60 } };
const ABSOLUTE_TTL = 3600;
const USER = { username: 'alice', password: 'alice-correct-horse-42' };
const secrets: string[] = [USER.password];

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((ok) => server.close(() => ok()));
  return port;
}

interface Site {
  gw: TestGateway;
  issuer: string;
  flow: Flow;
  /** Registers a client (secret kept for the log check) and returns its id and secret. */
  register(input: Partial<NewClient>): Promise<{ id: string; secret: string }>;
  /** An authorization-code client with client_secret_basic, as openid-client sees it. */
  webClient(extra?: Partial<NewClient>): Promise<{ id: string; config: oidc.Configuration }>;
  /** GET /v1/items with a bearer token: the status. */
  call(token: string): Promise<number>;
  close(): Promise<void>;
}

let upstream: RecordingUpstream;

async function startSite(oauth: Record<string, unknown>): Promise<Site> {
  const port = await freePort();
  const issuer = `https://localhost:${String(port)}`;
  const gw = await startTestGateway(
    {
      gateway: { port, publicUrl: issuer },
      oauth,
      // These tests sign in and call /token far more often than a person would.
      rateLimits: { token: GENEROUS, login: GENEROUS },
      apis: [{ name: 'items', basePath: '/v1', openapi: 'api.yaml', upstream: { url: upstream.url } }],
    },
    { openapi: OPENAPI },
  );
  const keys = gw.p.keys;
  if (keys === undefined) throw new Error('the key manager should be running');
  const config = gw.p.runtime().loaded.config;
  const users = createUsers({
    db: gw.p.store.db,
    wrapper: kmsSecretWrapper(openKms(config.oauth.kms, join(gw.dir, 'data')).kms),
    login: config.oauth.login,
  });
  await users.create(USER);
  const flow = createFlow(issuer, gw.p.tls.source === 'development' ? gw.p.tls.caCertPem : undefined);
  const register: Site['register'] = async (input) => {
    const { client, clientSecret } = await createClient(gw.p.store.db, keys, {
      name: 'test',
      grantTypes: ['client_credentials'],
      scope: 'items:read',
      ...input,
    });
    if (clientSecret !== undefined) secrets.push(clientSecret);
    return { id: client.clientId, secret: clientSecret ?? '' };
  };
  return {
    gw,
    issuer,
    flow,
    register,
    async webClient(extra = {}) {
      const c = await register({
        grantTypes: ['authorization_code'],
        scope: 'openid items:read',
        redirectUris: [REDIRECT],
        ...extra,
      });
      return { id: c.id, config: await flow.discover(c.id, oidc.ClientSecretBasic(c.secret)) };
    },
    async call(token) {
      return (await gw.request('/v1/items', { headers: { authorization: `Bearer ${token}` } })).status;
    },
    async close() {
      await flow.close();
      await gw.close();
    },
  };
}

let on: Site;
let off: Site;

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  on = await startSite({ refreshTokens: { enabled: true, absoluteTtlSeconds: ABSOLUTE_TTL } });
  off = await startSite({});
}, 60_000);

afterAll(async () => {
  for (const site of [on, off]) {
    const logs = site.gw.logs();
    for (const s of secrets.filter((x) => x !== '')) expect(logs).not.toContain(s);
    await site.close();
  }
  await upstream.close();
});

/** Signs in with a fresh session and returns the first token response. */
async function signIn(site: Site, config: oidc.Configuration, scope = 'openid items:read') {
  const a = await authorize(site.flow, config, new Jar(), USER, { redirect_uri: REDIRECT, scope });
  const tokens = await exchange(config, a);
  secrets.push(tokens.access_token, tokens.refresh_token ?? '');
  return tokens;
}

async function refresh(config: oidc.Configuration, refreshToken: string) {
  const tokens = await oidc.refreshTokenGrant(config, refreshToken);
  secrets.push(tokens.access_token, tokens.refresh_token ?? '');
  return tokens;
}

async function storedRefreshToken(site: Site, value: string) {
  const row = await site.gw.p.store.db
    .selectFrom('oauth_models')
    .selectAll()
    .where('model', '=', 'RefreshToken')
    .where('id', '=', value)
    .executeTakeFirst();
  if (row === undefined) return undefined;
  // Payloads are sealed at rest (src/keys/envelope.ts): opened with the gateway's key ring.
  const keys = site.gw.p.keys;
  if (keys === undefined) throw new Error('no key manager');
  const sealer = createSealers({ db: site.gw.p.store.db, kms: keys.kms }).for('oauth-model');
  const text = await openText(sealer, modelAad('RefreshToken', row.id), row.payload);
  return { ...row, payload: JSON.parse(text) as { exp: number; iat: number; iiat: number } };
}

describe('refresh tokens, when enabled', () => {
  it('are rotated on every use: each refresh returns a new one and the used one stops working', async () => {
    const { config } = await on.webClient();
    const first = await signIn(on, config);
    const rt1 = first.refresh_token ?? '';
    expect(rt1).not.toBe('');
    expect(await on.call(first.access_token)).toBe(200);

    const second = await refresh(config, rt1);
    const rt2 = second.refresh_token ?? '';
    expect(rt2).not.toBe('');
    expect(rt2).not.toBe(rt1);
    expect(decodeJwt(second.access_token).sub).toBe(decodeJwt(first.access_token).sub);
    expect(await on.call(second.access_token)).toBe(200);
    // The used token is marked consumed in the store.
    expect((await storedRefreshToken(on, rt1))?.consumed_at).not.toBeNull();

    const third = await refresh(config, rt2);
    expect(third.refresh_token).not.toBe(rt2);
    expect(await on.call(third.access_token)).toBe(200);
  });

  it('reuse of a used refresh token revokes the whole grant: newest refresh token and access tokens', async () => {
    const { config } = await on.webClient();
    const first = await signIn(on, config);
    const second = await refresh(config, first.refresh_token ?? '');
    // Another sign-in of the same user and client: a separate grant, which must survive.
    const bystander = await signIn(on, config);
    expect(await on.call(first.access_token)).toBe(200);
    expect(await on.call(second.access_token)).toBe(200);

    // The stolen-and-replayed case: the first refresh token comes back.
    expect(await oauthError(refresh(config, first.refresh_token ?? ''))).toBe('invalid_grant');
    // The newest refresh token of the grant no longer works either.
    expect(await oauthError(refresh(config, second.refresh_token ?? ''))).toBe('invalid_grant');
    // Nor do the grant's access tokens, at the gateway and at introspection.
    for (const token of [first.access_token, second.access_token]) {
      const res = await on.gw.request('/v1/items', { headers: { authorization: `Bearer ${token}` } });
      expect(res.status).toBe(401);
      expect(res.headers['www-authenticate']).toContain('error="invalid_token"');
      expect((await oidc.tokenIntrospection(config, token)).active).toBe(false);
    }
    const revoked = on.gw
      .logLines()
      .find((l) => l.event === 'oauth-grant-tokens-revoked' && l.grantId !== undefined);
    expect(revoked?.count).toBeGreaterThanOrEqual(2);

    // The other grant is untouched.
    expect(await on.call(bystander.access_token)).toBe(200);
    const renewed = await refresh(config, bystander.refresh_token ?? '');
    expect(await on.call(renewed.access_token)).toBe(200);
  });

  // Whether the requests really overlap depends on scheduling; the adapter's unit test proves the
  // atomic consume. This checks the outcome either way: never two winners, and the grant revoked.
  it('simultaneous uses of one refresh token: one wins at most, and the grant ends revoked', async () => {
    const { config } = await on.webClient();
    const first = await signIn(on, config);
    const results = await Promise.allSettled(
      Array.from({ length: 4 }, () => refresh(config, first.refresh_token ?? '')),
    );
    const won = results.filter((r) => r.status === 'fulfilled');
    expect(won.length).toBeLessThanOrEqual(1);
    for (const r of results) {
      if (r.status === 'rejected') expect((r.reason as { error?: unknown }).error).toBe('invalid_grant');
    }
    // Whoever won holds nothing usable any more: the reuse revoked the grant.
    for (const w of won) {
      expect(await oauthError(refresh(config, w.value.refresh_token ?? ''))).toBe('invalid_grant');
      expect(await on.call(w.value.access_token)).toBe(401);
    }
    expect(await on.call(first.access_token)).toBe(401);
  });

  it('a reused authorization code revokes the access token issued for it', async () => {
    const { config } = await on.webClient();
    const a = await authorize(on.flow, config, new Jar(), USER, {
      redirect_uri: REDIRECT,
      scope: 'openid items:read',
    });
    const tokens = await exchange(config, a);
    secrets.push(tokens.access_token, tokens.refresh_token ?? '');
    expect(await on.call(tokens.access_token)).toBe(200);
    expect(await oauthError(exchange(config, a))).toBe('invalid_grant');
    expect(await on.call(tokens.access_token)).toBe(401);
    expect(await oauthError(refresh(config, tokens.refresh_token ?? ''))).toBe('invalid_grant');
  });

  it('are bound to their client', async () => {
    const { config } = await on.webClient();
    const other = await on.webClient();
    const tokens = await signIn(on, config);
    expect(await oauthError(refresh(other.config, tokens.refresh_token ?? ''))).toBe('invalid_grant');
    // The failed attempt by another client did not consume it.
    expect(await on.call((await refresh(config, tokens.refresh_token ?? '')).access_token)).toBe(200);
  });

  it('have an absolute lifetime that rotation does not extend', async () => {
    const { config } = await on.webClient();
    const tokens = await signIn(on, config);
    const rt1 = tokens.refresh_token ?? '';
    const stored1 = await storedRefreshToken(on, rt1);
    expect(stored1?.payload.exp).toBe((stored1?.payload.iat ?? 0) + ABSOLUTE_TTL);

    const t0 = Date.now();
    vi.useFakeTimers({ toFake: ['Date'], now: t0 });
    try {
      // Half-way through the chain's life: rotation works, and the new token ends with the chain.
      vi.setSystemTime(t0 + (ABSOLUTE_TTL / 2) * 1000);
      const rotated = await refresh(config, rt1);
      const stored2 = await storedRefreshToken(on, rotated.refresh_token ?? '');
      expect(stored2?.payload.iiat).toBe(stored1?.payload.iiat);
      expect(stored2?.payload.exp).toBe(stored1?.payload.exp);

      // Past the chain's end: refused, although this token was issued only half a lifetime ago.
      vi.setSystemTime(t0 + (ABSOLUTE_TTL + 5) * 1000);
      expect(await oauthError(refresh(config, rotated.refresh_token ?? ''))).toBe('invalid_grant');
    } finally {
      vi.useRealTimers();
    }
  });

  it('the discovery document offers the refresh_token grant', async () => {
    const res = await on.flow.http(new Jar(), `${on.issuer}/.well-known/openid-configuration`);
    const d = JSON.parse(res.body) as { grant_types_supported: string[] };
    expect(d.grant_types_supported).toContain('refresh_token');
  });
});

describe('refresh tokens, by default', () => {
  it('are never issued, not even for offline_access, and the grant is not offered', async () => {
    const { config } = await off.webClient();
    const plain = await signIn(off, config);
    expect(plain.refresh_token).toBeUndefined();
    expect(await off.call(plain.access_token)).toBe(200);

    // offline_access (with the prompt=consent OpenID Connect asks for): still no refresh token.
    const a = await authorize(off.flow, config, new Jar(), USER, {
      redirect_uri: REDIRECT,
      scope: 'openid offline_access items:read',
      prompt: 'consent',
    });
    const callback = new URL(a.callback);
    if (callback.searchParams.has('code')) {
      const offline = await exchange(config, a);
      secrets.push(offline.access_token);
      expect(offline.refresh_token).toBeUndefined();
      expect(String(offline.scope).split(' ')).not.toContain('offline_access');
    } else {
      expect(callback.searchParams.get('error')).toBe('invalid_scope');
    }

    const discovery = await off.flow.http(new Jar(), `${off.issuer}/.well-known/openid-configuration`);
    const d = JSON.parse(discovery.body) as { grant_types_supported: string[]; scopes_supported: string[] };
    expect(d.grant_types_supported).not.toContain('refresh_token');
    expect(d.scopes_supported).not.toContain('offline_access');
    // A refresh_token grant request is refused outright.
    expect(await oauthError(oidc.refreshTokenGrant(config, 'x'.repeat(43)))).toMatch(
      /^(unsupported_grant_type|unauthorized_client)$/,
    );
  });
});

describe('pushed authorization requests (RFC 9126)', () => {
  it('a pushed request works once: its request_uri cannot be used again', async () => {
    const { config } = await off.webClient();
    const jar = new Jar();
    const a = await authorize(
      off.flow,
      config,
      jar,
      USER,
      { redirect_uri: REDIRECT, scope: 'openid items:read' },
      { par: true },
    );
    const url = new URL(a.url);
    expect(url.searchParams.get('request_uri')).toMatch(/^urn:ietf:params:oauth:request_uri:/);
    // Only client_id and request_uri travel through the browser.
    expect([...url.searchParams.keys()].sort()).toEqual(['client_id', 'request_uri']);
    const tokens = await exchange(config, a);
    secrets.push(tokens.access_token);
    expect(await off.call(tokens.access_token)).toBe(200);

    // The same request_uri again, even in the same browser session: refused, no code.
    const again = await off.flow.follow(jar, a.url);
    const location = again.location === undefined ? undefined : new URL(again.location);
    expect(location?.searchParams.get('code') ?? null).toBeNull();
    if (location === undefined) {
      expect(again.status).toBe(400);
    } else {
      expect(location.origin + location.pathname).toBe(REDIRECT);
      expect(location.searchParams.get('error')).toBe('invalid_request_uri');
    }
  });

  it('the pushed-request endpoint authenticates the client and checks the redirect URI', async () => {
    const c = await off.register({
      grantTypes: ['authorization_code'],
      scope: 'openid items:read',
      redirectUris: [REDIRECT],
    });
    const form = {
      client_id: c.id,
      response_type: 'code',
      redirect_uri: REDIRECT,
      scope: 'openid',
      code_challenge: 'x'.repeat(43),
      code_challenge_method: 'S256',
    };
    const post = async (body: Record<string, string>, authorization?: string) => {
      const res = await off.flow.http(new Jar(), `${off.issuer}/request`, {
        form: body,
        headers: authorization === undefined ? {} : { authorization },
        browser: false,
      });
      return { status: res.status, body: JSON.parse(res.body) as Record<string, unknown> };
    };
    const basic = `Basic ${Buffer.from(`${c.id}:${c.secret}`).toString('base64')}`;
    const anonymous = await post(form);
    expect(anonymous.status).toBe(401);
    expect(anonymous.body.error).toBe('invalid_client');
    const wrong = await post(form, `Basic ${Buffer.from(`${c.id}:${'x'.repeat(43)}`).toString('base64')}`);
    expect(wrong.status).toBe(401);
    const evil = await post({ ...form, redirect_uri: 'https://evil.example/cb' }, basic);
    expect(evil.status).toBe(400);
    expect(String(evil.body.error)).toMatch(/^invalid_(redirect_uri|request)$/);
    const plainPkce = await post({ ...form, code_challenge_method: 'plain' }, basic);
    expect(plainPkce.status).toBe(400);
    const ok = await post(form, basic);
    expect(ok.status).toBe(201);
    expect(ok.body.request_uri).toMatch(/^urn:ietf:params:oauth:request_uri:/);
    expect(ok.body.expires_in).toEqual(expect.any(Number));
  });

  it('a client registered with require_pushed_authorization_requests must push', async () => {
    const { config } = await off.webClient({ requirePushedAuthorizationRequests: true });
    const direct = oidc.buildAuthorizationUrl(config, {
      redirect_uri: REDIRECT,
      scope: 'openid items:read',
      code_challenge: await oidc.calculatePKCECodeChallenge(oidc.randomPKCECodeVerifier()),
      code_challenge_method: 'S256',
      state: 'st',
    });
    const refused = await off.flow.http(new Jar(), direct.href);
    const back = new URL(refused.location ?? 'https://none.invalid/');
    expect(back.origin + back.pathname).toBe(REDIRECT);
    expect(back.searchParams.get('error')).toBe('invalid_request');
    expect(back.searchParams.get('code')).toBeNull();

    const a = await authorize(
      off.flow,
      config,
      new Jar(),
      USER,
      { redirect_uri: REDIRECT, scope: 'openid items:read' },
      { par: true },
    );
    const tokens = await exchange(config, a);
    secrets.push(tokens.access_token);
    expect(await off.call(tokens.access_token)).toBe(200);
  });

  it('require_pushed_authorization_requests applies to authorization-code clients only', async () => {
    await expect(off.register({ requirePushedAuthorizationRequests: true })).rejects.toThrow(
      /authorization_code/,
    );
  });
});

describe('private_key_jwt client authentication', () => {
  async function keyClient() {
    const { publicKey, privateKey } = await generateKeyPair('ES256', { extractable: true });
    const jwk = { ...(await exportJWK(publicKey)), alg: 'ES256', use: 'sig', kid: 'k1' };
    const c = await off.register({ authMethod: 'private_key_jwt', jwks: { keys: [jwk] } });
    expect(c.secret).toBe('');
    return { id: c.id, privateKey };
  }

  async function tokenRequest(clientId: string, assertion: string) {
    const res = await off.flow.http(new Jar(), `${off.issuer}/token`, {
      form: {
        grant_type: 'client_credentials',
        scope: 'items:read',
        client_id: clientId,
        client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
        client_assertion: assertion,
      },
      browser: false,
    });
    const body = JSON.parse(res.body) as Record<string, unknown>;
    if (typeof body.access_token === 'string') secrets.push(body.access_token);
    return { status: res.status, body };
  }

  function assertion(clientId: string, claims: Record<string, unknown> = {}) {
    return new SignJWT({ jti: oidc.randomState(), ...claims })
      .setIssuer(clientId)
      .setSubject(clientId)
      .setAudience(off.issuer)
      .setIssuedAt()
      .setExpirationTime('60s');
  }

  it('a client registered with its public JWKS gets tokens with a signed assertion', async () => {
    const c = await keyClient();
    const config = await off.flow.discover(c.id, oidc.PrivateKeyJwt(c.privateKey));
    const tokens = await oidc.clientCredentialsGrant(config, { scope: 'items:read' });
    secrets.push(tokens.access_token);
    expect(decodeJwt(tokens.access_token).client_id).toBe(c.id);
    expect(await off.call(tokens.access_token)).toBe(200);
  });

  it('refuses a replayed assertion, another key’s, an HS256 one and an unsigned one', async () => {
    const c = await keyClient();
    const good = await assertion(c.id).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).sign(c.privateKey);
    expect((await tokenRequest(c.id, good)).status).toBe(200);
    // The same assertion (same jti) again.
    const replay = await tokenRequest(c.id, good);
    expect(replay.status).toBe(401);
    expect(replay.body.error).toBe('invalid_client');

    const stranger = await generateKeyPair('ES256');
    const foreign = await assertion(c.id)
      .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
      .sign(stranger.privateKey);
    expect((await tokenRequest(c.id, foreign)).body.error).toBe('invalid_client');

    const hs = await assertion(c.id)
      .setProtectedHeader({ alg: 'HS256' })
      .sign(new TextEncoder().encode('a-shared-secret-of-32-bytes-long!!'));
    expect((await tokenRequest(c.id, hs)).body.error).toBe('invalid_client');

    const [, payload] = good.split('.');
    const none = `${Buffer.from('{"alg":"none"}').toString('base64url')}.${payload ?? ''}.`;
    expect((await tokenRequest(c.id, none)).body.error).toBe('invalid_client');
  });

  it('the assertion’s aud is exactly the issuer, as a string, and its lifetime is at most 5 minutes', async () => {
    const c = await keyClient();
    const sign = (build: SignJWT) => build.setProtectedHeader({ alg: 'ES256', kid: 'k1' }).sign(c.privateKey);
    const now = Math.floor(Date.now() / 1000);
    // Allowed: aud the issuer, 5 minutes.
    const ok = await sign(assertion(c.id).setExpirationTime(now + 300));
    expect((await tokenRequest(c.id, ok)).status).toBe(200);
    const refused = [
      // aud as an array holding the issuer, or the token endpoint URL.
      await sign(assertion(c.id).setAudience([off.issuer])),
      await sign(assertion(c.id).setAudience(`${off.issuer}/token`)),
      // exp a year ahead; a lifetime of 11 minutes with a backdated iat.
      await sign(assertion(c.id).setExpirationTime(now + 365 * 86_400)),
      await sign(
        assertion(c.id)
          .setIssuedAt(now - 600)
          .setExpirationTime(now + 60),
      ),
    ];
    for (const a of refused) {
      const res = await tokenRequest(c.id, a);
      expect(res.status).toBe(401);
      expect(res.body).toEqual({
        error: 'invalid_client',
        error_description: 'client authentication failed',
      });
    }
    // Each refusal is in the audit trail.
    await off.gw.p.audit.flush();
    const rows = await off.gw.p.store.db.selectFrom('audit_events').select('event').execute();
    const audited = rows
      .map((r) => JSON.parse(r.event) as Record<string, unknown>)
      .filter((e) => e['portcullis.client_id'] === c.id && e['event.reason'] === 'invalid_client');
    expect(audited).toHaveLength(refused.length);
  });

  it('client_secret_jwt (an HS256 assertion keyed with the client secret) is refused', async () => {
    const c = await off.register({});
    const config = await off.flow.discover(c.id, oidc.ClientSecretJwt(c.secret));
    expect(await oauthError(oidc.clientCredentialsGrant(config, { scope: 'items:read' }))).toBe(
      'invalid_client',
    );
    // The same client with its registered method works.
    const basic = await off.flow.discover(c.id, oidc.ClientSecretBasic(c.secret));
    const tokens = await oidc.clientCredentialsGrant(basic, { scope: 'items:read' });
    secrets.push(tokens.access_token);
    expect(tokens.access_token).toEqual(expect.any(String));
  });
});

describe('the per-grant access-token records', () => {
  it('client-credentials tokens (no grant) are not recorded', async () => {
    const c = await off.register({});
    const config = await off.flow.discover(c.id, oidc.ClientSecretBasic(c.secret));
    const tokens = await oidc.clientCredentialsGrant(config, { scope: 'items:read' });
    secrets.push(tokens.access_token);
    const jti = String(decodeJwt(tokens.access_token).jti);
    const rows = await off.gw.p.store.db
      .selectFrom('oauth_models')
      .select('id')
      .where('model', '=', ISSUED_JWT_MODEL)
      .where('id', '=', jti)
      .execute();
    expect(rows).toEqual([]);
  });
});
