/**
 * The gateway end to end, over real TLS: what passes, and every refusal the foundation makes
 * (undeclared paths and methods, traversal and encoding tricks, oversized requests, forged
 * forwarding headers, upstream failures), each as a generic problem with a correlation id.
 */
import { once } from 'node:events';
import { connect as h2connect } from 'node:http2';
import { connect as tlsConnect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROBLEM_TYPE_BASE } from '../src/gateway/problems.ts';
import { bodyOf, rawHttps, startRecordingUpstream, startTestGateway, statusOf } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';

let upstream: RecordingUpstream;
let gw: TestGateway;
let ca: string | undefined;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

function expectProblem(
  res: { status: number; headers: Record<string, string>; body: string },
  status: number,
  code: string,
) {
  expect(res.status).toBe(status);
  expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
  const body = JSON.parse(res.body) as Record<string, unknown>;
  expect(body).toEqual({
    type: PROBLEM_TYPE_BASE + code,
    title: expect.any(String),
    status,
    correlationId: res.headers['x-request-id'],
    instance: `urn:uuid:${String(res.headers['x-request-id'])}`,
  });
  expect(res.headers['x-request-id']).toMatch(UUID);
  expect(res.headers['cache-control']).toBe('no-store');
  // Nothing internal: no stack, no library, no upstream address.
  expect(res.body).not.toMatch(/at .*\.ts|node_modules|undici|fastify|127\.0\.0\.1|Error:/i);
}

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  gw = await startTestGateway({
    apis: [
      {
        name: 'items',
        openapi: 'api.yaml',
        basePath: '/v1',
        upstream: { url: upstream.url + '/backend', timeouts: { headersMs: 800 } },
        cors: { allowOrigins: ['https://app.example.com'] },
      },
    ],
  });
  ca = gw.p.tls.source === 'development' ? gw.p.tls.caCertPem : undefined;
});

afterAll(async () => {
  await gw.close();
  await upstream.close();
});

