/**
 * Consents changed on one gateway process reach the others at once (issue 16): the change is
 * announced (`privacy-changed`, Redis pub/sub) and every other process drops its cached copies,
 * which otherwise live 5 s. Two in-process gateways on one PostgreSQL schema and Redis prefix.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPrivacyService } from '../src/privacy/service.ts';
import { PG_URL } from './cli-harness.ts';
import { pgSchema, redisPrefix, REDIS_URL } from './cluster-harness.ts';
import { startRecordingUpstream, startTestGateway, tempDir } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';

const KEY_ENV = 'PORTCULLIS_TEST_PRIVACY_SIGNAL_KEY';
const CONTRACT = {
  openapi: '3.1.0',
  info: { title: 'people', version: '1' },
  security: [{ oauth: ['people:read'] }],
  components: {
    securitySchemes: {
      oauth: {
        type: 'oauth2',
        flows: {
          clientCredentials: { tokenUrl: 'https://localhost/token', scopes: { 'people:read': 'read' } },
        },
      },
    },
  },
  paths: {
    '/stats': {
      get: {
        operationId: 'stats',
        'x-portcullis-purposes': ['analytics'],
        responses: { '200': { description: 'ok' } },
      },
    },
  },
};

describe('privacy-changed signal', () => {
  const schema = pgSchema('privacy-signal');
  const keyPrefix = redisPrefix('privacy-signal');
  let upstream: RecordingUpstream;
  let a: TestGateway | undefined;
  let b: TestGateway | undefined;
  const gw = (g: TestGateway | undefined): TestGateway => {
    if (g === undefined) throw new Error('the gateway did not start');
    return g;
  };

  beforeAll(async () => {
    process.env[KEY_ENV] = randomBytes(32).toString('base64url');
    upstream = await startRecordingUpstream();
    const store = new URL(PG_URL);
    store.searchParams.set('schema', schema);
    const config = {
      store: { url: store.href },
      redis: { url: REDIS_URL, keyPrefix },
      cluster: { nodes: 2 },
      rateLimits: { backend: 'redis' },
      idempotency: { backend: 'store' },
      oauth: { kms: { masterKeyEnv: KEY_ENV } },
      apis: [{ name: 'people', basePath: '/v1', openapi: 'api.yaml', upstream: { url: upstream.url } }],
    };
    a = await startTestGateway(config, { dir: await tempDir(), openapi: CONTRACT });
    b = await startTestGateway(config, { dir: await tempDir(), openapi: CONTRACT });
    for (const g of [a, b]) {
      const deadline = Date.now() + 10_000;
      while (!g.logLines().some((l) => l.event === 'signals-up') && Date.now() < deadline) {
        await new Promise((ok) => setTimeout(ok, 20));
      }
    }
  }, 60_000);

  afterAll(async () => {
    await a?.close();
    await b?.close();
    await upstream.close();
    Reflect.deleteProperty(process.env, KEY_ENV);
  });

  it('a consent granted on one process is seen by the other at once, not after its cache expires', async () => {
    const subject = `user-${randomBytes(4).toString('hex')}`;
    const loaded = Date.now();
    expect([...(await gw(b).p.privacy.choices(subject)).granted]).toEqual([]);

    // A write that is not announced (as by a process without Redis): b keeps its cached copy.
    const silent = createPrivacyService({ db: gw(a).p.store.db, audit: gw(a).p.audit });
    await silent.setConsent(
      subject,
      { purpose: 'marketing', granted: true, noticeVersion: 'v1' },
      {
        listener: 'admin',
        source: 'admin',
      },
    );
    expect([...(await gw(b).p.privacy.choices(subject)).granted]).toEqual([]);

    // Through the gateway's service: announced, and b drops its copy.
    await gw(a).p.privacy.setConsent(
      subject,
      { purpose: 'analytics', granted: true, noticeVersion: 'v1' },
      {
        listener: 'admin',
        source: 'admin',
      },
    );
    let granted: string[] = [];
    while (Date.now() - loaded < 5_000) {
      granted = [...(await gw(b).p.privacy.choices(subject)).granted].sort();
      if (granted.length === 2) break;
      await new Promise((ok) => setTimeout(ok, 20));
    }
    expect(granted).toEqual(['analytics', 'marketing']);
    expect(Date.now() - loaded).toBeLessThan(5_000);
  });
});
