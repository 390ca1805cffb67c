/**
 * The admin listener's observability endpoints over real TLS: `/metrics`, `/healthz`, `/readyz`
 * (with the store, the audit sinks, Redis and upstream circuits) and `/audit/events`.
 *
 * The request path is not yet wired to the metrics, so request metrics are fed through the
 * metrics API here (`observeRequest`, `authFailure`, …), exactly as the gateway will call it.
 */
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { redisCheck } from '../src/admin/health.ts';
import type { HealthCheck } from '../src/admin/health.ts';
import { createMetrics } from '../src/admin/metrics.ts';
import type { Metrics } from '../src/admin/metrics.ts';
import { openAuditLog } from '../src/audit/index.ts';
import type { AuditLog } from '../src/audit/index.ts';
import { createAdminServer } from '../src/server/admin-server.ts';
import type { AdminApp } from '../src/server/admin-server.ts';
import { openStore } from '../src/store/index.ts';
import { adminCredentials } from './admin-harness.ts';
import { startRecordingUpstream, startTestGateway, tempDir } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';

let upstream: RecordingUpstream;
let gw: TestGateway;
let agent: Agent;
let metrics: Metrics;
let audit: AuditLog;
let redis: Redis;
const apps: AdminApp[] = [];
const run = `t${String(Date.now())}`;

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  // The admin listener answers /metrics and /audit/events only to an administrator: these tests
  // present a client certificate mapped to an auditor.
  const dir = await tempDir();
  const creds = await adminCredentials(dir);
  gw = await startTestGateway(
    {
      admin: creds.config,
      apis: [{ name: 'items', openapi: 'api.yaml', basePath: '/v1', upstream: { url: upstream.url } }],
    },
    { dir },
  );
  if (gw.p.tls.source !== 'development') throw new Error('expected the development certificate');
  agent = new Agent({
    connect: { ca: gw.p.tls.caCertPem, servername: 'localhost', cert: creds.cert, key: creds.key },
  });
  metrics = createMetrics();
  audit = await openAuditLog({
    config: { ...gw.p.runtime().loaded.config.audit, batchMaxDelayMs: 5 },
    dataDir: join(gw.dir, 'data'),
    store: gw.p.store,
    registry: metrics.registry,
  });
  redis = new Redis({ host: '127.0.0.1', port: 6379, lazyConnect: true, maxRetriesPerRequest: 1 });
  await redis.connect(); // Redis must run for this suite: fail loudly when it does not
});

afterAll(async () => {
  for (const app of apps) await app.close();
  await audit.close();
  redis.disconnect();
  await agent.close();
  await gw.close();
  await upstream.close();
});

/** An admin server of its own on port 0, built from the running gateway's parts. */
async function adminWith(
  parts: {
    checks?: HealthCheck[];
    store?: typeof gw.p.store;
    withAudit?: boolean;
    rateLimit?: { points: number; seconds: number };
  } = {},
): Promise<string> {
  const runtime = gw.p.runtime();
  const config = runtime.loaded.config;
  const current =
    parts.rateLimit === undefined
      ? runtime
      : {
          ...runtime,
          loaded: {
            ...runtime.loaded,
            config: { ...config, admin: { ...config.admin, rateLimit: parts.rateLimit } },
          },
        };
  const app = createAdminServer({
    holder: { current },
    store: parts.store ?? gw.p.store,
    logger: gw.p.logger,
    tls: gw.p.tls,
    metrics,
    ...(parts.withAudit === false ? {} : { audit }),
    checks: parts.checks ?? [],
  });
  apps.push(app);
  await app.listen({ port: 0, host: '127.0.0.1' });
  const address = app.server.address();
  if (address === null || typeof address === 'string') throw new Error('no address');
  return `https://127.0.0.1:${String(address.port)}`;
}

async function get(url: string): Promise<{ status: number; type: string; body: string }> {
  const res = await request(url, { dispatcher: agent });
  return { status: res.statusCode, type: String(res.headers['content-type']), body: await res.body.text() };
}

