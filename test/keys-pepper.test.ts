/**
 * Pepper rotation on the running gateway (`portcullis keys rotate-pepper`, `keys retire-peppers`):
 * after a rotation, client secrets and API keys hashed under the old pepper keep working for the
 * grace period and are re-hashed when used; new ones use the new pepper; once the old pepper is
 * retired, a secret never used meanwhile is refused (and the refusal audited). Both commands are
 * audited. The CLI runs as another process against the gateway's store.
 */
import { join } from 'node:path';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { Agent, fetch as undiciFetch } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { queryStoreLog } from '../src/audit/sinks/store.ts';
import { parseGrace } from '../src/cli/keys.ts';
import type { StoreKeyManager } from '../src/keys/index.ts';
import { createClient } from '../src/oauth/clients.ts';
import { issueApiKey } from '../src/tokens/api-keys.ts';
import { runPortcullis } from './cli-harness.ts';
import { startRecordingUpstream, startTestGateway } from './helpers.ts';
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
  },
};

let upstream: RecordingUpstream;
let gw: TestGateway;
let keys: StoreKeyManager;
let issuer: string;
let agent: Agent;
let cli: string[];

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  const probe = createServer();
  await new Promise<void>((ok) => probe.listen(0, '127.0.0.1', ok));
  const { port } = probe.address() as AddressInfo;
  await new Promise<void>((ok) => probe.close(() => ok()));
  issuer = `https://localhost:${String(port)}`;
  gw = await startTestGateway(
    {
      gateway: { port, publicUrl: issuer },
      apis: [{ name: 'access', basePath: '/v1', openapi: 'api.yaml', upstream: { url: upstream.url } }],
    },
    { openapi: OPENAPI },
  );
  keys = gw.p.keys as StoreKeyManager;
  const ca = gw.p.tls.source === 'development' ? gw.p.tls.caCertPem : undefined;
  agent = new Agent({ connect: { ca } });
  cli = ['--config', gw.configFile, '--data-dir', join(gw.dir, 'data')];
}, 60_000);

afterAll(async () => {
  await gw.close();
  await agent.close();
  await upstream.close();
});

async function client(): Promise<{ id: string; secret: string }> {
  const { client: c, clientSecret } = await createClient(gw.p.store.db, keys, {
    name: 'pepper',
    grantTypes: ['client_credentials'],
    scope: 'items:read',
  });
  return { id: c.clientId, secret: clientSecret ?? '' };
}

async function tokenStatus(c: { id: string; secret: string }): Promise<number> {
  const res = await undiciFetch(`${issuer}/token`, {
    method: 'POST',
    dispatcher: agent,
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      authorization: `Basic ${Buffer.from(`${c.id}:${c.secret}`).toString('base64')}`,
    },
    body: new URLSearchParams({ grant_type: 'client_credentials', scope: 'items:read' }).toString(),
  });
  await res.arrayBuffer();
  return res.status;
}

const keyed = async (key: string) =>
  (await gw.request('/v1/keyed', { headers: { 'x-api-key': key } })).status;

async function secretHash(id: string): Promise<string | null> {
  const row = await gw.p.store.db
    .selectFrom('oauth_clients')
    .select('secret_hash')
    .where('client_id', '=', id)
    .executeTakeFirstOrThrow();
  return row.secret_hash;
}

async function eventually(check: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('condition not met in time');
}