describe('allowed requests', () => {
  it('proxies a declared operation to the canonical upstream path', async () => {
    upstream.received.length = 0;
    const res = await gw.request('/v1/items/caf%C3%A9%20au%20lait?x=1&y=%2F');
    expect(res.status).toBe(200);
    expect(upstream.received).toHaveLength(1);
    const seen = upstream.received[0]!;
    expect(seen.url).toBe('/backend/items/caf%C3%A9%20au%20lait?x=1&y=%2F');
    expect(seen.headers['x-forwarded-for']).toBe('127.0.0.1');
    expect(seen.headers['x-forwarded-proto']).toBe('https');
    expect(seen.headers['x-request-id']).toBe(res.headers['x-request-id']);
    expect(res.headers['x-request-id']).toMatch(UUID);
  });

  it('prefers a literal path over a template', async () => {
    upstream.received.length = 0;
    expect((await gw.request('/v1/items/search')).status).toBe(200);
    expect(upstream.received[0]!.url).toBe('/backend/items/search');
  });

  it('forwards a body and recomputes its length', async () => {
    upstream.received.length = 0;
    const res = await gw.request('/v1/items', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"name":"x"}',
    });
    expect(res.status).toBe(200);
    expect(upstream.received[0]!.body).toBe('{"name":"x"}');
    expect(upstream.received[0]!.headers['content-length']).toBe('12');
  });

  it('sets the security headers and strips revealing upstream headers', async () => {
    const res = await gw.request('/v1/items');
    expect(res.headers['strict-transport-security']).toMatch(/max-age=\d+/);
    expect(res.headers['x-content-type-options']).toBe('nosniff');
    expect(res.headers['referrer-policy']).toBe('no-referrer');
    expect(res.headers['content-security-policy']).toBe("default-src 'none'; frame-ancestors 'none'");
    expect(res.headers['x-frame-options']).toBe('DENY');
    expect(res.headers.server).toBeUndefined();
    expect(res.headers['x-powered-by']).toBeUndefined();
    expect(res.headers['cache-control']).toBe('no-store');
  });

  it('forces no-store when the request carried credentials, even if the upstream allows caching', async () => {
    upstream.respond(() => ({
      status: 200,
      headers: { 'cache-control': 'public, max-age=600', etag: '"1"' },
      body: '{}',
    }));
    try {
      const anonymous = await gw.request('/v1/items');
      expect(anonymous.headers['cache-control']).toBe('public, max-age=600');
      const withCookie = await gw.request('/v1/items', { headers: { cookie: 'session=abc' } });
      expect(withCookie.headers['cache-control']).toBe('no-store');
      expect(withCookie.headers.etag).toBeUndefined();
    } finally {
      upstream.respond((r) => ({ status: 200, body: JSON.stringify({ url: r.url }) }));
    }
  });

  it('speaks HTTP/2 via ALPN', async () => {
    const session = h2connect(gw.p.gatewayUrl, { ca, servername: 'localhost' });
    try {
      const { status, body, alpn } = await new Promise<{
        status: number;
        body: string;
        alpn: string | false;
      }>((ok, fail) => {
        const req = session.request({ ':path': '/v1/items', ':method': 'GET' });
        let status = 0;
        let body = '';
        req.on('response', (h) => (status = Number(h[':status'])));
        req.setEncoding('utf8');
        req.on('data', (c: string) => (body += c));
        req.on('end', () => ok({ status, body, alpn: session.alpnProtocol ?? false }));
        req.on('error', fail);
        req.end();
      });
      expect(alpn).toBe('h2');
      expect(status).toBe(200);
      expect(body).toContain('/backend/items');
    } finally {
      session.close();
    }
  });

  it('never forwards the client credential upstream', async () => {
    upstream.received.length = 0;
    await gw.request('/v1/items', {
      headers: { authorization: 'Bearer do-not-forward-me', 'proxy-authorization': 'Basic eA==' },
    });
    expect(upstream.received[0]!.headers.authorization).toBeUndefined();
    expect(upstream.received[0]!.headers['proxy-authorization']).toBeUndefined();
  });
});

describe('undeclared paths and methods', () => {
  it('404s an undeclared path', async () => {
    expectProblem(await gw.request('/v1/nope'), 404, 'not-found');
    expectProblem(await gw.request('/v2/items'), 404, 'not-found');
    expectProblem(await gw.request('/'), 404, 'not-found');
    expectProblem(await gw.request('/v1/items/'), 404, 'not-found');
  });

  it('405s an undeclared method on a declared path, with Allow', async () => {
    const res = await gw.request('/v1/items/42', {
      method: 'PUT',
      body: '{}',
      headers: { 'content-type': 'application/json' },
    });
    expectProblem(res, 405, 'method-not-allowed');
    expect(res.headers.allow).toBe('DELETE, GET');
    expectProblem(await gw.request('/v1/items', { method: 'DELETE' }), 405, 'method-not-allowed');
    expectProblem(await gw.request('/v1/items', { method: 'TRACE' }), 405, 'method-not-allowed');
  });

  it('does not route unknown methods', async () => {
    const raw = await rawHttps(
      gw.p.gatewayUrl,
      ca,
      'PROPFIND /v1/items HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n',
    );
    expect([404, 405]).toContain(statusOf(raw));
    expect(upstream.received.some((r) => r.method === 'PROPFIND')).toBe(false);
  });

  it('refuses protected operations without a credential it can verify (default deny)', async () => {
    const res = await gw.request('/v1/private');
    expectProblem(res, 401, 'unauthenticated');
    expect(res.headers['www-authenticate']).toMatch(
      /^Bearer realm="items"(, DPoP realm="items", algs="[^"]+")?$/,
    );
    const withToken = await gw.request('/v1/private', { headers: { authorization: 'Bearer abc.def.ghi' } });
    expectProblem(withToken, 401, 'unauthenticated');
    expect(withToken.headers['www-authenticate']).toMatch(/^Bearer realm="items", error="invalid_token"/);
  });
});

