/**
 * Encryption at rest on the running gateway: idempotency replay records (the upstream's full
 * response) in the store and in Redis, and the authorization server's model payloads (here a
 * pushed authorization request), are sealed under data keys wrapped by the master key. The rows
 * and Redis values hold no plaintext; a master-key rotation (`portcullis keys rotate-master`, a
 * separate process) re-wraps the data keys and everything stays readable; an altered value, or
 * one moved to another row, is refused instead of being served.
 */
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSealers } from '../src/keys/envelope.ts';
import { envelopeKeyId, openLocalKeyRing } from '../src/keys/kms.ts';
import { createClient } from '../src/oauth/clients.ts';
import { modelCodecFromKeys } from '../src/oauth/model-codec.ts';
import { runPortcullis } from './cli-harness.ts';
import { startRecordingUpstream, startTestGateway, TEST_OPENAPI } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';
import { Jar, createFlow } from './oauth-flow.ts';

const MARKER = 'card-4111-1111-1111-1111';
const API = {
  ...TEST_OPENAPI,
  paths: {
    '/orders': {
      post: {
        operationId: 'createOrder',
        'x-portcullis-idempotency': { required: true },
        requestBody: {
          content: {
            'application/json': { schema: { type: 'object', properties: { n: { type: 'integer' } } } },
          },
        },
        responses: { '201': { description: 'created' } },
      },
    },
  },
};

let upstream: RecordingUpstream;
beforeAll(async () => {
  upstream = await startRecordingUpstream();
  upstream.respond(() => ({
    status: 201,
    headers: { 'content-type': 'application/json', 'x-secret-header': MARKER },
    body: JSON.stringify({ card: MARKER, id: randomUUID() }),
  }));
});
afterAll(async () => {
  await upstream.close();
});

function order(gw: TestGateway, key: string, n = 1) {
  return gw.request('/v1/orders', {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'idempotency-key': key },
    body: JSON.stringify({ n }),
  });
}

/** Flips one character of the sealed part (after `e1.<id>.`), keeping it base64url. */
function tamper(sealed: string): string {
  const at = sealed.length - 10;
  const c = sealed[at] === 'A' ? 'B' : 'A';
  return sealed.slice(0, at) + c + sealed.slice(at + 1);
}

