/**
 * The admin API (`/admin/v1/…`) through the real admin listener over TLS, with both ways in:
 * access tokens from the built-in authorization server (openid-client, the real login with TOTP)
 * and client certificates mapped to an admin principal. For each resource the allowed role
 * passes and a wrong role is refused (403); no credential is a 401; every refusal is audited
 * with the administrator, the role and the source. Separation of duties has a test per rule.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { decodeJwt } from 'jose';
import * as oidc from 'openid-client';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PERMISSIONS } from '../src/admin/roles.ts';
import { maskSecrets, MASK } from '../src/admin/service/reads.ts';
import { openKms } from '../src/keys/kms.ts';
import { createClient } from '../src/oauth/clients.ts';
import { base32Decode, createUsers, hotp, kmsSecretWrapper, totpStep } from '../src/oauth/users.ts';
import type { Users } from '../src/oauth/users.ts';
import { freePort } from './admin-harness.ts';
import { startRecordingUpstream, startTestGateway, TEST_OPENAPI } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';
import { createFlow, csrfOf, Jar } from './oauth-flow.ts';
import type { Flow } from './oauth-flow.ts';
import { ca, leaf } from './pki.ts';
import type { Issued } from './pki.ts';

const REDIRECT = 'https://console.example/cb';
const PASSWORD = 'admin-correct-horse-42';

let upstream: RecordingUpstream;
let gw: TestGateway;
let flow: Flow;
let rp: oidc.Configuration;
let users: Users;
let admin: string;
let issuer: string;
const secrets = new Map<string, Buffer>();
const tokens = new Map<string, string>();
const certs: Record<string, Issued> = {};
let root: Issued;

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  root = await ca('Admin Test CA');
  const other = await ca('Other CA');
  certs.auditor = await leaf(root, 'automation-auditor');
  certs.custodian = await leaf(root, 'automation-keys');
  certs.both = await leaf(root, 'automation-both');
  certs.unmapped = await leaf(root, 'nobody');
  certs.foreign = await leaf(other, 'automation-auditor');
  const port = await freePort();
  issuer = `https://localhost:${String(port)}`;
  const dir = join(
    await import('node:os').then((os) => os.tmpdir()),
    `portcullis-admin-api-${String(Date.now())}`,
  );
  await import('node:fs/promises').then((fs) => fs.mkdir(dir, { recursive: true }));
  await writeFile(join(dir, 'admin-ca.pem'), root.pem);
  gw = await startTestGateway(
    {
      gateway: { port, publicUrl: issuer },
      admin: {
        clientCertificates: {
          caFiles: ['admin-ca.pem'],
          principals: [
            { name: 'ci-auditor', subject: 'automation-auditor', roles: ['auditor'] },
            { name: 'vault-sync', subject: 'automation-keys', roles: ['key-custodian'] },
            { name: 'overloaded', subject: 'automation-both', roles: ['security-officer', 'key-custodian'] },
          ],
        },
      },
      roles: { clinician: { scopes: ['items:read'] } },
      apis: [
        {
          name: 'items',
          owner: 'team-items',
          dataClassification: 'confidential',
          environment: 'production',
          basePath: '/v1',
          openapi: 'api.yaml',
          upstream: { url: upstream.url },
        },
      ],
    },
    { openapi: TEST_OPENAPI, dir },
  );
  if (gw.p.adminUrl === undefined) throw new Error('no admin listener');
  admin = gw.p.adminUrl;
  const config = gw.p.runtime().loaded.config;
  users = createUsers({
    db: gw.p.store.db,
    wrapper: kmsSecretWrapper(openKms(config.oauth.kms, join(gw.dir, 'data')).kms),
    login: config.oauth.login,
    iterations: 1000,
  });
  const { grantRole } = await import('../src/admin/service/roles.ts');
  const { cliActor } = await import('../src/admin/actor.ts');
  const svc = { db: gw.p.store.db, config: () => gw.p.runtime().loaded.config, audit: gw.p.audit };
  for (const [name, role, totp] of [
    ['sec', 'security-officer', true],
    ['oper', 'operator', true],
    ['keys', 'key-custodian', true],
    ['nototp', 'auditor', false],
    ['plain', undefined, true],
  ] as const) {
    const created = await users.create({ username: name, password: PASSWORD, totp });
    if (created.totpUri !== undefined) {
      secrets.set(name, base32Decode(new URL(created.totpUri).searchParams.get('secret') ?? ''));
    }
    if (role !== undefined) await grantRole(svc, cliActor(), { username: name, role });
  }
  const keys = gw.p.keys;
  if (keys === undefined) throw new Error('no key manager');
  const { client, clientSecret } = await createClient(gw.p.store.db, keys, {
    name: 'admin console',
    grantTypes: ['authorization_code'],
    scope: 'openid admin items:read',
    redirectUris: [REDIRECT],
  });
  flow = createFlow(issuer, gw.p.tls.source === 'development' ? gw.p.tls.caCertPem : undefined);
  rp = await flow.discover(client.clientId, oidc.ClientSecretBasic(clientSecret ?? ''));
  for (const name of ['sec', 'oper', 'keys', 'nototp', 'plain']) tokens.set(name, await signIn(name));
}, 120_000);

afterAll(async () => {
  await flow.close();
  await gw.close();
  await upstream.close();
});

/** Signs `username` in through the real login (and TOTP page) and returns an admin-API token. */
async function signIn(username: string): Promise<string> {
  const jar = new Jar();
  const verifier = oidc.randomPKCECodeVerifier();
  const state = oidc.randomState();
  const url = oidc.buildAuthorizationUrl(rp, {
    redirect_uri: REDIRECT,
    scope: 'openid admin',
    resource: `${issuer}/admin`,
    code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    state,
  });
  let page = await flow.follow(jar, url.href);
  for (let i = 0; i < 4; i++) {
    let next;
    if (page.status === 303 || page.status === 302) break;
    if (page.body.includes('<h1>Sign in</h1>')) {
      next = await flow.http(jar, `${page.url}/login`, {
        form: { csrf: csrfOf(page.body), username, password: PASSWORD },
      });
    } else if (page.body.includes('Two-step verification')) {
      const secret = secrets.get(username);
      if (secret === undefined) throw new Error('no TOTP secret');
      next = await flow.http(jar, `${page.url}/totp`, {
        form: { csrf: csrfOf(page.body), code: hotp(secret, totpStep(Date.now()) - 1) },
      });
    } else if (page.body.includes('Allow access?')) {
      const offered = [...page.body.matchAll(/name="scope" value="([^"]+)"/g)].map((m) => m[1] ?? '');
      next = await flow.http(jar, `${page.url}/confirm`, {
        form: { csrf: csrfOf(page.body), scope: offered },
      });
    } else throw new Error(`unexpected page ${page.body.slice(0, 200)}`);
    expect(next.status).toBe(303);
    page = await flow.follow(jar, next.location ?? '');
  }
  try {
    const t = await oidc.authorizationCodeGrant(rp, new URL(page.location ?? ''), {
      pkceCodeVerifier: verifier,
      expectedState: state,
    });
    return t.access_token;
  } catch (err) {
    // Say what the token endpoint answered (a flaky run should be diagnosable).
    const cause = (err as { cause?: unknown }).cause;
    const detail =
      cause instanceof Response ? `${String(cause.status)} ${await cause.text()}` : String(cause);
    throw new Error(`token request for ${username} failed: ${detail}`, { cause: err });
  }
}

