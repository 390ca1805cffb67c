/**
 * Resource indicators (RFC 8707) with two APIs behind one gateway: a client gets tokens only for
 * the APIs it is registered for, unknown or unregistered scopes are refused (not dropped), and a
 * token request without `resource` gets the audience its scopes name, or is refused. openid-client
 * is the relying party; the tokens are then used on the real gateway.
 */
import { writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { decodeJwt } from 'jose';
import * as oidc from 'openid-client';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createClient } from '../src/oauth/clients.ts';
import type { NewClient } from '../src/oauth/clients.ts';
import type { StoreKeyManager } from '../src/keys/index.ts';
import { startRecordingUpstream, startTestGateway, tempDir } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';
import { Jar, createFlow, oauthError } from './oauth-flow.ts';
import type { Flow } from './oauth-flow.ts';

function api(title: string, scopes: Record<string, string>, paths: Record<string, unknown>) {
  return {
    openapi: '3.1.0',
    info: { title, version: '1' },
    components: {
      securitySchemes: {
        oauth: {
          type: 'oauth2',
          flows: {
            clientCredentials: { tokenUrl: 'https://localhost/token', scopes },
            authorizationCode: {
              authorizationUrl: 'https://localhost/auth',
              tokenUrl: 'https://localhost/token',
              scopes,
            },
          },
        },
      },
    },
    paths,
  };
}

const ITEMS = api(
  'items',
  { 'items:read': 'read items' },
  {
    '/items': {
      get: {
        operationId: 'listItems',
        security: [{ oauth: ['items:read'] }],
        responses: { '200': { description: 'ok' } },
      },
    },
  },
);

const BILLING = api(
  'billing',
  { 'billing:read': 'read invoices' },
  {
    '/invoices': {
      get: {
        operationId: 'listInvoices',
        security: [{ oauth: ['billing:read'] }],
        responses: { '200': { description: 'ok' } },
      },
    },
    // Any token for this API will do: the audience is the whole protection.
    '/status': {
      get: { operationId: 'status', security: [{ oauth: [] }], responses: { '200': { description: 'ok' } } },
    },
  },
);

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
let items: string;
let billing: string;
let keys: StoreKeyManager;
let flow: Flow;
const secrets: string[] = [];
const REDIRECT = 'https://app.example/cb';

async function rp(
  scope: string,
  extra: Partial<NewClient> = {},
): Promise<{ id: string; config: oidc.Configuration }> {
  const { client, clientSecret } = await createClient(gw.p.store.db, keys, {
    name: 'resources test',
    grantTypes: ['client_credentials'],
    scope,
    ...extra,
  });
  if (clientSecret !== undefined) secrets.push(clientSecret);
  return {
    id: client.clientId,
    config: await flow.discover(client.clientId, oidc.ClientSecretBasic(clientSecret ?? '')),
  };
}

function token(config: oidc.Configuration, params: Record<string, string>) {
  return oidc.clientCredentialsGrant(config, params);
}

/** The OAuth error and its description of a refused client-credentials request. */
async function refusal(config: oidc.Configuration, params: Record<string, string>) {
  try {
    await token(config, params);
  } catch (err) {
    const e = err as { error?: string; error_description?: string };
    return { error: e.error, description: e.error_description };
  }
  throw new Error('expected a refusal');
}

async function call(path: string, accessToken: string) {
  return gw.request(path, { headers: { authorization: `Bearer ${accessToken}` } });
}

