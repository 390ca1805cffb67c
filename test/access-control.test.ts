/**
 * Every credential mechanism through the real gateway: API keys, DPoP-bound and
 * certificate-bound tokens, mTLS, and the signed caller assertion the upstream receives in place
 * of the client's credential (and which never comes back to the client).
 */
import { writeFile } from 'node:fs/promises';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import * as oidc from 'openid-client';
import { Agent, fetch as undiciFetch } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createClient } from '../src/oauth/clients.ts';
import { issueApiKey, revokeApiKey } from '../src/tokens/api-keys.ts';
import { createIdentityVerifier } from '../src/tokens/identity.ts';
import { ca, leaf } from './pki.ts';
import type { Issued } from './pki.ts';
import { startRecordingUpstream, startTestGateway, tempDir } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';

const OPENAPI = {
  openapi: '3.1.0',
  info: { title: 'access', version: '1' },
  components: {
    securitySchemes: {
      oauth: {
        type: 'oauth2',
        flows: {
          clientCredentials: { tokenUrl: 'https://localhost/token', scopes: { 'items:read': 'read' } },
        },
      },
      key: { type: 'apiKey', in: 'header', name: 'x-api-key' },
      queryKey: { type: 'apiKey', in: 'query', name: 'api_key' },
      cert: { type: 'mutualTLS' },
    },
  },
  paths: {
    '/items': {
      get: {
        operationId: 'items',
        security: [{ oauth: ['items:read'] }],
        responses: { '200': { description: 'ok' } },
      },
    },
    '/keyed': {
      get: { operationId: 'keyed', security: [{ key: [] }], responses: { '200': { description: 'ok' } } },
    },
    '/query-keyed': {
      get: {
        operationId: 'queryKeyed',
        parameters: [{ name: 'api_key', in: 'query', schema: { type: 'string' } }],
        security: [{ queryKey: [] }],
        responses: { '200': { description: 'ok' } },
      },
    },
    '/machine': {
      get: { operationId: 'machine', security: [{ cert: [] }], responses: { '200': { description: 'ok' } } },
    },
  },
};

let upstream: RecordingUpstream;
let gw: TestGateway;
let issuer: string;
let agent: Agent;
let rpConfig: oidc.Configuration;
let root: Issued;
let client: Issued;
let stranger: Issued;
let unlisted: Issued;
let bySan: Issued;
let caPem: string;
const secrets: string[] = [];

async function freePort(): Promise<number> {
  const { createServer } = await import('node:net');
  const s = createServer().listen(0, '127.0.0.1');
  await new Promise((ok) => s.once('listening', ok));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((ok) => s.close(() => ok()));
  return port;
}

/** A request over TLS, optionally presenting a client certificate. */
function call(
  path: string,
  headers: Record<string, string> = {},
  cert?: Issued,
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  const { port } = new URL(gw.p.gatewayUrl);
  return new Promise((ok, fail) => {
    const req = httpsRequest(
      {
        host: '127.0.0.1',
        port: Number(port),
        path,
        servername: 'localhost',
        ca: caPem,
        headers,
        agent: false,
        ...(cert === undefined ? {} : { cert: cert.pem, key: cert.keyPem }),
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => ok({ status: res.statusCode ?? 0, headers: res.headers, body }));
      },
    );
    req.on('error', fail);
    req.end();
  });
}

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  root = await ca('CN=Test Client CA');
  client = await leaf(root, 'billing-service');
  stranger = await leaf(await ca('CN=Other CA'), 'intruder');
  // From the trusted CA, but not on the API's list: authenticated, not authorised.
  unlisted = await leaf(root, 'reports-service');
  bySan = await leaf(root, 'batch-7', { san: [{ type: 'url', value: 'spiffe://example.org/sa/batch' }] });
  const dir = await tempDir();
  await writeFile(join(dir, 'client-ca.pem'), root.pem);
  const port = await freePort();
  issuer = `https://localhost:${String(port)}`;
  gw = await startTestGateway(
    {
      gateway: { port, publicUrl: issuer, mtls: { caFiles: ['client-ca.pem'] } },
      apis: [
        {
          name: 'access',
          openapi: 'api.yaml',
          basePath: '/v1',
          upstream: { url: upstream.url },
          mtls: {
            clients: [
              { subject: 'CN=billing-service, O=Example' },
              { san: 'uri:spiffe://example.org/sa/batch', principal: 'batch-jobs' },
            ],
          },
        },
      ],
    },
    { openapi: OPENAPI, dir },
  );
  caPem = gw.p.tls.source === 'development' ? gw.p.tls.caCertPem : '';
  agent = new Agent({ connect: { ca: caPem } });
  const keys = gw.p.keys!;
  const { client: registered, clientSecret } = await createClient(gw.p.store.db, keys, {
    name: 'svc',
    grantTypes: ['client_credentials'],
    scope: 'items:read',
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
    registered.clientId,
    undefined,
    oidc.ClientSecretBasic(clientSecret ?? ''),
    {
      [oidc.customFetch]: fetchFn,
    },
  );
  rpConfig[oidc.customFetch] = fetchFn;
}, 60_000);

