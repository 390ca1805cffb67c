/**
 * mTLS client authentication (RFC 8705 §2.1, `tls_client_auth`) and certificate-bound access
 * tokens (RFC 8705 §3) end to end: the authorization server and the gateway share the listener,
 * which asks for a client certificate from the CAs in `gateway.mtls.caFiles`.
 *
 * Binding is per client, as in oidc-provider: a client registered with `tls_client_auth` gets
 * tokens bound to the certificate it authenticated with (`tls_client_certificate_bound_access_tokens`
 * is set for it); a secret-authenticated client that happens to present a certificate gets
 * ordinary bearer tokens, without `cnf`.
 */
import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createClient } from '../src/oauth/clients.ts';
import { ca, leaf } from './pki.ts';
import type { Issued } from './pki.ts';
import { startRecordingUpstream, startTestGateway, tempDir } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';

const OPENAPI = {
  openapi: '3.1.0',
  info: { title: 'mtls', version: '1' },
  components: {
    securitySchemes: {
      oauth: {
        type: 'oauth2',
        flows: {
          clientCredentials: { tokenUrl: 'https://localhost/token', scopes: { 'items:read': 'read' } },
        },
      },
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
  },
};

const DN = 'CN=billing-service,O=Example';

let upstream: RecordingUpstream;
let gw: TestGateway;
let caPem: string;
/** The registered client's certificate (subject `CN=billing-service, O=Example`). */
let billing: Issued;
/** Another valid certificate from the same CA, another subject. */
let reporting: Issued;
/** Same subject DN as `billing`, issued by a CA the gateway does not trust. */
let impostor: Issued;
let tlsClientId: string;
let secretClientId: string;
let secretClientSecret: string;
const secrets: string[] = [];

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

async function freePort(): Promise<number> {
  const { createServer } = await import('node:net');
  const s = createServer().listen(0, '127.0.0.1');
  await new Promise((ok) => s.once('listening', ok));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((ok) => s.close(() => ok()));
  return port;
}

/** One request over its own TLS connection, optionally presenting a client certificate. */
function call(
  path: string,
  options: { method?: string; headers?: Record<string, string>; body?: string; cert?: Issued } = {},
): Promise<Reply> {
  const { port } = new URL(gw.p.gatewayUrl);
  const { cert, body } = options;
  return new Promise((ok, fail) => {
    const req = httpsRequest(
      {
        host: '127.0.0.1',
        port: Number(port),
        path,
        method: options.method ?? 'GET',
        servername: 'localhost',
        ca: caPem,
        headers: options.headers ?? {},
        agent: false,
        ...(cert === undefined ? {} : { cert: cert.pem, key: cert.keyPem }),
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => ok({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
      },
    );
    req.on('error', fail);
    req.end(body);
  });
}

/** POST /token with a form body. */
function token(form: Record<string, string>, cert?: Issued, headers: Record<string, string> = {}) {
  return call('/token', {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    body: new URLSearchParams(form).toString(),
    ...(cert === undefined ? {} : { cert }),
  });
}

/** RFC 8705 §3.1, computed here independently of the code under test. */
function thumbprint(cert: Issued): string {
  return createHash('sha256').update(Buffer.from(cert.cert.rawData)).digest('base64url');
}

function jwtParts(jwt: string): { header: Record<string, unknown>; payload: Record<string, unknown> } {
  const [h, p] = jwt.split('.');
  const decode = (s: string | undefined) =>
    JSON.parse(Buffer.from(s ?? '', 'base64url').toString('utf8')) as Record<string, unknown>;
  return { header: decode(h), payload: decode(p) };
}

function accessTokenOf(reply: Reply): string {
  expect(reply.status, reply.body).toBe(200);
  const parsed = JSON.parse(reply.body) as { access_token?: unknown; token_type?: unknown };
  expect(typeof parsed.access_token).toBe('string');
  const value = parsed.access_token as string;
  secrets.push(value);
  return value;
}

function basic(id: string, secret: string): string {
  return `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;
}

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  const root = await ca('CN=Test Client CA');
  billing = await leaf(root, 'billing-service');
  reporting = await leaf(root, 'reporting-service');
  impostor = await leaf(await ca('CN=Other CA'), 'billing-service');
  const dir = await tempDir();
  await writeFile(join(dir, 'client-ca.pem'), root.pem);
  const port = await freePort();
  gw = await startTestGateway(
    {
      gateway: { port, publicUrl: `https://localhost:${String(port)}`, mtls: { caFiles: ['client-ca.pem'] } },
      apis: [{ name: 'items', openapi: 'api.yaml', basePath: '/v1', upstream: { url: upstream.url } }],
    },
    { openapi: OPENAPI, dir },
  );
  caPem = gw.p.tls.source === 'development' ? gw.p.tls.caCertPem : '';
  const keys = gw.p.keys!;
  const tls = await createClient(gw.p.store.db, keys, {
    name: 'billing',
    grantTypes: ['client_credentials'],
    scope: 'items:read',
    authMethod: 'tls_client_auth',
    tlsSubjectDn: DN,
  });
  expect(tls.clientSecret).toBeUndefined();
  tlsClientId = tls.client.clientId;
  const secret = await createClient(gw.p.store.db, keys, {
    name: 'reports',
    grantTypes: ['client_credentials'],
    scope: 'items:read',
  });
  secretClientId = secret.client.clientId;
  secretClientSecret = secret.clientSecret ?? '';
  expect(secretClientSecret).not.toBe('');
  secrets.push(secretClientSecret);
}, 60_000);