async function auditEvents() {
  await gw.p.audit.flush();
  const rows = await gw.p.store.db.selectFrom('audit_events').selectAll().orderBy('seq').execute();
  return rows.map((r) => JSON.parse(r.event) as Record<string, unknown>);
}

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  const port = await freePort();
  issuer = `https://localhost:${String(port)}`;
  items = `${issuer}/v1`;
  billing = `${issuer}/v2`;
  const dir = await tempDir();
  await writeFile(join(dir, 'billing.yaml'), stringify(BILLING));
  gw = await startTestGateway(
    {
      gateway: { port, publicUrl: issuer },
      apis: [
        { name: 'items', basePath: '/v1', openapi: 'api.yaml', upstream: { url: upstream.url } },
        { name: 'billing', basePath: '/v2', openapi: 'billing.yaml', upstream: { url: upstream.url } },
      ],
    },
    { openapi: ITEMS, dir },
  );
  if (gw.p.keys === undefined) throw new Error('the key manager should be running');
  keys = gw.p.keys;
  flow = createFlow(issuer, gw.p.tls.source === 'development' ? gw.p.tls.caCertPem : undefined);
}, 60_000);

afterAll(async () => {
  const logs = gw.logs();
  for (const s of secrets) expect(logs).not.toContain(s);
  await flow.close();
  await gw.close();
  await upstream.close();
});

describe('a client gets tokens only for the resources it is registered for', () => {
  it('its own API: a token with that audience, accepted by the gateway', async () => {
    const c = await rp('items:read');
    const res = await token(c.config, { scope: 'items:read', resource: items });
    expect(decodeJwt(res.access_token)).toMatchObject({ aud: items, scope: 'items:read' });
    expect((await call('/v1/items', res.access_token)).status).toBe(200);
  });

  it('another API: invalid_target, not a scope-less token accepted where any token will do', async () => {
    const c = await rp('items:read');
    expect(await refusal(c.config, { resource: billing })).toEqual({
      error: 'invalid_target',
      description: 'client is not registered for this resource',
    });
    expect(await oauthError(token(c.config, { scope: 'items:read', resource: billing }))).toBe(
      'invalid_target',
    );
    const refused = (await auditEvents()).filter(
      (e) =>
        e['event.action'] === 'oauth-grant-refused' &&
        e['portcullis.client_id'] === c.id &&
        e['event.reason'] === 'invalid_target',
    );
    expect(refused).toHaveLength(2);
  });

  it('unknown scopes and scopes the client does not hold are invalid_scope, never dropped', async () => {
    const c = await rp('items:read');
    expect(await refusal(c.config, { scope: 'items:read items:nope', resource: items })).toEqual({
      error: 'invalid_scope',
      description: 'scope items:nope is not a scope of the requested resource',
    });
    expect(await refusal(c.config, { scope: 'items:read items:nope' })).toEqual({
      error: 'invalid_scope',
      description: 'scope items:nope is not a scope of any API',
    });
    expect(await oauthError(token(c.config, { scope: 'billing:read' }))).toBe('invalid_scope');
    // A scope of another API, sent with this API's resource.
    const both = await rp('items:read billing:read');
    expect(await refusal(both.config, { scope: 'billing:read', resource: items })).toEqual({
      error: 'invalid_scope',
      description: 'scope billing:read is not a scope of the requested resource',
    });
    const refused = (await auditEvents()).filter(
      (e) =>
        e['event.action'] === 'oauth-grant-refused' &&
        e['portcullis.client_id'] === c.id &&
        e['event.reason'] === 'invalid_scope',
    );
    expect(refused).toHaveLength(3);
  });

  it('registered resources (clients create --resource) narrow what the scopes would allow', async () => {
    const c = await rp('items:read billing:read', { resources: ['billing'] });
    expect(await oauthError(token(c.config, { scope: 'items:read', resource: items }))).toBe(
      'invalid_target',
    );
    // Its only resource is its default: no resource and no scope still has an audience.
    const res = await token(c.config, {});
    expect(decodeJwt(res.access_token).aud).toBe(billing);
    expect((await call('/v2/status', res.access_token)).status).toBe(200);
    expect((await call('/v1/items', res.access_token)).status).toBe(401);
    // By audience, as well as by name.
    const byAudience = await rp('items:read', { resources: [items] });
    expect(decodeJwt((await token(byAudience.config, {})).access_token).aud).toBe(items);
  });

  it('the authorization endpoint refuses unknown scopes and unregistered resources to the client', async () => {
    const { client } = await createClient(gw.p.store.db, keys, {
      name: 'web',
      grantTypes: ['authorization_code'],
      scope: 'openid items:read',
      redirectUris: [REDIRECT],
    });
    const config = await flow.discover(client.clientId, oidc.None());
    const base = {
      redirect_uri: REDIRECT,
      code_challenge: await oidc.calculatePKCECodeChallenge(oidc.randomPKCECodeVerifier()),
      code_challenge_method: 'S256',
      state: 's',
    };
    const refused = async (params: Record<string, string>) => {
      const res = await flow.http(new Jar(), oidc.buildAuthorizationUrl(config, { ...base, ...params }).href);
      expect(res.status).toBe(303);
      const to = new URL(res.location ?? '');
      expect(to.origin + to.pathname).toBe(REDIRECT);
      return to.searchParams.get('error');
    };
    expect(await refused({ scope: 'openid items:read items:nope' })).toBe('invalid_scope');
    expect(await refused({ scope: 'openid billing:read' })).toBe('invalid_scope');
    expect(await refused({ scope: 'openid items:read', resource: billing })).toBe('invalid_target');
    // The allowed request goes on to sign-in.
    const ok = await flow.http(
      new Jar(),
      oidc.buildAuthorizationUrl(config, { ...base, scope: 'openid items:read' }).href,
    );
    expect(ok.status).toBe(303);
    expect(ok.location).toMatch(new RegExp(`^${issuer}/interaction/`));
  });
});

