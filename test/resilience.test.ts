/**
 * Upstream resilience end to end: the circuit breaker opens on a failing upstream and fails fast
 * without reaching it, half-opens and closes when the upstream recovers; idempotent requests are
 * retried after a connection reset or a 502/503/504 and POST never is; a saturated process sheds
 * load with 503 + Retry-After.
 */
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway } from './helpers.ts';
import type { TestGateway } from './helpers.ts';

type Behaviour = 'ok' | 'fail' | 'reset';

interface ScriptedUpstream {
  url: string;
  /** Requests received, by method and path. */
  hits: string[];
  /** Behaviours for the next requests, in order; afterwards `then`. */
  script: Behaviour[];
  then: Behaviour;
  close(): Promise<void>;
}

async function startScriptedUpstream(): Promise<ScriptedUpstream> {
  const state: Omit<ScriptedUpstream, 'url' | 'close'> = { hits: [], script: [], then: 'ok' };
  const server: Server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      state.hits.push(`${req.method ?? ''} ${req.url ?? ''}`);
      const behaviour = state.script.shift() ?? state.then;
      if (behaviour === 'reset') {
        req.socket.destroy();
        return;
      }
      const body = behaviour === 'ok' ? '{"ok":true}' : '{"error":"db down at 10.0.0.7"}';
      res.writeHead(behaviour === 'ok' ? 200 : 503, { 'content-type': 'application/json' });
      res.end(body);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return Object.assign(state, {
    url: `http://127.0.0.1:${String(port)}`,
    close: () =>
      new Promise<void>((ok) => {
        server.close(() => ok());
        server.closeAllConnections();
      }),
  });
}

const JSON_POST = {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: '{"name":"a"}',
};

function api(url: string, upstream: Record<string, unknown> = {}) {
  return [{ name: 'items', basePath: '/v1', openapi: 'api.yaml', upstream: { url, ...upstream } }];
}

async function until(check: () => Promise<boolean>, deadlineMs = 15_000): Promise<void> {
  const end = Date.now() + deadlineMs;
  while (Date.now() < end) {
    if (await check()) return;
    await new Promise((ok) => setTimeout(ok, 50));
  }
  throw new Error('condition not met before the deadline');
}

describe('circuit breaker', () => {
  let up: ScriptedUpstream;
  let gw: TestGateway;
  beforeAll(async () => {
    up = await startScriptedUpstream();
    gw = await startTestGateway({
      apis: api(up.url, {
        circuitBreaker: { volumeThreshold: 4, errorThresholdPercentage: 50, windowMs: 60_000, resetMs: 300 },
        retries: { max: 0 },
      }),
    });
  }, 60_000);
  afterAll(async () => {
    await gw.close();
    await up.close();
  });

  it('passes requests while the upstream is healthy', async () => {
    const res = await gw.request('/v1/items');
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body)).toEqual({ ok: true });
  });

  it('opens after repeated failures, then fails fast with 503 + Retry-After without calling the upstream', async () => {
    up.then = 'fail';
    // 1 success, then failures: the third makes 4 attempts (the volume threshold) with 75 %
    // failed, over the 50 % threshold; the first two (1 of 2, 2 of 3) are below the volume.
    for (let i = 0; i < 3; i++) {
      const res = await gw.request('/v1/items', JSON_POST);
      expect(res.status).toBe(502);
      expect(res.body).not.toContain('10.0.0.7');
    }
    const before = up.hits.length;
    for (let i = 0; i < 3; i++) {
      const res = await gw.request('/v1/items');
      expect(res.status).toBe(503);
      expect(Number(res.headers['retry-after'])).toBeGreaterThanOrEqual(1);
      const problem = JSON.parse(res.body) as { type: string; title: string };
      expect(problem.type).toBe('urn:portcullis:problem:unavailable');
      expect(problem.title).toBe('Service Unavailable');
    }
    expect(up.hits.length).toBe(before);
    const states = gw.logLines().filter((l) => l.event === 'circuit-state');
    expect(states.map((l) => l.to)).toEqual(['open']);
    expect(states[0]).toMatchObject({ api: 'items', upstream: up.url, from: 'closed' });
  });

  it('half-opens after the reset time, a failed probe opens it again, a good one closes it', async () => {
    // The upstream still fails: the probe reaches it once, and the circuit opens again.
    const before = up.hits.length;
    await until(async () => (await gw.request('/v1/items')).status === 502);
    expect(up.hits.length).toBe(before + 1);
    expect((await gw.request('/v1/items')).status).toBe(503);

    up.then = 'ok';
    await until(async () => (await gw.request('/v1/items')).status === 200);
    for (let i = 0; i < 3; i++) expect((await gw.request('/v1/items')).status).toBe(200);
    const states = gw
      .logLines()
      .filter((l) => l.event === 'circuit-state')
      .map((l) => l.to);
    expect(states).toEqual(['open', 'half-open', 'open', 'half-open', 'closed']);
  });
});

