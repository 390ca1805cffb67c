import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Writable } from 'node:stream';
import { SignJWT, createLocalJWKSet, importJWK, jwtVerify } from 'jose';
import type { JWK } from 'jose';
import pg from 'pg';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.ts';
import type { OAuthConfig } from '../config/schema.ts';
import { createLogger } from '../log/index.ts';
import { openStore } from '../store/index.ts';
import type { Store } from '../store/index.ts';
import { PRIVATE_JWK_MEMBERS, thumbprint } from './generate.ts';
import { KeyManagerError, PEPPER_PURPOSES, SIGNING_ALGS, createLocalKms, openKeyManager } from './index.ts';
import type { OpenKeyManagerOptions, StoreKeyManager } from './index.ts';
import { ENVELOPE_V2 } from './kms.ts';

const PG_URL = process.env.PORTCULLIS_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const DAY = 24 * 60 * 60 * 1000;
const MINUTE = 60 * 1000;
const INDEX_TS = fileURLToPath(new URL('./index.ts', import.meta.url));
const STORE_TS = fileURLToPath(new URL('../store/index.ts', import.meta.url));
const T0 = Date.parse('2030-01-01T00:00:00.000Z');

const tmp = mkdtempSync(join(tmpdir(), 'portcullis-keys-'));
const pgSchemas: string[] = [];
const stores: Store[] = [];
const managers: StoreKeyManager[] = [];

/** Everything logged by every manager in this file. */
const logLines: string[] = [];
/** Messages of every error a manager threw in this file. */
const errorMessages: string[] = [];
/** Secret values seen in this file: private JWK members, master keys, peppers. */
const secrets = new Set<string>();

const logger = createLogger(
  'debug',
  new Writable({
    write(chunk: Buffer, _enc, done) {
      logLines.push(chunk.toString('utf8'));
      done();
    },
  }),
);

afterEach(async () => {
  for (const m of managers.splice(0)) {
    rememberSecrets(m);
    m.close();
  }
  await Promise.all(stores.splice(0).map((s) => s.close()));
});

afterAll(async () => {
  // Nothing secret was ever logged or put into an error message.
  expect(secrets.size).toBeGreaterThan(50);
  const logs = logLines.join('\n');
  const errors = errorMessages.join('\n');
  expect(logs).toContain('keys.rotated');
  for (const secret of secrets) {
    expect(logs.includes(secret), 'a secret value appears in the logs').toBe(false);
    expect(errors.includes(secret), 'a secret value appears in an error message').toBe(false);
  }
  rmSync(tmp, { recursive: true, force: true });
  if (pgSchemas.length === 0) return;
  const client = new pg.Client({ connectionString: PG_URL });
  await client.connect();
  try {
    for (const schema of pgSchemas) await client.query(`drop schema if exists "${schema}" cascade`);
  } finally {
    await client.end();
  }
});

function rememberSecrets(m: StoreKeyManager): void {
  for (const jwk of m.signingJwks().keys) {
    for (const member of PRIVATE_JWK_MEMBERS) {
      const value = (jwk as Record<string, unknown>)[member];
      if (typeof value === 'string') secrets.add(value);
    }
  }
}

function rememberBytes(secret: Buffer): void {
  secrets.add(secret.toString('base64url'));
  secrets.add(secret.toString('base64'));
  secrets.add(secret.toString('hex'));
}

interface Backend {
  readonly name: 'sqlite' | 'postgres';
  fresh(): string;
}

let counter = 0;
const backends: Backend[] = [
  { name: 'sqlite', fresh: () => `sqlite:keys-${String(++counter)}.sqlite` },
  {
    name: 'postgres',
    fresh: () => {
      const schema = `portcullis_keys_${randomBytes(8).toString('hex')}`;
      pgSchemas.push(schema);
      const url = new URL(PG_URL);
      url.searchParams.set('schema', schema);
      return url.href;
    },
  },
];

const DEFAULT_OAUTH: OAuthConfig = parseConfig('version: 1\n', join(tmp, 'portcullis.yaml')).config.oauth;

function oauth(signing: Partial<OAuthConfig['signing']> = {}): OAuthConfig {
  return { ...DEFAULT_OAUTH, signing: { ...DEFAULT_OAUTH.signing, ...signing } };
}

