/**
 * The whole front door in a real browser: a user created with the real CLI signs in through the
 * built-in authorization server's login and consent pages in Chromium, the client exchanges the
 * code with openid-client, and the access token then calls the demo patients API through the
 * gateway, where the owner binding refuses someone else's record.
 */
import { spawn } from 'node:child_process';
import { createHash, X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { createServer as createNetServer } from 'node:net';
import { join } from 'node:path';
import * as oidc from 'openid-client';
import { chromium } from 'playwright-core';
import { Agent, fetch as undiciFetch } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { startDemoUpstream } from '../examples/demo-upstream/server.ts';
import type { DemoUpstream } from '../examples/demo-upstream/server.ts';
import { createClient } from '../src/oauth/clients.ts';
import { startTestGateway } from './helpers.ts';
import type { TestGateway } from './helpers.ts';

const ROOT = new URL('..', import.meta.url).pathname;
const PASSWORD = 'correct horse battery staple 42';

let demo: DemoUpstream;
let gw: TestGateway;
let issuer: string;
let agent: Agent;
let rpServer: ReturnType<typeof createServer>;
let redirectUri: string;
let rpConfig: oidc.Configuration;
let userId: string;
const secrets: string[] = [PASSWORD];

async function freePort(): Promise<number> {
  const s = createNetServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((ok) => s.close(() => ok()));
  return port;
}

/** `portcullis users create` as a user would run it, the password on stdin. */
async function createUser(username: string): Promise<string> {
  const child = spawn(
    'sh',
    [
      join(ROOT, 'scripts/node24.sh'),
      join(ROOT, 'src/cli/main.ts'),
      'users',
      'create',
      '--username',
      username,
      '--config',
      gw.configFile,
      '--data-dir',
      join(gw.dir, 'data'),
      '--json',
    ],
    { stdio: ['pipe', 'pipe', 'pipe'] },
  );
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString('utf8')));
  child.stderr.on('data', (c: Buffer) => (err += c.toString('utf8')));
  child.stdin.end(`${PASSWORD}\n`);
  const [code] = (await once(child, 'close')) as [number];
  expect(err).not.toContain(PASSWORD);
  expect(out).not.toContain(PASSWORD);
  if (code !== 0) throw new Error(`users create failed: ${err}`);
  return (JSON.parse(out) as { id: string }).id;
}

beforeAll(async () => {
  const port = await freePort();
  issuer = `https://localhost:${String(port)}`;
  // The demo verifies the gateway's caller assertion (audience: its own origin, as the proxy
  // addresses it) with the gateway's keys, which exist once the gateway has started.
  const demoPort = await freePort();
  demo = await startDemoUpstream({
    port: demoPort,
    identity: {
      issuer,
      audience: `http://127.0.0.1:${String(demoPort)}`,
      jwks: () => {
        if (gw.p.keys === undefined) throw new Error('the key manager should be running');
        return gw.p.keys.publicJwks();
      },
    },
  });
  const openapi = parseYaml(
    readFileSync(join(ROOT, 'examples/demo-upstream/openapi.yaml'), 'utf8'),
  ) as unknown;
  gw = await startTestGateway(
    {
      gateway: { port, publicUrl: issuer },
      apis: [{ name: 'patients', openapi: 'api.yaml', basePath: '/v1', upstream: { url: demo.url } }],
    },
    { openapi },
  );
  const ca = gw.p.tls.source === 'development' ? gw.p.tls.caCertPem : undefined;
  agent = new Agent({ connect: { ca } });

  // The client's redirect target: a small HTTPS page on another origin, with the dev certificate.
  rpServer = createServer({ cert: gw.p.tls.certPem, key: gw.p.tls.keyPem }, (_q, s) => {
    s.setHeader('content-type', 'text/html');
    s.end('<!doctype html><title>Client</title><p>back at the client</p>');
  });
  rpServer.listen(0, '127.0.0.1');
  await once(rpServer, 'listening');
  redirectUri = `https://localhost:${String((rpServer.address() as AddressInfo).port)}/callback`;

  const keys = gw.p.keys;
  if (keys === undefined) throw new Error('the key manager should be running');
  const { client, clientSecret } = await createClient(gw.p.store.db, keys, {
    name: 'Patient portal',
    grantTypes: ['authorization_code'],
    scope: 'openid patients:read',
    redirectUris: [redirectUri],
  });
  secrets.push(clientSecret ?? '');
  const fetchFn = async (url: string | URL | Request, init?: RequestInit) => {
    const res = await undiciFetch(url as string, { ...(init as object), dispatcher: agent });
    return new Response(res.body as ReadableStream<Uint8Array> | null, {
      status: res.status,
      headers: Object.fromEntries(res.headers),
    });
  };
  rpConfig = await oidc.discovery(
    new URL(issuer),
    client.clientId,
    undefined,
    oidc.ClientSecretBasic(clientSecret ?? ''),
    { [oidc.customFetch]: fetchFn },
  );
  rpConfig[oidc.customFetch] = fetchFn;
  userId = await createUser('alice');
}, 90_000);

afterAll(async () => {
  const logs = gw.logs();
  for (const s of secrets.filter((x) => x !== '')) expect(logs).not.toContain(s);
  await gw.close();
  await agent.close();
  await demo.close();
  await new Promise<void>((ok) => rpServer.close(() => ok()));
});

