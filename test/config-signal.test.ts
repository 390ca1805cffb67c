/**
 * A configuration applied on one gateway process is announced (`config-applied`, Redis pub/sub)
 * and every other process re-reads its own copy of the file, as hosts that each keep a copy
 * (pushed by configuration management) would. Two in-process gateways on one PostgreSQL schema
 * and Redis prefix, each with its own file and data directory, neither watching its file, so
 * that only the signal can make the second one reload.
 */
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { PG_URL } from './cli-harness.ts';
import { pgSchema, redisPrefix, REDIS_URL } from './cluster-harness.ts';
import { startRecordingUpstream, startTestGateway, tempDir } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';

const KEY_ENV = 'PORTCULLIS_TEST_CONFIG_SIGNAL_KEY';

describe('config-applied signal', () => {
  const schema = pgSchema('config-signal');
  const keyPrefix = redisPrefix('config-signal');
  let upstream: RecordingUpstream;
  let a: TestGateway;
  let b: TestGateway;
  const config = (apis: { name: string; basePath: string }[]) => {
    const store = new URL(PG_URL);
    store.searchParams.set('schema', schema);
    return {
      store: { url: store.href },
      redis: { url: REDIS_URL, keyPrefix },
      cluster: { nodes: 2 },
      rateLimits: { backend: 'redis' },
      idempotency: { backend: 'store' },
      oauth: { kms: { masterKeyEnv: KEY_ENV } },
      apis: apis.map((api) => ({ ...api, openapi: 'api.yaml', upstream: { url: upstream.url } })),
    };
  };
  /** What startTestGateway writes, for rewriting a gateway's file with other APIs. */
  const rewrite = async (gw: TestGateway, apis: { name: string; basePath: string }[]) => {
    const full = {
      ...config(apis),
      gateway: { port: 0 },
      admin: { port: 0 },
      rateLimits: gw.p.runtime().loaded.config.rateLimits,
    };
    await writeFile(gw.configFile, stringify(full));
  };
  const one = [{ name: 'one', basePath: '/v1' }];
  const two = [...one, { name: 'two', basePath: '/v2' }];

  beforeAll(async () => {
    process.env[KEY_ENV] = randomBytes(32).toString('base64url');
    upstream = await startRecordingUpstream();
    a = await startTestGateway(config(one), { dir: await tempDir() });
    b = await startTestGateway(config(one), { dir: await tempDir() });
    // Both subscribed before anything is announced.
    for (const gw of [a, b]) {
      const deadline = Date.now() + 10_000;
      while (!gw.logLines().some((l) => l.event === 'signals-up') && Date.now() < deadline) {
        await new Promise((ok) => setTimeout(ok, 20));
      }
    }
  }, 60_000);

  afterAll(async () => {
    await a.close();
    await b.close();
    await upstream.close();
    Reflect.deleteProperty(process.env, KEY_ENV);
  });

  it('a change applied on one process is applied by the other from its own file, once', async () => {
    expect((await b.request('/v2/items')).status).toBe(404);
    await rewrite(a, two);
    await rewrite(b, two);
    expect((await a.p.reload('test')).status).toBe('applied');
    const since = Date.now();
    while ((await b.request('/v2/items')).status === 404 && Date.now() - since < 3_000) {
      await new Promise((ok) => setTimeout(ok, 20));
    }
    expect(Date.now() - since).toBeLessThan(1_000);
    expect(b.p.runtime().version).toBe(a.p.runtime().version);
    // The new runtime serves before the reload's log line is written (after the authorization
    // server's reload and the version record): wait for the line, not for a fixed time.
    const logged = Date.now();
    while (!b.logLines().some((l) => l.event === 'config-reloaded') && Date.now() - logged < 5_000) {
      await new Promise((ok) => setTimeout(ok, 20));
    }
    const reloaded = b.logLines().filter((l) => l.event === 'config-reloaded');
    expect(reloaded.map((l) => l.trigger)).toEqual(['cluster-signal']);
    // The process that announced does not hear itself, and the follower does not announce.
    await new Promise((ok) => setTimeout(ok, 300));
    expect(a.logLines().filter((l) => l.event === 'config-reloaded')).toHaveLength(1);
  });

  it('a process whose own file did not change keeps its configuration', async () => {
    const before = b.p.runtime().version;
    await rewrite(a, one);
    expect((await a.p.reload('test')).status).toBe('applied');
    await new Promise((ok) => setTimeout(ok, 500));
    expect(b.p.runtime().version).toBe(before);
    expect((await b.request('/v2/items')).status).not.toBe(404);
    expect(b.logLines().filter((l) => l.event === 'config-reloaded')).toHaveLength(1);
  });
});