class Clock {
  t = T0;
  readonly now = (): Date => new Date(this.t);
  advance(ms: number): void {
    this.t += ms;
  }
}

/** A database and data directory that managers can be opened on, each with its own store. */
class Env {
  readonly url: string;
  readonly dataDir: string;
  readonly clock = new Clock();
  constructor(backend: Backend) {
    this.url = backend.fresh();
    this.dataDir = join(tmp, `data-${String(++counter)}`);
  }
  async store(): Promise<Store> {
    const store = await openStore({ url: this.url, dataDir: this.dataDir });
    stores.push(store);
    return store;
  }
  async open(options: Partial<OpenKeyManagerOptions> = {}): Promise<StoreKeyManager> {
    const m = await openKeyManager({
      store: options.store ?? (await this.store()),
      dataDir: this.dataDir,
      config: oauth(),
      logger,
      now: this.clock.now,
      env: {},
      ...options,
    });
    managers.push(m);
    rememberSecrets(m);
    const keyFile = join(this.dataDir, 'master.key');
    if (existsSync(keyFile)) rememberBytes(readFileSync(keyFile));
    return m;
  }
}

/** Opens store and key manager in `count` separate Node processes at once; their views as JSON. */
function openInProcesses(url: string, dataDir: string, count: number): Promise<string[]> {
  const script = `
    const { openStore } = await import(${JSON.stringify(STORE_TS)});
    const { openKeyManager } = await import(${JSON.stringify(INDEX_TS)});
    const [url, dataDir, config] = process.argv.slice(1);
    const store = await openStore({ url, dataDir });
    const keys = await openKeyManager({ store, dataDir, config: JSON.parse(config) });
    process.stdout.write(JSON.stringify({ kids: keys.list().map((k) => k.kid), hmac: keys.hmac('client-secret', 'x') }));
    keys.close();
    await store.close();
  `;
  const env = { ...process.env };
  delete env.PORTCULLIS_MASTER_KEY;
  const runs = Array.from(
    { length: count },
    () =>
      new Promise<string>((resolve, reject) => {
        const child = spawn(
          process.execPath,
          [
            '--disable-warning=ExperimentalWarning',
            '--input-type=module',
            '-e',
            script,
            url,
            dataDir,
            JSON.stringify(oauth()),
          ],
          { stdio: ['ignore', 'pipe', 'pipe'], env },
        );
        let out = '';
        let err = '';
        child.stdout.on('data', (d: Buffer) => (out += d.toString()));
        child.stderr.on('data', (d: Buffer) => (err += d.toString()));
        child.on('error', reject);
        child.on('close', (code) => {
          if (code === 0) resolve(out);
          else reject(new Error(`child exited with ${String(code)}: ${err}`));
        });
      }),
  );
  return Promise.all(runs);
}

async function openFails(promise: Promise<unknown>): Promise<KeyManagerError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(KeyManagerError);
    errorMessages.push((error as Error).message);
    return error as KeyManagerError;
  }
  throw new Error('expected openKeyManager to fail');
}

function statuses(m: StoreKeyManager): string[] {
  return m.list().map((k) => k.status);
}

async function signWith(jwk: JWK): Promise<string> {
  const alg = jwk.alg ?? '';
  return new SignJWT({ sub: 'alice' })
    .setProtectedHeader({ alg, kid: jwk.kid ?? '', typ: 'at+jwt' })
    .sign(await importJWK(jwk, alg));
}

function verifies(token: string, m: StoreKeyManager): Promise<boolean> {
  return jwtVerify(token, createLocalJWKSet(m.publicJwks())).then(
    () => true,
    () => false,
  );
}

