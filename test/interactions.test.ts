/**
 * Login, second factor, consent and federation end to end: the real authorization server
 * (createAuthorizationServer with createServerInteractions) over real TLS on SQLite, openid-client
 * as the relying party, pages driven by HTTP requests and in real Chromium, and a second
 * oidc-provider instance as the upstream identity provider for federation.
 */
import { createHash, randomUUID, X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:https';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { mkdirSync } from 'node:fs';
import { Writable } from 'node:stream';
import { decodeJwt } from 'jose';
import * as oidcProvider from 'oidc-provider';
import * as oidc from 'openid-client';
import { chromium } from 'playwright-core';
import { Agent, fetch as undiciFetch, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { buildAuditEvent } from '../src/audit/event.ts';
import type { AuditEvent } from '../src/audit/event.ts';
import { loadConfig } from '../src/config/load.ts';
import type { LoadedConfig } from '../src/config/load.ts';
import { openKeyManager } from '../src/keys/index.ts';
import type { StoreKeyManager } from '../src/keys/index.ts';
import { createClient } from '../src/oauth/clients.ts';
import { createServerInteractions } from '../src/oauth/interactions/hooks.ts';
import { createAuthorizationServer } from '../src/oauth/provider.ts';
import type { AuthorizationServer } from '../src/oauth/provider.ts';
import { base32Decode, hotp, totpStep } from '../src/oauth/users.ts';
import type { Users } from '../src/oauth/users.ts';
import { ensureDevCertificates } from '../src/server/devca.ts';
import { createLogger } from '../src/log/index.ts';
import { openStore } from '../src/store/index.ts';
import type { Store } from '../src/store/index.ts';
import { tempDir } from './helpers.ts';
import { createFlow, csrfOf, Jar } from './oauth-flow.ts';
import type { Flow, FlowResponse } from './oauth-flow.ts';

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
            scopes: { 'items:read': 'Read your items', 'items:write': 'Create and change your items' },
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

const PASSWORD = 'alice-correct-horse-42';
/** Screenshots of every page, kept by the test run (git-ignored) for a human to look at. */
const SCREENSHOTS = join(import.meta.dirname, '..', 'test-results', 'screenshots');
mkdirSync(SCREENSHOTS, { recursive: true });
const TOTP_PASSWORD = 'bob-battery-staple-77';
const UPSTREAM_SECRET = 'upstream-client-secret-0123456789';
const secrets: string[] = [PASSWORD, TOTP_PASSWORD, UPSTREAM_SECRET];
const signIns: AuditEvent[] = [];

let dir: string;
let store: Store | undefined;
let keys: StoreKeyManager | undefined;
let as: AuthorizationServer | undefined;
let users: Users;
let loaded: LoadedConfig;
let logs = '';
let issuer: string;
let caPem: string;
let spki: string;
let agent: Agent;
let fetchFn: oidc.CustomFetch;
const servers: Server[] = [];
let rpOrigin: string;
let upstreamIssuer: string;
let client: { id: string; secret: string; redirectUri: string };
let rpConfig: oidc.Configuration;
let aliceId: string;
let bobSecret: Buffer;

async function listen(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
  cert: { certPem: string; keyPem: string },
  host = '127.0.0.1',
) {
  const server = createServer({ cert: cert.certPem, key: cert.keyPem }, handler);
  server.listen(0, host);
  await once(server, 'listening');
  servers.push(server);
  return (server.address() as AddressInfo).port;
}

let flow: Flow;
const http: Flow['http'] = (jar, url, init) => flow.http(jar, url, init);
const follow: Flow['follow'] = (jar, url) => flow.follow(jar, url);

async function authorizationUrl(extra: Record<string, string> = {}) {
  const verifier = oidc.randomPKCECodeVerifier();
  const state = oidc.randomState();
  const nonce = oidc.randomNonce();
  const url = oidc.buildAuthorizationUrl(rpConfig, {
    redirect_uri: client.redirectUri,
    scope: 'openid items:read',
    code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    state,
    nonce,
    ...extra,
  });
  return { url: url.href, verifier, state, nonce };
}

/** Follows redirects on the AS until a page (200/4xx) or a redirect off the AS. */
async function exchange(callback: string, a: { verifier: string; state: string; nonce: string }) {
  const tokens = await oidc.authorizationCodeGrant(rpConfig, new URL(callback), {
    pkceCodeVerifier: a.verifier,
    expectedState: a.state,
    expectedNonce: a.nonce,
    idTokenExpected: true,
  });
  secrets.push(tokens.access_token, tokens.id_token ?? '');
  return tokens;
}

/** Logs in over HTTP from the login page `page`; returns the response after the login POST. */
async function submitLogin(
  jar: Jar,
  page: FlowResponse & { url: string },
  username: string,
  password: string,
) {
  return http(jar, `${page.url}/login`, { form: { csrf: csrfOf(page.body), username, password } });
}

beforeAll(async () => {
  dir = await tempDir('portcullis-interactions-');
  const dataDir = join(dir, 'data');
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const certs = await ensureDevCertificates(dataDir);
  caPem = certs.caCertPem;
  spki = createHash('sha256')
    .update(new X509Certificate(certs.certPem).publicKey.export({ type: 'spki', format: 'der' }))
    .digest('base64');
  agent = new Agent({ connect: { ca: caPem } });
  fetchFn = async (url, init) => {
    const r = await undiciFetch(url, {
      method: init.method,
      headers: init.headers,
      body: init.body ?? null,
      redirect: 'manual',
      dispatcher: agent,
    });
    return new Response(await r.arrayBuffer(), { status: r.status, headers: new Headers([...r.headers]) });
  };

  // The upstream identity provider: a second, independent oidc-provider instance on 127.0.0.1.
  let upstreamHandler: (req: IncomingMessage, res: ServerResponse) => void = (_q, s) => s.end();
  const upstreamPort = await listen((q, s) => upstreamHandler(q, s), certs);
  upstreamIssuer = `https://127.0.0.1:${String(upstreamPort)}`;

  let asHandler: (req: IncomingMessage, res: ServerResponse) => void = (_q, s) => s.end();
  const port = await listen((q, s) => asHandler(q, s), certs);
  issuer = `https://localhost:${String(port)}`;
  flow = createFlow(issuer, caPem);

  const UpstreamProvider = (
    oidcProvider as unknown as {
      default: new (
        iss: string,
        conf: Record<string, unknown>,
      ) => { callback(): (q: IncomingMessage, s: ServerResponse) => void; proxy: boolean };
    }
  ).default;
  const upstream = new UpstreamProvider(upstreamIssuer, {
    clients: [
      {
        client_id: 'portcullis',
        client_secret: UPSTREAM_SECRET,
        redirect_uris: [`${issuer}/interaction/federated-callback`],
        grant_types: ['authorization_code'],
        response_types: ['code'],
      },
    ],
    findAccount: (_ctx: unknown, id: string) => ({ accountId: id, claims: () => ({ sub: id }) }),
    cookies: { keys: ['upstream-cookie-key-for-tests'] },
    features: { devInteractions: { enabled: true } },
    pkce: { required: () => true },
  });
  upstreamHandler = upstream.callback();

  await writeFile(join(dir, 'api.yaml'), stringify(OPENAPI));
  const configFile = join(dir, 'portcullis.yaml');
  await writeFile(
    configFile,
    stringify({
      gateway: { port: 0, publicUrl: issuer },
      admin: { enabled: false },
      store: { url: 'sqlite:portcullis.db' },
      oauth: {
        login: { maxFailures: 50, windowSeconds: 900, maxDelaySeconds: 60 },
        federation: {
          name: 'Example IdP',
          issuer: upstreamIssuer,
          clientId: 'portcullis',
          clientSecret: UPSTREAM_SECRET,
          caFile: certs.caCertFile,
        },
      },
      apis: [
        {
          name: 'items',
          openapi: 'api.yaml',
          basePath: '/v1',
          audience: `${issuer}/v1`,
          upstream: { url: 'http://127.0.0.1:9' },
        },
      ],
    }),
  );
  loaded = await loadConfig(configFile);
  const logger = createLogger(
    'debug',
    new Writable({
      write(chunk: Buffer, _e, cb) {
        logs += chunk.toString('utf8');
        cb();
      },
    }),
  );
  const st = await openStore({ url: loaded.config.store.url, dataDir });
  store = st;
  const km = await openKeyManager({ store: st, dataDir, config: loaded.config.oauth, logger });
  keys = km;
  const interactions = createServerInteractions({
    loaded: () => loaded,
    store: st,
    keys: km,
    dataDir,
    logger,
    // Issue 13: the sign-in decisions, built exactly as the gateway's audit log builds them.
    audit: (input) => signIns.push(buildAuditEvent(input)),
  });
  users = interactions.users;
  const server = await createAuthorizationServer({ loaded, store: st, keys: km, logger, interactions });
  as = server;
  asHandler = (q, s) => {
    const path = (q.url ?? '/').split('?')[0] ?? '/';
    if (!server.handles(path)) {
      s.statusCode = 404;
      s.end();
      return;
    }
    // As the gateway's front door does: a correlation id for every request.
    void server.handle(q, s, { correlationId: `corr-${randomUUID()}` });
  };

  // The relying party's redirect URI: a small HTTPS page on another origin.
  const rpPort = await listen(
    (_q, s) => {
      s.setHeader('content-type', 'text/html');
      s.end('<!doctype html><title>RP</title><p>back at the client</p>');
    },
    certs,
    'localhost',
  );
  rpOrigin = `https://localhost:${String(rpPort)}`;

  const created = await createClient(st.db, km, {
    name: 'Shop <script>alert("x")</script> & Co',
    grantTypes: ['authorization_code'],
    scope: 'openid items:read items:write',
    redirectUris: [`${rpOrigin}/cb`],
  });
  client = { id: created.client.clientId, secret: created.clientSecret ?? '', redirectUri: `${rpOrigin}/cb` };
  secrets.push(client.secret);
  rpConfig = await oidc.discovery(
    new URL(issuer),
    client.id,
    undefined,
    oidc.ClientSecretBasic(client.secret),
    { [oidc.customFetch]: fetchFn },
  );
  rpConfig[oidc.customFetch] = fetchFn;

  aliceId = (await users.create({ username: 'alice', password: PASSWORD })).user.id;
  const bob = await users.create({ username: 'bob', password: TOTP_PASSWORD, totp: true });
  bobSecret = base32Decode(new URL(bob.totpUri ?? '').searchParams.get('secret') ?? '');
}, 60_000);

afterAll(async () => {
  await flow.close();
  await as?.close();
  keys?.close();
  await store?.close();
  for (const s of servers) {
    s.closeAllConnections();
    s.close();
  }
  await agent.close();
  await rm(dir, { recursive: true, force: true });
  // Nothing secret reached the logs.
  for (const s of secrets) if (s.length > 0) expect(logs).not.toContain(s);
  expect(logs).not.toContain(bobSecret.toString('base64url'));
});

describe('login and consent over HTTP', () => {
  it('authorization code + PKCE: login page, consent page, code, tokens', async () => {
    const jar = new Jar();
    const a = await authorizationUrl();
    const login = await follow(jar, a.url);
    expect(login.status).toBe(200);
    expect(login.url).toMatch(new RegExp(`^${issuer}/interaction/[A-Za-z0-9_-]+$`));
    expect(login.body).toContain('<h1>Sign in</h1>');
    // The client name is escaped: the markup renders inert.
    expect(login.body).toContain('Shop &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Co');
    expect(login.body).not.toContain('<script');
    // Headers: a nonce'd stylesheet, no inline script allowed, no caching.
    const csp = String(login.headers['content-security-policy']);
    expect(csp).toBe(
      `default-src 'none'; style-src 'nonce-${/'nonce-([A-Za-z0-9_-]{24})'/.exec(csp)?.[1] ?? 'missing'}'; img-src 'none'; form-action 'self' ${rpOrigin}; frame-ancestors 'none'; base-uri 'none'`,
    );
    expect(csp).not.toContain('unsafe-inline');
    const nonce = /'nonce-([^']+)'/.exec(csp)?.[1] ?? '';
    expect(login.body).toContain(`<style nonce="${nonce}">`);
    expect(login.headers['cache-control']).toBe('no-store');
    // oidc-provider's interaction cookie is set (its flags are checked in the Chromium test).
    expect(jar.cookies.has('_interaction')).toBe(true);

    const afterLogin = await submitLogin(jar, login, 'alice', PASSWORD);
    expect(afterLogin.status).toBe(303);
    const consent = await follow(jar, afterLogin.location ?? '');
    expect(consent.status).toBe(200);
    expect(consent.body).toContain('Allow access?');
    expect(consent.body).toContain('items:read');
    expect(consent.body).toContain('<strong>alice</strong>');

    const confirmed = await http(jar, `${consent.url}/confirm`, {
      form: { csrf: csrfOf(consent.body), scope: ['items:read'] },
    });
    expect(confirmed.status).toBe(303);
    const done = await follow(jar, confirmed.location ?? '');
    expect(done.location?.startsWith(`${client.redirectUri}?`)).toBe(true);
    const tokens = await exchange(done.location ?? '', a);
    expect(tokens.claims()?.sub).toBe(aliceId);
    const at = decodeJwt(tokens.access_token);
    expect(at.sub).toBe(aliceId);
    expect(String(at.scope).split(' ')).toContain('items:read');

    // The same session and grant: no login, no consent, straight back with a code.
    const b = await authorizationUrl();
    const again = await follow(jar, b.url);
    expect(again.location?.startsWith(`${client.redirectUri}?code=`)).toBe(true);
    await exchange(again.location ?? '', b);

    // prompt=login forces a new login despite the session.
    const c = await authorizationUrl({ prompt: 'login' });
    const forced = await follow(jar, c.url);
    expect(forced.status).toBe(200);
    expect(forced.body).toContain('<h1>Sign in</h1>');
    const relogin = await submitLogin(jar, forced, 'alice', PASSWORD);
    const back = await follow(jar, relogin.location ?? '');
    expect(back.location?.startsWith(`${client.redirectUri}?code=`)).toBe(true);
    const t3 = await exchange(back.location ?? '', c);
    expect(t3.claims()?.sub).toBe(aliceId);

    // max_age: a login older than max_age must be repeated.
    await new Promise((r) => setTimeout(r, 2100));
    const d = await authorizationUrl({ max_age: '1' });
    const aged = await follow(jar, d.url);
    expect(aged.status).toBe(200);
    expect(aged.body).toContain('<h1>Sign in</h1>');
  });

  it('the authorization server’s cookies stay on its own paths (never Path=/), secure and httpOnly', async () => {
    const jar = new Jar();
    const set: string[] = [];
    const record = (r: FlowResponse) => {
      const h = r.headers['set-cookie'];
      set.push(...(Array.isArray(h) ? h : h === undefined ? [] : [h]));
      return r;
    };
    /** Follows redirects on the issuer, recording every Set-Cookie. */
    const walk = async (url: string) => {
      let current = url;
      for (;;) {
        const r = record(await http(jar, current));
        if (r.status !== 303 || !(r.location ?? '').startsWith(issuer)) return { ...r, url: current };
        current = r.location ?? '';
      }
    };
    const a = await authorizationUrl();
    const login = await walk(a.url);
    expect(login.body).toContain('<h1>Sign in</h1>');
    const afterLogin = record(await submitLogin(jar, login, 'alice', PASSWORD));
    const consent = await walk(afterLogin.location ?? '');
    const confirmed = record(
      await http(jar, `${consent.url}/confirm`, {
        form: { csrf: csrfOf(consent.body), scope: ['items:read'] },
      }),
    );
    const done = await walk(confirmed.location ?? '');
    expect(done.location?.startsWith(`${client.redirectUri}?code=`)).toBe(true);

    const byName = (name: string) => set.filter((c) => c.startsWith(`${name}=`));
    const pathOf = (c: string) => /;\s*path=([^;]*)/i.exec(c)?.[1];
    expect(set.length).toBeGreaterThan(0);
    for (const c of set) {
      expect(pathOf(c)).not.toBe('/');
      expect(c).toMatch(/;\s*secure/i);
      expect(c).toMatch(/;\s*httponly/i);
      expect(c).toMatch(/;\s*samesite=lax/i);
    }
    // The session cookie (and its signature) only where it is read: authorization and logout.
    for (const name of ['_session', '_session.sig']) {
      expect(new Set(byName(name).map(pathOf))).toEqual(new Set(['/auth', '/session/end']));
    }
    for (const c of byName('_interaction')) expect(pathOf(c)).toMatch(/^\/interaction\/[A-Za-z0-9_-]+$/);
    for (const c of byName('_interaction_resume')) expect(pathOf(c)).toMatch(/^\/auth\/[A-Za-z0-9_-]+$/);
    // Logout still sees the session: it asks for confirmation (a signed-out visitor is not asked).
    const logout = record(await http(jar, `${issuer}/session/end`));
    expect(logout.status).toBe(200);
    expect(logout.body).toContain('Sign out?');
  });

  it('grants only the scopes the user ticked', async () => {
    const jar = new Jar();
    const a = await authorizationUrl({ scope: 'openid items:read items:write' });
    const login = await follow(jar, a.url);
    const afterLogin = await submitLogin(jar, login, 'alice', PASSWORD);
    const consent = await follow(jar, afterLogin.location ?? '');
    expect(consent.body).toContain('items:write');
    const confirmed = await http(jar, `${consent.url}/confirm`, {
      form: { csrf: csrfOf(consent.body), scope: ['items:write'] },
    });
    const done = await follow(jar, confirmed.location ?? '');
    const tokens = await exchange(done.location ?? '', a);
    const scopes = String(decodeJwt(tokens.access_token).scope).split(' ');
    expect(scopes).toContain('items:write');
    expect(scopes).not.toContain('items:read');
  });

  it('a wrong password, an unknown user: the same generic message, and no login', async () => {
    const jar = new Jar();
    const a = await authorizationUrl();
    const login = await follow(jar, a.url);
    const wrong = await submitLogin(jar, login, 'alice', 'not-the-password-1');
    const unknown = await submitLogin(jar, login, 'mallory', 'not-the-password-1');
    for (const r of [wrong, unknown]) {
      expect(r.status).toBe(400);
      expect(r.body).toContain('Invalid username or password');
      expect(r.location).toBeUndefined();
    }
    expect(wrong.body.replace(/nonce="[^"]+"/, '')).toBe(
      unknown.body.replace(/nonce="[^"]+"/, '').replace('value="mallory"', 'value="alice"'),
    );
    secrets.push('not-the-password-1');
  });

  it('a TOTP user must give a valid code; a replayed code is refused', async () => {
    const jar = new Jar();
    const a = await authorizationUrl();
    const login = await follow(jar, a.url);
    const afterPassword = await submitLogin(jar, login, 'bob', TOTP_PASSWORD);
    expect(afterPassword.status).toBe(303);
    const totpPage = await follow(jar, afterPassword.location ?? '');
    expect(totpPage.body).toContain('Two-step verification');
    const csrf = csrfOf(totpPage.body);
    const code = hotp(bobSecret, totpStep(Date.now()));
    const wrongCode = code === '000000' ? '111111' : '000000';
    const bad = await http(jar, `${totpPage.url}/totp`, { form: { csrf, code: wrongCode } });
    expect(bad.status).toBe(400);
    expect(bad.body).toContain('Invalid username or password');
    const good = await http(jar, `${totpPage.url}/totp`, { form: { csrf, code } });
    expect(good.status).toBe(303);
    const consent = await follow(jar, good.location ?? '');
    expect(consent.body).toContain('<strong>bob</strong>');

    // Replay: a second login with the same code is refused.
    const jar2 = new Jar();
    const b = await authorizationUrl();
    const login2 = await follow(jar2, b.url);
    const after2 = await submitLogin(jar2, login2, 'bob', TOTP_PASSWORD);
    const page2 = await follow(jar2, after2.location ?? '');
    const replay = await http(jar2, `${page2.url}/totp`, { form: { csrf: csrfOf(page2.body), code } });
    expect(replay.status).toBe(400);
    expect(replay.body).toContain('Invalid username or password');
  });

  it('refuses POSTs without the interaction-bound CSRF token or from another origin', async () => {
    const jar = new Jar();
    const a = await authorizationUrl();
    const login = await follow(jar, a.url);
    const csrf = csrfOf(login.body);
    const cases: { form: Record<string, string>; headers?: Record<string, string> }[] = [
      { form: { username: 'alice', password: PASSWORD } },
      { form: { csrf: csrf.slice(0, -2) + 'AA', username: 'alice', password: PASSWORD } },
      { form: { csrf, username: 'alice', password: PASSWORD }, headers: { origin: 'https://evil.example' } },
      { form: { csrf, username: 'alice', password: PASSWORD }, headers: { origin: 'null' } },
      {
        form: { csrf, username: 'alice', password: PASSWORD },
        headers: { origin: 'null', 'sec-fetch-site': 'cross-site' },
      },
    ];
    for (const c of cases) {
      const r = await http(jar, `${login.url}/login`, c);
      expect(r.status).toBe(403);
      expect(r.location).toBeUndefined();
      expect(r.body).toContain('could not be verified');
    }
    // No Origin and no Sec-Fetch-Site: refused too.
    const noOrigin = await request(`${login.url}/login`, {
      method: 'POST',
      headers: { cookie: jar.header(), 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ csrf, username: 'alice', password: PASSWORD }).toString(),
      dispatcher: agent,
    });
    expect(noOrigin.statusCode).toBe(403);
    await noOrigin.body.text();
    // The token of one interaction does not work for another.
    const other = await follow(jar, (await authorizationUrl()).url);
    const crossed = await http(jar, `${other.url}/login`, {
      form: { csrf, username: 'alice', password: PASSWORD },
    });
    expect(crossed.status).toBe(403);
    // Without the interaction cookie the page is an error, not a login.
    const noCookie = await http(new Jar(), login.url);
    expect(noCookie.status).toBe(400);
    expect(noCookie.body).toContain('expired or is not valid');
  });

  it('each response gets a fresh CSP nonce', async () => {
    const jar = new Jar();
    const login = await follow(jar, (await authorizationUrl()).url);
    const again = await http(jar, login.url);
    const n1 = /'nonce-([^']+)'/.exec(String(login.headers['content-security-policy']))?.[1];
    const n2 = /'nonce-([^']+)'/.exec(String(again.headers['content-security-policy']))?.[1];
    expect(n1).toBeDefined();
    expect(n2).toBeDefined();
    expect(n1).not.toBe(n2);
  });

  it('cancel returns access_denied to the client', async () => {
    const jar = new Jar();
    const a = await authorizationUrl();
    const login = await follow(jar, a.url);
    const aborted = await http(jar, `${login.url}/abort`, { form: { csrf: csrfOf(login.body) } });
    const done = await follow(jar, aborted.location ?? '');
    const back = new URL(done.location ?? '');
    expect(back.origin + back.pathname).toBe(client.redirectUri);
    expect(back.searchParams.get('error')).toBe('access_denied');
    expect(back.searchParams.get('code')).toBeNull();
  });

  it('an unregistered redirect_uri gets an error page and no redirect', async () => {
    const a = await authorizationUrl({ redirect_uri: 'https://evil.example/cb' });
    const r = await http(new Jar(), a.url);
    expect(r.status).toBe(400);
    expect(r.location).toBeUndefined();
    expect(r.body).not.toContain('evil.example');
  });

  it('missing PKCE or code_challenge_method=plain is refused', async () => {
    for (const mutate of [
      (u: URL) => {
        u.searchParams.delete('code_challenge');
        u.searchParams.delete('code_challenge_method');
      },
      (u: URL) => {
        u.searchParams.set('code_challenge_method', 'plain');
        u.searchParams.set('code_challenge', 'a'.repeat(43));
      },
    ]) {
      const u = new URL((await authorizationUrl()).url);
      mutate(u);
      const r = await http(new Jar(), u.href);
      // Registered redirect URI: the error goes back to the client, never a code or a login page.
      const back = new URL(r.location ?? 'https://none.invalid/');
      expect(back.origin + back.pathname).toBe(client.redirectUri);
      expect(back.searchParams.get('error')).toBe('invalid_request');
      expect(back.searchParams.get('code')).toBeNull();
    }
  });
});

