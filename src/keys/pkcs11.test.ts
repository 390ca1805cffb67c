/**
 * The PKCS#11 provider against a real SoftHSM2 token (initialised in a temporary directory):
 * the master key and the signing keys live on the token and never leave it; signing goes
 * through PKCS#11; the JWKS publishes the public part; rotation creates the next key on the token.
 * The key manager runs on SQLite and PostgreSQL.
 */
import { createPublicKey, verify } from 'node:crypto';
import type { JsonWebKey } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { compactVerify, createLocalJWKSet, importJWK, jwtVerify } from 'jose';
import { Provider } from 'oidc-provider';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { checkpointPayload } from '../audit/chain.ts';
import { ConfigError, parseConfig } from '../config/load.ts';
import { testBackends } from '../oauth/test-backends.ts';
import type { Store } from '../store/index.ts';
import { openCustody, resolveSecretRef } from './custody.ts';
import { ENVELOPE_V2, KmsError, envelopeKeyId } from './kms.ts';
import { Hsm, createPkcs11KeyRing } from './pkcs11.ts';
import { openKeyManager } from './index.ts';
import { EXTERNAL_SIGNING_FEATURE, oidcSigningKeys } from './oidc.ts';
import { rotateMasterKey } from './rotate-master.ts';
import type { StoreKeyManager } from './index.ts';
import { initSoftHsmToken } from './testing/softhsm.ts';

const token = initSoftHsmToken();
const backends = testBackends();
const OAUTH = parseConfig('version: 1\n', join(backends.dir, 'portcullis.yaml')).config.oauth;
const PIN_ENV = 'PORTCULLIS_TEST_HSM_PIN';
const env = { ...process.env, [PIN_ENV]: token.pin };
const keysConfig = {
  provider: 'pkcs11' as const,
  pkcs11: {
    module: token.module,
    tokenLabel: token.label,
    pin: `\${env:${PIN_ENV}}`,
    kekLabel: 'portcullis-kek',
    signingKeys: true,
  },
};

const stores: Store[] = [];
const managers: StoreKeyManager[] = [];
afterEach(async () => {
  for (const m of managers.splice(0)) m.close();
  await Promise.all(stores.splice(0).map((s) => s.close()));
});
afterAll(async () => {
  await backends.cleanup();
  token.cleanup();
});

function thrown(fn: () => unknown): KmsError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(KmsError);
    return error as KmsError;
  }
  throw new Error('expected a throw');
}

describe('PKCS#11 session', () => {
  it('opens the token with the right module, label and PIN', () => {
    const hsm = Hsm.open({ module: token.module, tokenLabel: token.label, pin: token.pin });
    expect(hsm.tokenLabel).toBe(token.label);
    hsm.close();
  });

  it('refuses a wrong module, token label or PIN, naming the setting and never the PIN', () => {
    const badModule = thrown(() =>
      Hsm.open({ module: '/nonexistent/libp11.so', tokenLabel: token.label, pin: token.pin }),
    );
    expect(badModule.message).toMatch(
      /^keys\.pkcs11\.module: cannot load PKCS#11 module \/nonexistent\/libp11\.so/,
    );
    const badLabel = thrown(() =>
      Hsm.open({ module: token.module, tokenLabel: 'no-such-token', pin: token.pin }),
    );
    expect(badLabel.message).toMatch(/^keys\.pkcs11\.tokenLabel: no token labelled "no-such-token"/);
    const badPin = thrown(() => Hsm.open({ module: token.module, tokenLabel: token.label, pin: '987654' }));
    expect(badPin.message).toMatch(
      /^keys\.pkcs11\.pin: login to token "portcullis-test" failed \(CKR_PIN_INCORRECT\)/,
    );
    expect(badPin.message).not.toContain('987654');
  });
});

