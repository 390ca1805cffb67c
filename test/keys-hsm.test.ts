/**
 * The whole gateway with `keys.provider: pkcs11` on a real SoftHSM2 token: the authorization
 * server signs access tokens on the HSM, the gateway verifies them, /jwks publishes the public
 * key, rotation makes the next key on the HSM; users' TOTP seeds are wrapped by the HSM's KEK.
 * Then a store that began with a local master key is migrated to the HSM
 * (`portcullis keys rotate-master --to pkcs11`), after which the local key file can go.
 */
import { rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';
import type { JSONWebKeySet } from 'jose';
import { Agent, fetch as undiciFetch } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { loadConfig } from '../src/config/load.ts';
import { envelopeKeyId } from '../src/keys/kms.ts';
import { createServerInteractions } from '../src/oauth/interactions/hooks.ts';
import { createClient } from '../src/oauth/clients.ts';
import { base32Decode, hotp, totpStep } from '../src/oauth/users.ts';
import { initSoftHsmToken } from '../src/keys/testing/softhsm.ts';
import { runPortcullis } from './cli-harness.ts';
import { startRecordingUpstream, startTestGateway, tempDir } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';

const token = initSoftHsmToken('portcullis-e2e');
const PIN_ENV = 'PORTCULLIS_TEST_E2E_HSM_PIN';
process.env[PIN_ENV] = token.pin;

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

function keysConfig(kekLabel: string) {
  return {
    provider: 'pkcs11',
    pkcs11: {
      module: token.module,
      tokenLabel: token.label,
      pin: `\${env:${PIN_ENV}}`,
      kekLabel,
      signingKeys: true,
    },
  };
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((ok) => server.close(() => ok()));
  return port;
}

interface Running {
  gw: TestGateway;
  issuer: string;
  agent: Agent;
  fetch: (url: string, init?: Parameters<typeof undiciFetch>[1]) => ReturnType<typeof undiciFetch>;
}

async function start(upstream: RecordingUpstream, kekLabel: string, dir?: string): Promise<Running> {
  const port = await freePort();
  const issuer = `https://localhost:${String(port)}`;
  const gw = await startTestGateway(
    {
      gateway: { port, publicUrl: issuer },
      keys: keysConfig(kekLabel),
      apis: [{ name: 'items', basePath: '/v1', openapi: 'api.yaml', upstream: { url: upstream.url } }],
    },
    { openapi: OPENAPI, ...(dir === undefined ? {} : { dir }) },
  );
  const ca = gw.p.tls.source === 'development' ? gw.p.tls.caCertPem : undefined;
  const agent = new Agent({ connect: { ca } });
  return {
    gw,
    issuer,
    agent,
    fetch: (url, init = {}) => undiciFetch(url, { ...init, dispatcher: agent }),
  };
}

async function clientToken(r: Running): Promise<string> {
  const keys = r.gw.p.keys;
  if (keys === undefined) throw new Error('no key manager');
  const { client, clientSecret } = await createClient(r.gw.p.store.db, keys, {
    name: 'hsm',
    grantTypes: ['client_credentials'],
    scope: 'items:read',
  });
  const res = await r.fetch(`${r.issuer}/token`, {
    method: 'POST',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      authorization: `Basic ${Buffer.from(`${client.clientId}:${clientSecret ?? ''}`).toString('base64')}`,
    },
    body: new URLSearchParams({ grant_type: 'client_credentials', scope: 'items:read' }).toString(),
  });
  expect(res.status).toBe(200);
  return ((await res.json()) as { access_token: string }).access_token;
}

async function jwks(r: Running): Promise<JSONWebKeySet> {
  return (await (await r.fetch(`${r.issuer}/jwks`)).json()) as JSONWebKeySet;
}

let upstream: RecordingUpstream;
beforeAll(async () => {
  upstream = await startRecordingUpstream();
});
afterAll(async () => {
  await upstream.close();
  token.cleanup();
});

