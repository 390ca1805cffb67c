/**
 * Sessions, grants and tokens of end users, end to end on SQLite and PostgreSQL: openid-client as
 * the relying party against the real gateway, the authorization-code flow through the real login
 * and consent pages.
 *
 * - nothing the authorization server stores holds a code, token, session id or grant id in the
 *   clear (every table of the store is scanned);
 * - `portcullis users revoke` (a separate process) ends the user's sessions, grants and refresh
 *   tokens, and the gateway refuses the user's JWT access tokens within 1 s; audited;
 * - `users disable` does the same;
 * - RP-initiated logout ends the session.
 */
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { sql } from 'kysely';
import { createServer as createHttpsServer } from 'node:https';
import { createLocalJWKSet, decodeJwt, jwtVerify } from 'jose';
import { Agent, fetch as undiciFetch } from 'undici';
import * as oidc from 'openid-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openKms } from '../src/keys/kms.ts';
import { createClient } from '../src/oauth/clients.ts';
import { modelCodecFromKeys } from '../src/oauth/model-codec.ts';
import { createUsers, kmsSecretWrapper } from '../src/oauth/users.ts';
import { cliBackends, runPortcullis } from './cli-harness.ts';
import { ca, leaf } from './pki.ts';
import { startRecordingUpstream, startTestGateway } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';
import { authorize, createFlow, csrfOf, exchange, Jar, oauthError } from './oauth-flow.ts';
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
        operationId: 'list',
        security: [{ oauth: ['items:read'] }],
        responses: { '200': { description: 'ok' } },
      },
    },
  },
};

const REDIRECT = 'https://app.example/cb';
const LOGGED_OUT = 'https://app.example/bye';
const GENEROUS = { burst: { points: 10_000, seconds: 1 }, sustained: { points: 100_000, seconds: 60 } };
const PASSWORD = 'correct-horse-battery-42';
const REDIS_URL = process.env.PORTCULLIS_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

const { tmp, backends } = cliBackends('user-sessions');
let upstream: RecordingUpstream;
beforeAll(async () => {
  upstream = await startRecordingUpstream();
});
afterAll(async () => {
  await upstream.close();
});

async function freePort(): Promise<number> {
  const { createServer } = await import('node:net');
  const s = createServer().listen(0, '127.0.0.1');
  await new Promise((ok) => s.once('listening', ok));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((ok) => s.close(() => ok()));
  return port;
}

// A third run with Redis: the CLI then writes the shared denylist and signals running gateways,
// whose own "not revoked" answers would otherwise be reused for up to 30 s.
const variants = [
  ...backends.map((b) => ({ ...b, redis: false })),
  { name: 'sqlite-with-redis', storeUrl: () => 'sqlite:portcullis.db', redis: true },
];

