import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import type { Store } from '../store/index.ts';
import {
  buildClientMetadata,
  ClientRegistrationError,
  clientSecretMatches,
  createClient,
  deleteClient,
  getClient,
  listClients,
  providerClientMetadata,
  validateRedirectUri,
} from './clients.ts';
import type { NewClient } from './clients.ts';
import { testBackends } from './test-backends.ts';

const backends = testBackends();
afterAll(() => backends.cleanup());

/** A stand-in pepper: a real HMAC, so comparisons behave as in production. */
const keys = {
  hmac: (purpose: string, value: string) =>
    createHmac('sha256', `test-pepper:${purpose}`).update(value).digest('base64url'),
};

const base: NewClient = { name: 'billing', grantTypes: ['client_credentials'], scope: 'a b' };

describe('registration policy', () => {
  const refused = (input: Partial<NewClient>) => () => buildClientMetadata({ ...base, ...input });

  it('accepts https redirect URIs in canonical form and loopback http for native apps', () => {
    expect(validateRedirectUri('https://app.example/cb', 'web')).toBe('https://app.example/cb');
    expect(validateRedirectUri('http://127.0.0.1:8080/cb', 'native')).toBe('http://127.0.0.1:8080/cb');
    expect(validateRedirectUri('http://[::1]/cb', 'native')).toBe('http://[::1]/cb');
  });

  it.each([
    ['http://app.example/cb', 'web', /http is allowed only/],
    ['http://localhost/cb', 'native', /http is allowed only/],
    ['http://127.0.0.1/cb', 'web', /native/],
    ['https://app.example/cb#frag', 'web', /fragment/],
    ['https://*.example/cb', 'web', /wildcard/],
    ['https://user:pw@app.example/cb', 'web', /userinfo/],
    ['https://App.Example/cb', 'web', /canonical/],
    ['https://app.example', 'web', /canonical/],
    ['/relative', 'web', /absolute/],
    ['javascript:alert(1)', 'web', /only https/],
    ['com.example.app:/cb', 'native', /only https/],
  ] as const)('refuses redirect URI %s (%s)', (uri, type, message) => {
    expect(() => validateRedirectUri(uri, type)).toThrow(message);
    expect(() => validateRedirectUri(uri, type)).toThrow(ClientRegistrationError);
  });

  it('refuses grants that are not offered and incomplete registrations', () => {
    expect(refused({ grantTypes: ['password' as 'client_credentials'] })).toThrow(/implicit and password/);
    expect(refused({ grantTypes: ['implicit' as 'client_credentials'] })).toThrow(/implicit and password/);
    expect(refused({ grantTypes: [] })).toThrow(/grant/);
    expect(refused({ grantTypes: ['authorization_code'] })).toThrow(/--redirect-uri/);
    expect(refused({ redirectUris: ['https://app.example/cb'] })).toThrow(/only apply/);
    expect(refused({ scope: '' })).toThrow(/scope/);
    expect(refused({ scope: 'a "b"' })).toThrow(/scope/);
    expect(refused({ name: '' })).toThrow(/name/);
    expect(refused({ name: 'a\nb' })).toThrow(/name/);
  });

  it('refuses client_secret_jwt, and none except for native authorization-code apps', () => {
    expect(refused({ authMethod: 'client_secret_jwt' as 'none' })).toThrow(/authentication method/);
    expect(refused({ authMethod: 'none' })).toThrow(/public clients/);
    expect(
      refused({
        authMethod: 'none',
        grantTypes: ['authorization_code'],
        redirectUris: ['https://app.example/cb'],
      }),
    ).toThrow(/public clients/);
    const native = buildClientMetadata({
      ...base,
      authMethod: 'none',
      applicationType: 'native',
      grantTypes: ['authorization_code'],
      redirectUris: ['http://127.0.0.1/cb'],
    });
    expect(native.token_endpoint_auth_method).toBe('none');
  });

  it('needs public keys for private_key_jwt and a subject DN for tls_client_auth', () => {
    expect(refused({ authMethod: 'private_key_jwt' })).toThrow(/JWKS/);
    const priv = { kty: 'EC', crv: 'P-256', x: 'x', y: 'y', d: 'secret' };
    expect(refused({ authMethod: 'private_key_jwt', jwks: { keys: [priv] } })).toThrow(
      /private key material/,
    );
    expect(refused({ authMethod: 'private_key_jwt', jwks: { keys: [{ kty: 'oct', k: 'x' }] } })).toThrow(
      /symmetric/,
    );
    expect(refused({ authMethod: 'tls_client_auth' })).toThrow(/subject DN/);
    expect(refused({ tlsSubjectDn: 'CN=x' })).toThrow(/tls_client_auth only/);
    const tls = buildClientMetadata({
      ...base,
      authMethod: 'tls_client_auth',
      tlsSubjectDn: 'CN=billing,O=Example',
    });
    expect(tls.tls_client_auth_subject_dn).toBe('CN=billing,O=Example');
  });

  it('registers a private_key_jwt client with its public JWKS; a JWKS for other methods is refused', () => {
    const pub = { kty: 'EC', crv: 'P-256', x: 'x', y: 'y', alg: 'ES256' };
    const m = buildClientMetadata({ ...base, authMethod: 'private_key_jwt', jwks: { keys: [pub] } });
    expect(m.token_endpoint_auth_method).toBe('private_key_jwt');
    expect(m.jwks).toEqual({ keys: [pub] });
    expect(refused({ jwks: { keys: [pub] } })).toThrow(/private_key_jwt only/);
  });

  it('can require pushed authorization requests, for authorization-code clients', () => {
    const web = {
      ...base,
      grantTypes: ['authorization_code'] as const,
      redirectUris: ['https://app.example/cb'],
    };
    expect(buildClientMetadata(web).require_pushed_authorization_requests).toBeUndefined();
    const par = buildClientMetadata({ ...web, requirePushedAuthorizationRequests: true });
    expect(par.require_pushed_authorization_requests).toBe(true);
    expect(refused({ requirePushedAuthorizationRequests: true })).toThrow(/authorization_code/);
  });

  it('records registered resources (API names or absolute audiences without fragment)', () => {
    expect(buildClientMetadata(base).resources).toBeUndefined();
    const named = buildClientMetadata({
      ...base,
      resources: ['billing', 'https://api.example/v1', 'billing'],
    });
    expect(named.resources).toEqual(['billing', 'https://api.example/v1']);
    expect(refused({ resources: ['Not A Name'] })).toThrow(/API name or an absolute audience URI/);
    expect(refused({ resources: ['https://api.example/v1#x'] })).toThrow(/without fragment/);
  });
});