interface Res {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  json: Record<string, unknown>;
  text: string;
}

async function call(
  path: string,
  as: { token?: string; cert?: Issued } = {},
  init: { method?: 'GET' | 'POST' | 'PUT' | 'DELETE' | 'PATCH'; body?: string; type?: string } = {},
): Promise<Res> {
  const agent = new Agent({
    connect: {
      ca: gw.p.tls.source === 'development' ? gw.p.tls.caCertPem : undefined,
      servername: 'localhost',
      ...(as.cert === undefined ? {} : { cert: as.cert.pem, key: as.cert.keyPem }),
    },
  });
  try {
    const res = await request(admin + path, {
      method: init.method ?? 'GET',
      headers: {
        ...(as.token === undefined ? {} : { authorization: `Bearer ${as.token}` }),
        ...(init.body === undefined ? {} : { 'content-type': init.type ?? 'application/json' }),
      },
      body: init.body ?? null,
      dispatcher: agent,
    });
    const text = await res.body.text();
    let json: Record<string, unknown> = {};
    try {
      json = JSON.parse(text) as Record<string, unknown>;
    } catch {
      // not JSON (metrics)
    }
    return { status: res.statusCode, headers: res.headers, json, text };
  } finally {
    await agent.close();
  }
}

const token = (name: string) => ({ token: tokens.get(name) ?? '' });