describe('sign in with a browser, then call the API through the gateway', () => {
  it('login, consent, code, token, API call; wrong password first; another record is refused', async () => {
    const spki = createHash('sha256')
      .update(new X509Certificate(gw.p.tls.certPem).publicKey.export({ type: 'spki', format: 'der' }))
      .digest('base64');
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
      const verifier = oidc.randomPKCECodeVerifier();
      const state = oidc.randomState();
      const nonce = oidc.randomNonce();
      const url = oidc.buildAuthorizationUrl(rpConfig, {
        redirect_uri: redirectUri,
        scope: 'openid patients:read',
        code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
        code_challenge_method: 'S256',
        state,
        nonce,
      });
      const page = await browser.newPage();
      page.setDefaultTimeout(10_000);
      await page.goto(url.href);
      await page.waitForSelector('#username');
      // The login page carries the gateway's security headers and a nonce-only CSP.
      await page.fill('#username', 'alice');
      await page.fill('#password', 'not-the-password-123');
      secrets.push('not-the-password-123');
      await Promise.all([page.waitForSelector('.error'), page.click('button.primary')]);
      expect(await page.textContent('.error')).toBe('Invalid username or password');
      await page.fill('#username', 'alice');
      await page.fill('#password', PASSWORD);
      await Promise.all([page.waitForSelector('text=Allow access?'), page.click('button.primary')]);
      expect(await page.textContent('main')).toContain('Patient portal');
      await Promise.all([page.waitForURL(`${redirectUri}?**`), page.click('button.primary')]);
      expect(await page.textContent('p')).toBe('back at the client');

      const tokens = await oidc.authorizationCodeGrant(rpConfig, new URL(page.url()), {
        pkceCodeVerifier: verifier,
        expectedState: state,
        expectedNonce: nonce,
        idTokenExpected: true,
      });
      secrets.push(tokens.access_token, tokens.id_token ?? '');
      expect(tokens.claims()?.sub).toBe(userId);

      // The token calls the demo API through the gateway.
      const auth = { authorization: `Bearer ${tokens.access_token}` };
      const list = await gw.request('/v1/patients?limit=5', { headers: auth });
      expect(list.status).toBe(200);
      // Owner-bound like the record: alice has no patient record, so she lists none.
      expect(JSON.parse(list.body)).toEqual({ items: [], nextCursor: null });
      const search = await gw.request('/v1/patients/search?name=an', { headers: auth });
      expect(search.status).toBe(200);
      expect(JSON.parse(search.body)).toEqual({ items: [] });
      // That passed the demo's own check of the gateway's caller assertion; without one it refuses.
      expect((await fetch(`${demo.url}/patients?limit=5`)).status).toBe(401);
      // Someone else's record: refused by the owner binding before the upstream sees it.
      const other = await gw.request('/v1/patients/pat_0h52dgzb28m6', { headers: auth });
      expect(other.status).toBe(403);
      // Without the token: 401.
      expect((await gw.request('/v1/patients')).status).toBe(401);
    } finally {
      await browser.close();
    }
  });

  it('the pages with an inline script (form_post, logout without a session) run under the CSP', async () => {
    const browser = await launch();
    try {
      const page = await browser.newPage();
      page.setDefaultTimeout(10_000);
      // Logout without a session: oidc-provider's self-submitting form, its script hash allowed.
      const end = await page.goto(`${issuer}/session/end`);
      expect(end?.headers()['content-security-policy']).toMatch(
        /^default-src 'none'; ?script-src 'nonce-[A-Za-z0-9_-]{24}' 'sha256-[A-Za-z0-9+/=]+'; ?style-src 'nonce-/,
      );
      await page.waitForSelector('text=You are signed out');

      // response_mode=form_post: the answer (here an error: prompt=none without a session) is
      // posted to the client by the page's script.
      const state = oidc.randomState();
      const url = oidc.buildAuthorizationUrl(rpConfig, {
        redirect_uri: redirectUri,
        scope: 'openid patients:read',
        code_challenge: await oidc.calculatePKCECodeChallenge(oidc.randomPKCECodeVerifier()),
        code_challenge_method: 'S256',
        state,
        response_mode: 'form_post',
        prompt: 'none',
      });
      const posted = page.waitForRequest((r) => r.url() === redirectUri && r.method() === 'POST');
      await page.goto(url.href);
      const form = new URLSearchParams((await posted).postData() ?? '');
      expect(form.get('state')).toBe(state);
      expect(form.get('error')).toEqual(expect.any(String));
    } finally {
      await browser.close();
    }
  });

  it('signed in, the logout confirmation page shows and signs out', async () => {
    const browser = await launch();
    try {
      const page = await browser.newPage();
      page.setDefaultTimeout(10_000);
      const authorize = async () =>
        oidc
          .buildAuthorizationUrl(rpConfig, {
            redirect_uri: redirectUri,
            scope: 'openid patients:read',
            code_challenge: await oidc.calculatePKCECodeChallenge(oidc.randomPKCECodeVerifier()),
            code_challenge_method: 'S256',
            state: oidc.randomState(),
          })
          .toString();
      await page.goto(await authorize());
      await page.fill('#username', 'alice');
      await page.fill('#password', PASSWORD);
      await Promise.all([page.waitForSelector('text=Allow access?'), page.click('button.primary')]);
      await Promise.all([page.waitForURL(`${redirectUri}?**`), page.click('button.primary')]);

      await page.goto(`${issuer}/session/end`);
      await page.waitForSelector('text=Sign out?');
      expect(await page.isVisible('button[name="logout"]')).toBe(true);
      await Promise.all([
        page.waitForSelector('text=You are signed out'),
        page.click('button[name="logout"]'),
      ]);
      // The session is gone: the next authorization asks for a login again.
      await page.goto(await authorize());
      await page.waitForSelector('#username');
    } finally {
      await browser.close();
    }
  });
});

function launch() {
  const spki = createHash('sha256')
    .update(new X509Certificate(gw.p.tls.certPem).publicKey.export({ type: 'spki', format: 'der' }))
    .digest('base64');
  return chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      `--ignore-certificate-errors-spki-list=${spki}`,
    ],
  });
}