describe('PIN references', () => {
  it('reads ${env:NAME} and ${file:PATH}; refuses a literal PIN and a missing source, naming the key', () => {
    expect(resolveSecretRef('${env:X_PIN}', 'keys.pkcs11.pin', backends.dir, { X_PIN: '4321' })).toBe('4321');
    writeFileSync(join(backends.dir, 'pin.txt'), '5555\n', { mode: 0o600 });
    expect(resolveSecretRef('${file:pin.txt}', 'keys.pkcs11.pin', backends.dir, {})).toBe('5555');
    expect(() => resolveSecretRef('1234', 'keys.pkcs11.pin', backends.dir, {})).toThrow(
      /^keys\.pkcs11\.pin: expected \$\{env:NAME\} or \$\{file:PATH\}, not a literal secret$/,
    );
    expect(() => resolveSecretRef('${env:UNSET_PIN}', 'keys.pkcs11.pin', backends.dir, {})).toThrow(
      'keys.pkcs11.pin: environment variable UNSET_PIN is not set',
    );
    expect(() => resolveSecretRef('${file:nope.txt}', 'keys.pkcs11.pin', backends.dir, {})).toThrow(
      /keys\.pkcs11\.pin: cannot read .*nope\.txt \(ENOENT\)/,
    );
  });

  it('config: a literal PIN and a pkcs11 provider without settings are refused with key and line', () => {
    const literal =
      'version: 1\nkeys:\n  provider: pkcs11\n  pkcs11:\n    module: /m.so\n    tokenLabel: t\n    pin: "1234"\n';
    try {
      parseConfig(literal, join(backends.dir, 'a.yaml'));
      throw new Error('expected a ConfigError');
    } catch (error) {
      expect(error).toBeInstanceOf(ConfigError);
      const issue = (error as ConfigError).issues.find((i) => i.path === 'keys.pkcs11.pin');
      expect(issue?.line).toBe(7);
      expect(JSON.stringify((error as ConfigError).issues)).not.toContain('"1234"');
    }
    try {
      parseConfig('version: 1\nkeys:\n  provider: pkcs11\n', join(backends.dir, 'b.yaml'));
      throw new Error('expected a ConfigError');
    } catch (error) {
      const issue = (error as ConfigError).issues.find((i) => i.path === 'keys.provider');
      expect(issue).toMatchObject({ line: 3, message: 'pkcs11 needs keys.pkcs11 (module, tokenLabel, pin)' });
    }
    const ok = parseConfig(
      'version: 1\nkeys:\n  provider: pkcs11\n  pkcs11:\n    module: /m.so\n    tokenLabel: t\n    pin: ${env:HSM_PIN}\n',
      join(backends.dir, 'c.yaml'),
    );
    expect(ok.config.keys.pkcs11?.kekLabel).toBe('portcullis-kek');
  });
});

describe('the master key on the token (AES-256-GCM)', () => {
  it('wraps and unwraps, binds the purpose, names its key, and the key cannot be read out', async () => {
    const hsm = Hsm.open({ module: token.module, tokenLabel: token.label, pin: token.pin });
    try {
      const ring = createPkcs11KeyRing(hsm, 'ring-test');
      const secret = Buffer.from('{"kty":"EC","d":"private-scalar"}');
      const wrapped = await ring.wrap(secret, 'signing-key:k1');
      expect(wrapped[0]).toBe(ENVELOPE_V2);
      expect(envelopeKeyId(wrapped)).toBe(ring.currentKeyId());
      expect(wrapped.includes(secret)).toBe(false);
      expect(await ring.unwrap(wrapped, 'signing-key:k1')).toEqual(secret);
      await expect(ring.unwrap(wrapped, 'signing-key:k2')).rejects.toMatchObject({
        code: 'KMS_UNWRAP_FAILED',
      });
      const tampered = Buffer.from(wrapped);
      tampered[tampered.length - 1] = (tampered[tampered.length - 1] ?? 0) ^ 1;
      await expect(ring.unwrap(tampered, 'signing-key:k1')).rejects.toMatchObject({
        code: 'KMS_UNWRAP_FAILED',
      });
      // The same label finds the same key again (another process, a restart).
      const again = createPkcs11KeyRing(hsm, 'ring-test');
      expect(again.currentKeyId()).toBe(ring.currentKeyId());
      expect(hsm.aesKeys('ring-test')).toHaveLength(1);
    } finally {
      hsm.close();
    }
  });
});