/** Every `name="value"` label pair in a text exposition. */
function labelValues(text: string, family: string): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  for (const line of text.split('\n')) {
    if (!line.startsWith(family)) continue;
    for (const m of line.matchAll(/([a-z_]+)="([^"]*)"/g)) {
      const [, k, v] = m;
      if (k === undefined || v === undefined) continue;
      const set = out.get(k) ?? new Set<string>();
      set.add(v);
      out.set(k, set);
    }
  }
  return out;
}

describe('GET /metrics', () => {
  it('is served on the gateway’s loopback admin listener in the Prometheus text format', async () => {
    expect(gw.p.adminUrl).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const res = await get(`${String(gw.p.adminUrl)}/metrics`);
    expect(res.status).toBe(200);
    expect(res.type).toMatch(/^text\/plain; version=0\.0\.4/);
    for (const family of [
      'portcullis_http_requests_total',
      'portcullis_http_request_duration_seconds',
      'portcullis_auth_failures_total',
      'portcullis_rate_limited_total',
      'portcullis_upstream_circuit_state',
      'portcullis_tokens_issued_total',
      'process_cpu_user_seconds_total',
    ]) {
      expect(res.body).toContain(`# TYPE ${family} `);
    }
  });

  it('exposes request, authentication, limit, circuit, token and audit metrics with bounded labels', async () => {
    // What the request path reports for these requests (see the module comment).
    const sent = [
      { path: '/v1/items', api: 'items', route: '/items', method: 'GET', status: 200 },
      { path: '/v1/items/123', api: 'items', route: '/items/{id}', method: 'GET', status: 200 },
      { path: '/v1/items/456', api: 'items', route: '/items/{id}', method: 'GET', status: 200 },
      { path: '/v1/private', api: 'items', route: '/private', method: 'GET', status: 401 },
      { path: '/v1/nope/../../etc', api: null, route: null, method: 'GET', status: 404 },
    ];
    for (const s of sent) {
      const res = await gw.request(s.path);
      expect(res.status).toBe(s.status);
      metrics.observeRequest({
        api: s.api,
        route: s.route,
        method: s.method,
        status: res.status,
        durationMs: 2,
      });
    }
    metrics.authFailure('credential-missing');
    metrics.rateLimited('ip');
    metrics.circuitState('items', 'closed');
    metrics.tokenIssued('client_credentials');
    await audit.emit({
      'event.category': 'authentication',
      'event.action': 'token-verify',
      'event.outcome': 'failure',
      'event.reason': 'credential-missing',
      'trace.id': `${run}-m`,
    });
    await audit.flush();

    const { status, body } = await get(`${await adminWith()}/metrics`);
    expect(status).toBe(200);
    expect(body).toContain(
      'portcullis_http_requests_total{api="items",route="/items/{id}",method="GET",status_class="2xx"} 2',
    );
    expect(body).toContain(
      'portcullis_http_requests_total{api="unmatched",route="unmatched",method="GET",status_class="4xx"} 1',
    );
    expect(body).toContain(
      'portcullis_http_request_duration_seconds_count{api="items",route="/private",method="GET",status_class="4xx"} 1',
    );
    expect(body).toContain('portcullis_auth_failures_total{reason="credential-missing"} 1');
    expect(body).toContain('portcullis_rate_limited_total{dimension="ip"} 1');
    expect(body).toContain('portcullis_upstream_circuit_state{upstream="items"} 0');
    expect(body).toContain('portcullis_tokens_issued_total{grant="client_credentials"} 1');
    expect(body).toMatch(
      /portcullis_audit_events_total\{category="authentication",outcome="failure"\} [1-9]/,
    );
    expect(body).toContain('# TYPE portcullis_audit_spooled_events gauge');
    const labels = labelValues(body, 'portcullis_http_request');
    expect([...(labels.get('route') ?? [])].sort()).toEqual([
      '/items',
      '/items/{id}',
      '/private',
      'unmatched',
    ]);
    expect([...(labels.get('api') ?? [])].sort()).toEqual(['items', 'unmatched']);
    expect([...(labels.get('status_class') ?? [])].sort()).toEqual(['2xx', '4xx']);
    const everyLabel = [...labelValues(body, 'portcullis_').values()].flatMap((v) => [...v]);
    for (const raw of ['123', '456', '/v1/', 'etc'])
      expect(everyLabel.filter((v) => v.includes(raw))).toEqual([]);
  });
});