async function auditEvents(): Promise<Record<string, unknown>[]> {
  await gw.p.audit.flush();
  const rows = await gw.p.store.db.selectFrom('audit_events').selectAll().orderBy('seq').execute();
  return rows.map((r) => JSON.parse(r.event) as Record<string, unknown>);
}

async function lastEvent(action: string): Promise<Record<string, unknown> | undefined> {
  return (await auditEvents()).filter((e) => e['event.action'] === action).at(-1);
}

describe('admin authentication', () => {
  it('serves /healthz and /readyz anonymously and nothing else', async () => {
    expect((await call('/healthz')).status).toBe(200);
    expect((await call('/readyz')).status).toBe(200);
    for (const path of [
      '/metrics',
      '/audit/events',
      '/admin/v1/users',
      '/admin/v1/apis',
      '/admin/v1/openapi.json',
    ]) {
      const res = await call(path);
      expect(res.status, path).toBe(401);
      expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
      expect(res.json.type).toBe('urn:portcullis:problem:unauthenticated');
      expect(res.headers['www-authenticate']).toBe('Bearer realm="portcullis-admin"');
    }
    const refused = await lastEvent('admin-authenticate');
    expect(refused).toMatchObject({
      'event.outcome': 'failure',
      'event.reason': 'credential-missing',
      'portcullis.admin.via': 'none',
      'client.ip': '127.0.0.1',
      'url.path': '/admin/v1/openapi.json',
    });
  });

  it('accepts an admin token of a user with an admin role and TOTP', async () => {
    const claims = decodeJwt(tokens.get('sec') ?? '');
    expect(claims.aud).toBe(`${issuer}/admin`);
    expect(String(claims.scope).split(' ')).toContain('admin');
    const res = await call('/admin/v1/users', token('sec'));
    expect(res.status).toBe(200);
    const list = res.json.users as { username: string; roles: string[] }[];
    expect(list.find((u) => u.username === 'sec')?.roles).toEqual(['security-officer']);
    expect(await lastEvent('users-list')).toMatchObject({
      'event.outcome': 'success',
      'portcullis.admin.principal': 'sec',
      'portcullis.admin.role': 'security-officer',
      'portcullis.admin.via': 'oauth',
      'portcullis.actor.admin': 'sec',
      'client.ip': '127.0.0.1',
    });
  });

  it('refuses an admin whose account has no TOTP, audited', async () => {
    const res = await call('/admin/v1/audit/events', token('nototp'));
    expect(res.status).toBe(403);
    expect(await lastEvent('admin-authenticate')).toMatchObject({
      'event.reason': 'second-factor-required',
      'portcullis.admin.principal': 'nototp',
      'portcullis.admin.via': 'oauth',
    });
  });

  it('an ordinary user is not entitled to the admin scope: the token is refused', async () => {
    const claims = decodeJwt(tokens.get('plain') ?? '');
    expect(typeof claims.scope === 'string' ? claims.scope.split(' ') : []).not.toContain('admin');
    const res = await call('/admin/v1/apis', token('plain'));
    expect(res.status).toBe(401);
    expect(await lastEvent('admin-authenticate')).toMatchObject({ 'event.reason': 'token-not-admin' });
  });

  it('refuses a gateway API token and a forged one', async () => {
    const res = await call('/admin/v1/apis', { token: 'eyJhbGciOiJFUzI1NiJ9.e30.AAAA' });
    expect(res.status).toBe(401);
    expect(String((await lastEvent('admin-authenticate'))?.['event.reason'])).toMatch(/^token-/);
  });

  it('maps a client certificate to its principal and roles; others are refused, audited', async () => {
    const ok = await call('/admin/v1/audit/events?limit=5', { cert: certs.auditor });
    expect(ok.status).toBe(200);
    expect(await lastEvent('audit-search')).toMatchObject({
      'portcullis.admin.principal': 'ci-auditor',
      'portcullis.admin.role': 'auditor',
      'portcullis.admin.via': 'mtls',
    });
    const unmapped = await call('/admin/v1/apis', { cert: certs.unmapped });
    expect(unmapped.status).toBe(401);
    expect(await lastEvent('admin-authenticate')).toMatchObject({
      'event.reason': 'certificate-not-mapped',
      'portcullis.admin.via': 'mtls',
    });
    const foreign = await call('/admin/v1/apis', { cert: certs.foreign });
    expect(foreign.status).toBe(401);
    expect(await lastEvent('admin-authenticate')).toMatchObject({ 'event.reason': 'certificate-untrusted' });
  });

  it('/metrics takes a bearer token or a client certificate', async () => {
    const byCert = await call('/metrics', { cert: certs.auditor });
    expect(byCert.status).toBe(200);
    expect(byCert.text).toContain('# TYPE portcullis_http_requests_total');
    expect((await call('/metrics', token('oper'))).status).toBe(200);
  });
});