describe('pepper rotation', () => {
  it('parses --grace', () => {
    expect(parseGrace('0')).toBe(0);
    expect(parseGrace('7d')).toBe(7 * 86_400_000);
    expect(parseGrace('12h')).toBe(12 * 3_600_000);
    for (const bad of ['', '7', '-1d', '1w', '07d', '1.5d']) expect(parseGrace(bad)).toBeUndefined();
  });

  it('keeps old secrets valid for the grace period, re-hashes those used, refuses the rest after retirement', async () => {
    const usedKey = await issueApiKey(gw.p.store, keys, { name: 'used', apis: ['access'] });
    const idleKey = await issueApiKey(gw.p.store, keys, { name: 'idle', apis: ['access'] });
    const usedClient = await client();
    const idleClient = await client();
    expect(await keyed(usedKey.key)).toBe(200);
    expect(await keyed(idleKey.key)).toBe(200);
    expect(await tokenStatus(usedClient)).toBe(200);
    const oldClientHash = await secretHash(usedClient.id);
    const oldApiHash = keys.hmac('api-key', usedKey.key);

    const rotated = await runPortcullis(['keys', 'rotate-pepper', '--grace', '1d', '--json', ...cli]);
    expect(rotated.code, rotated.stderr).toBe(0);
    const out = JSON.parse(rotated.stdout) as { peppers: { purpose: string; previous: string | null }[] };
    expect(out.peppers.map((p) => p.purpose).sort()).toEqual(['api-key', 'client-secret']);
    await keys.refresh();
    expect(keys.previousPeppers()).toHaveLength(2);
    expect(keys.hmac('api-key', usedKey.key)).not.toBe(oldApiHash);

    // Grace: the old pepper still verifies; what is used is re-hashed under the new one.
    expect(await keyed(usedKey.key)).toBe(200);
    const apiRow = await gw.p.store.db
      .selectFrom('api_keys')
      .select('key_hash')
      .where('id', '=', usedKey.id)
      .executeTakeFirstOrThrow();
    expect(apiRow.key_hash).toBe(keys.hmac('api-key', usedKey.key));
    expect(await tokenStatus(usedClient)).toBe(200);
    await eventually(async () => (await secretHash(usedClient.id)) !== oldClientHash);
    expect(await secretHash(usedClient.id)).toBe(keys.hmac('client-secret', usedClient.secret));
    // New secrets use the new pepper.
    const fresh = await issueApiKey(gw.p.store, keys, { name: 'fresh', apis: ['access'] });
    expect(await keyed(fresh.key)).toBe(200);
    const freshClient = await client();
    expect(await secretHash(freshClient.id)).toBe(keys.hmac('client-secret', freshClient.secret));
    expect(await tokenStatus(freshClient)).toBe(200);

    // Retired: the idle ones (still hashed under the old pepper) are refused; the others work.
    const retired = await runPortcullis(['keys', 'retire-peppers', '--json', ...cli]);
    expect(retired.code, retired.stderr).toBe(0);
    expect((JSON.parse(retired.stdout) as { retired: string[] }).retired).toHaveLength(2);
    await keys.refresh();
    expect(keys.previousPeppers()).toHaveLength(0);
    expect(await keyed(usedKey.key)).toBe(200);
    expect(await keyed(fresh.key)).toBe(200);
    expect(await tokenStatus(usedClient)).toBe(200);
    expect(await keyed(idleKey.key)).toBe(401);
    expect(await tokenStatus(idleClient)).toBe(401);

    // Request events are group-committed: wait for the refusal's.
    const refusedEvents = async () =>
      (await queryStoreLog(gw.p.store.db, { limit: 1000 })).filter(
        (e) =>
          e.event['event.category'] === 'authentication' &&
          e.event['event.outcome'] === 'failure' &&
          e.event['url.path'] === '/v1/keyed',
      );
    await eventually(async () => (await refusedEvents()).length >= 1);
    const events = await queryStoreLog(gw.p.store.db, { limit: 1000 });
    const actions = events.map((e) => e.event['event.action']);
    expect(actions.filter((a) => a === 'pepper-rotate')).toHaveLength(2);
    expect(actions.filter((a) => a === 'pepper-retire')).toHaveLength(2);
    const refused = await refusedEvents();
    expect(refused.length).toBeGreaterThanOrEqual(1);
    for (const s of [usedKey.key, idleKey.key, usedClient.secret]) expect(gw.logs()).not.toContain(s);
  }, 120_000);

  it('--grace 0 retires the old pepper at once; a bad --grace or --purpose is refused', async () => {
    const k = await issueApiKey(gw.p.store, keys, { name: 'now', apis: ['access'] });
    expect(await keyed(k.key)).toBe(200);
    const r = await runPortcullis(['keys', 'rotate-pepper', '--purpose', 'api-key', '--grace', '0', ...cli]);
    expect(r.code, r.stderr).toBe(0);
    await keys.refresh();
    expect(keys.previousPeppers()).toHaveLength(0);
    expect(await keyed(k.key)).toBe(401);
    const bad = await runPortcullis(['keys', 'rotate-pepper', '--grace', '1w', ...cli]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('--grace');
    const badPurpose = await runPortcullis(['keys', 'rotate-pepper', '--purpose', 'cookies', ...cli]);
    expect(badPurpose.code).not.toBe(0);
    expect(badPurpose.stderr).toContain('--purpose');
  }, 60_000);
});