describe.each(backends.names)('the key manager with keys on the token, on %s', (backend) => {
  async function open(store?: Store): Promise<{ store: Store; keys: StoreKeyManager }> {
    const s = store ?? (await backends.open(backend));
    if (store === undefined) stores.push(s);
    const keys = await openKeyManager({
      store: s,
      dataDir: backends.dir,
      config: OAUTH,
      keys: keysConfig,
      env,
    });
    managers.push(keys);
    return { store: s, keys };
  }

  it('generates the signing and audit keys on the token; the store keeps only references and public keys', async () => {
    const { store, keys } = await open();
    expect(keys.kmsName).toBe('pkcs11');
    const rows = await store.db.selectFrom('signing_keys').selectAll().execute();
    expect(rows).toHaveLength(2);
    for (const row of rows) {
      expect(row.private_jwk_wrapped).toMatch(/^pkcs11:[0-9a-f]{16}$/);
      expect(row.kms).toBe('pkcs11');
      expect(row.public_jwk).not.toContain('"d"');
    }
    const audit = await store.db.selectFrom('audit_keys').selectAll().execute();
    expect(audit[0]?.private_jwk_wrapped).toMatch(/^pkcs11:[0-9a-f]{16}$/);
    // Peppers are wrapped by the token's master key.
    const peppers = await store.db.selectFrom('key_peppers').selectAll().execute();
    for (const p of peppers)
      expect(envelopeKeyId(Buffer.from(p.wrapped, 'base64url'))).toBe(keys.kms.currentKeyId());
    // No private JWK exists for a key on the token.
    expect(keys.signingJwks().keys).toEqual([]);
  });

  it('signs tokens through PKCS#11 with the current key; the published JWKS verifies them', async () => {
    const { keys } = await open();
    const [signer] = keys.signers();
    if (signer === undefined) throw new Error('no signer');
    expect(signer.kid).toBe(keys.current().kid);
    expect(signer.external).toBe(true);
    const header = Buffer.from(JSON.stringify({ alg: 'ES256', kid: signer.kid, typ: 'JWT' })).toString(
      'base64url',
    );
    const payload = Buffer.from(JSON.stringify({ sub: 'hsm', iat: 1 })).toString('base64url');
    const input = `${header}.${payload}`;
    const jws = `${input}.${signer.sign(Buffer.from(input)).toString('base64url')}`;
    const published = keys.publicJwks().keys.find((k) => k.kid === signer.kid);
    if (published === undefined) throw new Error('not published');
    expect(Object.keys(published).sort()).toEqual(['alg', 'crv', 'kid', 'kty', 'use', 'x', 'y']);
    const { payload: verified } = await compactVerify(jws, await importJWK(published, 'ES256'));
    expect(JSON.parse(Buffer.from(verified).toString())).toEqual({ sub: 'hsm', iat: 1 });
    // A signature by another key of the set does not verify under this one.
    const other = keys.signers().find((s) => s.kid !== signer.kid);
    const forged = `${input}.${other?.sign(Buffer.from(input)).toString('base64url') ?? ''}`;
    await expect(compactVerify(forged, await importJWK(published, 'ES256'))).rejects.toThrow();
  });

  it('signs audit checkpoints on the token; the store verifier accepts them and nothing else', async () => {
    const { keys } = await open();
    const signer = keys.auditCheckpointSigner();
    const data = checkpointPayload({
      seq: 7,
      hash: 'a'.repeat(64),
      at: new Date(0).toISOString(),
      kid: signer.kid,
    });
    const sig = await signer.sign(data);
    expect(await keys.auditCheckpointVerifier().verify(signer.kid, data, sig)).toBe(true);
    const changed = Buffer.from(data);
    changed[0] = (changed[0] ?? 0) ^ 1;
    expect(await keys.auditCheckpointVerifier().verify(signer.kid, changed, sig)).toBe(false);
  });

  it('rotation creates the next key on the token; a second process shares the set and signs with it', async () => {
    const { store, keys } = await open();
    const before = keys.list().map((k) => k.kid);
    await keys.rotate('test: rotation on the token');
    const after = keys.list();
    const fresh = after.find((k) => !before.includes(k.kid));
    expect(fresh?.status).toBe('next');
    const row = await store.db
      .selectFrom('signing_keys')
      .selectAll()
      .where('kid', '=', fresh?.kid ?? '')
      .executeTakeFirstOrThrow();
    expect(row.private_jwk_wrapped).toMatch(/^pkcs11:/);
    const { keys: second } = await open(store);
    expect(second.current().kid).toBe(keys.current().kid);
    const s = second.signers()[0];
    const data = Buffer.from('x.y');
    const sig = s?.sign(data) ?? Buffer.alloc(0);
    const jwk = keys.publicJwks().keys.find((k) => k.kid === s?.kid);
    expect(
      verify(
        'sha256',
        data,
        {
          key: createPublicKey({ key: jwk as JsonWebKey, format: 'jwk' }),
          dsaEncoding: 'ieee-p1363',
        },
        sig,
      ),
    ).toBe(true);
  });

  it('refuses to start without the token for keys that live on it, naming the key', async () => {
    const { store } = await open();
    await expect(
      openKeyManager({ store, dataDir: join(backends.dir, `nokms-${backend}`), config: OAUTH, env: {} }),
    ).rejects.toThrow(/lives on an HSM: set keys\.provider: pkcs11|cannot decrypt/);
  });
});

describe('custody from configuration', () => {
  it('opens the pkcs11 custody from keys.*', () => {
    const custody = openCustody({ keys: keysConfig, kms: OAUTH.kms, dataDir: backends.dir, env });
    expect(custody.source).toBe(`pkcs11:${token.label}/portcullis-kek`);
    expect(custody.hsmSigning).toBe(true);
    custody.hsm?.close();
  });
});