describe('admin resources: allowed role and wrong role', () => {
  const cases: {
    path: string;
    method?: 'GET' | 'POST';
    allowed: () => object;
    refused: () => object;
    perm: string;
  }[] = [
    {
      path: '/admin/v1/apis',
      allowed: () => ({ cert: certs.auditor }),
      refused: () => ({ cert: certs.custodian }),
      perm: 'apis:read',
    },
    {
      path: '/admin/v1/clients',
      allowed: () => token('oper'),
      refused: () => ({ cert: certs.auditor }),
      perm: 'clients:read',
    },
    {
      path: '/admin/v1/users',
      allowed: () => token('sec'),
      refused: () => token('oper'),
      perm: 'users:read',
    },
    {
      path: '/admin/v1/roles',
      allowed: () => token('sec'),
      refused: () => ({ cert: certs.auditor }),
      perm: 'users:read',
    },
    {
      path: '/admin/v1/api-keys',
      allowed: () => token('oper'),
      refused: () => token('sec'),
      perm: 'apikeys:read',
    },
    {
      path: '/admin/v1/audit/events',
      allowed: () => ({ cert: certs.auditor }),
      refused: () => token('oper'),
      perm: 'audit:read',
    },
    {
      path: '/admin/v1/audit/verify',
      method: 'POST',
      allowed: () => ({ cert: certs.auditor }),
      refused: () => token('sec'),
      perm: 'audit:verify',
    },
    {
      path: '/admin/v1/config',
      allowed: () => ({ cert: certs.auditor }),
      refused: () => token('oper'),
      perm: 'config:read',
    },
    {
      path: '/admin/v1/keys',
      allowed: () => token('keys'),
      refused: () => ({ cert: certs.auditor }),
      perm: 'keys:read',
    },
    {
      path: '/admin/v1/alerts',
      allowed: () => token('oper'),
      refused: () => token('keys'),
      perm: 'alerts:read',
    },
    {
      path: '/admin/v1/config/reload',
      method: 'POST',
      allowed: () => token('oper'),
      refused: () => ({ cert: certs.auditor }),
      perm: 'config:reload',
    },
    {
      path: '/admin/v1/openapi.json',
      allowed: () => token('sec'),
      refused: () => token('keys'),
      perm: 'apis:read',
    },
  ];
  for (const c of cases) {
    it(`${c.method ?? 'GET'} ${c.path}`, async () => {
      const init = { method: c.method ?? 'GET' } as const;
      const ok = await call(c.path, c.allowed(), init);
      expect(ok.status, ok.text).toBe(200);
      const no = await call(c.path, c.refused(), init);
      expect(no.status).toBe(403);
      expect(no.json.type).toBe('urn:portcullis:problem:forbidden');
      const refusal = (await auditEvents())
        .filter(
          (e) => e['event.outcome'] === 'failure' && e['event.reason'] === `missing-permission ${c.perm}`,
        )
        .at(-1);
      expect(refusal?.['portcullis.admin.principal']).toBeDefined();
      expect(refusal?.['portcullis.admin.via']).toMatch(/^(oauth|mtls)$/);
      expect(refusal?.['client.ip']).toBe('127.0.0.1');
    });
  }

  it('the inventory lists owner, classification, environment and each operation', async () => {
    const res = await call('/admin/v1/apis', { cert: certs.auditor });
    const [api] = res.json.apis as Record<string, unknown>[];
    expect(api).toMatchObject({
      name: 'items',
      owner: 'team-items',
      dataClassification: 'confidential',
      environment: 'production',
    });
    expect((api?.operations as unknown[]).length).toBeGreaterThan(0);
  });

  it('the audit chain verifies; the configuration is served with secrets masked', async () => {
    const verify = await call('/admin/v1/audit/verify', { cert: certs.auditor }, { method: 'POST' });
    expect(verify.json.ok).toBe(true);
    const config = await call('/admin/v1/config', { cert: certs.auditor });
    expect(config.json.apis).toBeDefined();
    expect(
      maskSecrets({ store: { url: 'postgres://app:hunter2@db/x' }, webhook: { secret: 'abc' }, pin: '1234' }),
    ).toEqual({ store: { url: `postgres://${MASK}@db/x` }, webhook: { secret: MASK }, pin: MASK });
  });

  it('validates requests with the gateway validator (400, 415) before any change', async () => {
    const bad = await call('/admin/v1/users', token('sec'), {
      method: 'POST',
      body: JSON.stringify({ username: 'x', password: 'short', extra: 1 }),
    });
    expect(bad.status).toBe(400);
    expect(bad.json.type).toBe('urn:portcullis:problem:invalid-request');
    const media = await call('/admin/v1/users', token('sec'), {
      method: 'POST',
      body: 'a=b',
      type: 'text/plain',
    });
    expect(media.status).toBe(415);
  });

  it('creates a user with a role through the same service as the CLI, audited', async () => {
    const res = await call('/admin/v1/users', token('sec'), {
      method: 'POST',
      body: JSON.stringify({ username: 'carol', password: 'carol-correct-horse-42', roles: ['clinician'] }),
    });
    expect(res.status).toBe(201);
    expect(res.json).toMatchObject({ username: 'carol', roles: ['clinician'] });
    expect(await lastEvent('user-create')).toMatchObject({
      'event.category': 'credential-lifecycle',
      'portcullis.admin.principal': 'sec',
      'portcullis.admin.role': 'security-officer',
      'portcullis.admin.target': 'carol',
    });
    const refused = await call('/admin/v1/users', token('oper'), {
      method: 'POST',
      body: JSON.stringify({ username: 'dave', password: 'dave-correct-horse-42' }),
    });
    expect(refused.status).toBe(403);
  });
});