describe.each(backends.names)('client registry on %s', (name) => {
  let store: Store;
  beforeAll(async () => {
    store = await backends.open(name);
    return () => store.close();
  });

  it('creates a client with a 256-bit secret stored only as its HMAC', async () => {
    const { client, clientSecret } = await createClient(store.db, keys, base);
    expect(clientSecret).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(Buffer.from(clientSecret ?? '', 'base64url')).toHaveLength(32);
    const row = await store.db
      .selectFrom('oauth_clients')
      .selectAll()
      .where('client_id', '=', client.clientId)
      .executeTakeFirstOrThrow();
    expect(JSON.stringify(row)).not.toContain(clientSecret);
    expect(row.secret_hash).toBe(keys.hmac('client-secret', clientSecret ?? ''));
    expect(clientSecretMatches(keys, row.secret_hash, clientSecret)).toBe(true);
    expect(clientSecretMatches(keys, row.secret_hash, `${clientSecret ?? ''}x`)).toBe(false);
    expect(clientSecretMatches(keys, row.secret_hash, row.secret_hash)).toBe(false);
    expect(clientSecretMatches(keys, row.secret_hash, '')).toBe(false);
    expect(clientSecretMatches(keys, null, clientSecret)).toBe(false);
  });

  it('lists, shows and deletes clients', async () => {
    const { client } = await createClient(store.db, keys, { ...base, name: 'to-delete' });
    expect((await listClients(store.db)).map((c) => c.clientId)).toContain(client.clientId);
    expect(await getClient(store.db, client.clientId)).toEqual(client);
    expect(await getClient(store.db, 'nope')).toBeUndefined();
    expect(await getClient(store.db, "x' or '1'='1")).toBeUndefined();
    expect(await deleteClient(store.db, client.clientId)).toBe(true);
    expect(await deleteClient(store.db, client.clientId)).toBe(false);
    expect(await getClient(store.db, client.clientId)).toBeUndefined();
  });

  it('serves oidc-provider the metadata with the HMAC, refresh_token only when enabled', async () => {
    const { client } = await createClient(store.db, keys, {
      ...base,
      grantTypes: ['authorization_code'],
      redirectUris: ['https://app.example/cb'],
    });
    const off = await providerClientMetadata(store.db, client.clientId, {
      refreshTokens: false,
      idTokenAlg: 'ES256',
    });
    expect(off).toMatchObject({ grant_types: ['authorization_code'], id_token_signed_response_alg: 'ES256' });
    expect(off?.client_secret).toEqual(expect.any(String));
    const on = await providerClientMetadata(store.db, client.clientId, {
      refreshTokens: true,
      idTokenAlg: 'ES256',
    });
    expect(on?.grant_types).toEqual(['authorization_code', 'refresh_token']);
  });
});

