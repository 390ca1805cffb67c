/**
 * `portcullis start --role authorization-server` and `--role gateway` as two real CLI processes
 * on free ports, sharing one data directory (SQLite store, master key, signing keys, dev CA) and
 * one public origin, as behind a load balancer that sends OAuth paths to one and API paths to the
 * other. The authorization server serves only its paths; the gateway serves only the APIs and
 * verifies the authorization server's tokens, revocations included.
 */
import { spawn } from 'node:child_process';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { startRecordingUpstream, tempDir } from './helpers.ts';
import type { RecordingUpstream } from './helpers.ts';

const ROOT = new URL('..', import.meta.url).pathname;

const OPENAPI = {
  openapi: '3.1.0',
  info: { title: 'items', version: '1' },
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
        operationId: 'listItems',
        security: [{ oauth: ['items:read'] }],
        responses: { '200': { description: 'ok' } },
      },
    },
  },
};

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((ok) => server.close(() => ok()));
  return port;
}

function cli(args: string[]): ChildProcessWithoutNullStreams {
  return spawn('sh', [join(ROOT, 'scripts/node24.sh'), join(ROOT, 'src/cli/main.ts'), ...args], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
}

interface Running {
  readonly child: ChildProcessWithoutNullStreams;
  output(): string;
}

/** Starts `portcullis start` and waits for its `started` log line. */
async function start(role: string, config: string, dataDir: string): Promise<Running> {
  const child = cli(['start', '--role', role, '--config', config, '--data-dir', dataDir]);
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString('utf8')));
  child.stderr.on('data', (c: Buffer) => (out += c.toString('utf8')));
  const deadline = Date.now() + 45_000;
  while (!out.includes('"event":"started"')) {
    if (child.exitCode !== null) throw new Error(`portcullis (${role}) exited: ${out}`);
    if (Date.now() > deadline) throw new Error(`portcullis (${role}) did not start: ${out}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return { child, output: () => out };
}

async function stop(r: Running | undefined): Promise<void> {
  if (r === undefined || r.child.exitCode !== null) return;
  const closed = once(r.child, 'close');
  r.child.kill('SIGTERM');
  await closed;
}

async function run(args: string[]): Promise<string> {
  const child = cli(args);
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString('utf8')));
  child.stderr.on('data', (c: Buffer) => (err += c.toString('utf8')));
  child.stdin.end();
  const [code] = (await once(child, 'close')) as [number];
  if (code !== 0) throw new Error(`portcullis ${args.join(' ')} failed: ${err}`);
  return out;
}

let dir: string;
let dataDir: string;
let upstream: RecordingUpstream;
let as: Running | undefined;
let gw: Running | undefined;
let asUrl: string;
let gwUrl: string;
let agent: Agent;
let client: { client_id: string; client_secret: string };

async function call(
  base: string,
  path: string,
  init: { method?: 'GET' | 'POST'; headers?: Record<string, string>; form?: Record<string, string> } = {},
) {
  const res = await request(base + path, {
    method: init.method ?? (init.form === undefined ? 'GET' : 'POST'),
    headers: {
      ...(init.form === undefined ? {} : { 'content-type': 'application/x-www-form-urlencoded' }),
      ...init.headers,
    },
    body: init.form === undefined ? null : new URLSearchParams(init.form).toString(),
    dispatcher: agent,
  });
  return { status: res.statusCode, body: await res.body.text() };
}

function basic(): string {
  return `Basic ${Buffer.from(`${client.client_id}:${client.client_secret}`).toString('base64')}`;
}

async function token(): Promise<string> {
  const res = await call(asUrl, '/token', {
    form: { grant_type: 'client_credentials', scope: 'items:read' },
    headers: { authorization: basic() },
  });
  expect(res.status).toBe(200);
  return (JSON.parse(res.body) as { access_token: string }).access_token;
}

beforeAll(async () => {
  dir = await tempDir('portcullis-roles-');
  dataDir = join(dir, 'data');
  upstream = await startRecordingUpstream();
  await writeFile(join(dir, 'api.yaml'), stringify(OPENAPI));
  const asPort = await freePort();
  const gwPort = await freePort();
  // One public origin (the issuer) for both, as behind a path-routing load balancer.
  const publicUrl = `https://localhost:${String(asPort)}`;
  const config = (port: number) => ({
    gateway: { port, publicUrl },
    admin: { enabled: false },
    apis: [{ name: 'items', basePath: '/v1', openapi: 'api.yaml', upstream: { url: upstream.url } }],
  });
  const asConfig = join(dir, 'as.yaml');
  const gwConfig = join(dir, 'gateway.yaml');
  await writeFile(asConfig, stringify(config(asPort)));
  await writeFile(gwConfig, stringify(config(gwPort)));
  // The authorization server first: it creates the data directory, keys and development CA.
  as = await start('authorization-server', asConfig, dataDir);
  gw = await start('gateway', gwConfig, dataDir);
  asUrl = `https://localhost:${String(asPort)}`;
  gwUrl = `https://localhost:${String(gwPort)}`;
  agent = new Agent({ connect: { ca: readFileSync(join(dataDir, 'tls', 'ca.crt'), 'utf8') } });
  client = JSON.parse(
    await run([
      'clients',
      'create',
      '--name',
      'roles',
      '--grant',
      'client_credentials',
      '--scope',
      'items:read',
      '--json',
      '--config',
      asConfig,
      '--data-dir',
      dataDir,
    ]),
  ) as { client_id: string; client_secret: string };
}, 120_000);