describe('separation of duties', () => {
  it('a key custodian cannot grant roles, even holding security-officer too', async () => {
    const res = await call('/admin/v1/users/plain/roles/auditor', { cert: certs.both }, { method: 'PUT' });
    expect(res.status).toBe(403);
    expect(await lastEvent('role-grant')).toMatchObject({
      'event.outcome': 'failure',
      'event.reason': 'separation-of-duties',
      'portcullis.admin.principal': 'overloaded',
      'portcullis.admin.via': 'mtls',
      'portcullis.role': 'auditor',
    });
    expect((await call('/admin/v1/users/plain/roles/auditor', token('keys'), { method: 'PUT' })).status).toBe(
      403,
    );
  });

  it('one user may not hold both key custody and role administration', async () => {
    const res = await call(
      '/admin/v1/users/sec/roles/key-custodian',
      { cert: certs.auditor },
      { method: 'PUT' },
    );
    expect(res.status).toBe(403); // auditor: no roles:write
    // A security officer granting key custody to another security officer:
    await call('/admin/v1/users/plain/roles/security-officer', token('sec'), { method: 'PUT' });
    const conflict = await call('/admin/v1/users/plain/roles/key-custodian', token('sec'), { method: 'PUT' });
    expect(conflict.status).toBe(409);
    expect(await lastEvent('role-grant')).toMatchObject({
      'event.outcome': 'failure',
      'event.reason': 'separation-of-duties',
      'portcullis.admin.principal': 'sec',
    });
  });

  it('an administrator cannot change their own roles', async () => {
    const res = await call('/admin/v1/users/sec/roles/auditor', token('sec'), { method: 'PUT' });
    expect(res.status).toBe(403);
    expect(await lastEvent('role-grant')).toMatchObject({ 'event.reason': 'separation-of-duties' });
  });

  it('a security officer grants and revokes a role; the grant is audited with who did it', async () => {
    const granted = await call('/admin/v1/users/oper/roles/auditor', token('sec'), { method: 'PUT' });
    expect(granted.status).toBe(200);
    expect(granted.json).toMatchObject({ changed: true, roles: ['auditor', 'operator'] });
    const revoked = await call('/admin/v1/users/oper/roles/auditor', token('sec'), { method: 'DELETE' });
    expect(revoked.json).toMatchObject({ changed: true, roles: ['operator'] });
    expect(await lastEvent('role-revoke')).toMatchObject({
      'event.outcome': 'success',
      'portcullis.admin.principal': 'sec',
      'portcullis.admin.role': 'security-officer',
      'portcullis.admin.target': 'oper',
    });
  });

  it('no role can edit or delete audit records', async () => {
    expect(PERMISSIONS.filter((p) => p.startsWith('audit:'))).toEqual(['audit:read', 'audit:verify']);
    for (const as of [
      token('sec'),
      token('oper'),
      token('keys'),
      { cert: certs.auditor },
      { cert: certs.both },
    ]) {
      for (const method of ['DELETE', 'PUT', 'PATCH'] as const) {
        const res = await call('/admin/v1/audit/events', as, {
          method,
          ...(method === 'DELETE' ? {} : { body: '{}' }),
        });
        expect(res.status).toBe(405);
      }
    }
    const refused = (await auditEvents()).filter((e) => e['event.action'] === 'audit-modify');
    expect(refused.length).toBe(15);
    expect(refused.every((e) => e['event.outcome'] === 'failure')).toBe(true);
    const verify = await call('/admin/v1/audit/verify', { cert: certs.auditor }, { method: 'POST' });
    expect(verify.json.ok).toBe(true);
  });
});