describe.each(backends)('key manager on $name', (backend) => {
  it('creates a current and a next key and the peppers on first open; a second manager sees the same', async () => {
    const env = new Env(backend);
    const m1 = await env.open();
    expect(statuses(m1)).toEqual(['current', 'next']);
    const [current, next] = m1.list();
    expect(current?.alg).toBe('ES256');
    expect(current?.activatedAt?.getTime()).toBe(T0);
    expect(current?.retiresAt).toBeUndefined();
    expect(next?.activatedAt).toBeUndefined();
    expect(m1.current()).toEqual(current);

    const store = await env.store();
    expect(await store.db.selectFrom('signing_keys').select('kid').execute()).toHaveLength(2);
    const peppers = await store.db.selectFrom('key_peppers').select('purpose').execute();
    expect(peppers.map((p) => p.purpose).sort()).toEqual([...PEPPER_PURPOSES].sort());

    const m2 = await env.open({ store });
    expect(m2.list()).toEqual(m1.list());
    expect(m2.hmac('client-secret', 'x')).toBe(m1.hmac('client-secret', 'x'));
    expect(
      logLines.filter((l) => l.includes('keys.created') && l.includes(current?.kid ?? '?')),
    ).toHaveLength(1);
  });

  it('creates exactly one key set (and one master key) when processes open a new store at once', async () => {
    const env = new Env(backend);
    const outputs = await openInProcesses(env.url, env.dataDir, 3);
    expect(new Set(outputs).size).toBe(1);
    const seen = JSON.parse(outputs[0] ?? '') as { kids: string[]; hmac: string };
    expect(seen.kids).toHaveLength(2);
    // The children ran on the real clock; so does this manager (no rotation is due).
    const m = await env.open({ now: () => new Date() });
    expect(m.list().map((k) => k.kid)).toEqual(seen.kids);
    expect(m.hmac('client-secret', 'x')).toBe(seen.hmac);
    const store = await env.store();
    expect(await store.db.selectFrom('signing_keys').select('kid').execute()).toHaveLength(2);
    expect(await store.db.selectFrom('key_peppers').select('purpose').execute()).toHaveLength(2);
  });

  it('rotates: next → current, current → previous, a new next; durable, published and announced', async () => {
    const env = new Env(backend);
    const m1 = await env.open();
    const m2 = await env.open();
    const before = m1.list();
    let events1 = 0;
    let events2 = 0;
    m1.onChange(() => events1++);
    const off = m2.onChange(() => events2++);
    env.clock.advance(60 * MINUTE);

    const after = await m1.rotate('test rotation');
    expect(after.map((k) => k.status)).toEqual(['current', 'next', 'previous']);
    const [current, next, previous] = after;
    expect(current?.kid).toBe(before[1]?.kid);
    expect(current?.activatedAt?.getTime()).toBe(env.clock.t);
    expect(previous?.kid).toBe(before[0]?.kid);
    expect(previous?.retiresAt?.getTime()).toBe(env.clock.t + DAY);
    expect(next?.kid).not.toBe(before[0]?.kid);
    expect(next?.kid).not.toBe(before[1]?.kid);
    expect(events1).toBe(1);
    expect(m1.current().kid).toBe(current?.kid);
    expect(m1.signingJwks().keys.map((k) => k.kid)).toEqual(after.map((k) => k.kid));
    expect(m1.signingJwks().keys[0]?.kid).toBe(current?.kid);
    expect(
      m1
        .publicJwks()
        .keys.map((k) => k.kid)
        .sort(),
    ).toEqual(after.map((k) => k.kid).sort());

    // The other process keeps its view until it refreshes.
    expect(m2.current().kid).toBe(before[0]?.kid);
    expect(await m2.refresh()).toBe(true);
    expect(m2.list()).toEqual(after);
    expect(events2).toBe(1);
    expect(await m2.refresh()).toBe(false);
    expect(events2).toBe(1);
    off();
    await m1.rotate('again');
    expect(await m2.refresh()).toBe(true);
    expect(events2).toBe(1);

    // Durable: a manager opened afterwards reads the same set.
    const m3 = await env.open();
    expect(m3.list()).toEqual(m1.list());
    expect(logLines.some((l) => l.includes('keys.rotated') && l.includes('test rotation'))).toBe(true);
  });

  it('keeps verifying a token signed before a rotation until the overlap ends, and not after', async () => {
    const env = new Env(backend);
    const m = await env.open({ config: oauth({ overlapDays: 2 }) });
    const signer = m.signingJwks().keys[0];
    if (!signer) throw new Error('no signing key');
    expect(signer.kid).toBe(m.current().kid);
    const token = await signWith(signer);
    expect(await verifies(token, m)).toBe(true);

    await m.rotate('rotation under test');
    const other = await env.open();
    expect(m.current().kid).not.toBe(signer.kid);
    expect(await verifies(token, m)).toBe(true);
    env.clock.advance(2 * DAY - MINUTE);
    expect(await verifies(token, m)).toBe(true);
    expect(statuses(m)).toEqual(['current', 'next', 'previous']);

    env.clock.advance(2 * MINUTE);
    expect(await verifies(token, m)).toBe(false);
    expect(statuses(m)).toEqual(['current', 'next']);
    expect(m.publicJwks().keys.map((k) => k.kid)).not.toContain(signer.kid);
    expect(m.signingJwks().keys.map((k) => k.kid)).not.toContain(signer.kid);

    // Maintenance deletes it from the store; another process sees it gone.
    await m.maintain();
    const store = await env.store();
    const kids = (await store.db.selectFrom('signing_keys').select('kid').execute()).map((r) => r.kid);
    expect(kids).toHaveLength(2);
    expect(kids).not.toContain(signer.kid);
    expect(await other.refresh()).toBe(true);
    expect(statuses(other)).toEqual(['current', 'next']);
  });

  it('removes previous keys past their overlap when rotating, keeps those within it', async () => {
    const env = new Env(backend);
    const m = await env.open();
    const store = await env.store();
    const count = async () => (await store.db.selectFrom('signing_keys').select('kid').execute()).length;
    await m.rotate('one');
    env.clock.advance(12 * 60 * MINUTE);
    await m.rotate('two');
    expect(await count()).toBe(4);
    expect(statuses(m)).toEqual(['current', 'next', 'previous', 'previous']);
    env.clock.advance(DAY);
    await m.rotate('three');
    // 'one''s and 'two''s previous keys are past their overlap; only 'three''s remains.
    expect(await count()).toBe(3);
    expect(statuses(m)).toEqual(['current', 'next', 'previous']);
  });

  it('rotates on schedule once the current key is rotationDays old (injected time)', async () => {
    const env = new Env(backend);
    const m = await env.open({ config: oauth({ rotationDays: 30 }) });
    const first = m.list();
    env.clock.advance(30 * DAY - MINUTE);
    await m.maintain();
    expect(m.current().kid).toBe(first[0]?.kid);

    env.clock.advance(MINUTE);
    await m.maintain();
    expect(m.current().kid).toBe(first[1]?.kid);
    expect(m.current().activatedAt?.getTime()).toBe(env.clock.t);
    expect(statuses(m)).toEqual(['current', 'next', 'previous']);
    expect(logLines.some((l) => l.includes('keys.rotated') && l.includes('scheduled'))).toBe(true);

    // Another process checking at the same moment does not rotate a second time.
    const other = await env.open({ config: oauth({ rotationDays: 30 }) });
    await other.maintain();
    expect(other.list()).toEqual(m.list());
  });

  it('rotates when opened after rotationDays have passed', async () => {
    const env = new Env(backend);
    const m1 = await env.open({ config: oauth({ rotationDays: 7 }) });
    const first = m1.list();
    env.clock.advance(8 * DAY);
    const m2 = await env.open({ config: oauth({ rotationDays: 7 }) });
    expect(m2.current().kid).toBe(first[1]?.kid);
    expect(m2.list().find((k) => k.status === 'previous')?.kid).toBe(first[0]?.kid);
  });

  it('runs the scheduled check on its timer', async () => {
    const env = new Env(backend);
    const m = await env.open({ config: oauth({ rotationDays: 1 }), checkIntervalMs: 20 });
    const first = m.current().kid;
    const changed = new Promise<void>((resolve) => m.onChange(resolve));
    env.clock.advance(DAY);
    await changed;
    expect(m.current().kid).not.toBe(first);
  });

  it('stores private keys and peppers only as KMS ciphertext', async () => {
    const env = new Env(backend);
    const m = await env.open({ config: oauth({ alg: 'PS256' }) });
    await m.rotate('more keys');
    const store = await env.store();
    const rows = await store.db.selectFrom('signing_keys').selectAll().execute();
    expect(rows).toHaveLength(3);
    for (const row of rows) {
      expect(row.kms).toBe('local');
      expect(row.private_jwk_wrapped).toMatch(/^[A-Za-z0-9_-]+$/);
      expect(row.private_jwk_wrapped).not.toContain('"d"');
      const envelope = Buffer.from(row.private_jwk_wrapped, 'base64url');
      expect(envelope[0]).toBe(ENVELOPE_V2);
      expect(() => JSON.parse(envelope.toString('utf8')) as unknown).toThrow();
      const publicJwk = JSON.parse(row.public_jwk) as Record<string, unknown>;
      for (const member of PRIVATE_JWK_MEMBERS) expect(publicJwk).not.toHaveProperty(member);
      expect(await thumbprint(publicJwk)).toBe(row.kid);
    }
    const pepperRows = await store.db.selectFrom('key_peppers').selectAll().execute();
    for (const row of pepperRows) {
      const envelope = Buffer.from(row.wrapped, 'base64url');
      expect(envelope[0]).toBe(ENVELOPE_V2);
      expect(envelope.length).toBe(1 + 8 + 12 + 32 + 16);
    }
    // No private member value anywhere in the database's text.
    const dump = JSON.stringify([
      rows,
      pepperRows,
      await store.db.selectFrom('key_set_state').selectAll().execute(),
    ]);
    const privates = m
      .signingJwks()
      .keys.flatMap((k) => PRIVATE_JWK_MEMBERS.map((member) => (k as Record<string, unknown>)[member]))
      .filter((v): v is string => typeof v === 'string');
    expect(privates.length).toBe(3 * 6);
    for (const value of privates) expect(dump).not.toContain(value);
    if (backend.name === 'sqlite') {
      const file = join(env.dataDir, env.url.slice('sqlite:'.length));
      const bytes = [file, `${file}-wal`]
        .filter((f) => existsSync(f))
        .map((f) => readFileSync(f).toString('latin1'))
        .join('');
      expect(bytes).toContain(rows[0]?.kid);
      for (const value of privates) expect(bytes).not.toContain(value);
    }
  });

  it('refuses to open under a wrong master key with a clear authentication error', async () => {
    const env = new Env(backend);
    const right = randomBytes(32);
    const wrong = randomBytes(32);
    rememberBytes(right);
    rememberBytes(wrong);
    await env.open({ env: { PORTCULLIS_MASTER_KEY: right.toString('base64url') } });
    const reopened = await env.open({ env: { PORTCULLIS_MASTER_KEY: right.toString('base64url') } });
    expect(reopened.list()).toHaveLength(2);
    expect(existsSync(join(env.dataDir, 'master.key'))).toBe(false);

    const error = await openFails(env.open({ env: { PORTCULLIS_MASTER_KEY: wrong.toString('base64url') } }));
    expect(error.code).toBe('KEYS_CORRUPT');
    expect(error.message).toMatch(/cannot decrypt signing key [A-Za-z0-9_-]{43}: .*authentication failed/);
    // Without the variable, a new key file is made, and it is just as wrong.
    const fromFile = await openFails(env.open({ env: {} }));
    expect(fromFile.code).toBe('KEYS_CORRUPT');
  });

  it('detects a wrapped private key moved to another key’s row', async () => {
    const env = new Env(backend);
    const m = await env.open();
    const [current, next] = m.list();
    const store = await env.store();
    const donor = await store.db
      .selectFrom('signing_keys')
      .select('private_jwk_wrapped')
      .where('kid', '=', next?.kid ?? '')
      .executeTakeFirstOrThrow();
    await store.db
      .updateTable('signing_keys')
      .set({ private_jwk_wrapped: donor.private_jwk_wrapped })
      .where('kid', '=', current?.kid ?? '')
      .execute();
    const error = await openFails(env.open());
    expect(error.code).toBe('KEYS_CORRUPT');
    expect(error.message).toContain(current?.kid);
  });

  it('hmac is stable across reopen, differs per purpose and per installation', async () => {
    const env = new Env(backend);
    const m1 = await env.open();
    const a = m1.hmac('client-secret', 'correct horse');
    expect(a).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(m1.hmac('client-secret', 'correct horse')).toBe(a);
    expect(m1.hmac('api-key', 'correct horse')).not.toBe(a);
    expect(m1.hmac('client-secret', 'correct horsf')).not.toBe(a);
    m1.close();
    const m2 = await env.open();
    expect(m2.hmac('client-secret', 'correct horse')).toBe(a);
    const other = await new Env(backend).open();
    expect(other.hmac('client-secret', 'correct horse')).not.toBe(a);
    expect(() => m2.hmac('session' as 'api-key', 'x')).toThrow(TypeError);

    // The peppers are what the store holds, wrapped under the master key.
    const store = await env.store();
    const kms = createLocalKms(readFileSync(join(env.dataDir, 'master.key')));
    for (const row of await store.db.selectFrom('key_peppers').selectAll().execute()) {
      const pepper = await kms.unwrap(Buffer.from(row.wrapped, 'base64url'), `pepper:${row.purpose}`);
      expect(pepper.length).toBe(32);
      rememberBytes(pepper);
    }
  });

  it('replaces the unused next key when the configured algorithm changes', async () => {
    const env = new Env(backend);
    const m1 = await env.open();
    const [current, next] = m1.list();
    const m2 = await env.open({ config: oauth({ alg: 'EdDSA' }) });
    expect(m2.list().map((k) => [k.status, k.alg])).toEqual([
      ['current', 'ES256'],
      ['next', 'EdDSA'],
    ]);
    expect(m2.current().kid).toBe(current?.kid);
    expect(m2.publicJwks().keys.map((k) => k.kid)).not.toContain(next?.kid);
    await m2.rotate('switch algorithm');
    expect(m2.current().alg).toBe('EdDSA');
    expect(m2.signingJwks().keys[0]?.alg).toBe('EdDSA');
    expect(await m1.refresh()).toBe(true);
    expect(m1.current()).toEqual(m2.current());
  });

  it('refuses an unsupported algorithm and a bad rotation reason', async () => {
    const env = new Env(backend);
    await expect(env.open({ config: oauth({ alg: 'HS256' }) })).rejects.toThrow(TypeError);
    const m = await env.open();
    await expect(m.rotate('')).rejects.toThrow(TypeError);
    expect(statuses(m)).toEqual(['current', 'next']);
  });
});