describe('gateway with keys.provider: pkcs11', () => {
  let r: Running;
  beforeAll(async () => {
    r = await start(upstream, 'e2e-kek');
  }, 60_000);
  afterAll(async () => {
    await r.gw.close();
    await r.agent.close();
  });

  it('signs access tokens on the HSM; /jwks publishes the key; the gateway accepts them', async () => {
    const rows = await r.gw.p.store.db.selectFrom('signing_keys').selectAll().execute();
    expect(rows.length).toBeGreaterThanOrEqual(2);
    // No private key in the store: a reference to the token object only.
    for (const row of rows) expect(row.private_jwk_wrapped).toMatch(/^pkcs11:/);
    const at = await clientToken(r);
    const header = decodeProtectedHeader(at);
    expect(header.alg).toBe('ES256');
    const current = rows.find((k) => k.status === 'current');
    expect(header.kid).toBe(current?.kid);
    const set = await jwks(r);
    await jwtVerify(at, createLocalJWKSet(set), { issuer: r.issuer, typ: 'at+jwt' });

    const ok = await r.gw.request('/v1/items', { headers: { authorization: `Bearer ${at}` } });
    expect(ok.status).toBe(200);
    // A signature that is not the HSM's is refused.
    const [h, p, s = ''] = at.split('.');
    const forged = `${h ?? ''}.${p ?? ''}.${s.slice(0, -4)}AAAA`;
    const bad = await r.gw.request('/v1/items', { headers: { authorization: `Bearer ${forged}` } });
    expect(bad.status).toBe(401);
  });

  it('rotates without a restart: the next key is made on the HSM, old tokens keep working', async () => {
    const keys = r.gw.p.keys;
    if (keys === undefined) throw new Error('no key manager');
    const before = await clientToken(r);
    const oldKid = keys.current().kid;
    await keys.rotate('test');
    const after = keys.list();
    const next = after.find((k) => k.status === 'next');
    expect(keys.current().kid).not.toBe(oldKid);
    const row = await r.gw.p.store.db
      .selectFrom('signing_keys')
      .selectAll()
      .where('kid', '=', next?.kid ?? '')
      .executeTakeFirstOrThrow();
    expect(row.private_jwk_wrapped).toMatch(/^pkcs11:/);
    const set = await jwks(r);
    expect(set.keys.map((k) => k.kid)).toEqual(expect.arrayContaining([oldKid, keys.current().kid]));
    const fresh = await clientToken(r);
    expect(decodeProtectedHeader(fresh).kid).toBe(keys.current().kid);
    for (const at of [before, fresh]) {
      const res = await r.gw.request('/v1/items', { headers: { authorization: `Bearer ${at}` } });
      expect(res.status).toBe(200);
    }
  });

  it("wraps users' TOTP seeds with the HSM's key, not a local master key", async () => {
    const keys = r.gw.p.keys;
    if (keys === undefined) throw new Error('no key manager');
    const loaded = await loadConfig(r.gw.configFile);
    const { users } = createServerInteractions({
      loaded: () => loaded,
      store: r.gw.p.store,
      keys,
      dataDir: join(r.gw.dir, 'data'),
      logger: r.gw.p.logger,
    });
    const made = await users.create({ username: 'hsm-user', password: 'a long enough password', totp: true });
    const row = await r.gw.p.store.db
      .selectFrom('users')
      .select('totp_secret_wrapped')
      .where('id', '=', made.user.id)
      .executeTakeFirstOrThrow();
    expect(row.totp_secret_wrapped).toMatch(/^k1\.pkcs11\./);
    const secret = base32Decode(new URL(made.totpUri ?? '').searchParams.get('secret') ?? '');
    const code = hotp(secret, totpStep(Date.now()));
    expect(await users.verifyTotp({ accountId: made.user.id, code, ip: '127.0.0.1' })).toMatchObject({
      ok: true,
    });
    const wrong = code === '000000' ? '111111' : '000000';
    expect(await users.verifyTotp({ accountId: made.user.id, code: wrong, ip: '127.0.0.1' })).toMatchObject({
      ok: false,
    });
  });
});

