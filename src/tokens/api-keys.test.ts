/**
 * API keys on SQLite and PostgreSQL: format, issuance, the verifier's allowed path and its attack
 * corpus (checksum, unknown, revoked, expired, restrictions, query string, rotation), usage and
 * anomalies. Every key the tests saw is looked for in everything they observed.
 */
import { createHmac } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GatewayRequest } from '../gateway/context.ts';
import type { CompiledOperation } from '../gateway/compile.ts';
import type { VerifyOutcome } from '../gateway/context.ts';
import { testBackends } from '../oauth/test-backends.ts';
import type { Store } from '../store/index.ts';
import {
  API_KEY_PATTERN,
  ApiKeyError,
  apiKeyLocationAllowed,
  apiKeySchemeVerifier,
  apiKeyStatus,
  createApiKeyAuthority,
  generateApiKey,
  getApiKey,
  issueApiKey,
  listApiKeys,
  parseApiKey,
  parseCidr,
  revokeApiKey,
  rotateApiKey,
  sourceNetwork,
} from './api-keys.ts';
import type { ApiKeyAnomaly, ApiKeyAuthority, ApiKeyAuthorityOptions, ApiKeyContext } from './api-keys.ts';

const backends = testBackends();
afterAll(() => backends.cleanup());

/** A stand-in pepper: a real HMAC, so comparisons behave as in production. */
const keys = {
  hmac: (purpose: string, value: string) =>
    createHmac('sha256', `test-pepper:${purpose}`).update(value).digest('base64url'),
};

/** Every key issued in this file, and everything observable (errors, events, rows). */
const secrets: string[] = [];
const observed: unknown[] = [];
afterAll(() => {
  const text = observed
    .map((o) => (o instanceof Error ? `${o.name} ${o.message} ${String(o.stack)}` : JSON.stringify(o)))
    .join('\n');
  expect(secrets.length).toBeGreaterThan(10);
  for (const secret of secrets) expect(text).not.toContain(secret);
});

describe('key format', () => {
  it('is prefixed, carries 256 bits in base62 and a CRC-32 checksum, and parses back', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 200; i++) {
      const key = generateApiKey(i % 2 === 0 ? 'live' : 'test');
      expect(key).toMatch(/^pcl_(live|test)_[0-9A-Za-z]{43}_[0-9A-Za-z]{6}$/);
      expect(parseApiKey(key)?.env).toBe(i % 2 === 0 ? 'live' : 'test');
      seen.add(key.split('_')[2] ?? '');
    }
    expect(seen.size).toBe(200);
    // The checksum is the CRC-32 of everything before it, in base62.
    const key = generateApiKey('live');
    const body = key.slice(0, -7);
    let n = BigInt(crc32(body));
    let b62 = '';
    const digits = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
    while (n > 0n) {
      b62 = digits[Number(n % 62n)]! + b62;
      n /= 62n;
    }
    expect(key.slice(-6)).toBe(b62.padStart(6, '0'));
  });

  it('is found by the scanner pattern inside other text', () => {
    const key = generateApiKey('test');
    const found = `config: token=${key}\nother`.match(API_KEY_PATTERN);
    expect(found).toEqual([key]);
  });

  it('refuses typos, truncation, a wrong checksum and look-alikes', () => {
    const key = generateApiKey('live');
    const flip = (s: string, i: number) => s.slice(0, i) + (s[i] === 'a' ? 'b' : 'a') + s.slice(i + 1);
    const refused = [
      flip(key, 20),
      flip(key, key.length - 1),
      key.slice(0, -1),
      key + 'x',
      key.replace('pcl_live_', 'pcl_prod_'),
      key.replace('pcl_live_', 'PCL_live_'),
      key.replace('pcl_live_', 'pcl_test_'), // the checksum covers the environment
      ` ${key}`,
      `${key}\n`,
      '',
      'pcl_live__',
      'x'.repeat(10_000),
    ];
    for (const bad of refused) expect(parseApiKey(bad), bad.slice(0, 80)).toBeUndefined();
  });

  it('groups sources into networks and validates CIDRs', () => {
    expect(sourceNetwork('192.0.2.77')).toBe('192.0.2.0/24');
    expect(sourceNetwork('::ffff:192.0.2.77')).toBe('192.0.2.0/24');
    expect(sourceNetwork('2001:db8:1:2:3:4:5:6')).toBe('2001:db8:1:2:0:0:0:0/64');
    expect(sourceNetwork('2001:db8::1')).toBe('2001:db8:0:0:0:0:0:0/64');
    expect(sourceNetwork('10.1.2.3', 16)).toBe('10.1.0.0/16');
    expect(parseCidr('10.0.0.0/8')).toEqual({ address: '10.0.0.0', prefix: 8, family: 'ipv4' });
    expect(parseCidr('2001:DB8::/32').family).toBe('ipv6');
    for (const bad of ['10.0.0.0', '10.0.0.0/33', '::/129', 'example.com/8', '10.0.0.0/-1', '10.0.0/8']) {
      expect(() => parseCidr(bad), bad).toThrow(ApiKeyError);
    }
  });
});

