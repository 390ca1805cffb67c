/**
 * Issue 13: sign-in on the audit trail. Through the real gateway (HTTPS, SQLite and PostgreSQL, the
 * authorization server with its interactions), openid-client as the relying party and the login
 * pages driven over HTTP from distinct loopback sources, every interactive decision is an event
 * in the audit store with user, client, source address, outcome and reason: login success and
 * failure, throttling, second factor (right, wrong and replayed code), consent given, partial and
 * refused, an aborted sign-in, a refused (CSRF) interaction, logout (confirmed and refused) and an
 * authorization-server error. The trail and the logs never contain a password, code or token.
 */
import { join } from 'node:path';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { sql } from 'kysely';
import * as oidc from 'openid-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config/load.ts';
import { openKms } from '../src/keys/kms.ts';
import { createClient } from '../src/oauth/clients.ts';
import { base32Decode, createUsers, hotp, kmsSecretWrapper, totpStep } from '../src/oauth/users.ts';
import type { Users } from '../src/oauth/users.ts';
import { PG_URL } from './cli-harness.ts';
import { pgSchema } from './cluster-harness.ts';
import { startTestGateway } from './helpers.ts';
import type { TestGateway } from './helpers.ts';
import { Jar, createFlow, csrfOf } from './oauth-flow.ts';
import type { Flow, FlowResponse } from './oauth-flow.ts';

const PASSWORD = 'alice-signin-audit-pw-31';
const BOB_PASSWORD = 'bob-signin-audit-pw-58';
const WRONG = 'attacker-guess-signin-77';
const REDIRECT = 'https://app.example/cb';
const LOGIN = { maxFailures: 3, windowSeconds: 900, maxDelaySeconds: 300 };

let gw: TestGateway;
let issuer: string;
let users: Users;
let clientId: string;
let aliceId: string;
let bobId: string;
let bobSecret: Buffer;
const flows: Flow[] = [];
/** Every secret the tests used: passwords, TOTP codes, authorization codes, tokens. */
const secrets: string[] = [PASSWORD, BOB_PASSWORD, WRONG];
/** TOTP codes: six digits, scanned for in the string values only (numbers have digits too). */
const codes: string[] = [];

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((ok) => server.close(() => ok()));
  return port;
}

function flowFrom(localAddress: string): Flow {
  const f = createFlow(issuer, gw.p.tls.source === 'development' ? gw.p.tls.caCertPem : undefined, {
    localAddress,
  });
  flows.push(f);
  return f;
}

type Event = Record<string, unknown>;
async function events(): Promise<Event[]> {
  await gw.p.audit.flush();
  const rows = await gw.p.store.db.selectFrom('audit_events').select('event').orderBy('seq').execute();
  return rows.map((r) => JSON.parse(r.event) as Event);
}
/** The events of `action` from `ip` (sign-in events carry the source address). */
async function eventsOf(action: string, ip: string): Promise<Event[]> {
  return (await events()).filter((e) => e['event.action'] === action && e['client.ip'] === ip);
}

interface Started {
  flow: Flow;
  jar: Jar;
  page: FlowResponse & { url: string };
  verifier: string;
  state: string;
  config: oidc.Configuration;
}

/** A fresh authorization request from `ip`, up to its first page. */
async function start(ip: string, scope = 'openid items:read items:write', jar = new Jar()): Promise<Started> {
  const flow = flowFrom(ip);
  const config = await flow.discover(clientId, oidc.None());
  const verifier = oidc.randomPKCECodeVerifier();
  const state = oidc.randomState();
  const url = oidc.buildAuthorizationUrl(config, {
    redirect_uri: REDIRECT,
    scope,
    code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    state,
  });
  const page = await flow.follow(jar, url.href);
  return { flow, jar, page, verifier, state, config };
}

function login(s: Started, username: string, password: string) {
  expect(s.page.body).toContain('<h1>Sign in</h1>');
  return s.flow.http(s.jar, `${s.page.url}/login`, {
    form: { csrf: csrfOf(s.page.body), username, password },
  });
}

function currentCode(): string {
  const code = hotp(bobSecret, totpStep(Date.now()));
  codes.push(code);
  return code;
}

const schema = pgSchema('signin-audit');
const BACKENDS = [
  { name: 'sqlite', store: undefined },
  {
    name: 'postgres',
    store: () => {
      const u = new URL(PG_URL);
      u.searchParams.set('schema', schema);
      return { url: u.href };
    },
  },
];

