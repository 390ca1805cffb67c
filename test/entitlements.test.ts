/**
 * End-user entitlements (issue 13) through the real authorization server and gateway, with
 * openid-client as the relying party: a client registered for `patients:read patients:admin`
 * gets `patients:admin` (the owner-binding bypass) only for a user whose role grants it. The
 * consent page does not offer it to an ordinary account, a forged consent form cannot add it,
 * and once the role is revoked the next token from the same grant no longer carries it.
 */
import { join } from 'node:path';
import { decodeJwt } from 'jose';
import * as oidc from 'openid-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliActor } from '../src/admin/actor.ts';
import type { AdminServices } from '../src/admin/service/context.ts';
import { grantRole, revokeRole } from '../src/admin/service/roles.ts';
import { openKms } from '../src/keys/kms.ts';
import { createClient } from '../src/oauth/clients.ts';
import { createUsers, kmsSecretWrapper } from '../src/oauth/users.ts';
import { startRecordingUpstream, startTestGateway } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';
import { authorize, createFlow, csrfOf, exchange, Jar } from './oauth-flow.ts';
import type { Flow } from './oauth-flow.ts';
import { freePort } from './admin-harness.ts';

const OPENAPI = {
  openapi: '3.1.0',
  info: { title: 'patients', version: '1' },
  components: {
    securitySchemes: {
      oauth: {
        type: 'oauth2',
        flows: {
          authorizationCode: {
            authorizationUrl: 'https://localhost/auth',
            tokenUrl: 'https://localhost/token',
            scopes: { 'patients:read': 'read', 'patients:admin': 'every record' },
          },
        },
      },
    },
  },
  paths: {
    '/patients/{patientId}': {
      get: {
        operationId: 'getPatient',
        parameters: [{ name: 'patientId', in: 'path', required: true, schema: { type: 'string' } }],
        security: [{ oauth: ['patients:read'] }],
        'x-portcullis-owner': { parameter: 'patientId', bypassScopes: ['patients:admin'] },
        responses: { '200': { description: 'ok' } },
      },
    },
  },
};

const REDIRECT = 'https://app.example/cb';
const ALICE = { username: 'alice', password: 'alice-correct-horse-42' };
const BOB = { username: 'bob', password: 'bob-correct-horse-4242' };

let upstream: RecordingUpstream;
let gw: TestGateway;
let flow: Flow;
let rp: oidc.Configuration;
let svc: AdminServices;
const ids: Record<string, string> = {};

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  const port = await freePort();
  const issuer = `https://localhost:${String(port)}`;
  gw = await startTestGateway(
    {
      gateway: { port, publicUrl: issuer },
      roles: { clinician: { description: 'ward staff', scopes: ['patients:admin'] } },
      apis: [{ name: 'patients', basePath: '/v1', openapi: 'api.yaml', upstream: { url: upstream.url } }],
    },
    { openapi: OPENAPI },
  );
  const keys = gw.p.keys;
  if (keys === undefined) throw new Error('no key manager');
  const config = gw.p.runtime().loaded.config;
  const users = createUsers({
    db: gw.p.store.db,
    wrapper: kmsSecretWrapper(openKms(config.oauth.kms, join(gw.dir, 'data')).kms),
    login: config.oauth.login,
    iterations: 1000,
  });
  ids.alice = (await users.create(ALICE)).user.id;
  ids.bob = (await users.create(BOB)).user.id;
  svc = { db: gw.p.store.db, config: () => gw.p.runtime().loaded.config, audit: gw.p.audit };
  const { client, clientSecret } = await createClient(gw.p.store.db, keys, {
    name: 'ward app',
    grantTypes: ['authorization_code'],
    scope: 'openid patients:read patients:admin',
    redirectUris: [REDIRECT],
  });
  flow = createFlow(issuer, gw.p.tls.source === 'development' ? gw.p.tls.caCertPem : undefined);
  rp = await flow.discover(client.clientId, oidc.ClientSecretBasic(clientSecret ?? ''));
}, 60_000);

afterAll(async () => {
  await flow.close();
  await gw.close();
  await upstream.close();
});

const PARAMS = { redirect_uri: REDIRECT, scope: 'openid patients:read patients:admin' };

async function tokenFor(user: { username: string; password: string }, jar = new Jar()) {
  const a = await authorize(flow, rp, jar, user, PARAMS);
  return exchange(rp, a);
}

function scopesOf(token: string): string[] {
  const scope = decodeJwt(token).scope;
  return typeof scope === 'string' ? scope.split(' ').sort() : [];
}

async function getPatient(id: string, token: string): Promise<number> {
  return (await gw.request(`/v1/patients/${id}`, { headers: { authorization: `Bearer ${token}` } })).status;
}