function request(
  headers: Record<string, string | string[]>,
  options: { api?: string; operationId?: string; clientIp?: string; query?: string } = {},
): GatewayRequest {
  const operation = {
    api: { name: options.api ?? 'patients' },
    operationId: options.operationId ?? 'getPatient',
  } as unknown as CompiledOperation;
  return {
    correlationId: 'c-1',
    method: 'GET',
    target: { path: '/v1/patients/1', segments: ['v1', 'patients', '1'], query: options.query ?? '' },
    headers,
    peerIp: options.clientIp ?? '192.0.2.10',
    clientIp: options.clientIp ?? '192.0.2.10',
    operation,
    params: {},
    body: undefined,
    credentialPresented: false,
    peerCertificate: () => undefined,
    responseHeaders: {},
  };
}

describe.each(backends.names)('API keys on %s', (backend) => {
  let store: Store;
  let clock: number;
  const anomalies: ApiKeyAnomaly[] = [];
  const errors: unknown[] = [];
  const authorities: ApiKeyAuthority[] = [];
  const ctx = (over: Partial<ApiKeyContext> = {}): ApiKeyContext => ({
    api: 'patients',
    operationId: 'getPatient',
    clientIp: '192.0.2.10',
    ...over,
  });
  const authority = (options: ApiKeyAuthorityOptions = {}): ApiKeyAuthority => {
    const a = createApiKeyAuthority(store, keys, {
      now: () => clock,
      flushIntervalMs: 0,
      onAnomaly: (e) => {
        anomalies.push(e);
        observed.push(e);
      },
      onError: (e) => {
        errors.push(e);
        observed.push(e);
      },
      ...options,
    });
    authorities.push(a);
    return a;
  };
  const issue = async (input: Partial<Parameters<typeof issueApiKey>[2]> = {}) => {
    const issued = await issueApiKey(store, keys, {
      name: 'billing batch',
      apis: ['patients'],
      now: new Date(clock),
      ...input,
    });
    secrets.push(issued.key);
    observed.push(issued.record, issued.id);
    return issued;
  };

  beforeAll(async () => {
    store = await backends.open(backend);
    clock = Date.parse('2030-01-01T00:00:00.000Z');
  });
  afterAll(async () => {
    for (const a of authorities) await a.close();
    observed.push(await listApiKeys(store));
    expect(errors).toEqual([]);
    await store.close();
  });

  it('issues a key shown once and stores only its HMAC', async () => {
    const issued = await issue({ operations: ['getPatient'], cidrs: ['192.0.2.0/24'], expiresInDays: 30 });
    expect(issued.id).toMatch(/^ak_[0-9A-Za-z]{22}$/);
    expect(parseApiKey(issued.key)?.env).toBe('live');
    expect(issued.record).toMatchObject({
      name: 'billing batch',
      env: 'live',
      apis: ['patients'],
      operations: ['getPatient'],
      cidrs: ['192.0.2.0/24'],
      useCount: 0,
    });
    expect(issued.record.expiresAt.getTime() - clock).toBe(30 * 24 * 3600 * 1000);
    const rows = await store.db.selectFrom('api_keys').selectAll().where('id', '=', issued.id).execute();
    expect(rows).toHaveLength(1);
    expect(rows[0]?.key_hash).toBe(keys.hmac('api-key', issued.key));
    expect(JSON.stringify(rows)).not.toContain(issued.key.split('_')[2]);
  });

  it('refuses issuing without an API, with bad restrictions or an out-of-range expiry', async () => {
    const bad: Partial<Parameters<typeof issueApiKey>[2]>[] = [
      { apis: [] },
      { apis: ['Patients'] },
      { apis: ['patients; drop table api_keys'] },
      { name: '' },
      { name: 'a\nb' },
      { operations: ['get patient'] },
      { cidrs: ['10.0.0.0/33'] },
      { expiresInDays: 0 },
      { expiresInDays: 366 },
      { expiresInDays: 1.5 },
      { env: 'prod' as 'live' },
    ];
    for (const input of bad) {
      await expect(issue(input), JSON.stringify(input)).rejects.toThrow(ApiKeyError);
    }
  });

  it('accepts a valid key within its restrictions and records usage', async () => {
    const a = authority();
    const { id, key } = await issue();
    expect(await a.verify(key, ctx())).toEqual({ ok: true, id, name: 'billing batch' });
    expect(await a.verify(key, ctx({ clientIp: '192.0.2.99' }))).toMatchObject({ ok: true });
    await a.flush();
    const record = await getApiKey(store, id);
    expect(record?.useCount).toBe(2);
    expect(record?.lastUsedAt?.getTime()).toBe(clock);
    expect(record?.lastSourceNetwork).toBe('192.0.2.0/24');
    expect(anomalies.filter((e) => e.keyId === id)).toEqual([]);
  });

  it('refuses malformed, mistyped and unknown keys without a lookup for the malformed ones', async () => {
    let lookups = 0;
    const counting = createApiKeyAuthority(
      store,
      {
        hmac: (p, v) => {
          lookups++;
          return keys.hmac(p, v);
        },
      },
      { now: () => clock, flushIntervalMs: 0 },
    );
    authorities.push(counting);
    const { key } = await issue();
    const typo = key.slice(0, 15) + (key[15] === 'Z' ? 'Y' : 'Z') + key.slice(16);
    for (const bad of [typo, key.slice(0, -1), '', 'Bearer ' + key, key.toLowerCase()]) {
      expect(await counting.verify(bad, ctx())).toEqual({ ok: false, reason: 'malformed' });
    }
    expect(lookups).toBe(0);
    const stranger = generateApiKey('live');
    secrets.push(stranger);
    expect(await counting.verify(stranger, ctx())).toEqual({ ok: false, reason: 'unknown' });
    expect(lookups).toBe(1);
  });

  it('refuses a key of the other environment', async () => {
    const { key, id } = await issue({ env: 'test' });
    expect(await authority().verify(key, ctx())).toEqual({ ok: false, reason: 'wrong-environment', id });
    expect(await authority({ environment: 'test' }).verify(key, ctx())).toMatchObject({ ok: true });
  });

  it('refuses other APIs, other operations and other source networks', async () => {
    const a = authority();
    const { key, id } = await issue({ operations: ['getPatient'], cidrs: ['192.0.2.0/25', '2001:db8::/48'] });
    expect(await a.verify(key, ctx({ api: 'billing' }))).toEqual({
      ok: false,
      reason: 'api-not-allowed',
      id,
    });
    expect(await a.verify(key, ctx({ operationId: 'deletePatient' }))).toEqual({
      ok: false,
      reason: 'operation-not-allowed',
      id,
    });
    expect(await a.verify(key, ctx({ operationId: undefined }))).toMatchObject({
      reason: 'operation-not-allowed',
    });
    for (const ip of ['192.0.2.200', '198.51.100.1', '2001:db9::1', '::1', 'not-an-ip']) {
      expect(await a.verify(key, ctx({ clientIp: ip })), ip).toEqual({
        ok: false,
        reason: 'source-not-allowed',
        id,
      });
    }
    for (const ip of ['192.0.2.1', '::ffff:192.0.2.2', '2001:db8:0:ffff::1']) {
      expect(await a.verify(key, ctx({ clientIp: ip })), ip).toMatchObject({ ok: true });
    }
  });

  it('refuses an expired key exactly at its expiry and reports the use', async () => {
    const a = authority();
    const { key, id } = await issue({ expiresInDays: 1 });
    const start = clock;
    try {
      clock = start + 24 * 3600 * 1000 - 1;
      expect(await a.verify(key, ctx())).toMatchObject({ ok: true });
      clock = start + 24 * 3600 * 1000;
      expect(await a.verify(key, ctx())).toEqual({ ok: false, reason: 'expired', id });
      expect(anomalies).toContainEqual(expect.objectContaining({ type: 'used-after-expiry', keyId: id }));
    } finally {
      clock = start;
    }
  });

  it('refuses a revoked key from the next request, and reports any use after revocation', async () => {
    const a = authority({ cacheTtlMs: 60_000 });
    const { key, id } = await issue();
    expect(await a.verify(key, ctx())).toMatchObject({ ok: true });
    const revoked = await a.revoke(id);
    expect(apiKeyStatus(revoked, clock)).toBe('revoked');
    expect(await a.verify(key, ctx())).toEqual({ ok: false, reason: 'revoked', id });
    expect(anomalies).toContainEqual(
      expect.objectContaining({ type: 'used-after-revocation', keyId: id, network: '192.0.2.0/24' }),
    );
    // Revoked elsewhere (the CLI): applied once the cached record is older than the TTL.
    const b = authority({ cacheTtlMs: 5000 });
    const other = await issue();
    expect(await b.verify(other.key, ctx())).toMatchObject({ ok: true });
    await revokeApiKey(store, other.id, new Date(clock));
    const start = clock;
    try {
      clock = start + 5000;
      expect(await b.verify(other.key, ctx())).toMatchObject({ ok: false, reason: 'revoked' });
    } finally {
      clock = start;
    }
    // Revocation is idempotent and keeps the first time.
    const again = await revokeApiKey(store, id, new Date(clock + 1000));
    expect(again.revokedAt?.getTime()).toBe(revoked.revokedAt?.getTime());
    await expect(revokeApiKey(store, 'ak_nope')).rejects.toMatchObject({ code: 'API_KEY_NOT_FOUND' });
  });

  it('rotates: both keys work during the grace period, the old one is refused after it', async () => {
    const a = authority({ cacheTtlMs: 0 });
    const old = await issue({ operations: ['getPatient'], cidrs: ['192.0.2.0/24'], expiresInDays: 90 });
    const rotated = await rotateApiKey(store, keys, old.id, { graceHours: 2, now: new Date(clock) });
    secrets.push(rotated.key);
    observed.push(rotated.record, rotated.previous);
    expect(rotated.key).not.toBe(old.key);
    expect(rotated.record).toMatchObject({
      operations: ['getPatient'],
      cidrs: ['192.0.2.0/24'],
      env: 'live',
    });
    expect(rotated.record.expiresAt.getTime() - clock).toBe(90 * 24 * 3600 * 1000);
    expect(rotated.previous.replacedBy).toBe(rotated.id);
    expect(apiKeyStatus(rotated.previous, clock)).toBe('rotating');
    expect(await a.verify(old.key, ctx())).toMatchObject({ ok: true, id: old.id });
    expect(await a.verify(rotated.key, ctx())).toMatchObject({ ok: true, id: rotated.id });
    const start = clock;
    try {
      clock = start + 2 * 3600 * 1000 - 1;
      expect(await a.verify(old.key, ctx())).toMatchObject({ ok: true });
      clock = start + 2 * 3600 * 1000;
      expect(await a.verify(old.key, ctx())).toEqual({ ok: false, reason: 'rotated', id: old.id });
      expect(await a.verify(rotated.key, ctx())).toMatchObject({ ok: true });
      expect(anomalies).toContainEqual(
        expect.objectContaining({ type: 'used-after-rotation', keyId: old.id }),
      );
    } finally {
      clock = start;
    }
    // A rotated, revoked or unknown key cannot be rotated again; bad grace periods are refused.
    await expect(rotateApiKey(store, keys, old.id, { now: new Date(clock) })).rejects.toThrow(/rotate ak_/);
    await expect(rotateApiKey(store, keys, 'ak_missing')).rejects.toMatchObject({
      code: 'API_KEY_NOT_FOUND',
    });
    await expect(rotateApiKey(store, keys, rotated.id, { graceHours: -1 })).rejects.toThrow(ApiKeyError);
    await expect(rotateApiKey(store, keys, rotated.id, { graceHours: 721 })).rejects.toThrow(ApiKeyError);
    const gone = await issue();
    await revokeApiKey(store, gone.id, new Date(clock));
    await expect(rotateApiKey(store, keys, gone.id, { now: new Date(clock) })).rejects.toMatchObject({
      code: 'API_KEY_STATE',
    });
  });

  it('rotation with no grace ends the old key at once', async () => {
    const a = authority({ cacheTtlMs: 0 });
    const old = await issue();
    const rotated = await rotateApiKey(store, keys, old.id, { graceHours: 0, now: new Date(clock) });
    secrets.push(rotated.key);
    expect(await a.verify(old.key, ctx())).toMatchObject({ ok: false, reason: 'rotated' });
    expect(await a.verify(rotated.key, ctx())).toMatchObject({ ok: true });
  });

  it('reports a new source network once, not the first one, and a volume spike once per window', async () => {
    const a = authority({ spike: { windowMs: 60_000, factor: 5, minimum: 10 } });
    const { key, id } = await issue();
    const mine = () => anomalies.filter((e) => e.keyId === id);
    expect(await a.verify(key, ctx({ clientIp: '192.0.2.1' }))).toMatchObject({ ok: true });
    expect(mine()).toEqual([]);
    expect(await a.verify(key, ctx({ clientIp: '203.0.113.9' }))).toMatchObject({ ok: true });
    expect(await a.verify(key, ctx({ clientIp: '203.0.113.10' }))).toMatchObject({ ok: true });
    expect(mine()).toEqual([
      expect.objectContaining({ type: 'new-source-network', network: '203.0.113.0/24' }),
    ]);
    // Another process that loads the key later knows both networks already.
    const b = authority();
    expect(await b.verify(key, ctx({ clientIp: '203.0.113.11' }))).toMatchObject({ ok: true });
    expect(mine()).toHaveLength(1);
    const networks = await store.db
      .selectFrom('api_key_networks')
      .select('network')
      .where('key_id', '=', id)
      .execute();
    expect(networks.map((n) => n.network).sort()).toEqual(['192.0.2.0/24', '203.0.113.0/24']);

    // Volume: a quiet minute (3 requests so far in this window) sets the usual level.
    const start = clock;
    try {
      clock = start + 60_000;
      for (let i = 0; i < 10; i++) await a.verify(key, ctx());
      expect(mine().filter((e) => e.type === 'volume-spike')).toEqual([]);
      for (let i = 0; i < 20; i++) await a.verify(key, ctx());
      const spikes = mine().filter((e) => e.type === 'volume-spike');
      expect(spikes).toHaveLength(1);
      expect(spikes[0]).toMatchObject({ count: 16, baseline: 3, windowMs: 60_000 });
    } finally {
      clock = start;
    }
  });

  it('lists keys without keys or hashes', async () => {
    const listed = await listApiKeys(store);
    expect(listed.length).toBeGreaterThan(5);
    const text = JSON.stringify(listed);
    expect(text).not.toMatch(API_KEY_PATTERN);
    const hashes = await store.db.selectFrom('api_keys').select('key_hash').execute();
    for (const { key_hash } of hashes) expect(text).not.toContain(key_hash);
  });

  describe('as a security-scheme verifier', () => {
    const header = { in: 'header', name: 'X-API-Key' } as const;

    it('accepts the key in the declared header and returns the key as the principal', async () => {
      const a = authority();
      const { key, id } = await issue();
      const verify = apiKeySchemeVerifier('apiKey', header, a);
      const outcome = await verify(request({ 'x-api-key': key }), []);
      expect(outcome).toEqual({
        ok: true,
        principal: { scheme: 'apiKey', subject: id, clientId: id, scopes: new Set() },
      });
    });

    it('refuses missing, duplicated, mistyped, unknown, revoked and misplaced keys', async () => {
      const a = authority({ cacheTtlMs: 0 });
      const { key, id } = await issue({ operations: ['getPatient'] });
      const verify = apiKeySchemeVerifier('apiKey', header, a);
      const cases: [GatewayRequest, VerifyOutcome][] = [
        [request({}), { ok: false, status: 401, reason: 'credential-missing' }],
        [request({ 'x-api-key': '' }), { ok: false, status: 401, reason: 'credential-missing' }],
        [request({ 'x-api-key': [key, key] }), { ok: false, status: 401, reason: 'api-key-malformed' }],
        [request({ 'x-api-key': `${key}, ${key}` }), { ok: false, status: 401, reason: 'api-key-malformed' }],
        [
          request({ 'x-api-key': key.slice(0, -1) + (key.endsWith('0') ? '1' : '0') }),
          { ok: false, status: 401, reason: 'api-key-malformed' },
        ],
        [
          request({ authorization: `Bearer ${key}` }),
          { ok: false, status: 401, reason: 'credential-missing' },
        ],
        [
          request({}, { query: `X-API-Key=${key}` }),
          { ok: false, status: 401, reason: 'credential-missing' },
        ],
        [
          request({ 'x-api-key': key }, { api: 'billing' }),
          { ok: false, status: 403, reason: 'api-key-api-not-allowed', apiKeyId: id },
        ],
        [
          request({ 'x-api-key': key }, { operationId: 'deletePatient' }),
          { ok: false, status: 403, reason: 'api-key-operation-not-allowed', apiKeyId: id },
        ],
      ];
      for (const [req, expected] of cases) expect(await verify(req, [])).toEqual(expected);
      // API keys carry no scopes (roles).
      expect(await verify(request({ 'x-api-key': key }), ['admin'])).toEqual({
        ok: false,
        status: 403,
        reason: 'insufficient-scope',
      });
      await a.revoke(id);
      expect(await verify(request({ 'x-api-key': key }), [])).toEqual({
        ok: false,
        status: 401,
        reason: 'api-key-revoked',
        // Issue 13: a known key's id (never the key) for the audit event.
        apiKeyId: id,
      });
    });

    it('refuses keys in the query string or a cookie even when declared, unless configured', async () => {
      const a = authority();
      const { key } = await issue();
      const query = { in: 'query', name: 'api_key' } as const;
      const cookie = { in: 'cookie', name: 'k' } as const;
      expect(apiKeyLocationAllowed(query)).toBe(false);
      expect(apiKeyLocationAllowed(cookie)).toBe(false);
      expect(apiKeyLocationAllowed(header)).toBe(true);
      const inQuery = request({}, { query: `api_key=${key}` });
      const inCookie = request({ cookie: `a=b; k=${key}` });
      expect(await apiKeySchemeVerifier('q', query, a)(inQuery, [])).toEqual({
        ok: false,
        status: 401,
        reason: 'api-key-in-query-refused',
      });
      expect(await apiKeySchemeVerifier('c', cookie, a)(inCookie, [])).toEqual({
        ok: false,
        status: 401,
        reason: 'api-key-in-cookie-refused',
      });
      expect(await apiKeySchemeVerifier('q', query, a, { allowQuery: true })(inQuery, [])).toMatchObject({
        ok: true,
      });
      expect(await apiKeySchemeVerifier('c', cookie, a, { allowCookie: true })(inCookie, [])).toMatchObject({
        ok: true,
      });
      const twice = request({}, { query: `api_key=${key}&api_key=${key}` });
      expect(await apiKeySchemeVerifier('q', query, a, { allowQuery: true })(twice, [])).toMatchObject({
        ok: false,
        reason: 'api-key-malformed',
      });
      expect(() => apiKeySchemeVerifier('x', { in: 'path' as 'query', name: 'k' }, a)).toThrow(TypeError);
    });
  });
});