describe.each(SIGNING_ALGS)('signing with %s', (alg) => {
  it('signs tokens that verify against the published keys, which carry no private members', async () => {
    const env = new Env(backends[0] as Backend);
    const m = await env.open({ config: oauth({ alg }) });
    await m.rotate('publish three');
    const publicKeys = m.publicJwks().keys;
    expect(publicKeys).toHaveLength(3);
    for (const jwk of publicKeys) {
      for (const member of PRIVATE_JWK_MEMBERS) expect(jwk).not.toHaveProperty(member);
      expect(jwk).toMatchObject({ alg, use: 'sig' });
      expect(await thumbprint(jwk)).toBe(jwk.kid);
    }
    const summaries = JSON.stringify([m.list(), m.current()]);
    for (const jwk of m.signingJwks().keys) {
      expect(jwk).toMatchObject({ alg, use: 'sig' });
      expect(typeof jwk.d).toBe('string');
      expect(summaries).not.toContain(jwk.d);
      expect(JSON.stringify(publicKeys)).not.toContain(jwk.d);
      if (alg === 'ES256') expect(jwk).toMatchObject({ kty: 'EC', crv: 'P-256' });
      if (alg === 'PS256') {
        expect(jwk.kty).toBe('RSA');
        expect(Buffer.from(jwk.n ?? '', 'base64url').length * 8).toBe(3072);
      }
      if (alg === 'EdDSA') expect(jwk).toMatchObject({ kty: 'OKP', crv: 'Ed25519' });
      const token = await signWith(jwk);
      expect(await verifies(token, m)).toBe(true);
    }
    // A token signed by an unrelated key of the same kid does not verify.
    const stranger = await new Env(backends[0] as Backend).open({ config: oauth({ alg }) });
    const foreign = stranger.signingJwks().keys[0];
    if (!foreign) throw new Error('no key');
    const forged = await signWith({ ...foreign, kid: m.current().kid });
    expect(await verifies(forged, m)).toBe(false);
  });
});