afterAll(async () => {
  const logs = gw.logs();
  for (const s of secrets.filter((x) => x !== '')) expect(logs).not.toContain(s);
  await gw.close();
  await agent.close();
  await upstream.close();
});

describe('identity to the upstream', () => {
  it('sends a short-lived signed assertion instead of the token, and never returns it', async () => {
    const { access_token } = await oidc.clientCredentialsGrant(rpConfig, { scope: 'items:read' });
    secrets.push(access_token);
    upstream.received.length = 0;
    upstream.respond(() => ({
      status: 200,
      headers: { 'x-portcullis-identity': 'echoed-back' },
      body: '{}',
    }));
    try {
      const res = await call('/v1/items', {
        authorization: `Bearer ${access_token}`,
        'x-portcullis-identity': 'forged-by-client',
      });
      expect(res.status).toBe(200);
      expect(res.headers['x-portcullis-identity']).toBeUndefined();
    } finally {
      upstream.respond((r) => ({ status: 200, body: JSON.stringify({ url: r.url }) }));
    }
    const seen = upstream.received[0]!.headers;
    expect(seen.authorization).toBeUndefined();
    const assertion = String(seen['x-portcullis-identity']);
    expect(assertion).not.toBe('forged-by-client');
    const verify = createIdentityVerifier({
      issuer,
      audience: upstream.url,
      jwks: () => gw.p.keys!.publicJwks(),
    });
    const who = await verify(assertion);
    expect(who.clientId).toBe(rpConfig.clientMetadata().client_id);
    expect([...who.scopes]).toEqual(['items:read']);
    // The correlation id travels in its own header; the assertion is reused for the same caller
    // and upstream within its lifetime, so it cannot carry a per-request claim.
    expect((await call('/v1/items', { authorization: `Bearer ${access_token}` })).status).toBe(200);
    const again = upstream.received[1]!.headers;
    expect(again['x-portcullis-identity']).toBe(assertion);
    expect(typeof seen['x-request-id']).toBe('string');
    expect(again['x-request-id']).not.toBe(seen['x-request-id']);
    const [, payload] = assertion.split('.');
    const claims = JSON.parse(Buffer.from(payload!, 'base64url').toString('utf8')) as {
      iat: number;
      exp: number;
    };
    expect(claims.exp - claims.iat).toBeLessThanOrEqual(60);
    // The assertion is not an access token: the gateway refuses it as one.
    expect((await call('/v1/items', { authorization: `Bearer ${assertion}` })).status).toBe(401);
  });

  it('a public operation carries no assertion, and a forged one is dropped', async () => {
    // /keyed with a valid key is covered below; here the forged header alone must not pass.
    upstream.received.length = 0;
    expect((await call('/v1/keyed', { 'x-portcullis-identity': 'forged' })).status).toBe(401);
    expect(upstream.received).toHaveLength(0);
  });
});

describe('API keys', () => {
  it('accepts a valid key in its header, refuses a revoked, unknown or malformed one', async () => {
    const issued = await issueApiKey(gw.p.store, gw.p.keys!, { name: 'partner', apis: ['access'] });
    secrets.push(issued.key);
    const ok = await call('/v1/keyed', { 'x-api-key': issued.key });
    expect(ok.status).toBe(200);
    // The key stays at the gateway; the upstream gets the caller assertion instead.
    expect(upstream.received.at(-1)!.headers['x-api-key']).toBeUndefined();
    expect(upstream.received.at(-1)!.headers['x-portcullis-identity']).toBeDefined();
    const typo = issued.key.slice(0, -1) + (issued.key.endsWith('A') ? 'B' : 'A');
    expect((await call('/v1/keyed', { 'x-api-key': typo })).status).toBe(401);
    expect((await call('/v1/keyed', { 'x-api-key': 'pcl_live_nope' })).status).toBe(401);
    expect((await call('/v1/keyed')).status).toBe(401);
    await revokeApiKey(gw.p.store, issued.id);
    // Revocation from another process (here: the store directly) applies within the cache TTL.
    let status = 200;
    for (let i = 0; i < 40 && status === 200; i++) {
      await new Promise((r) => setTimeout(r, 250));
      status = (await call('/v1/keyed', { 'x-api-key': issued.key })).status;
    }
    expect(status).toBe(401);
  });

  it('refuses keys in the query string even when the document declares them there', async () => {
    const issued = await issueApiKey(gw.p.store, gw.p.keys!, { name: 'leaky', apis: ['access'] });
    secrets.push(issued.key);
    expect((await call(`/v1/query-keyed?api_key=${issued.key}`)).status).toBe(401);
  });

  it('refuses a key issued for another API', async () => {
    const issued = await issueApiKey(gw.p.store, gw.p.keys!, { name: 'elsewhere', apis: ['billing'] });
    secrets.push(issued.key);
    expect((await call('/v1/keyed', { 'x-api-key': issued.key })).status).toBe(403);
  });
});