describe('idempotency records in the store', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startTestGateway(
      {
        idempotency: { backend: 'store' },
        apis: [{ name: 'shop', openapi: 'api.yaml', basePath: '/v1', upstream: { url: upstream.url } }],
      },
      { openapi: API },
    );
  }, 60_000);
  afterAll(async () => {
    await gw.close();
  });

  const rowOf = (db: TestGateway['p']['store']['db']) =>
    db.selectFrom('idempotency_records').selectAll().where('state', '=', 'd').execute();

  it('stores the response sealed, replays it, survives a master-key rotation, refuses tampering', async () => {
    const key = randomUUID();
    const first = await order(gw, key);
    expect(first.status).toBe(201);
    expect(first.body).toContain(MARKER);
    const rows = await rowOf(gw.p.store.db);
    expect(rows).toHaveLength(1);
    const row = rows[0];
    if (row?.response == null) throw new Error('no stored response');
    expect(row.response).not.toContain(MARKER);
    expect(Buffer.from(row.response).toString('base64')).not.toContain(
      Buffer.from(MARKER).toString('base64'),
    );
    const stored = JSON.parse(row.response) as { sealed: string; body: string };
    expect(stored.sealed).toMatch(/^e1\.[0-9a-f]{32}\./);
    expect(stored.body).toBe('');
    const received = upstream.received.length;
    const replay = await order(gw, key);
    expect(replay.headers['idempotent-replayed']).toBe('true');
    expect(replay.body).toBe(first.body);
    expect(upstream.received.length).toBe(received);

    // Master-key rotation in another process: the data key is re-wrapped, the record still opens
    // with a freshly opened ring (the new key file), and at the gateway.
    const dataDir = join(gw.dir, 'data');
    const before = await gw.p.store.db.selectFrom('data_keys').selectAll().execute();
    const rotated = await runPortcullis([
      'keys',
      'rotate-master',
      '--json',
      '--config',
      gw.configFile,
      '--data-dir',
      dataDir,
    ]);
    expect(rotated.code, rotated.stderr).toBe(0);
    const to = (JSON.parse(rotated.stdout) as { to: string }).to;
    const after = await gw.p.store.db.selectFrom('data_keys').selectAll().execute();
    expect(after.map((d) => d.id).sort()).toEqual(before.map((d) => d.id).sort());
    for (const d of after) expect(envelopeKeyId(Buffer.from(d.wrapped, 'base64url'))).toBe(to);
    const ring = openLocalKeyRing({
      dataDir,
      masterKeyFile: 'master.key',
      masterKeyEnv: 'PORTCULLIS_NO_SUCH_VAR',
    });
    const fresh = createSealers({ db: gw.p.store.db, kms: ring.kms }).for('idempotency');
    const opened = await fresh.open(stored.sealed, `record:${row.record_key}:${row.fingerprint}`);
    expect(opened.toString('utf8')).toContain(MARKER);
    await gw.p.keys?.refresh();
    expect((await order(gw, key)).body).toBe(first.body);

    // Altered: refused (503), never replayed and never sent upstream again.
    await gw.p.store.db
      .updateTable('idempotency_records')
      .set({ response: JSON.stringify({ ...stored, sealed: tamper(stored.sealed) }) })
      .where('record_key', '=', row.record_key)
      .execute();
    const altered = await order(gw, key);
    expect(altered.status).toBe(503);
    expect(altered.body).not.toContain(MARKER);
    // Written in clear (someone with write access to the store): refused as well.
    await gw.p.store.db
      .updateTable('idempotency_records')
      .set({
        response: JSON.stringify({
          status: 200,
          headers: {},
          body: Buffer.from('forged').toString('base64'),
        }),
      })
      .where('record_key', '=', row.record_key)
      .execute();
    expect((await order(gw, key)).status).toBe(503);
    expect(upstream.received.length).toBe(received);
  }, 120_000);

  it('refuses a sealed record moved to another key', async () => {
    const a = randomUUID();
    const b = randomUUID();
    expect((await order(gw, a, 5)).status).toBe(201);
    expect((await order(gw, b, 5)).status).toBe(201);
    const rows = await gw.p.store.db
      .selectFrom('idempotency_records')
      .selectAll()
      .where('state', '=', 'd')
      .execute();
    const [ra, rb] = rows.slice(-2);
    if (ra === undefined || rb === undefined) throw new Error('two records expected');
    await gw.p.store.db
      .updateTable('idempotency_records')
      .set({ response: ra.response })
      .where('record_key', '=', rb.record_key)
      .execute();
    const moved = await order(gw, b, 5);
    expect(moved.status).toBe(503);
    expect((await order(gw, a, 5)).headers['idempotent-replayed']).toBe('true');
  }, 60_000);
});

describe('idempotency records in Redis', () => {
  const prefix = `test:${randomUUID()}:`;
  const admin = new Redis('redis://127.0.0.1:6379', { maxRetriesPerRequest: 1 });
  let gw: TestGateway;
  beforeAll(async () => {
    expect(await admin.ping()).toBe('PONG'); // fails loudly without Redis
    gw = await startTestGateway(
      {
        redis: { url: 'redis://127.0.0.1:6379', keyPrefix: prefix },
        idempotency: { backend: 'redis' },
        apis: [{ name: 'shop', openapi: 'api.yaml', basePath: '/v1', upstream: { url: upstream.url } }],
      },
      { openapi: API },
    );
  }, 60_000);
  afterAll(async () => {
    await gw.close();
    const keys = await admin.keys(`${prefix}*`);
    if (keys.length > 0) await admin.del(...keys);
    await admin.quit();
  });

  it('holds only the sealed response; replays it; refuses an altered value', async () => {
    const key = randomUUID();
    const first = await order(gw, key);
    expect(first.status).toBe(201);
    const redisKeys = await admin.keys(`${prefix}idem:*`);
    expect(redisKeys).toHaveLength(1);
    const value = (await admin.get(redisKeys[0] ?? '')) ?? '';
    expect(value).not.toContain(MARKER);
    const record = JSON.parse(value) as { r: { sealed: string } };
    expect(record.r.sealed).toMatch(/^e1\./);
    expect((await order(gw, key)).body).toBe(first.body);
    record.r.sealed = tamper(record.r.sealed);
    await admin.set(redisKeys[0] ?? '', JSON.stringify(record), 'KEEPTTL');
    const altered = await order(gw, key);
    expect(altered.status).toBe(503);
    expect(altered.body).not.toContain(MARKER);
  }, 60_000);
});