describe('federation', () => {
  it('signs in through the upstream provider (code + PKCE + state + nonce) as <issuer>|<sub>', async () => {
    const jar = new Jar();
    const up = new Jar();
    const a = await authorizationUrl();
    const login = await follow(jar, a.url);
    expect(login.body).toContain('Sign in with Example IdP');
    const start = await http(jar, `${login.url}/federated`);
    expect(start.status).toBe(303);
    const authz = new URL(start.location ?? '');
    expect(authz.origin).toBe(upstreamIssuer);
    expect(authz.searchParams.get('code_challenge_method')).toBe('S256');
    expect(authz.searchParams.get('state')).toMatch(/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/);
    expect(authz.searchParams.get('nonce')).not.toBeNull();

    // The upstream's development login and consent forms.
    let r = await http(up, authz.href);
    expect((await http(up, r.location ?? '')).body).toContain('login');
    r = await http(up, r.location ?? '', {
      form: { prompt: 'login', login: 'upstream-user-7', password: 'x' },
    });
    r = await http(up, r.location ?? '');
    expect((await http(up, r.location ?? '')).body).toContain('consent');
    r = await http(up, r.location ?? '', { form: { prompt: 'consent' } });
    r = await http(up, r.location ?? '');
    const callback = r.location ?? '';
    expect(callback.startsWith(`${issuer}/interaction/federated-callback?`)).toBe(true);

    // Tampered state: refused, no login.
    const tampered = new URL(callback);
    tampered.searchParams.set(
      'state',
      `${tampered.searchParams.get('state')?.split('.')[0] ?? ''}.${'A'.repeat(43)}`,
    );
    const bounceBad = await http(jar, tampered.href);
    const bad = await http(jar, bounceBad.location ?? '');
    expect(bad.status).toBe(400);
    // Issue 13: the refused federated sign-in is an audit event.
    expect(signIns.filter((e) => e['event.action'] === 'federated-login')).toEqual([
      expect.objectContaining({
        'event.category': 'authentication',
        'event.outcome': 'failure',
        'event.reason': 'federation-state',
        'portcullis.client_id': client.id,
      }),
    ]);

    const bounce = await http(jar, callback);
    expect(bounce.location).toMatch(/\/interaction\/[A-Za-z0-9_-]+\/federated\/callback\?/);
    const finished = await http(jar, bounce.location ?? '');
    expect(finished.status).toBe(303);
    const consent = await follow(jar, finished.location ?? '');
    expect(consent.body).toContain('Allow access?');
    const confirmed = await http(jar, `${consent.url}/confirm`, {
      form: { csrf: csrfOf(consent.body), scope: 'items:read' },
    });
    const done = await follow(jar, confirmed.location ?? '');
    const tokens = await exchange(done.location ?? '', a);
    expect(tokens.claims()?.sub).toBe(`${upstreamIssuer}|upstream-user-7`);
    const federated = signIns.filter((e) => e['event.action'] === 'federated-login');
    expect(federated.map((e) => e['event.outcome'])).toEqual(['failure', 'success']);
    expect(federated[1]).toMatchObject({
      'event.reason': 'fed',
      'user.id': `${upstreamIssuer}|upstream-user-7`,
      'portcullis.client_id': client.id,
    });
    expect(typeof federated[1]?.['client.ip']).toBe('string');
    const text = JSON.stringify(signIns);
    for (const s of secrets) if (s !== '') expect(text.includes(s)).toBe(false);
  });
});