describe('path tricks never reach the upstream', () => {
  const corpus: [string, number][] = [
    ['/v1/items/../private', 400],
    ['/v1/items/./search', 400],
    ['/v1/items/%2e%2e/private', 400],
    ['/v1/items/%2E%2E/private', 400],
    ['/v1/items/.%2e/private', 400],
    ['/v1/items/%252e%252e/private', 400],
    ['/v1/items/a%2Fb', 400],
    ['/v1/items/a%2fb', 400],
    ['/v1/items/a%5Cb', 400],
    ['/v1/items/a\\..\\private', 400],
    ['/v1/items/%c0%ae%c0%ae/private', 400],
    ['/v1/items/a%00b', 400],
    ['/v1//items', 400],
    ['/v1/items;jsessionid=1', 400],
    ['/v1/items/%', 400],
    ['/v1/items/%zz', 400],
    ['http://evil.example/v1/items', 400],
    ['*', 400],
  ];
  for (const [target, status] of corpus) {
    it(`refuses ${target}`, async () => {
      upstream.received.length = 0;
      const raw = await rawHttps(
        gw.p.gatewayUrl,
        ca,
        `GET ${target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n`,
      );
      expect(statusOf(raw)).toBe(status);
      expect(upstream.received).toHaveLength(0);
      const body = JSON.parse(bodyOf(raw)) as { type: string };
      expect(body.type).toMatch(/^urn:portcullis:problem:(invalid-path|bad-request)$/);
    });
  }
});

describe('size limits', () => {
  it('refuses an oversized header block with 431', async () => {
    const res = await gw.request('/v1/items', { headers: { 'x-big': 'a'.repeat(17 * 1024) } });
    expectProblem(res, 431, 'headers-too-large');
  });

  it('accepts headers just under the limit', async () => {
    expect((await gw.request('/v1/items', { headers: { 'x-big': 'a'.repeat(15 * 1024) } })).status).toBe(200);
  });

  it('refuses an over-long URL with 414', async () => {
    expectProblem(await gw.request('/v1/items?q=' + 'a'.repeat(9000)), 414, 'uri-too-long');
  });

  it('refuses a body over the limit with 413, declared or chunked', async () => {
    upstream.received.length = 0;
    const big = 'x'.repeat(1024 * 1024 + 1);
    expectProblem(
      await gw.request('/v1/items', { method: 'POST', headers: { 'content-type': 'text/plain' }, body: big }),
      413,
      'payload-too-large',
    );
    const chunked = await rawHttps(
      gw.p.gatewayUrl,
      ca,
      'POST /v1/items HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n' +
        `100001\r\n${big.slice(0, 0x100001)}\r\n0\r\n\r\n`,
    );
    expect(statusOf(chunked)).toBe(413);
    expect(upstream.received).toHaveLength(0);
  });
});

describe('forwarding headers and correlation ids from an untrusted peer', () => {
  it('ignores X-Forwarded-For, Forwarded and X-Real-IP and replaces them', async () => {
    upstream.received.length = 0;
    await gw.request('/v1/items', {
      headers: {
        'x-forwarded-for': '203.0.113.9',
        forwarded: 'for=198.51.100.7;proto=http',
        'x-real-ip': '192.0.2.1',
        'x-forwarded-host': 'evil.example',
        'x-forwarded-proto': 'http',
      },
    });
    const h = upstream.received[0]!.headers;
    expect(h['x-forwarded-for']).toBe('127.0.0.1');
    expect(h.forwarded).toBeUndefined();
    expect(h['x-real-ip']).toBeUndefined();
    expect(h['x-forwarded-host']).toBe('localhost:8443');
    expect(h['x-forwarded-proto']).toBe('https');
    const access = gw
      .logLines()
      .filter((l) => l.event === 'access')
      .at(-1)!;
    expect(access.clientIp).toBe('127.0.0.1');
  });

  it('does not accept a correlation id from an untrusted peer', async () => {
    const res = await gw.request('/v1/items', { headers: { 'x-request-id': 'attacker-chosen-id-123' } });
    expect(res.headers['x-request-id']).not.toBe('attacker-chosen-id-123');
    expect(res.headers['x-request-id']).toMatch(UUID);
  });

  it('drops method-override and hop-by-hop headers, including those named in Connection', async () => {
    upstream.received.length = 0;
    const raw = await rawHttps(
      gw.p.gatewayUrl,
      ca,
      'GET /v1/items HTTP/1.1\r\nHost: localhost\r\nX-HTTP-Method-Override: DELETE\r\nX-Secret-Hop: 1\r\nConnection: close, x-secret-hop\r\n\r\n',
    );
    expect(statusOf(raw)).toBe(200);
    const h = upstream.received[0]!.headers;
    expect(h['x-http-method-override']).toBeUndefined();
    expect(h['x-secret-hop']).toBeUndefined();
  });
});