describe('authorization-server model payloads', () => {
  let gw: TestGateway;
  let issuer: string;
  beforeAll(async () => {
    gw = await startTestGateway(
      { apis: [{ name: 'shop', openapi: 'api.yaml', basePath: '/v1', upstream: { url: upstream.url } }] },
      { openapi: API },
    );
    issuer = gw.p.gatewayUrl;
  }, 60_000);
  afterAll(async () => {
    await gw.close();
  });

  it('seals a pushed request; it is used while intact, refused when altered or moved', async () => {
    const keys = gw.p.keys;
    if (keys === undefined) throw new Error('no key manager');
    const REDIRECT = 'https://rp.example/callback-sealed';
    const { client, clientSecret } = await createClient(gw.p.store.db, keys, {
      name: 'sealed',
      grantTypes: ['authorization_code'],
      scope: 'openid',
      redirectUris: [REDIRECT],
    });
    const ca = gw.p.tls.source === 'development' ? gw.p.tls.caCertPem : undefined;
    const flow = createFlow(issuer, ca);
    const basic = `Basic ${Buffer.from(`${client.clientId}:${clientSecret ?? ''}`).toString('base64')}`;
    const push = async () => {
      const res = await flow.http(new Jar(), `${issuer}/request`, {
        form: {
          client_id: client.clientId,
          response_type: 'code',
          redirect_uri: REDIRECT,
          scope: 'openid',
          code_challenge: 'x'.repeat(43),
          code_challenge_method: 'S256',
          state: MARKER,
        },
        headers: { authorization: basic },
        browser: false,
      });
      expect(res.status).toBe(201);
      return (JSON.parse(res.body) as { request_uri: string }).request_uri;
    };
    const authorize = (requestUri: string) =>
      flow.http(
        new Jar(),
        `${issuer}/auth?${new URLSearchParams({ client_id: client.clientId, request_uri: requestUri }).toString()}`,
      );
    try {
      const [one, two, three] = [await push(), await push(), await push()];
      const rows = await gw.p.store.db
        .selectFrom('oauth_models')
        .selectAll()
        .where('model', '=', 'PushedAuthorizationRequest')
        .execute();
      expect(rows.length).toBeGreaterThanOrEqual(3);
      for (const r of rows) {
        // Sealed by the model codec (src/oauth/model-codec.ts), bound to the row's hashed id.
        expect(r.payload).toMatch(/^v1\./);
        expect(r.payload).not.toContain(MARKER);
        expect(r.payload).not.toContain(REDIRECT);
      }
      // Intact: the authorization request proceeds to the sign-in interaction.
      const ok = await authorize(one);
      expect(ok.status).toBe(303);
      expect(ok.location ?? '').toContain('/interaction/');

      // Rows are stored under a keyed hash of the id (issue 13), never the id itself.
      if (gw.p.keys === undefined) throw new Error('no key manager');
      const codec = modelCodecFromKeys(gw.p.keys);
      const idOf = (uri: string) => codec.hash(uri.slice(uri.lastIndexOf(':') + 1));
      const rowTwo = rows.find((r) => r.id === idOf(two));
      const rowThree = rows.find((r) => r.id === idOf(three));
      if (rowTwo === undefined || rowThree === undefined) throw new Error('rows of the pushed requests');
      await gw.p.store.db
        .updateTable('oauth_models')
        .set({ payload: tamper(rowTwo.payload) })
        .where('model', '=', 'PushedAuthorizationRequest')
        .where('id', '=', rowTwo.id)
        .execute();
      const altered = await authorize(two);
      expect(altered.location ?? '').not.toContain('/interaction/');
      expect(altered.body).not.toContain(MARKER);
      // Moved: row three gets row one's sealed payload; it does not open there.
      const rowOne = rows.find((r) => r.id === idOf(one));
      await gw.p.store.db
        .updateTable('oauth_models')
        .set({ payload: rowOne?.payload ?? '' })
        .where('model', '=', 'PushedAuthorizationRequest')
        .where('id', '=', rowThree.id)
        .execute();
      const moved = await authorize(three);
      expect(moved.location ?? '').not.toContain('/interaction/');
    } finally {
      await flow.close();
    }
  }, 60_000);
});