describe('migrating a local master key to the HSM (keys rotate-master --to pkcs11)', () => {
  it('moves every wrapped secret to the HSM key; the local key file can then be removed', async () => {
    const dir = await tempDir('portcullis-hsm-migrate-');
    const dataDir = join(dir, 'data');
    const config = join(dir, 'portcullis.yaml');
    const base = { store: { url: 'sqlite:portcullis.db' }, admin: { enabled: false } };
    writeFileSync(config, stringify(base));
    const common = ['--config', config, '--data-dir', dataDir];
    const made = await runPortcullis(
      ['users', 'create', '--username', 'erin', '--totp', ...common],
      'erin has a long password\n',
    );
    expect(made.code, made.stderr).toBe(0);
    const secret = base32Decode(new URL(made.stdout.trim()).searchParams.get('secret') ?? '');

    // Not yet pkcs11: --to pkcs11 is refused, naming what is missing.
    const early = await runPortcullis(['keys', 'rotate-master', '--to', 'pkcs11', ...common]);
    expect(early.code).not.toBe(0);
    expect(early.stderr).toContain('keys.provider must be pkcs11');

    writeFileSync(config, stringify({ ...base, keys: keysConfig('migrate-kek') }));
    const moved = await runPortcullis(['keys', 'rotate-master', '--to', 'pkcs11', '--json', ...common]);
    expect(moved.code, moved.stderr).toBe(0);
    const result = JSON.parse(moved.stdout) as { from: string; to: string; rewrapped: number };
    expect(result.from).toBe('local');
    // Two signing keys, the audit-checkpoint key, two peppers, one TOTP seed.
    expect(result.rewrapped).toBeGreaterThanOrEqual(6);
    const again = await runPortcullis(['keys', 'rotate-master', '--to', 'pkcs11', '--json', ...common]);
    expect(again.code, again.stderr).toBe(0);
    expect((JSON.parse(again.stdout) as { rewrapped: number }).rewrapped).toBe(0);

    // The local master key goes; the gateway starts on the HSM key alone.
    rmSync(join(dataDir, 'master.key'), { force: true });
    const r = await start(upstream, 'migrate-kek', dir);
    try {
      const db = r.gw.p.store.db;
      for (const k of await db.selectFrom('signing_keys').select('private_jwk_wrapped').execute()) {
        expect(envelopeKeyId(Buffer.from(k.private_jwk_wrapped, 'base64url'))).toBe(result.to);
      }
      for (const p of await db.selectFrom('key_peppers').select('wrapped').execute()) {
        expect(envelopeKeyId(Buffer.from(p.wrapped, 'base64url'))).toBe(result.to);
      }
      const user = await db
        .selectFrom('users')
        .selectAll()
        .where('username', '=', 'erin')
        .executeTakeFirstOrThrow();
      expect(user.totp_secret_wrapped).toMatch(/^k1\.pkcs11\./);
      const keys = r.gw.p.keys;
      if (keys === undefined) throw new Error('no key manager');
      const loaded = await loadConfig(r.gw.configFile);
      const { users } = createServerInteractions({
        loaded: () => loaded,
        store: r.gw.p.store,
        keys,
        dataDir,
        logger: r.gw.p.logger,
      });
      const code = hotp(secret, totpStep(Date.now()));
      expect(await users.verifyTotp({ accountId: user.id, code, ip: '127.0.0.1' })).toMatchObject({
        ok: true,
      });
      const at = await clientToken(r);
      const res = await r.gw.request('/v1/items', { headers: { authorization: `Bearer ${at}` } });
      expect(res.status).toBe(200);
    } finally {
      await r.gw.close();
      await r.agent.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);

  it('without the migration, removing the local master key leaves the store unreadable', async () => {
    const dir = await tempDir('portcullis-hsm-nomigrate-');
    const dataDir = join(dir, 'data');
    const config = join(dir, 'portcullis.yaml');
    const base = { store: { url: 'sqlite:portcullis.db' }, admin: { enabled: false } };
    writeFileSync(config, stringify(base));
    const common = ['--config', config, '--data-dir', dataDir];
    const listed = await runPortcullis(['keys', 'list', ...common]);
    expect(listed.code, listed.stderr).toBe(0);
    writeFileSync(config, stringify({ ...base, keys: keysConfig('nomigrate-kek') }));
    rmSync(join(dataDir, 'master.key'), { force: true });
    const after = await runPortcullis(['keys', 'list', ...common]);
    expect(after.code).not.toBe(0);
    expect(after.stderr).toMatch(/cannot decrypt/);
    rmSync(dir, { recursive: true, force: true });
  }, 60_000);
});