describe.each(variants)('user sessions on $name', ({ name, storeUrl, redis }) => {
  let gw: TestGateway;
  let flow: Flow;
  let config: oidc.Configuration;
  const secrets: string[] = [PASSWORD];

  beforeAll(async () => {
    const port = await freePort();
    const issuer = `https://localhost:${String(port)}`;
    await mkdir(join(tmp, name), { recursive: true });
    gw = await startTestGateway(
      {
        gateway: { port, publicUrl: issuer },
        store: { url: storeUrl() },
        ...(redis
          ? { redis: { url: REDIS_URL, keyPrefix: `pc-user-sessions-${randomBytes(6).toString('hex')}:` } }
          : {}),
        oauth: { refreshTokens: { enabled: true } },
        rateLimits: { token: GENEROUS, login: GENEROUS },
        apis: [{ name: 'items', basePath: '/v1', openapi: 'api.yaml', upstream: { url: upstream.url } }],
      },
      { openapi: OPENAPI, dir: join(tmp, name) },
    );
    const cfg = gw.p.runtime().loaded.config;
    const users = createUsers({
      db: gw.p.store.db,
      wrapper: kmsSecretWrapper(openKms(cfg.oauth.kms, join(gw.dir, 'data')).kms),
      login: cfg.oauth.login,
    });
    for (const username of ['alice', 'bob', 'carol']) await users.create({ username, password: PASSWORD });
    const { client, clientSecret } = await createClient(gw.p.store.db, gw.p.keys!, {
      name: 'web',
      grantTypes: ['authorization_code'],
      scope: 'openid offline_access items:read',
      redirectUris: [REDIRECT],
      postLogoutRedirectUris: [LOGGED_OUT],
    });
    secrets.push(clientSecret ?? '');
    flow = createFlow(issuer, gw.p.tls.source === 'development' ? gw.p.tls.caCertPem : undefined);
    config = await flow.discover(client.clientId, oidc.ClientSecretBasic(clientSecret ?? ''));
  }, 60_000);

  afterAll(async () => {
    const logs = gw.logs();
    for (const s of secrets.filter((x) => x.length > 8)) expect(logs).not.toContain(s);
    await flow.close();
    await gw.close();
  });

  async function signIn(username: string, jar = new Jar(), rp: oidc.Configuration = config) {
    const a = await authorize(
      flow,
      rp,
      jar,
      { username, password: PASSWORD },
      {
        redirect_uri: REDIRECT,
        scope: 'openid offline_access items:read',
        prompt: 'consent',
      },
    );
    const code = new URL(a.callback).searchParams.get('code') ?? '';
    const tokens = await exchange(rp, a);
    secrets.push(code, tokens.access_token, tokens.refresh_token ?? '', tokens.id_token ?? '');
    return { jar, code, tokens };
  }

  /** Follows an end-session URL to the confirmation page and answers "Yes, sign me out". */
  async function confirmLogout(jar: Jar, url: string) {
    const confirm = await flow.follow(jar, url);
    expect(confirm.status).toBe(200);
    expect(confirm.body).toContain('Sign out?');
    const form = /<form[^>]*id="op.logoutForm"[^>]*action="([^"]+)"[^>]*>([\s\S]*?)<\/form>/.exec(
      confirm.body,
    );
    expect(form).not.toBeNull();
    const fields = Object.fromEntries(
      [...(form?.[2] ?? '').matchAll(/<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"/g)].map((m) => [
        m[1],
        m[2],
      ]),
    ) as Record<string, string>;
    const done = await flow.http(jar, new URL(form?.[1] ?? '', confirm.url).href, {
      form: { ...fields, logout: 'yes' },
    });
    expect(done.status).toBe(303);
    return done;
  }

  const call = async (token: string) =>
    (await gw.request('/v1/items', { headers: { authorization: `Bearer ${token}` } })).status;

  const cli = (...args: string[]) =>
    runPortcullis([...args, '--config', gw.configFile, '--data-dir', join(gw.dir, 'data')]);

  async function auditActions(): Promise<Record<string, unknown>[]> {
    await gw.p.audit.flush();
    const rows = await gw.p.store.db.selectFrom('audit_events').select('event').orderBy('seq').execute();
    return rows.map((r) => JSON.parse(r.event) as Record<string, unknown>);
  }

  it('stores no code, token, session id or grant id in the clear, in any table', async () => {
    const { jar, code, tokens } = await signIn('alice');
    const session = [...jar.cookies].filter(([k]) => k.startsWith('_session')).map(([, v]) => v);
    expect(session.length).toBeGreaterThan(0);
    // The identifiers inside the sealed payloads (grant ids, session uids, sids, jtis).
    const codec = modelCodecFromKeys(gw.p.keys!);
    const rows = await gw.p.store.db.selectFrom('oauth_models').selectAll().execute();
    const ids = new Set<string>();
    const collect = (v: unknown, key = ''): void => {
      if (typeof v === 'string' && ['jti', 'grantId', 'uid', 'sid', 'sessionUid', 'accountId'].includes(key))
        ids.add(v);
      else if (v !== null && typeof v === 'object') for (const [k, x] of Object.entries(v)) collect(x, k);
    };
    for (const row of rows) collect(codec.open(row.model, row.id, row.payload));
    expect([...ids].some((v) => v === decodeJwt(tokens.access_token).sub)).toBe(true);
    const models = new Set(rows.map((r) => r.model));
    for (const m of ['Session', 'Grant', 'AuthorizationCode', 'RefreshToken']) expect(models).toContain(m);
    // The account id (the `sub`) is no secret: it is the users table's key.
    ids.delete(String(decodeJwt(tokens.access_token).sub));
    const secretValues = [code, tokens.refresh_token ?? '', ...session, ...ids].filter((v) => v.length >= 8);
    expect(secretValues.length).toBeGreaterThan(6);
    // Every table, every column, as the database returns it.
    // Only this store's tables (on PostgreSQL, its own schema; other tests use other schemas).
    const storeUrl = gw.p.runtime().loaded.config.store.url;
    const schema = storeUrl.startsWith('postgres') ? new URL(storeUrl).searchParams.get('schema') : null;
    const tables = (await gw.p.store.db.introspection.getTables()).filter(
      (t) => schema === null || t.schema === schema,
    );
    expect(tables.some((t) => t.name === 'oauth_models')).toBe(true);
    let scanned = 0;
    for (const table of tables) {
      const all = await sql<
        Record<string, unknown>
      >`select * from ${schema === null ? sql.table(table.name) : sql.id(schema, table.name)}`.execute(
        gw.p.store.db,
      );
      const dump = JSON.stringify(all.rows);
      scanned += all.rows.length;
      for (const value of secretValues)
        expect(dump, `${table.name} holds a raw identifier`).not.toContain(value);
    }
    expect(scanned).toBeGreaterThan(rows.length);
  });

  it('`users revoke` ends sessions, grants and refresh tokens; the gateway refuses the access token within 1 s', async () => {
    const alice = await signIn('alice');
    const aliceElsewhere = await signIn('alice'); // a second browser: a second session and grant
    const bob = await signIn('bob');
    expect(await call(alice.tokens.access_token)).toBe(200); // also fills the gateway's revocation cache
    expect(await call(bob.tokens.access_token)).toBe(200);
    const run = await cli('users', 'revoke', 'alice', '--json');
    const done = Date.now();
    expect(run.code, run.stderr).toBe(0);
    const out = JSON.parse(run.stdout) as { username: string; revoked: Record<string, number> };
    expect(out.username).toBe('alice');
    expect(out.revoked.sessions).toBeGreaterThanOrEqual(2);
    expect(out.revoked.grants).toBeGreaterThanOrEqual(2);
    expect(out.revoked.accessTokens).toBeGreaterThanOrEqual(2);
    let status = 200;
    while (status === 200 && Date.now() - done < 3_000) {
      status = await call(alice.tokens.access_token);
      if (status === 200) await new Promise((r) => setTimeout(r, 50));
    }
    const elapsed = Date.now() - done;
    expect(status).toBe(401);
    expect(elapsed).toBeLessThan(1_000);
    expect(await call(aliceElsewhere.tokens.access_token)).toBe(401);
    // Their refresh token is dead; another user is untouched.
    expect(await oauthError(oidc.refreshTokenGrant(config, alice.tokens.refresh_token ?? ''))).toBe(
      'invalid_grant',
    );
    expect(await call(bob.tokens.access_token)).toBe(200);
    // Their browser session is gone: a new authorization asks for the login again.
    const page = await flow.follow(
      alice.jar,
      oidc.buildAuthorizationUrl(config, {
        redirect_uri: REDIRECT,
        scope: 'openid',
        code_challenge: await oidc.calculatePKCECodeChallenge(oidc.randomPKCECodeVerifier()),
        code_challenge_method: 'S256',
      }).href,
    );
    expect(page.body).toContain('<h1>Sign in</h1>');
    // The account itself stays usable.
    const again = await signIn('alice');
    expect(await call(again.tokens.access_token)).toBe(200);
    const events = await auditActions();
    expect(events.filter((e) => e['event.action'] === 'user-sessions-revoke')).toEqual([
      expect.objectContaining({
        'event.outcome': 'success',
        'portcullis.credential.type': 'user',
        'user.id': decodeJwt(alice.tokens.access_token).sub,
      }),
    ]);
    expect(
      events.some((e) => e['event.reason'] === 'token-revoked' && e['http.response.status_code'] === 401),
    ).toBe(true);
    // An unknown user: refused, and the failure audited.
    const unknown = await cli('users', 'revoke', 'nobody');
    expect(unknown.code).not.toBe(0);
    expect(
      (await auditActions()).filter((e) => e['event.action'] === 'user-sessions-revoke').at(-1),
    ).toMatchObject({
      'event.outcome': 'failure',
    });
  }, 60_000);

  it('`users disable` ends the user’s sessions and tokens too', async () => {
    const carol = await signIn('carol');
    expect(await call(carol.tokens.access_token)).toBe(200);
    const run = await cli('users', 'disable', '--username', 'carol', '--json');
    const done = Date.now();
    expect(run.code, run.stderr).toBe(0);
    expect(
      (JSON.parse(run.stdout) as { revoked: { accessTokens: number } }).revoked.accessTokens,
    ).toBeGreaterThanOrEqual(1);
    let status = 200;
    while (status === 200 && Date.now() - done < 3_000) {
      status = await call(carol.tokens.access_token);
      if (status === 200) await new Promise((r) => setTimeout(r, 50));
    }
    expect(status).toBe(401);
    expect(Date.now() - done).toBeLessThan(1_000);
    expect(await oauthError(oidc.refreshTokenGrant(config, carol.tokens.refresh_token ?? ''))).toBe(
      'invalid_grant',
    );
  }, 60_000);

  it('RP-initiated logout ends the session (openid-client builds the request)', async () => {
    const { jar, tokens } = await signIn('bob');
    const codec = modelCodecFromKeys(gw.p.keys!);
    const sessionRow = () =>
      gw.p.store.db
        .selectFrom('oauth_models')
        .select('id')
        .where('model', '=', 'Session')
        .where('id', '=', codec.hash(jar.cookies.get('_session') ?? ''))
        .execute();
    expect(await sessionRow()).toHaveLength(1);
    const url = oidc.buildEndSessionUrl(config, {
      id_token_hint: tokens.id_token ?? '',
      post_logout_redirect_uri: LOGGED_OUT,
      state: 'st-1',
    });
    const done = await confirmLogout(jar, url.href);
    expect(done.location).toBe(`${LOGGED_OUT}?state=st-1`);
    expect(await sessionRow()).toEqual([]);
    const page = await flow.follow(
      jar,
      oidc.buildAuthorizationUrl(config, {
        redirect_uri: REDIRECT,
        scope: 'openid',
        code_challenge: await oidc.calculatePKCECodeChallenge(oidc.randomPKCECodeVerifier()),
        code_challenge_method: 'S256',
      }).href,
    );
    expect(page.body).toContain('<h1>Sign in</h1>');
    expect(csrfOf(page.body)).toBeTruthy();
  }, 60_000);

  it('back-channel logout: the RP receives a logout token whose signature and claims it verifies', async () => {
    // The RP's receiver: https with its own CA, on loopback.
    const rpCa = await ca('CN=RP CA');
    const rpCert = await leaf(rpCa, 'localhost', {
      eku: ['1.3.6.1.5.5.7.3.1'], // serverAuth
      san: [{ type: 'dns', value: 'localhost' }],
    });
    const received: string[] = [];
    const receiver = createHttpsServer({ cert: rpCert.pem, key: rpCert.keyPem }, (req, res) => {
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (c: string) => (body += c));
      req.on('end', () => {
        const form = new URLSearchParams(body);
        if (req.method === 'POST' && req.url === '/backchannel' && form.has('logout_token')) {
          received.push(form.get('logout_token') ?? '');
          res.writeHead(200, { 'cache-control': 'no-store' }).end();
        } else res.writeHead(400).end();
      });
    });
    await new Promise<void>((ok) => receiver.listen(0, '127.0.0.1', ok));
    const receiverUrl = `https://localhost:${String((receiver.address() as { port: number }).port)}/backchannel`;
    // oidc-provider posts through globalThis.fetch with an SSRF guard that refuses loopback; for
    // this receiver only, the test sends the request itself, trusting the RP's CA.
    const rpAgent = new Agent({ connect: { ca: rpCa.pem } });
    const original = globalThis.fetch;
    const target = (url: string | URL | Request): string =>
      typeof url === 'string' ? url : url instanceof URL ? url.href : url.url;
    globalThis.fetch = async (url: string | URL | Request, init?: RequestInit): Promise<Response> => {
      if (target(url) !== receiverUrl) return original(url, init);
      const res = await undiciFetch(target(url), {
        method: init?.method ?? 'POST',
        headers: Object.fromEntries(new Headers(init?.headers).entries()),
        body: init?.body instanceof URLSearchParams ? init.body.toString() : null,
        dispatcher: rpAgent,
      });
      return new Response(await res.arrayBuffer(), { status: res.status });
    };
    try {
      const { client, clientSecret } = await createClient(gw.p.store.db, gw.p.keys!, {
        name: 'rp-with-backchannel',
        grantTypes: ['authorization_code'],
        scope: 'openid offline_access items:read',
        redirectUris: [REDIRECT],
        postLogoutRedirectUris: [LOGGED_OUT],
        backchannelLogoutUri: receiverUrl,
      });
      secrets.push(clientSecret ?? '');
      const rp = await flow.discover(client.clientId, oidc.ClientSecretBasic(clientSecret ?? ''));
      expect(rp.serverMetadata().backchannel_logout_supported).toBe(true);
      const { jar, tokens } = await signIn('bob', new Jar(), rp);
      const idToken = decodeJwt(tokens.id_token ?? '');
      expect(typeof idToken.sid).toBe('string');
      await confirmLogout(
        jar,
        oidc.buildEndSessionUrl(rp, {
          id_token_hint: tokens.id_token ?? '',
          post_logout_redirect_uri: LOGGED_OUT,
        }).href,
      );
      for (let i = 0; i < 50 && received.length === 0; i++) await new Promise((r) => setTimeout(r, 100));
      expect(received).toHaveLength(1);
      const logoutToken = received[0] ?? '';
      secrets.push(logoutToken);
      // What the RP checks (OpenID Connect Back-Channel Logout 1.0 §2.6).
      const jwks = createLocalJWKSet(gw.p.keys!.publicJwks());
      const { payload, protectedHeader } = await jwtVerify(logoutToken, jwks, {
        issuer: rp.serverMetadata().issuer,
        audience: client.clientId,
        algorithms: ['ES256', 'PS256', 'EdDSA'],
        maxTokenAge: '2 minutes',
      });
      expect(protectedHeader.typ).toBe('logout+jwt');
      expect(payload.sub).toBe(idToken.sub);
      expect(payload.sid).toBe(idToken.sid);
      expect(payload.events).toEqual({ 'http://schemas.openid.net/event/backchannel-logout': {} });
      expect(typeof payload.jti).toBe('string');
      expect(payload.nonce).toBeUndefined();
      // A token altered in transit fails the RP's check.
      const [h, p, sig] = logoutToken.split('.');
      const forged = `${h ?? ''}.${Buffer.from(JSON.stringify({ ...payload, sub: 'someone-else' })).toString('base64url')}.${sig ?? ''}`;
      expect(p).not.toBe(forged.split('.')[1]);
      await expect(
        jwtVerify(forged, jwks, { issuer: rp.serverMetadata().issuer, audience: client.clientId }),
      ).rejects.toThrow();
      // Addressed to this client only: another audience is refused.
      await expect(
        jwtVerify(logoutToken, jwks, { issuer: rp.serverMetadata().issuer, audience: 'pc_other' }),
      ).rejects.toThrow();
    } finally {
      globalThis.fetch = original;
      await rpAgent.close();
      await new Promise<void>((ok) => receiver.close(() => ok()));
    }
  }, 60_000);
});