describe.each(BACKENDS)('on $name', ({ name, store }) => {
  beforeAll(async () => {
    const port = await freePort();
    issuer = `https://localhost:${String(port)}`;
    gw = await startTestGateway(
      {
        gateway: { port, publicUrl: issuer },
        oauth: { login: LOGIN },
        ...(store === undefined ? {} : { store: store() }),
        apis: [
          { name: 'items', basePath: '/v1', openapi: 'api.yaml', upstream: { url: 'http://127.0.0.1:9' } },
        ],
      },
      {
        openapi: {
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
                    scopes: { 'items:read': 'read', 'items:write': 'write' },
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
        },
      },
    );
    expect(gw.p.store.kind).toBe(name);
    const keys = gw.p.keys;
    if (keys === undefined) throw new Error('the key manager should be running');
    // The gateway's own KMS wraps TOTP secrets: the same data directory, the same key.
    const loaded = await loadConfig(gw.configFile);
    users = createUsers({
      db: gw.p.store.db,
      wrapper: kmsSecretWrapper(openKms(loaded.config.oauth.kms, join(gw.dir, 'data')).kms),
      login: LOGIN,
      iterations: 1000,
    });
    aliceId = (await users.create({ username: 'alice', password: PASSWORD })).user.id;
    const bob = await users.create({ username: 'bob', password: BOB_PASSWORD, totp: true });
    bobId = bob.user.id;
    bobSecret = base32Decode(new URL(bob.totpUri ?? '').searchParams.get('secret') ?? '');
    const { client } = await createClient(gw.p.store.db, keys, {
      name: 'native app',
      grantTypes: ['authorization_code'],
      scope: 'openid items:read items:write',
      redirectUris: [REDIRECT],
      postLogoutRedirectUris: [],
      authMethod: 'none',
      applicationType: 'native',
    });
    clientId = client.clientId;
  }, 60_000);

  afterAll(async () => {
    for (const f of flows.splice(0)) await f.close();
    // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- beforeAll may have failed
    if (gw === undefined) return;
    // Nothing secret in the logs or anywhere in the audit trail.
    const trail = await events();
    const text = JSON.stringify(trail);
    const logs = gw.logs();
    for (const s of secrets.filter((x) => x.length > 0)) {
      expect(text.includes(s), 'a secret is in the audit trail').toBe(false);
      expect(logs.includes(s), 'a secret is in the logs').toBe(false);
    }
    const strings = trail.flatMap((e) => Object.values(e).filter((v): v is string => typeof v === 'string'));
    for (const c of codes)
      expect(
        strings.some((v) => v.includes(c)),
        'a TOTP code is in the trail',
      ).toBe(false);
    await gw.close();
  });

  describe('sign-in decisions are audit events', () => {
    it('login failure (wrong password, unknown user) and success, partial consent, token issued', async () => {
      const wrong = await start('127.0.0.4');
      expect((await login(wrong, 'alice', WRONG)).status).toBe(400);
      const unknown = await start('127.0.0.4');
      // Users type passwords into the username field: an unknown username is never recorded.
      expect((await login(unknown, `${WRONG}-as-username`, WRONG)).status).toBe(400);

      const failures = await eventsOf('login', '127.0.0.4');
      expect(failures).toHaveLength(2);
      expect(failures[0]).toMatchObject({
        'event.category': 'authentication',
        'event.outcome': 'failure',
        'event.reason': 'bad-password',
        'user.id': aliceId,
        'portcullis.client_id': clientId,
        'portcullis.listener': 'oauth',
      });
      expect(failures[1]).toMatchObject({ 'event.outcome': 'failure', 'event.reason': 'unknown-user' });
      expect(failures[1]).not.toHaveProperty('user.id');
      expect(typeof failures[0]?.['trace.id']).toBe('string');
      // The authorization server's answers carry their size too (the login page here).
      const page = (await events()).find(
        (e) => e['trace.id'] === failures[0]?.['trace.id'] && e['event.action'] === 'authorization-server',
      );
      expect(page?.['http.response.body.bytes']).toBeGreaterThan(0);

      const ok = await start('127.0.0.5');
      const afterLogin = await login(ok, 'alice', PASSWORD);
      expect(afterLogin.status).toBe(303);
      const consent = await ok.flow.follow(ok.jar, afterLogin.location ?? '');
      expect(consent.body).toContain('Allow access?');
      // Only items:read ticked: a partial consent.
      const confirmed = await ok.flow.http(ok.jar, `${consent.url}/confirm`, {
        form: { csrf: csrfOf(consent.body), scope: ['items:read'] },
      });
      expect(confirmed.status).toBe(303);
      const done = await ok.flow.follow(ok.jar, confirmed.location ?? '');
      const callback = new URL(done.location ?? '');
      expect(callback.origin + callback.pathname).toBe(REDIRECT);
      secrets.push(callback.searchParams.get('code') ?? '');
      const tokens = await oidc.authorizationCodeGrant(ok.config, callback, {
        pkceCodeVerifier: ok.verifier,
        expectedState: ok.state,
        idTokenExpected: true,
      });
      secrets.push(tokens.access_token, tokens.id_token ?? '');
      expect(tokens.scope?.split(' ')).toContain('items:read');

      expect(await eventsOf('login', '127.0.0.5')).toEqual([
        expect.objectContaining({
          'event.category': 'authentication',
          'event.outcome': 'success',
          'event.reason': 'pwd',
          'user.id': aliceId,
          'portcullis.client_id': clientId,
        }),
      ]);
      const given = await eventsOf('consent', '127.0.0.5');
      expect(given).toHaveLength(1);
      expect(given[0]).toMatchObject({
        'event.outcome': 'success',
        'event.reason': 'some-scopes-declined',
        'user.id': aliceId,
        'portcullis.client_id': clientId,
      });
      expect(given[0]?.['portcullis.scopes.granted']).toContain('items:read');
      expect(given[0]?.['portcullis.scopes.granted']).not.toContain('items:write');
      expect(given[0]?.['portcullis.scopes.required']).toContain('items:write');

      // Logout: confirmed, from the same browser session, is recorded with the account.
      const end = await ok.flow.http(ok.jar, `${issuer}/session/end`);
      expect(end.body).toContain('Sign out?');
      const xsrf = /name="xsrf" value="([^"]+)"/.exec(end.body)?.[1] ?? '';
      // A forged confirmation (wrong xsrf) is refused and recorded.
      const forged = await ok.flow.http(ok.jar, `${issuer}/session/end/confirm`, {
        form: { xsrf: 'forged', logout: 'yes' },
      });
      expect(forged.status).toBe(400);
      const out = await ok.flow.http(ok.jar, `${issuer}/session/end/confirm`, {
        form: { xsrf, logout: 'yes' },
      });
      expect([200, 303]).toContain(out.status);
      const fromAlice = (await events()).filter((e) => e['client.ip'] === '127.0.0.5');
      expect(fromAlice.filter((e) => e['event.action'] === 'logout')).toEqual([
        expect.objectContaining({
          'event.category': 'authentication',
          'event.outcome': 'success',
          'user.id': aliceId,
        }),
      ]);
      expect(
        fromAlice.filter(
          (e) =>
            e['event.action'] === 'oauth-end-session-confirm-refused' && e['event.outcome'] === 'failure',
        ),
      ).toHaveLength(1);
    });

    it('throttling: a hammering source is refused and audited; another source still signs in', async () => {
      for (let i = 0; i < LOGIN.maxFailures; i++) {
        expect((await login(await start('127.0.0.6'), 'alice', WRONG)).status).toBe(400);
      }
      // Blocked now: even the right password is refused from this source (the same generic page).
      expect((await login(await start('127.0.0.6'), 'alice', PASSWORD)).status).toBe(400);
      const throttled = await eventsOf('login-throttled', '127.0.0.6');
      expect(throttled).toHaveLength(1);
      expect(throttled[0]).toMatchObject({
        'event.category': 'rate-limit',
        'event.outcome': 'failure',
        'event.reason': 'login-throttled',
        'portcullis.client_id': clientId,
      });
      expect(throttled[0]?.['portcullis.rate_limit.retry_after']).toBeGreaterThan(0);
      expect(await eventsOf('login', '127.0.0.6')).toHaveLength(LOGIN.maxFailures);
      // The allowed case: alice elsewhere is not locked out.
      expect((await login(await start('127.0.0.8'), 'alice', PASSWORD)).status).toBe(303);
      expect(await eventsOf('login', '127.0.0.8')).toEqual([
        expect.objectContaining({ 'event.outcome': 'success' }),
      ]);
      expect(await eventsOf('login-throttled', '127.0.0.8')).toHaveLength(0);
    });

    it('second factor: wrong code, right code, refused consent, replayed code', async () => {
      const s = await start('127.0.0.7', 'openid items:read');
      const first = await login(s, 'bob', BOB_PASSWORD);
      expect(first.status).toBe(303);
      const totpPage = await s.flow.follow(s.jar, first.location ?? '');
      expect(totpPage.body).toContain('Two-step verification');
      const right = currentCode();
      const wrongCode = String((Number(right) + 1) % 1_000_000).padStart(6, '0');
      const bad = await s.flow.http(s.jar, `${totpPage.url}/totp`, {
        form: { csrf: csrfOf(totpPage.body), code: wrongCode },
      });
      expect(bad.status).toBe(400);
      const good = await s.flow.http(s.jar, `${totpPage.url}/totp`, {
        form: { csrf: csrfOf(totpPage.body), code: right },
      });
      expect(good.status).toBe(303);
      // Consent refused: bob cancels on the consent page.
      const consent = await s.flow.follow(s.jar, good.location ?? '');
      expect(consent.body).toContain('Allow access?');
      const cancelled = await s.flow.http(s.jar, `${consent.url}/abort`, {
        form: { csrf: csrfOf(consent.body) },
      });
      expect(cancelled.status).toBe(303);
      const back = await s.flow.follow(s.jar, cancelled.location ?? '');
      expect(new URL(back.location ?? '').searchParams.get('error')).toBe('access_denied');

      // The same code again, in a new sign-in: a replay.
      const again = await start('127.0.0.7', 'openid items:read');
      const first2 = await login(again, 'bob', BOB_PASSWORD);
      const totp2 = await again.flow.follow(again.jar, first2.location ?? '');
      const replay = await again.flow.http(again.jar, `${totp2.url}/totp`, {
        form: { csrf: csrfOf(totp2.body), code: right },
      });
      expect(replay.status).toBe(400);

      const fromBob = (await events()).filter((e) => e['client.ip'] === '127.0.0.7');
      const pick = (action: string) =>
        fromBob
          .filter((e) => e['event.action'] === action)
          .map((e) => [e['event.outcome'], e['event.reason']]);
      expect(pick('login-first-factor')).toEqual([
        ['success', 'second-factor-required'],
        ['success', 'second-factor-required'],
      ]);
      expect(pick('second-factor')).toEqual([
        ['failure', 'bad-code'],
        ['success', 'totp'],
        ['failure', 'replayed-code'],
      ]);
      expect(pick('login')).toEqual([['success', 'pwd+otp+mfa']]);
      expect(pick('consent')).toEqual([['failure', 'consent-refused']]);
      for (const e of fromBob.filter(
        (x) => x['portcullis.listener'] === 'oauth' && x['event.action'] !== 'authorization-server',
      )) {
        if (['second-factor', 'login', 'login-first-factor', 'consent'].includes(String(e['event.action']))) {
          expect(e).toMatchObject({ 'user.id': bobId, 'portcullis.client_id': clientId });
        }
      }
    });

    it('an aborted sign-in and a refused (cross-site) form post are recorded', async () => {
      const s = await start('127.0.0.9');
      const aborted = await s.flow.http(s.jar, `${s.page.url}/abort`, {
        form: { csrf: csrfOf(s.page.body) },
      });
      expect(aborted.status).toBe(303);
      expect(await eventsOf('interaction-abort', '127.0.0.9')).toEqual([
        expect.objectContaining({
          'event.category': 'authentication',
          'event.outcome': 'failure',
          'event.reason': 'aborted-at-login',
          'portcullis.client_id': clientId,
        }),
      ]);
      const t = await start('127.0.0.9');
      const forged = await t.flow.http(t.jar, `${t.page.url}/login`, {
        form: { csrf: 'not-the-token', username: 'alice', password: PASSWORD },
      });
      expect(forged.status).toBe(403);
      expect(await eventsOf('interaction-refused', '127.0.0.9')).toEqual([
        expect.objectContaining({ 'event.outcome': 'failure', 'event.reason': 'csrf-token' }),
      ]);
      // The password of a refused post was never checked, so no login event either.
      expect(await eventsOf('login', '127.0.0.9')).toHaveLength(0);
    });

    it('an authorization-server error is recorded (and a healthy request is not one)', async () => {
      const healthy = await start('127.0.0.10');
      expect(healthy.page.status).toBe(200);
      expect(await eventsOf('oauth-server-error', '127.0.0.10')).toHaveLength(0);
      // Break the authorization server's storage under it: the next request fails inside it.
      await sql`alter table oauth_models rename to oauth_models_away`.execute(gw.p.store.db);
      try {
        const broken = await start('127.0.0.10');
        expect(broken.page.status).toBeGreaterThanOrEqual(500);
      } finally {
        await sql`alter table oauth_models_away rename to oauth_models`.execute(gw.p.store.db);
      }
      const errors = await eventsOf('oauth-server-error', '127.0.0.10');
      expect(errors.length).toBeGreaterThanOrEqual(1);
      expect(errors[0]).toMatchObject({
        'event.category': 'authentication',
        'event.outcome': 'failure',
        'portcullis.listener': 'oauth',
      });
      expect(['server_error', 'dependency-unavailable']).toContain(errors[0]?.['event.reason']);
    });
  });
});