afterAll(async () => {
  await stop(gw);
  await stop(as);
  await agent.close();
  await upstream.close();
  // Neither process logged the client secret.
  for (const r of [as, gw]) expect(r?.output() ?? '').not.toContain(client.client_secret);
  await rm(dir, { recursive: true, force: true });
}, 30_000);

describe('--role authorization-server', () => {
  it('serves discovery, JWKS and the token endpoint', async () => {
    const discovery = await call(asUrl, '/.well-known/openid-configuration');
    expect(discovery.status).toBe(200);
    expect((JSON.parse(discovery.body) as { issuer: string }).issuer).toBe(asUrl);
    expect((await call(asUrl, '/jwks')).status).toBe(200);
    expect(await token()).toMatch(/^ey/);
  });

  it('does not serve the APIs: 404, and the upstream sees nothing', async () => {
    const t = await token();
    upstream.received.length = 0;
    for (const path of ['/v1/items', '/v1/nothing', '/']) {
      const res = await call(asUrl, path, { headers: { authorization: `Bearer ${t}` } });
      expect(res.status).toBe(404);
    }
    expect(upstream.received).toHaveLength(0);
  });
});

describe('--role gateway', () => {
  it('does not serve the authorization server: discovery, JWKS, token and auth are 404', async () => {
    for (const path of [
      '/.well-known/openid-configuration',
      '/jwks',
      '/auth',
      '/.well-known/oauth-authorization-server',
    ]) {
      expect((await call(gwUrl, path)).status).toBe(404);
    }
    const res = await call(gwUrl, '/token', {
      form: { grant_type: 'client_credentials', scope: 'items:read' },
      headers: { authorization: basic() },
    });
    expect(res.status).toBe(404);
    expect(res.body).not.toContain('access_token');
  });

  it('serves the APIs with the authorization server’s tokens, and only with them', async () => {
    const t = await token();
    upstream.received.length = 0;
    const ok = await call(gwUrl, '/v1/items', { headers: { authorization: `Bearer ${t}` } });
    expect(ok.status).toBe(200);
    expect(upstream.received).toHaveLength(1);
    expect((await call(gwUrl, '/v1/items')).status).toBe(401);
    const [h, p] = t.split('.');
    const forged = `${h ?? ''}.${p ?? ''}.${Buffer.from('not a signature').toString('base64url')}`;
    expect((await call(gwUrl, '/v1/items', { headers: { authorization: `Bearer ${forged}` } })).status).toBe(
      401,
    );
    expect(upstream.received).toHaveLength(1);
  });

  it('refuses a token once the authorization server has revoked it', async () => {
    const t = await token();
    const auth = { authorization: `Bearer ${t}` };
    expect((await call(gwUrl, '/v1/items', { headers: auth })).status).toBe(200);
    const revoked = await call(asUrl, '/token/revocation', {
      form: { token: t },
      headers: { authorization: basic() },
    });
    expect(revoked.status).toBe(200);
    // The gateway reads revocations from the shared store (its answers are cached for seconds).
    const deadline = Date.now() + 20_000;
    let status = 200;
    while (status === 200 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 250));
      status = (await call(gwUrl, '/v1/items', { headers: auth })).status;
    }
    expect(status).toBe(401);
  });
});