describe('portcullis clients (CLI)', () => {
  const ROOT = fileURLToPath(new URL('../..', import.meta.url));
  const run = (...args: string[]) =>
    new Promise<{ code: number | null; stdout: string; stderr: string }>((ok, fail) => {
      const child = spawn('sh', ['scripts/node24.sh', 'src/cli/main.ts', ...args], {
        cwd: ROOT,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
      child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
      child.on('error', fail);
      child.on('close', (code) => ok({ code, stdout, stderr }));
    });

  it('creates (secret shown once), lists, shows and deletes', async () => {
    const dir = join(backends.dir, 'cli');
    const config = join(backends.dir, 'cli.yaml');
    writeFileSync(config, stringify({ version: 1 }));
    const common = ['--config', config, '--data-dir', dir];
    const created = await run(
      'clients',
      'create',
      ...common,
      '--name',
      'svc',
      '--grant',
      'client_credentials',
      '--scope',
      'openid',
      '--json',
    );
    expect(created.code).toBe(0);
    const out = JSON.parse(created.stdout) as Record<string, string>;
    expect(Object.keys(out)).toEqual(['client_id', 'client_secret']);
    const secret = out.client_secret ?? '';
    expect(secret).toMatch(/^[A-Za-z0-9_-]{43}$/);

    const listed = await run('clients', 'list', ...common, '--json');
    expect(listed.code).toBe(0);
    expect(listed.stdout).toContain(out.client_id);
    const shown = await run('clients', 'show', out.client_id ?? '', ...common, '--json');
    expect(JSON.parse(shown.stdout)).toMatchObject({
      client_id: out.client_id,
      has_secret: true,
      scope: 'openid',
    });
    for (const r of [created.stderr, listed.stdout, listed.stderr, shown.stdout])
      expect(r).not.toContain(secret);

    const bad = await run(
      'clients',
      'create',
      ...common,
      '--name',
      'web',
      '--grant',
      'authorization_code',
      '--scope',
      'openid',
      '--redirect-uri',
      'http://app.example/cb',
      '--json',
    );
    expect(bad.code).toBe(1);
    expect(JSON.parse(bad.stdout)).toMatchObject({ error: expect.stringMatching(/http is allowed only/) });
    const unknownApi = await run(
      'clients',
      'create',
      ...common,
      '--name',
      'svc',
      '--scope',
      'openid',
      '--resource',
      'nope',
      '--json',
    );
    expect(unknownApi.code).toBe(1);
    expect(JSON.parse(unknownApi.stdout)).toMatchObject({
      error: expect.stringMatching(/--resource nope: not an API of the configuration/),
    });

    const deleted = await run('clients', 'delete', out.client_id ?? '', ...common, '--json');
    expect(deleted.code).toBe(0);
    const again = await run('clients', 'show', out.client_id ?? '', ...common, '--json');
    expect(again.code).toBe(1);
  }, 120_000);
});
