/**
 * Login throttling is not a lockout (NIST SP 800-63B §5.2.2): over real HTTPS through the gateway,
 * an attacker at 127.0.0.2 hammering alice's account gets its own source throttled, while alice at
 * 127.0.0.3 still signs in with the right password. openid-client is the relying party.
 */
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import * as oidc from 'openid-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLocalKms } from '../src/keys/kms.ts';
import { createClient } from '../src/oauth/clients.ts';
import { createUsers, kmsSecretWrapper } from '../src/oauth/users.ts';
import type { Users } from '../src/oauth/users.ts';
import { startTestGateway } from './helpers.ts';
import type { TestGateway } from './helpers.ts';
import { Jar, createFlow, csrfOf } from './oauth-flow.ts';
import type { Flow } from './oauth-flow.ts';

const PASSWORD = 'alice-right-password-42';
const WRONG = 'attacker-guess-000000';
const REDIRECT = 'https://app.example/cb';
const LOGIN = { maxFailures: 3, windowSeconds: 900, maxDelaySeconds: 300 };

let gw: TestGateway;
let issuer: string;
let users: Users;
let clientId: string;
const flows: Flow[] = [];

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

/** Opens a fresh authorization request from `flow`'s address and tries one login there. */
async function tryLogin(flow: Flow, password: string) {
  const config = await flow.discover(clientId, oidc.None());
  const url = oidc.buildAuthorizationUrl(config, {
    redirect_uri: REDIRECT,
    scope: 'openid items:read',
    code_challenge: await oidc.calculatePKCECodeChallenge(oidc.randomPKCECodeVerifier()),
    code_challenge_method: 'S256',
    state: oidc.randomState(),
  });
  const jar = new Jar();
  const page = await flow.follow(jar, url.href);
  expect(page.body).toContain('<h1>Sign in</h1>');
  return flow.http(jar, `${page.url}/login`, {
    form: { csrf: csrfOf(page.body), username: 'alice', password },
  });
}

beforeAll(async () => {
  const port = await freePort();
  issuer = `https://localhost:${String(port)}`;
  gw = await startTestGateway(
    {
      gateway: { port, publicUrl: issuer },
      oauth: { login: LOGIN },
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
      },
    },
  );
  const keys = gw.p.keys;
  if (keys === undefined) throw new Error('the key manager should be running');
  // The same directory the gateway reads (the TOTP wrapper is unused: alice has no second factor).
  users = createUsers({
    db: gw.p.store.db,
    wrapper: kmsSecretWrapper(createLocalKms(randomBytes(32))),
    login: LOGIN,
    iterations: 1000,
  });
  await users.create({ username: 'alice', password: PASSWORD });
  const { client } = await createClient(gw.p.store.db, keys, {
    name: 'native app',
    grantTypes: ['authorization_code'],
    scope: 'openid items:read',
    redirectUris: [REDIRECT],
    authMethod: 'none',
    applicationType: 'native',
  });
  clientId = client.clientId;
}, 60_000);

afterAll(async () => {
  for (const f of flows) await f.close();
  const logs = gw.logs();
  expect(logs).not.toContain(PASSWORD);
  expect(logs).not.toContain(WRONG);
  await gw.close();
});

describe('login throttling per source, not per account', () => {
  it('an attacker elsewhere cannot lock alice out; the attacker’s own source is throttled', async () => {
    const attacker = flowFrom('127.0.0.2');
    const alice = flowFrom('127.0.0.3');
    for (let i = 0; i < LOGIN.maxFailures + 2; i++) {
      const r = await tryLogin(attacker, WRONG);
      expect(r.status).toBe(400);
      expect(r.body).toContain('Invalid username or password');
    }
    // The attacker's source is blocked: even the right password fails there, generically.
    expect(await users.throttledFor({ username: 'alice', ip: '127.0.0.2' })).toBeGreaterThan(0);
    const blocked = await tryLogin(attacker, PASSWORD);
    expect(blocked.status).toBe(400);
    expect(blocked.body).toContain('Invalid username or password');
    // The account is only slowed (capped), never blocked, for a clean source.
    expect(await users.throttledFor({ username: 'alice', ip: '127.0.0.3' })).toBe(0);
    expect(await users.accountDelayMs('alice')).toBeGreaterThan(0);
    // Alice, from her own address, with the right password: signed in (on to consent).
    const ok = await tryLogin(alice, PASSWORD);
    expect(ok.status).toBe(303);
    expect(ok.location).toMatch(new RegExp(`^${issuer}/auth/`));
    // After her success the account count starts again; the attacker's source stays blocked.
    expect(await users.accountDelayMs('alice')).toBe(0);
    expect(await users.throttledFor({ username: 'alice', ip: '127.0.0.2' })).toBeGreaterThan(0);
  }, 60_000);

  it('the source is throttled across usernames too (password spraying)', async () => {
    const sprayer = flowFrom('127.0.0.4');
    const config = await sprayer.discover(clientId, oidc.None());
    for (const name of ['u1', 'u2', 'u3']) {
      const url = oidc.buildAuthorizationUrl(config, {
        redirect_uri: REDIRECT,
        scope: 'openid',
        code_challenge: await oidc.calculatePKCECodeChallenge(oidc.randomPKCECodeVerifier()),
        code_challenge_method: 'S256',
      });
      const jar = new Jar();
      const page = await sprayer.follow(jar, url.href);
      const r = await sprayer.http(jar, `${page.url}/login`, {
        form: { csrf: csrfOf(page.body), username: name, password: WRONG },
      });
      expect(r.status).toBe(400);
    }
    expect(await users.throttledFor({ username: 'alice', ip: '127.0.0.4' })).toBeGreaterThan(0);
    expect((await tryLogin(sprayer, PASSWORD)).status).toBe(400);
  }, 60_000);
});