describe('a token request without resource, with two APIs', () => {
  it('gets the audience of the API its scopes belong to, and works there (200)', async () => {
    const c = await rp('items:read billing:read');
    const forItems = await token(c.config, { scope: 'items:read' });
    expect(decodeJwt(forItems.access_token)).toMatchObject({ aud: items, scope: 'items:read' });
    expect((await call('/v1/items', forItems.access_token)).status).toBe(200);
    const forBilling = await token(c.config, { scope: 'billing:read' });
    expect(decodeJwt(forBilling.access_token)).toMatchObject({ aud: billing, scope: 'billing:read' });
    expect((await call('/v2/invoices', forBilling.access_token)).status).toBe(200);
    // Each only where it belongs.
    expect((await call('/v2/invoices', forItems.access_token)).status).toBe(401);
  });

  it('is refused with invalid_target, saying what to send, when the scopes do not pick one API', async () => {
    const c = await rp('items:read billing:read');
    expect(await refusal(c.config, { scope: 'items:read billing:read' })).toEqual({
      error: 'invalid_target',
      description:
        'the requested scopes belong to different APIs; request one resource at a time with the resource parameter',
    });
    expect(await refusal(c.config, {})).toEqual({
      error: 'invalid_target',
      description: 'client is registered for several APIs; choose one with the resource parameter',
    });
    // With resource, the same client gets either.
    const res = await token(c.config, { scope: 'billing:read', resource: billing });
    expect(decodeJwt(res.access_token)).toMatchObject({ aud: billing, scope: 'billing:read' });
  });
});

describe('introspection answers a client only about tokens for its own resources', () => {
  it('a resource server registered for the audience learns about the token; another client gets active:false', async () => {
    const issuing = await rp('billing:read');
    const { access_token: billingToken } = await token(issuing.config, { scope: 'billing:read' });
    // The billing resource server (a confidential client registered for billing).
    const billingRs = await rp('billing:read', { resources: ['billing'] });
    expect(await oidc.tokenIntrospection(billingRs.config, billingToken)).toMatchObject({
      active: true,
      aud: billing,
      client_id: issuing.id,
    });
    // The issuing client about its own token.
    expect((await oidc.tokenIntrospection(issuing.config, billingToken)).active).toBe(true);
    // A client of the other API learns nothing about it.
    const itemsClient = await rp('items:read');
    expect(await oidc.tokenIntrospection(itemsClient.config, billingToken)).toEqual({ active: false });
  });
});