describe('CORS', () => {
  it('allows a listed origin', async () => {
    const res = await gw.request('/v1/items', { headers: { origin: 'https://app.example.com' } });
    expect(res.status).toBe(200);
    expect(res.headers['access-control-allow-origin']).toBe('https://app.example.com');
    expect(res.headers['access-control-allow-credentials']).toBeUndefined();
  });

  it('refuses an unlisted origin and the null origin', async () => {
    upstream.received.length = 0;
    expectProblem(
      await gw.request('/v1/items', { headers: { origin: 'https://evil.example' } }),
      403,
      'origin-not-allowed',
    );
    expectProblem(await gw.request('/v1/items', { headers: { origin: 'null' } }), 403, 'origin-not-allowed');
    expectProblem(
      await gw.request('/v1/items', { headers: { origin: 'https://app.example.com.evil.example' } }),
      403,
      'origin-not-allowed',
    );
    expect(upstream.received).toHaveLength(0);
  });

  it('answers a preflight for a listed origin and a declared method', async () => {
    const res = await gw.request('/v1/items/1', {
      method: 'OPTIONS',
      headers: {
        origin: 'https://app.example.com',
        'access-control-request-method': 'DELETE',
        'access-control-request-headers': 'authorization',
      },
    });
    expect(res.status).toBe(204);
    expect(res.headers['access-control-allow-origin']).toBe('https://app.example.com');
    expect(res.headers['access-control-allow-methods']).toContain('DELETE');
  });

  it('refuses a preflight from an unlisted origin, for an undeclared method or header', async () => {
    const base = { 'access-control-request-method': 'GET' };
    expectProblem(
      await gw.request('/v1/items', {
        method: 'OPTIONS',
        headers: { ...base, origin: 'https://evil.example' },
      }),
      403,
      'origin-not-allowed',
    );
    expectProblem(
      await gw.request('/v1/items', {
        method: 'OPTIONS',
        headers: { origin: 'https://app.example.com', 'access-control-request-method': 'PUT' },
      }),
      403,
      'forbidden',
    );
    expectProblem(
      await gw.request('/v1/items', {
        method: 'OPTIONS',
        headers: { ...base, origin: 'https://app.example.com', 'access-control-request-headers': 'x-evil' },
      }),
      403,
      'forbidden',
    );
  });
});

