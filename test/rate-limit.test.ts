/**
 * Rate limits through the real gateway over TLS: per IP (forged forwarding headers change
 * nothing), per API key and per OAuth client, the tarpit, per-operation overrides, the
 * authorization server's own limits, and the Redis backend shared by two gateways, with its
 * fallback to local limits when Redis is unreachable. Each test sends from its own loopback
 * address (127.0.0.x), so one test's counters never touch another's.
 */
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { onDegraded } from '../src/gateway/stages/rate-limit/index.ts';
import type { DegradedEvent } from '../src/gateway/stages/rate-limit/index.ts';
import { createClient } from '../src/oauth/clients.ts';
import { issueApiKey } from '../src/tokens/api-keys.ts';
import { startRecordingUpstream, startTestGateway, TEST_OPENAPI } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';

interface Answer {
  status: number;
  headers: Record<string, string>;
  body: string;
}

const agents = new Map<string, Agent>();

/** A request to `gw` sent from the loopback address `from`. */
async function send(
  gw: TestGateway,
  from: string,
  path: string,
  init: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<Answer> {
  const ca = gw.p.tls.source === 'development' ? gw.p.tls.caCertPem : undefined;
  const id = `${gw.p.gatewayUrl}|${from}`;
  let agent = agents.get(id);
  if (agent === undefined) {
    agent = new Agent({ localAddress: from, connect: { ca, servername: 'localhost' } });
    agents.set(id, agent);
  }
  const res = await request(gw.p.gatewayUrl + path, {
    method: (init.method ?? 'GET') as 'GET',
    headers: init.headers ?? {},
    body: init.body ?? null,
    dispatcher: agent,
  });
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(res.headers)) {
    if (v !== undefined) headers[k] = Array.isArray(v) ? v.join(', ') : v;
  }
  return { status: res.statusCode, headers, body: await res.body.text() };
}

/** Sends until the first 429 (at most `max` requests); returns the answers. */
async function flood(
  gw: TestGateway,
  from: string | ((i: number) => string),
  path: string,
  headers: (i: number) => Record<string, string> = () => ({}),
  max = 50,
): Promise<Answer[]> {
  const out: Answer[] = [];
  for (let i = 0; i < max; i++) {
    const res = await send(gw, typeof from === 'string' ? from : from(i), path, { headers: headers(i) });
    out.push(res);
    if (res.status === 429) break;
  }
  return out;
}

function expectTooMany(res: Answer | undefined): void {
  expect(res?.status).toBe(429);
  const body = JSON.parse(res?.body ?? '{}') as Record<string, unknown>;
  expect(body.type).toBe('urn:portcullis:problem:too-many-requests');
  expect(body.title).toBe('Too Many Requests');
  expect(res?.headers['content-type']).toMatch(/^application\/problem\+json/);
  expect(Number(res?.headers['retry-after'])).toBeGreaterThanOrEqual(1);
  expect(res?.headers['ratelimit-policy']).toMatch(/"[A-Za-z]+-burst";q=\d+;w=\d+/);
  expect(res?.headers.ratelimit).toMatch(/"[A-Za-z]+-(burst|sustained)";r=0;t=\d+/);
}

const API = {
  ...TEST_OPENAPI,
  components: {
    securitySchemes: {
      ...TEST_OPENAPI.components.securitySchemes,
      key: { type: 'apiKey', in: 'header', name: 'x-api-key' },
    },
  },
  paths: {
    ...TEST_OPENAPI.paths,
    '/keyed': {
      get: { operationId: 'keyed', security: [{ key: [] }], responses: { '200': { description: 'ok' } } },
    },
  },
};