describe('mTLS', () => {
  it('accepts a client certificate from the configured CA; refuses none or a foreign one', async () => {
    upstream.received.length = 0;
    expect((await call('/v1/machine', {}, client)).status).toBe(200);
    expect((await call('/v1/machine')).status).toBe(401);
    expect((await call('/v1/machine', {}, stranger)).status).toBe(401);
    expect(upstream.received).toHaveLength(1);
  });

  it('refuses a certificate of the trusted CA that the API does not list, with a problem and an audit event', async () => {
    upstream.received.length = 0;
    const res = await call('/v1/machine', {}, unlisted);
    expect(res.status).toBe(403);
    expect(res.headers['content-type']).toContain('application/problem+json');
    const problem = JSON.parse(res.body) as { status: number; title: string; detail?: string };
    expect(problem).toMatchObject({ status: 403, title: 'Forbidden' });
    expect(res.body).not.toContain('reports-service');
    expect(upstream.received).toHaveLength(0);
    const correlation = String(res.headers['x-request-id']);
    await gw.p.audit.flush();
    const rows = await gw.p.store.db
      .selectFrom('audit_events')
      .select('event')
      .where('trace_id', '=', correlation)
      .execute();
    expect(rows).toHaveLength(1);
    const event = JSON.parse(rows[0]!.event) as Record<string, unknown>;
    expect(event['event.outcome']).toBe('failure');
    expect(event['event.reason']).toBe('client-certificate-not-entitled');
    expect(event['http.response.status_code']).toBe(403);
  });

  it('accepts a certificate listed by SAN, under its mapped principal', async () => {
    upstream.received.length = 0;
    expect((await call('/v1/machine', {}, bySan)).status).toBe(200);
    expect(upstream.received).toHaveLength(1);
    const verify = createIdentityVerifier({
      issuer,
      audience: upstream.url,
      jwks: () => gw.p.keys!.publicJwks(),
    });
    const who = await verify(String(upstream.received[0]!.headers['x-portcullis-identity']));
    expect(who.subject).toBe('batch-jobs');
  });

  it('a mutualTLS scheme without the API listing its certificates is a configuration error', async () => {
    const dir = await tempDir();
    await writeFile(join(dir, 'client-ca.pem'), root.pem);
    await expect(
      startTestGateway(
        {
          gateway: { mtls: { caFiles: ['client-ca.pem'] } },
          apis: [{ name: 'access', openapi: 'api.yaml', basePath: '/v1', upstream: { url: upstream.url } }],
        },
        { openapi: OPENAPI, dir },
      ),
    ).rejects.toThrow(
      /apis\[0\]\.name: the OpenAPI document declares a mutualTLS scheme: list the certificates/,
    );
  });

  it('does not require a certificate where the operation does not ask for one', async () => {
    const { access_token } = await oidc.clientCredentialsGrant(rpConfig, { scope: 'items:read' });
    secrets.push(access_token);
    expect((await call('/v1/items', { authorization: `Bearer ${access_token}` })).status).toBe(200);
  });
});

describe('DPoP through the gateway', () => {
  it('accepts a DPoP-bound token with a fresh proof; refuses it as Bearer, without a proof, or replayed', async () => {
    const keyPair = await oidc.randomDPoPKeyPair();
    const handle = oidc.getDPoPHandle(rpConfig, keyPair);
    const { access_token } = await oidc.clientCredentialsGrant(
      rpConfig,
      { scope: 'items:read' },
      { DPoP: handle },
    );
    secrets.push(access_token);
    const url = new URL('/v1/items', issuer);
    const fetchFn = rpConfig[oidc.customFetch]!;
    // openid-client builds the proof (htm, htu, ath, jti) exactly as a real client does.
    const ok = await oidc.fetchProtectedResource(rpConfig, access_token, url, 'GET', undefined, undefined, {
      DPoP: handle,
    });
    expect(ok.status).toBe(200);
    expect((await call('/v1/items', { authorization: `Bearer ${access_token}` })).status).toBe(401);
    expect((await call('/v1/items', { authorization: `DPoP ${access_token}` })).status).toBe(401);
    // Replay: the same proof twice.
    let captured = '';
    const capture: oidc.CustomFetch = async (u, init) => {
      captured = new Headers(init.headers).get('dpop') ?? '';
      return fetchFn(u, init);
    };
    rpConfig[oidc.customFetch] = capture;
    try {
      const first = await oidc.fetchProtectedResource(
        rpConfig,
        access_token,
        url,
        'GET',
        undefined,
        undefined,
        { DPoP: handle },
      );
      expect(first.status).toBe(200);
    } finally {
      rpConfig[oidc.customFetch] = fetchFn;
    }
    const replayed = await call('/v1/items', { authorization: `DPoP ${access_token}`, dpop: captured });
    expect(replayed.status).toBe(401);
    expect(String(replayed.headers['www-authenticate'])).toContain('DPoP');
  });
});