describe('exceptions registry', () => {
  const body = (id: string, expires: string) =>
    JSON.stringify({
      id,
      control: 'upstream-plaintext',
      scope: 'the legacy billing upstream on the private network',
      rationale: 'the vendor appliance cannot speak TLS until its upgrade',
      compensatingControls: ['private VLAN', 'IP allowlist on the appliance'],
      owner: 'team-billing',
      expires,
    });
  const inDays = (days: number) => new Date(Date.now() + days * 86_400_000).toISOString().slice(0, 10);

  it('the requester cannot approve; another security officer can; each step audited', async () => {
    const requested = await call('/admin/v1/exceptions', token('sec'), {
      method: 'POST',
      body: body('legacy-billing', inDays(30)),
    });
    expect(requested.status, requested.text).toBe(201);
    expect(requested.json).toMatchObject({ status: 'requested', requestedBy: 'sec', approver: null });

    const self = await call('/admin/v1/exceptions/legacy-billing/approve', token('sec'), { method: 'POST' });
    expect(self.status).toBe(403);
    expect(await lastEvent('exception-approve')).toMatchObject({
      'event.category': 'configuration',
      'event.outcome': 'failure',
      'event.reason': 'separation-of-duties',
      'portcullis.admin.principal': 'sec',
      'portcullis.admin.target': 'legacy-billing',
    });

    const byOperator = await call('/admin/v1/exceptions/legacy-billing/approve', token('oper'), {
      method: 'POST',
    });
    expect(byOperator.status).toBe(403);

    const approved = await call(
      '/admin/v1/exceptions/legacy-billing/approve',
      { cert: certs.both },
      { method: 'POST' },
    );
    expect(approved.status).toBe(200);
    expect(approved.json).toMatchObject({ status: 'approved', approver: 'overloaded' });
    expect(await lastEvent('exception-approve')).toMatchObject({
      'event.outcome': 'success',
      'portcullis.admin.principal': 'overloaded',
      'portcullis.admin.role': 'security-officer',
    });
  });

  it('refuses an unknown control, a past expiry and a malformed request', async () => {
    const unknown = await call('/admin/v1/exceptions', token('sec'), {
      method: 'POST',
      body: body('x1', inDays(10)).replace('upstream-plaintext', 'no-such-control'),
    });
    expect(unknown.status).toBe(422);
    const past = await call('/admin/v1/exceptions', token('sec'), {
      method: 'POST',
      body: body('x2', '2020-01-01'),
    });
    expect(past.status).toBe(422);
    const malformed = await call('/admin/v1/exceptions', token('sec'), {
      method: 'POST',
      body: '{"id":"x3"}',
    });
    expect(malformed.status).toBe(400);
  });

  it('renewal needs a new approval; the sweep warns before expiry and records the expiry', async () => {
    const { sweepExceptions } = await import('../src/admin/service/exceptions.ts');
    const svc = { db: gw.p.store.db, audit: gw.p.audit };
    await call('/admin/v1/exceptions', token('sec'), {
      method: 'POST',
      body: body('short-lived', inDays(3)),
    });
    await call('/admin/v1/exceptions/short-lived/approve', { cert: certs.both }, { method: 'POST' });

    const warned = await sweepExceptions(svc, { now: Date.now() });
    expect(warned.warned).toContain('short-lived');
    expect((await sweepExceptions(svc, { now: Date.now() })).warned).not.toContain('short-lived'); // once
    expect(await lastEvent('exception-expiring')).toMatchObject({
      'event.category': 'configuration',
      'portcullis.admin.target': 'short-lived',
    });

    const renewed = await call('/admin/v1/exceptions/short-lived/renew', token('sec'), {
      method: 'POST',
      body: JSON.stringify({ expires: inDays(60) }),
    });
    expect(renewed.json).toMatchObject({ status: 'requested', approver: null, expires: inDays(60) });
    await call('/admin/v1/exceptions/short-lived/approve', { cert: certs.both }, { method: 'POST' });

    // 61 days later: expired, recorded once, listed as expired.
    const later = Date.now() + 61 * 86_400_000;
    expect((await sweepExceptions(svc, { now: later })).expired).toEqual(
      expect.arrayContaining(['short-lived', 'legacy-billing']),
    );
    expect((await sweepExceptions(svc, { now: later })).expired).toEqual([]);
    expect(await lastEvent('exception-expired')).toMatchObject({
      'event.category': 'configuration',
      'event.outcome': 'success',
    });
  });

  it('revoking puts the control back in force; listing needs exceptions:read', async () => {
    const revoked = await call('/admin/v1/exceptions/legacy-billing/revoke', token('sec'), {
      method: 'POST',
    });
    expect(revoked.json).toMatchObject({ status: 'revoked' });
    const list = await call('/admin/v1/exceptions', token('sec'));
    expect(list.status).toBe(200);
    expect((list.json.exceptions as { id: string }[]).map((e) => e.id)).toEqual([
      'legacy-billing',
      'short-lived',
    ]);
    expect((await call('/admin/v1/exceptions', { cert: certs.auditor })).status).toBe(403);
  });
});