let upstream: RecordingUpstream;
let gw: TestGateway;
const degraded: DegradedEvent[] = [];
const stopDegraded = onDegraded((e) => degraded.push(e));

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  gw = await startTestGateway(
    {
      rateLimits: {
        ip: { burst: { points: 3, seconds: 1 }, sustained: { points: 1000, seconds: 3600 } },
        apiKey: { burst: { points: 3, seconds: 3600 } },
        client: { burst: { points: 3, seconds: 3600 } },
        tarpit: { baseSeconds: 1, maxSeconds: 4 },
        token: { burst: { points: 3, seconds: 3600 } },
        login: { burst: { points: 2, seconds: 3600 } },
      },
      apis: [
        {
          name: 'items',
          openapi: 'api.yaml',
          basePath: '/v1',
          upstream: { url: upstream.url },
          rateLimits: { operations: { searchItems: { ip: { burst: { points: 2, seconds: 3600 } } } } },
        },
      ],
    },
    { openapi: API },
  );
}, 60_000);

afterAll(async () => {
  stopDegraded();
  await gw.close();
  await upstream.close();
  await Promise.all([...agents.values()].map((a) => a.close()));
});

describe('per client IP', () => {
  it('passes requests within the limit unchanged, with RateLimit headers', async () => {
    upstream.received.length = 0;
    const res = await send(gw, '127.0.0.10', '/v1/items/a1?x=1');
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body)).toEqual({ ok: true, method: 'GET', url: '/items/a1?x=1' });
    expect(res.headers['ratelimit-policy']).toBe('"ip-burst";q=3;w=1, "ip-sustained";q=1000;w=3600');
    expect(res.headers.ratelimit).toMatch(/^"ip-burst";r=2;t=[01], "ip-sustained";r=999;t=\d+$/);
    expect(upstream.received).toHaveLength(1);
  });

  it('refuses a flood from one IP with 429 whatever forwarding headers it forges; another IP passes', async () => {
    upstream.received.length = 0;
    const forged = (i: number) => ({
      'x-forwarded-for': `198.51.100.${String(i)}`,
      forwarded: `for=203.0.113.${String(i)}`,
      'x-real-ip': `192.0.2.${String(i)}`,
    });
    const answers = await flood(gw, '127.0.0.11', '/v1/items', forged);
    const refused = answers.at(-1);
    expectTooMany(refused);
    expect(answers.length).toBeGreaterThanOrEqual(4);
    expect(upstream.received).toHaveLength(answers.length - 1);
    // Still refused with yet another forged address: the client IP is the socket's.
    expect((await send(gw, '127.0.0.11', '/v1/items', { headers: forged(99) })).status).toBe(429);
    expect(upstream.received).toHaveLength(answers.length - 1);
    expect((await send(gw, '127.0.0.12', '/v1/items')).status).toBe(200);
    const line = gw.logLines().find((l) => l.event === 'access' && l.status === 429);
    expect(line?.reason).toBe('rate-limit-ip');
    expect(line?.clientIp).toBe('127.0.0.11');
  });

  it('limits unauthenticated requests before authentication', async () => {
    const answers = await flood(gw, '127.0.0.13', '/v1/private');
    expect(answers.slice(0, -1).every((a) => a.status === 401)).toBe(true);
    expectTooMany(answers.at(-1));
  });

  it('blocks a repeat offender for a doubling time, capped', async () => {
    const retry: number[] = [];
    for (let round = 0; round < 4; round++) {
      const refused = (await flood(gw, '127.0.0.14', '/v1/items')).at(-1);
      expectTooMany(refused);
      const seconds = Number(refused?.headers['retry-after']);
      retry.push(seconds);
      if (round < 3) await sleep(seconds * 1000 + 150);
    }
    expect(retry).toEqual([1, 2, 4, 4]);
  });

  it('applies a per-operation override, counted apart from the rest of the API', async () => {
    const from = '127.0.0.15';
    expect((await send(gw, from, '/v1/items/search')).status).toBe(200);
    const second = await send(gw, from, '/v1/items/search');
    expect(second.status).toBe(200);
    expect(second.headers['ratelimit-policy']).toContain('"ip-burst";q=2;w=3600');
    expectTooMany(await send(gw, from, '/v1/items/search'));
    expect((await send(gw, from, '/v1/items')).status).toBe(200);
  });
});