describe('GET /healthz and /readyz', () => {
  it('are alive and ready with every dependency ok', async () => {
    const base = await adminWith({ checks: [redisCheck(redis)] });
    expect(await get(`${base}/healthz`)).toMatchObject({ status: 200, body: '{"status":"ok"}' });
    const ready = await get(`${base}/readyz`);
    expect(ready.status).toBe(200);
    expect(JSON.parse(ready.body)).toEqual({
      status: 'ready',
      checks: {
        config: { status: 'ok', detail: gw.p.runtime().version.slice(0, 12) },
        store: { status: 'ok', detail: 'sqlite' },
        audit: { status: 'ok' },
        upstreams: { status: 'ok' },
        redis: { status: 'ok' },
      },
    });
  });

  it('are degraded (200) when Redis is unreachable or a circuit is open', async () => {
    const unreachable = new Redis({
      host: '127.0.0.1',
      port: 1,
      lazyConnect: true,
      retryStrategy: () => null,
    });
    unreachable.on('error', () => undefined);
    await unreachable.connect().catch(() => undefined);
    try {
      const own = createMetrics({ defaultMetrics: false });
      own.circuitState('items', 'open');
      const app = createAdminServer({
        holder: { current: gw.p.runtime() },
        store: gw.p.store,
        logger: gw.p.logger,
        tls: gw.p.tls,
        metrics: own,
        checks: [redisCheck(unreachable)],
      });
      apps.push(app);
      await app.listen({ port: 0, host: '127.0.0.1' });
      const address = app.server.address();
      if (address === null || typeof address === 'string') throw new Error('no address');
      const ready = await get(`https://127.0.0.1:${String(address.port)}/readyz`);
      expect(ready.status).toBe(200);
      expect(JSON.parse(ready.body)).toMatchObject({
        status: 'degraded',
        checks: {
          store: { status: 'ok' },
          redis: { status: 'degraded', detail: 'unreachable' },
          upstreams: { status: 'degraded', detail: 'open circuits: items' },
        },
      });
      expect(ready.body).not.toContain('6379');
      expect(ready.body).not.toContain(':1');
    } finally {
      unreachable.disconnect();
    }
  });

  it('is not ready (503) when the store does not answer, or Redis is required and down', async () => {
    const dir = await tempDir();
    const store = await openStore({ url: 'sqlite:readyz.db', dataDir: dir });
    const base = await adminWith({
      store,
      withAudit: false,
      checks: [
        redisCheck({ status: 'end', ping: () => Promise.reject(new Error('down')) }, { required: true }),
      ],
    });
    const before = await get(`${base}/readyz`);
    expect(before.status).toBe(503);
    expect(JSON.parse(before.body)).toMatchObject({
      status: 'not-ready',
      checks: { store: { status: 'ok' }, redis: { status: 'failed' } },
    });
    const storeOnly = await adminWith({ store, withAudit: false });
    expect((await get(`${storeOnly}/readyz`)).status).toBe(200);
    await store.close();
    const after = await get(`${storeOnly}/readyz`);
    expect(after.status).toBe(503);
    expect(JSON.parse(after.body)).toMatchObject({
      status: 'not-ready',
      checks: { store: { status: 'failed', detail: 'sqlite unreachable' }, config: { status: 'ok' } },
    });
  });
});