describe('in Chromium', () => {
  it('error pages have the sign-in look and a correlation id, never the error itself', async () => {
    const browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        `--ignore-certificate-errors-spki-list=${spki}`,
      ],
    });
    try {
      const page = await browser.newPage();
      page.setDefaultTimeout(8000);
      // The authorization server's own error (an unknown client): oidc-provider's renderError.
      const res = await page.goto(
        `${issuer}/auth?client_id=no-such-client&response_type=code&scope=openid&redirect_uri=${encodeURIComponent(`${rpOrigin}/cb`)}`,
      );
      expect(res?.status()).toBe(400);
      expect(await page.textContent('h1')).toBe('Something went wrong');
      expect(await page.textContent('main')).toMatch(/Reference: corr-[0-9a-f-]{36}/);
      expect(await page.textContent('main')).not.toMatch(/no-such-client|invalid_client/);
      // The stylesheet applied under the CSP nonce: the page is laid out as the login page is.
      expect(await page.evaluate('getComputedStyle(document.body).backgroundColor')).not.toBe(
        'rgba(0, 0, 0, 0)',
      );
      expect(await page.locator('style[nonce]').count()).toBe(1);
      await page.screenshot({ path: join(SCREENSHOTS, 'error-authorization-server.png') });
      // An interaction that does not exist (expired or forged uid): the interactions' error page.
      const gone = await page.goto(`${issuer}/interaction/no-such-interaction`);
      expect(gone?.status()).toBeGreaterThanOrEqual(400);
      expect(await page.textContent('main')).toMatch(/Reference: corr-[0-9a-f-]{36}/);
      await page.screenshot({ path: join(SCREENSHOTS, 'error-interaction.png') });
    } finally {
      await browser.close();
    }
  });

  it('login, consent, redirect to the client, code exchanged; wrong password shows the generic message', async () => {
    const browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        `--ignore-certificate-errors-spki-list=${spki}`,
      ],
    });
    try {
      const page = await browser.newPage();
      page.setDefaultTimeout(8000);
      const seen = signIns.length;
      const a = await authorizationUrl();
      await page.goto(a.url);
      await page.waitForSelector('#username');
      await page.screenshot({ path: join(SCREENSHOTS, 'login.png') });
      await page.fill('#username', 'alice');
      await page.fill('#password', 'wrong-password-in-browser');
      await Promise.all([page.waitForSelector('.error'), page.click('button.primary')]);
      expect(await page.textContent('.error')).toBe('Invalid username or password');
      // A failed login keeps the username, never the password.
      expect(await page.inputValue('#username')).toBe('alice');
      expect(await page.inputValue('#password')).toBe('');
      await page.screenshot({ path: join(SCREENSHOTS, 'login-failed.png') });
      secrets.push('wrong-password-in-browser');
      await page.fill('#password', PASSWORD);
      await Promise.all([page.waitForSelector('text=Allow access?'), page.click('button.primary')]);
      expect(await page.textContent('main')).toContain('Shop <script>alert("x")</script> & Co');
      // Each scope with the description its API's OpenAPI document gives it.
      expect(await page.textContent('label[for="scope-items:read"]')).toContain('Read your items');
      await page.screenshot({ path: join(SCREENSHOTS, 'consent.png') });
      await Promise.all([page.waitForURL(`${client.redirectUri}?**`), page.click('button.primary')]);
      expect(await page.textContent('p')).toBe('back at the client');
      const tokens = await exchange(page.url(), a);
      expect(tokens.claims()?.sub).toBe(aliceId);
      // Issue 13: the browser's failed and successful sign-in and its consent are audit events.
      expect(
        signIns
          .slice(seen)
          .map((e) => [e['event.action'], e['event.outcome'], e['event.reason'], e['user.id']]),
      ).toEqual([
        ['login', 'failure', 'bad-password', aliceId],
        ['login', 'success', 'pwd', aliceId],
        ['consent', 'success', 'all-scopes-granted', aliceId],
      ]);
      // Cookies the browser holds for the AS are Secure, HttpOnly and SameSite, on the AS's own
      // paths: none would go with a request to an API on the same origin.
      const cookies = (await page.context().cookies()).filter(
        (c) => c.domain === 'localhost' && c.name.startsWith('_'),
      );
      expect(cookies.length).toBeGreaterThan(0);
      for (const c of cookies) {
        expect(c.secure).toBe(true);
        expect(c.httpOnly).toBe(true);
        expect(c.sameSite).toBe('Lax');
        expect(c.path).not.toBe('/');
      }
      expect(cookies.filter((c) => c.name === '_session').map((c) => c.path)).toEqual(
        expect.arrayContaining(['/auth', '/session/end']),
      );
      expect(await page.context().cookies(`${issuer}/v1/items`)).toEqual([]);
    } finally {
      await browser.close();
    }
  });
});