describe('per API key and per OAuth client', () => {
  it('refuses a flood from one API key spread over many IPs; another key passes', async () => {
    const a = await issueApiKey(gw.p.store, gw.p.keys!, { name: 'a', apis: ['items'] });
    const b = await issueApiKey(gw.p.store, gw.p.keys!, { name: 'b', apis: ['items'] });
    const answers = await flood(
      gw,
      (i) => `127.0.1.${String(i + 1)}`,
      '/v1/keyed',
      () => ({ 'x-api-key': a.key }),
    );
    expect(answers.slice(0, -1).map((x) => x.status)).toEqual([200, 200, 200]);
    const refused = answers.at(-1);
    expectTooMany(refused);
    expect(refused?.headers['ratelimit-policy']).toContain('"apiKey-burst";q=3;w=3600');
    expect((await send(gw, '127.0.1.1', '/v1/keyed', { headers: { 'x-api-key': b.key } })).status).toBe(200);
    expect(gw.logs()).not.toContain(a.key);
  });

  it('refuses a flood from one OAuth client; another client passes', async () => {
    const token = async (name: string) => {
      const { client, clientSecret } = await createClient(gw.p.store.db, gw.p.keys!, {
        name,
        grantTypes: ['client_credentials'],
        scope: 'read',
      });
      const basic = Buffer.from(`${client.clientId}:${clientSecret ?? ''}`).toString('base64');
      const res = await send(gw, '127.0.2.1', '/token', {
        method: 'POST',
        headers: { authorization: `Basic ${basic}`, 'content-type': 'application/x-www-form-urlencoded' },
        body: `grant_type=client_credentials&scope=read&resource=${encodeURIComponent('https://localhost:8443/v1')}`,
      });
      expect(res.status).toBe(200);
      return (JSON.parse(res.body) as { access_token: string }).access_token;
    };
    const first = await token('svc-a');
    const second = await token('svc-b');
    const answers = await flood(
      gw,
      (i) => `127.0.3.${String(i + 1)}`,
      '/v1/private',
      () => ({ authorization: `Bearer ${first}` }),
    );
    expect(answers.slice(0, -1).map((x) => x.status)).toEqual([200, 200, 200]);
    expectTooMany(answers.at(-1));
    expect(answers.at(-1)?.headers['ratelimit-policy']).toContain('"client-burst";q=3;w=3600');
    const other = await send(gw, '127.0.3.1', '/v1/private', {
      headers: { authorization: `Bearer ${second}` },
    });
    expect(other.status).toBe(200);
  });
});

describe('the authorization server', () => {
  it('limits the token endpoint per IP, whatever the outcome of each request', async () => {
    const post = (from: string) =>
      send(gw, from, '/token', {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: 'grant_type=client_credentials&client_id=nobody&client_secret=wrong',
      });
    const statuses: number[] = [];
    for (let i = 0; i < 3; i++) statuses.push((await post('127.0.4.1')).status);
    expect(statuses.every((s) => s === 401 || s === 400)).toBe(true);
    const denials = () =>
      gw.p.metrics
        .text()
        .then(
          (t) =>
            /portcullis_denials_total\{stage="authorization-server",code="too-many-requests"\} (\d+)/.exec(
              t,
            )?.[1] ?? '0',
        );
    const before = Number(await denials());
    const limited = await post('127.0.4.1');
    expectTooMany(limited);
    expect([400, 401]).toContain((await post('127.0.4.2')).status);
    // The refusal at the door is one audit event and one count, naming the authorization server.
    expect(Number(await denials())).toBe(before + 1);
    await gw.p.audit.flush();
    const rows = await gw.p.store.db
      .selectFrom('audit_events')
      .select('event')
      .where('trace_id', '=', limited.headers['x-request-id'] ?? '')
      .execute();
    expect(rows.map((r) => JSON.parse(r.event) as Record<string, unknown>)).toMatchObject([
      {
        'event.category': 'rate-limit',
        'event.action': 'authorization-server',
        'event.outcome': 'failure',
        'http.response.status_code': 429,
        'url.path': '/token',
        'portcullis.listener': 'oauth',
      },
    ]);
  });

  it('limits login form submissions per IP', async () => {
    const post = (from: string) =>
      send(gw, from, '/interaction/abc/login', {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: 'username=u&password=p',
      });
    const first = await post('127.0.4.3');
    expect(first.status).not.toBe(429);
    expect((await post('127.0.4.3')).status).not.toBe(429);
    expectTooMany(await post('127.0.4.3'));
    expect((await post('127.0.4.4')).status).not.toBe(429);
  });
});