describe('retries', () => {
  let up: ScriptedUpstream;
  let gw: TestGateway;
  beforeAll(async () => {
    up = await startScriptedUpstream();
    gw = await startTestGateway({
      apis: api(up.url, {
        circuitBreaker: { volumeThreshold: 1000 },
        retries: { max: 2, baseDelayMs: 1, maxDelayMs: 10 },
      }),
    });
  }, 60_000);
  afterAll(async () => {
    await gw.close();
    await up.close();
  });

  it('a GET is retried after a connection reset and succeeds', async () => {
    up.hits.length = 0;
    up.script = ['reset'];
    const res = await gw.request('/v1/items/abc');
    expect(res.status).toBe(200);
    expect(up.hits).toEqual(['GET /items/abc', 'GET /items/abc']);
  });

  it('a GET is retried after 503s, at most twice', async () => {
    up.hits.length = 0;
    up.script = ['fail', 'fail'];
    expect((await gw.request('/v1/items/abc')).status).toBe(200);
    expect(up.hits).toHaveLength(3);

    up.hits.length = 0;
    up.script = ['fail', 'fail', 'fail', 'fail'];
    const res = await gw.request('/v1/items/abc');
    expect(res.status).toBe(502);
    expect(up.hits).toHaveLength(3);
    up.script = [];
  });

  it('a POST is never retried: exactly one upstream call, after a reset or a 503', async () => {
    up.hits.length = 0;
    up.script = ['reset'];
    expect((await gw.request('/v1/items', JSON_POST)).status).toBe(502);
    expect(up.hits).toEqual(['POST /items']);

    up.hits.length = 0;
    up.script = ['fail'];
    expect((await gw.request('/v1/items', JSON_POST)).status).toBe(502);
    expect(up.hits).toEqual(['POST /items']);
    up.script = [];
  });
});

describe('load shedding', () => {
  let up: ScriptedUpstream;
  let gw: TestGateway;
  beforeAll(async () => {
    up = await startScriptedUpstream();
    // A resident-memory bound of one byte: the process is always "saturated".
    gw = await startTestGateway({
      gateway: { loadShedding: { maxRssBytes: 1, retryAfterSeconds: 7 } },
      apis: api(up.url),
    });
  }, 60_000);
  afterAll(async () => {
    await gw.close();
    await up.close();
  });

  it('refuses with 503 + Retry-After before any work, and the upstream is not called', async () => {
    const res = await gw.request('/v1/items');
    expect(res.status).toBe(503);
    expect(res.headers['retry-after']).toBe('7');
    expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(JSON.parse(res.body)).toMatchObject({ type: 'urn:portcullis:problem:unavailable', status: 503 });
    expect(up.hits).toHaveLength(0);
    const access = gw.logLines().find((l) => l.event === 'access');
    expect(access).toMatchObject({ status: 503, reason: 'overloaded-rss' });
  });

  it('with the default thresholds the same request passes', async () => {
    const ok = await startTestGateway({ apis: api(up.url) });
    try {
      expect((await ok.request('/v1/items')).status).toBe(200);
      expect(up.hits).toEqual(['GET /items']);
    } finally {
      await ok.close();
    }
  });
});