afterAll(async () => {
  const logs = gw.logs();
  for (const s of secrets) expect(logs).not.toContain(s);
  await gw.close();
  await upstream.close();
});

const clientCredentials = () => ({
  grant_type: 'client_credentials',
  client_id: tlsClientId,
  scope: 'items:read',
});

describe('tls_client_auth at the token endpoint', () => {
  it('issues a client-credentials token bound to the presented certificate', async () => {
    const reply = await token(clientCredentials(), billing);
    const value = accessTokenOf(reply);
    expect(reply.headers['cache-control']).toContain('no-store');
    expect((JSON.parse(reply.body) as { token_type: string }).token_type).toBe('Bearer');
    const { header, payload } = jwtParts(value);
    expect(header.typ).toBe('at+jwt');
    expect(payload.client_id).toBe(tlsClientId);
    expect(payload.scope).toBe('items:read');
    expect(payload.cnf).toEqual({ 'x5t#S256': thumbprint(billing) });
    expect(thumbprint(billing)).not.toBe(thumbprint(impostor));
    // Introspection (the client authenticating with the same certificate) reports the binding.
    const introspected = await call('/token/introspection', {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token: value, client_id: tlsClientId }).toString(),
      cert: billing,
    });
    expect(introspected.status).toBe(200);
    expect(JSON.parse(introspected.body)).toMatchObject({
      active: true,
      client_id: tlsClientId,
      cnf: { 'x5t#S256': thumbprint(billing) },
    });
  });

  it('refuses the client without a certificate, with another subject, or from an untrusted CA', async () => {
    for (const cert of [undefined, reporting, impostor]) {
      const reply = await token(clientCredentials(), cert);
      expect(reply.status).toBe(401);
      expect(JSON.parse(reply.body)).toMatchObject({ error: 'invalid_client' });
      expect(reply.body).not.toContain('access_token');
      expect(reply.headers['cache-control']).toContain('no-store');
    }
  });

  it('does not accept a client secret in place of the certificate', async () => {
    // The secret of another client, presented for the tls_client_auth client.
    const reply = await token(clientCredentials(), undefined, {
      authorization: basic(tlsClientId, secretClientSecret),
    });
    expect(reply.status).toBe(401);
    expect(JSON.parse(reply.body)).toMatchObject({ error: 'invalid_client' });
  });
});

describe('certificate-bound tokens at the gateway', () => {
  it('accepts the token only over a connection presenting the same certificate', async () => {
    const value = accessTokenOf(await token(clientCredentials(), billing));
    const authorization = { authorization: `Bearer ${value}` };
    upstream.received.length = 0;
    const ok = await call('/v1/items', { headers: authorization, cert: billing });
    expect(ok.status, ok.body).toBe(200);
    for (const cert of [reporting, impostor, undefined]) {
      const refused = await call('/v1/items', { headers: authorization, ...(cert ? { cert } : {}) });
      expect(refused.status).toBe(401);
      expect(String(refused.headers['www-authenticate'])).toContain('invalid_token');
      expect(refused.headers['content-type']).toContain('application/problem+json');
      expect(refused.body).not.toContain('x5t');
      expect(refused.body).not.toContain(value);
    }
    // Only the bound request reached the upstream.
    expect(upstream.received).toHaveLength(1);
    expect(upstream.received[0]!.headers.authorization).toBeUndefined();
  });
});

describe('a client_secret_basic client that presents a certificate', () => {
  it('gets ordinary bearer tokens: binding follows the client registration, not the connection', async () => {
    const authorization = basic(secretClientId, secretClientSecret);
    const form = { grant_type: 'client_credentials', scope: 'items:read' };
    const withCert = accessTokenOf(await token(form, reporting, { authorization }));
    const { payload } = jwtParts(withCert);
    expect(payload.client_id).toBe(secretClientId);
    expect(payload.cnf).toBeUndefined();
    // Unbound, so usable over any connection, with or without a certificate.
    expect((await call('/v1/items', { headers: { authorization: `Bearer ${withCert}` } })).status).toBe(200);
    expect(
      (await call('/v1/items', { headers: { authorization: `Bearer ${withCert}` }, cert: billing })).status,
    ).toBe(200);
    // The secret is still required: the certificate does not authenticate this client.
    const noSecret = await token({ ...form, client_id: secretClientId }, reporting);
    expect(noSecret.status).toBe(401);
    expect(JSON.parse(noSecret.body)).toMatchObject({ error: 'invalid_client' });
  });
});