describe('GET /audit/events', () => {
  let base: string;
  const client = `${run}-client`;

  beforeAll(async () => {
    base = await adminWith();
    for (let i = 0; i < 5; i++) {
      await audit.emit({
        'event.category': i === 4 ? 'authorization' : 'authentication',
        'event.action': 'token-verify',
        'event.outcome': i % 2 === 0 ? 'failure' : 'success',
        'portcullis.client_id': client,
        'trace.id': `${run}-${String(i)}`,
      });
    }
    await audit.flush();
  });

  async function search(query: string): Promise<{ status: number; body: Record<string, unknown> }> {
    const res = await get(`${base}/audit/events?${query}`);
    return { status: res.status, body: JSON.parse(res.body) as Record<string, unknown> };
  }
  const traces = (b: Record<string, unknown>) =>
    (b.events as Record<string, unknown>[]).map((e) => e['trace.id']);

  it('filters by client, category, outcome, correlation id and time', async () => {
    const all = await search(`client=${client}`);
    expect(all.status).toBe(200);
    expect(traces(all.body)).toEqual([0, 1, 2, 3, 4].map((i) => `${run}-${String(i)}`));
    expect(all.body.next).toBeNull();
    expect(traces((await search(`client=${client}&category=authorization`)).body)).toEqual([`${run}-4`]);
    expect(traces((await search(`client=${client}&outcome=success`)).body)).toEqual([`${run}-1`, `${run}-3`]);
    expect(traces((await search(`correlationId=${run}-2`)).body)).toEqual([`${run}-2`]);
    const first = (all.body.events as Record<string, unknown>[])[0];
    expect(first).toMatchObject({
      seq: expect.any(Number),
      hash: expect.any(String),
      '@timestamp': expect.any(String),
    });
    const future = new Date(Date.now() + 3_600_000).toISOString();
    expect(traces((await search(`client=${client}&since=${future}`)).body)).toEqual([]);
    expect(traces((await search(`client=${client}&until=${future}`)).body)).toHaveLength(5);
  });

  it('pages backwards with a cursor', async () => {
    const pages: unknown[][] = [];
    let cursor: string | null = '';
    while (cursor !== null) {
      const page = await search(`client=${client}&limit=2${cursor === '' ? '' : `&before=${cursor}`}`);
      expect(page.status).toBe(200);
      pages.push(traces(page.body));
      cursor = page.body.next as string | null;
    }
    expect(pages).toEqual([[`${run}-3`, `${run}-4`], [`${run}-1`, `${run}-2`], [`${run}-0`]]);
  });

  it('refuses unknown, repeated and malformed filters with a generic problem', async () => {
    for (const [query, pointer] of [
      ['category=nope', '/category'],
      ['outcome=maybe', '/outcome'],
      ['since=yesterday', '/since'],
      ['limit=0', '/limit'],
      ['limit=100000', '/limit'],
      ['before=-1', '/before'],
      ['client=a&client=b', '/client'],
      ['sql=1', '/sql'],
    ] as const) {
      const res = await get(`${base}/audit/events?${query}`);
      expect(res.status, query).toBe(400);
      expect(res.type).toMatch(/problem\+json/);
      const problem = JSON.parse(res.body) as { errors: { pointer: string }[] };
      expect(problem.errors[0]?.pointer).toBe(pointer);
      expect(res.body).not.toContain('yesterday');
      expect(res.body).not.toContain('maybe');
    }
  });

  it('records each search as a durable admin event', async () => {
    await search(`correlationId=${run}-0`);
    const res = await search('category=admin&limit=1000');
    const actions = (res.body.events as Record<string, unknown>[]).map((e) => e['event.action']);
    expect(actions).toContain('audit-search');
  });
});

describe('admin rate limit', () => {
  it('answers 429 with Retry-After past admin.rateLimit per address, audits the first refusal, spares /healthz', async () => {
    const base = await adminWith({ rateLimit: { points: 3, seconds: 60 } });
    const statuses: number[] = [];
    let retryAfter: string | undefined;
    for (let i = 0; i < 5; i++) {
      const res = await request(`${base}/metrics`, { dispatcher: agent });
      await res.body.text();
      statuses.push(res.statusCode);
      if (res.statusCode === 429) retryAfter = String(res.headers['retry-after']);
    }
    expect(statuses).toEqual([200, 200, 200, 429, 429]);
    expect(Number(retryAfter)).toBeGreaterThan(0);
    expect((await get(`${base}/healthz`)).status).toBe(200);
    await audit.flush();
    const rows = await gw.p.store.db.selectFrom('audit_events').selectAll().orderBy('seq').execute();
    const limited = rows
      .map((r) => JSON.parse(r.event) as Record<string, unknown>)
      .filter((e) => e['event.action'] === 'admin-rate-limit');
    expect(limited).toHaveLength(1);
    expect(limited[0]).toMatchObject({
      'event.category': 'rate-limit',
      'client.ip': '127.0.0.1',
      'url.path': '/metrics',
    });
  });
});