describe('upstream failures', () => {
  it('turns an upstream 500 into a generic 502 without its body', async () => {
    upstream.respond(() => ({
      status: 500,
      headers: { 'content-type': 'text/plain' },
      body: 'Error: boom\n    at handler (/srv/app/internal.js:12:3) db=10.1.2.3',
    }));
    try {
      const res = await gw.request('/v1/items');
      expectProblem(res, 502, 'bad-gateway');
      expect(res.body).not.toContain('boom');
      expect(res.body).not.toContain('10.1.2.3');
    } finally {
      upstream.respond((r) => ({ status: 200, body: JSON.stringify({ url: r.url }) }));
    }
  });

  it('answers 504 when the upstream is too slow', async () => {
    upstream.respond(() => ({ status: 200, body: 'late', delayMs: 2_000 }));
    try {
      expectProblem(await gw.request('/v1/items'), 504, 'gateway-timeout');
    } finally {
      upstream.respond((r) => ({ status: 200, body: JSON.stringify({ url: r.url }) }));
    }
  });

  it('answers 502 when the upstream is down, without naming it', async () => {
    const down = await startTestGateway({
      apis: [{ name: 'down', openapi: 'api.yaml', basePath: '/v1', upstream: { url: 'http://127.0.0.1:1' } }],
    });
    try {
      const res = await down.request('/v1/items');
      expectProblem(res, 502, 'bad-gateway');
      const failed = down.logLines().find((l) => l.event === 'request-failed');
      expect(failed?.reason).toBe('upstream-unreachable');
    } finally {
      await down.close();
    }
  });
});

describe('logs', () => {
  it('write one access line per request with route template, status, duration and correlation id', async () => {
    const res = await gw.request('/v1/items/abc');
    const line = gw
      .logLines()
      .find((l) => l.event === 'access' && l.correlationId === res.headers['x-request-id']);
    expect(line).toMatchObject({
      method: 'GET',
      api: 'items',
      route: '/v1/items/{id}',
      status: 200,
      clientIp: '127.0.0.1',
    });
    expect(typeof line?.durationMs).toBe('number');
  });

  it('never contain the secrets a client sent', async () => {
    const secrets = {
      bearer: 'eyJhbGciOiJFUzI1NiJ9.c2VjcmV0LXRva2VuLXZhbHVl.sig-9f8e7d',
      cookie: 'sessionid-7f3a9c1e5b',
      apiKey: 'pk_live_4c1b2a9988776655',
      password: 'hunter2-correct-horse',
    };
    await gw.request('/v1/items?password=' + secrets.password, {
      headers: {
        authorization: `Bearer ${secrets.bearer}`,
        cookie: `sid=${secrets.cookie}`,
        'x-api-key': secrets.apiKey,
      },
    });
    await gw.request('/v1/private', { headers: { authorization: `Bearer ${secrets.bearer}` } });
    await gw.request('/v1/items', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ password: secrets.password }),
    });
    await gw.request('/v1/nope?token=' + secrets.bearer);
    const logs = gw.logs();
    expect(logs.length).toBeGreaterThan(0);
    for (const secret of Object.values(secrets)) expect(logs).not.toContain(secret);
  });
});

describe('slow clients', () => {
  it('closes a connection whose headers never finish', async () => {
    const slow = await startTestGateway({
      gateway: { timeouts: { headersMs: 1_000, requestMs: 2_000 } },
      apis: [{ name: 'items', openapi: 'api.yaml', basePath: '/v1', upstream: { url: upstream.url } }],
    });
    try {
      const caPem = slow.p.tls.source === 'development' ? slow.p.tls.caCertPem : undefined;
      // Never sends the blank line that ends the headers: the server must hang up on its own.
      const { hostname, port } = new URL(slow.p.gatewayUrl);
      const socket = tlsConnect({
        host: hostname,
        port: Number(port),
        ca: caPem,
        servername: 'localhost',
        ALPNProtocols: ['http/1.1'],
      });
      await once(socket, 'secureConnect');
      socket.write('GET /v1/items HTTP/1.1\r\nHost: localhost\r\nX-Slow: 1\r\n');
      let received = '';
      socket.on('data', (c: Buffer) => (received += c.toString('utf8')));
      const outcome = await Promise.race([
        once(socket, 'close').then(() => 'closed by server'),
        new Promise((ok) => setTimeout(() => ok('still open'), 20_000)),
      ]);
      socket.destroy();
      expect(outcome).toBe('closed by server');
      expect([0, 408]).toContain(statusOf(received));
    } finally {
      await slow.close();
    }
  });
});