describe('oidc-provider signs access tokens through PKCS#11 (externalSigningSupport)', () => {
  it('issues a JWT access token signed on the token that the published JWKS verifies', async () => {
    const store = await backends.open('sqlite');
    stores.push(store);
    const keys = await openKeyManager({ store, dataDir: backends.dir, config: OAUTH, keys: keysConfig, env });
    managers.push(keys);
    const resource = 'https://api.example.test';
    const provider = new Provider('http://127.0.0.1', {
      jwks: oidcSigningKeys(keys),
      clients: [
        {
          client_id: 'hsm-client',
          client_secret: 'hsm-client-secret-value-0123456789',
          grant_types: ['client_credentials'],
          redirect_uris: [],
          response_types: [],
          token_endpoint_auth_method: 'client_secret_post',
          id_token_signed_response_alg: 'ES256',
        },
      ],
      features: {
        externalSigningSupport: EXTERNAL_SIGNING_FEATURE,
        clientCredentials: { enabled: true },
        devInteractions: { enabled: false },
        resourceIndicators: {
          enabled: true,
          defaultResource: () => resource,
          useGrantedResource: () => true,
          getResourceServerInfo: () => ({
            scope: 'read',
            audience: resource,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'ES256' } },
          }),
        },
      },
    });
    const handle = provider.callback();
    const server = createServer((req, res) => {
      void handle(req, res);
    });
    await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
    try {
      const { port } = server.address() as AddressInfo;
      const response = await fetch(`http://127.0.0.1:${String(port)}/token`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({
          grant_type: 'client_credentials',
          client_id: 'hsm-client',
          client_secret: 'hsm-client-secret-value-0123456789',
          scope: 'read',
          resource,
        }),
      });
      expect(response.status).toBe(200);
      const body = (await response.json()) as { access_token: string };
      const jwks = createLocalJWKSet(keys.publicJwks());
      const { payload, protectedHeader } = await jwtVerify(body.access_token, jwks, { audience: resource });
      expect(protectedHeader).toMatchObject({ alg: 'ES256', kid: keys.current().kid });
      expect(payload.client_id).toBe('hsm-client');
      // The key that signed it has no private JWK anywhere: it signed on the token.
      expect(keys.signingJwks().keys).toEqual([]);
    } finally {
      server.close();
    }
  });
});

describe.each(backends.names)('master-key rotation on the token, on %s', (backend) => {
  it('re-wraps every key under a new HSM key, resumes after a stop, and the old key is retired', async () => {
    const store = await backends.open(backend);
    stores.push(store);
    const wrappedConfig = {
      ...keysConfig,
      pkcs11: { ...keysConfig.pkcs11, kekLabel: `kek-${backend}`, signingKeys: false },
    };
    const custody = openCustody({ keys: wrappedConfig, kms: OAUTH.kms, dataDir: backends.dir, env });
    const keys = await openKeyManager({ store, dataDir: backends.dir, config: OAUTH, custody });
    managers.push(keys);
    const oldId = custody.kms.currentKeyId();
    const hmac = keys.hmac('client-secret', 'secret-value');
    const stop = new Error('stopped by the test');
    await expect(
      rotateMasterKey({
        store,
        kms: custody.kms,
        onProgress: (n) => {
          if (n >= 2) throw stop;
        },
      }),
    ).rejects.toBe(stop);
    const journal = await store.db.selectFrom('master_key_rotations').selectAll().executeTakeFirstOrThrow();
    expect(journal).toMatchObject({ from_key: oldId, provider: 'pkcs11', rewrapped: 2, finished_at: null });
    const done = await rotateMasterKey({ store, kms: custody.kms });
    expect(done).toMatchObject({ from: oldId, to: journal.to_key, resumed: true });
    expect(custody.kms.currentKeyId()).toBe(journal.to_key);
    const hsm = custody.hsm;
    if (hsm === undefined) throw new Error('no HSM');
    expect(hsm.aesKeys(`kek-${backend}`).map((k) => k.id)).toEqual([journal.to_key]);
    expect(hsm.aesKeys(`kek-${backend}.retired`).map((k) => k.id)).toEqual([oldId]);
    const rows = [
      ...(await store.db.selectFrom('signing_keys').select('private_jwk_wrapped as w').execute()),
      ...(await store.db.selectFrom('key_peppers').select('wrapped as w').execute()),
      ...(await store.db.selectFrom('audit_keys').select('private_jwk_wrapped as w').execute()),
    ];
    for (const r of rows) expect(envelopeKeyId(Buffer.from(r.w, 'base64url'))).toBe(journal.to_key);
    // Another process (a fresh session on the token) opens the rotated store unchanged.
    keys.close();
    const reopened = await openKeyManager({
      store,
      dataDir: backends.dir,
      config: OAUTH,
      keys: wrappedConfig,
      env,
    });
    managers.push(reopened);
    expect(reopened.hmac('client-secret', 'secret-value')).toBe(hmac);
    expect(reopened.current().kid).toBe(keys.current().kid);
  });
});