async function closedPort(): Promise<number> {
  const s = createServer().listen(0, '127.0.0.1');
  await new Promise((ok) => s.once('listening', ok));
  const { port } = s.address() as { port: number };
  await new Promise<void>((ok) => s.close(() => ok()));
  return port;
}

describe('Redis backend', () => {
  const prefix = `test:${randomUUID()}:`;
  const redisConfig = (url: string) => ({
    redis: { url, keyPrefix: prefix },
    rateLimits: {
      backend: 'redis',
      ip: { burst: { points: 4, seconds: 3600 }, sustained: { points: 1000, seconds: 3600 } },
    },
    apis: [{ name: 'items', openapi: 'api.yaml', basePath: '/v1', upstream: { url: upstream.url } }],
  });
  const admin = new Redis('redis://127.0.0.1:6379', { maxRetriesPerRequest: 1 });
  let a: TestGateway;
  let b: TestGateway;

  beforeAll(async () => {
    expect(await admin.ping()).toBe('PONG'); // fails loudly without Redis
    a = await startTestGateway(redisConfig('redis://127.0.0.1:6379'));
    b = await startTestGateway(redisConfig('redis://127.0.0.1:6379'));
  }, 60_000);

  afterAll(async () => {
    await a.close();
    await b.close();
    const keys = await admin.keys(`${prefix}*`);
    if (keys.length > 0) await admin.del(...keys);
    await admin.quit();
  });

  it('enforces one limit across two gateways on the same Redis', async () => {
    const from = '127.0.5.1';
    expect((await send(a, from, '/v1/items')).status).toBe(200);
    expect((await send(b, from, '/v1/items')).status).toBe(200);
    expect((await send(a, from, '/v1/items')).status).toBe(200);
    const fourth = await send(b, from, '/v1/items');
    expect(fourth.status).toBe(200);
    expect(fourth.headers.ratelimit).toMatch(/^"ip-burst";r=0;/);
    const refused = await send(a, from, '/v1/items');
    expectTooMany(refused);
    // The window is shared: the wait is the burst window's, whichever gateway answers.
    expect(Number(refused.headers['retry-after'])).toBeGreaterThan(3500);
    expectTooMany(await send(b, from, '/v1/items'));
    expect((await send(b, '127.0.5.2', '/v1/items')).status).toBe(200);
    expect((await admin.keys(`${prefix}rl:ip:burst:*`)).length).toBeGreaterThan(0);
  });

  it('falls back to local limits and says so when Redis is unreachable', async () => {
    const before = degraded.length;
    const down = await startTestGateway(redisConfig(`redis://127.0.0.1:${String(await closedPort())}`));
    try {
      expect(degraded.length).toBeGreaterThan(before);
      expect(degraded.at(-1)).toMatchObject({ error: 'ECONNREFUSED' });
      expect(degraded.at(-1)?.redis).toMatch(/^redis:\/\/127\.0\.0\.1:\d+$/);
      const line = down.logLines().find((l) => l.event === 'redis-unavailable');
      expect(line?.level).toBe('warn');
      const answers = await flood(down, '127.0.5.3', '/v1/items');
      expect(answers.slice(0, -1).map((x) => x.status)).toEqual([200, 200, 200, 200]);
      expectTooMany(answers.at(-1));
      expect((await send(down, '127.0.5.4', '/v1/items')).status).toBe(200);
    } finally {
      await down.close();
    }
  }, 30_000);
});