async function auditEvents() {
  await gw.p.audit.flush();
  const rows = await gw.p.store.db.selectFrom('audit_events').selectAll().orderBy('seq').execute();
  return rows.map((r) => JSON.parse(r.event) as Record<string, unknown>);
}

describe('end-user entitlements', () => {
  it('an ordinary account is not offered the privileged scope, and its token lacks it', async () => {
    const jar = new Jar();
    const url = oidc.buildAuthorizationUrl(rp, {
      ...PARAMS,
      code_challenge: await oidc.calculatePKCECodeChallenge(oidc.randomPKCECodeVerifier()),
      code_challenge_method: 'S256',
      state: oidc.randomState(),
    });
    let page = await flow.follow(jar, url.href);
    const login = await flow.http(jar, `${page.url}/login`, {
      form: { csrf: csrfOf(page.body), ...ALICE },
    });
    page = await flow.follow(jar, login.location ?? '');
    expect(page.body).toContain('Allow access?');
    const offered = [...page.body.matchAll(/name="scope" value="([^"]+)"/g)].map((m) => m[1]);
    expect(offered).toContain('patients:read');
    expect(offered).not.toContain('patients:admin');

    const t = await tokenFor(ALICE);
    expect(scopesOf(t.access_token)).toEqual(['patients:read']);
    expect(await getPatient(ids.alice ?? '', t.access_token)).toBe(200);
    expect(await getPatient(ids.bob ?? '', t.access_token)).toBe(403);
  });

  it('a forged consent form cannot add a scope the user is not entitled to', async () => {
    const jar = new Jar();
    const verifier = oidc.randomPKCECodeVerifier();
    const state = oidc.randomState();
    const url = oidc.buildAuthorizationUrl(rp, {
      ...PARAMS,
      prompt: 'consent',
      code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
      code_challenge_method: 'S256',
      state,
    });
    let page = await flow.follow(jar, url.href);
    const login = await flow.http(jar, `${page.url}/login`, { form: { csrf: csrfOf(page.body), ...ALICE } });
    page = await flow.follow(jar, login.location ?? '');
    const confirm = await flow.http(jar, `${page.url}/confirm`, {
      form: { csrf: csrfOf(page.body), scope: ['patients:read', 'patients:admin'] },
    });
    expect(confirm.status).toBe(303);
    const back = await flow.follow(jar, confirm.location ?? '');
    const callback = back.location ?? '';
    expect(callback.startsWith(REDIRECT)).toBe(true);
    const tokens = await oidc.authorizationCodeGrant(rp, new URL(callback), {
      pkceCodeVerifier: verifier,
      expectedState: state,
    });
    expect(scopesOf(tokens.access_token)).toEqual(['patients:read']);
  });

  it('a role listing the scope entitles its holder; revoking it stops the next token', async () => {
    const actor = cliActor();
    const granted = await grantRole(svc, actor, { username: 'bob', role: 'clinician' });
    expect(granted).toMatchObject({ changed: true, roles: ['clinician'] });

    const jar = new Jar();
    const t = await tokenFor(BOB, jar);
    expect(scopesOf(t.access_token)).toEqual(['patients:admin', 'patients:read']);
    expect(await getPatient(ids.alice ?? '', t.access_token)).toBe(200);

    await revokeRole(svc, actor, { username: 'bob', role: 'clinician' });
    // Same session and grant: no new consent is asked, yet the token endpoint filters again.
    const again = await tokenFor(BOB, jar);
    expect(scopesOf(again.access_token)).toEqual(['patients:read']);
    expect(await getPatient(ids.alice ?? '', again.access_token)).toBe(403);

    const events = (await auditEvents()).filter((e) =>
      ['role-grant', 'role-revoke'].includes(String(e['event.action'])),
    );
    expect(events.map((e) => [e['event.action'], e['event.outcome'], e['portcullis.role']])).toEqual([
      ['role-grant', 'success', 'clinician'],
      ['role-revoke', 'success', 'clinician'],
    ]);
    for (const e of events) {
      expect(e['portcullis.admin.principal']).toBe(actor.principal);
      expect(e['portcullis.admin.via']).toBe('cli');
      expect(e['portcullis.admin.target']).toBe('bob');
      expect(e['user.id']).toBe(ids.bob);
    }
  });

  it('refuses an unknown role, audited', async () => {
    await expect(grantRole(svc, cliActor(), { username: 'alice', role: 'surgeon' })).rejects.toMatchObject({
      reason: 'unknown-role',
    });
    const refused = (await auditEvents()).filter(
      (e) => e['event.action'] === 'role-grant' && e['event.outcome'] === 'failure',
    );
    expect(refused.at(-1)).toMatchObject({ 'event.reason': 'unknown-role', 'portcullis.role': 'surgeon' });
  });
});
