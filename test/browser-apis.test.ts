/**
 * Browser-facing APIs end to end: CSRF protection (double-submit `__Host-csrf` cookie and
 * `X-CSRF-Token` header, Origin / Sec-Fetch-Site checks) for cookie-authenticated and flagged
 * operations, and WebSocket proxying over TLS with an Origin allowlist and the same
 * authentication as HTTP, through Node's own WebSocket client to a small echo upstream.
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { IncomingHttpHeaders, Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createServer as createNetServer } from 'node:net';
import type { Duplex } from 'node:stream';
import { Agent, request as undiciRequest } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createClient } from '../src/oauth/clients.ts';
import { bodyOf, rawHttps, startRecordingUpstream, startTestGateway, statusOf } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';

const APP = 'https://app.example.com';
const EVIL = 'https://evil.example.net';

const OPENAPI = {
  openapi: '3.1.0',
  info: { title: 'browser', version: '1' },
  components: {
    securitySchemes: {
      session: { type: 'apiKey', in: 'cookie', name: 'session' },
      oauth: {
        type: 'oauth2',
        flows: {
          clientCredentials: { tokenUrl: 'https://localhost/token', scopes: { 'chat:read': 'read' } },
        },
      },
    },
  },
  paths: {
    '/forms': {
      get: { 'x-portcullis-csrf': true, responses: { '200': { description: 'ok' } } },
      post: {
        'x-portcullis-csrf': true,
        requestBody: {
          content: {
            'application/json': { schema: { type: 'object', properties: { name: { type: 'string' } } } },
          },
        },
        responses: { '200': { description: 'ok' } },
      },
    },
    '/session-items': {
      post: { security: [{ session: [] }], responses: { '200': { description: 'ok' } } },
    },
    '/plain': { post: { responses: { '200': { description: 'ok' } } } },
    '/chat': {
      get: {
        'x-portcullis-websocket': true,
        security: [{ oauth: ['chat:read'] }],
        parameters: [{ name: 'room', in: 'query', schema: { type: 'string', maxLength: 20 } }],
        responses: { '101': { description: 'switching' } },
      },
    },
    '/not-a-socket': {
      get: { security: [{ oauth: ['chat:read'] }], responses: { '200': { description: 'ok' } } },
    },
  },
};

// ---------------------------------------------------------------------------------------------
// A WebSocket echo upstream: node:http upgrade, the RFC 6455 handshake and a minimal frame echo.

interface EchoUpstream {
  url: string;
  handshakes: IncomingHttpHeaders[];
  close(): Promise<void>;
}

function echoFrames(socket: Duplex): void {
  let buffer = Buffer.alloc(0);
  socket.on('data', (chunk: Buffer) => {
    buffer = Buffer.concat([buffer, chunk]);
    for (;;) {
      if (buffer.length < 2) return;
      const opcode = buffer[0]! & 0x0f;
      let length = buffer[1]! & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (buffer.length < 4) return;
        length = buffer.readUInt16BE(2);
        offset = 4;
      } else if (length === 127) {
        if (buffer.length < 10) return;
        length = Number(buffer.readBigUInt64BE(2));
        offset = 10;
      }
      const masked = (buffer[1]! & 0x80) !== 0;
      const end = offset + (masked ? 4 : 0) + length;
      if (buffer.length < end) return;
      const payload = Buffer.from(buffer.subarray(end - length, end));
      if (masked) {
        const mask = buffer.subarray(offset, offset + 4);
        for (let i = 0; i < payload.length; i++) payload[i]! ^= mask[i % 4]!;
      }
      buffer = buffer.subarray(end);
      const header =
        payload.length < 126
          ? Buffer.from([0x80 | opcode, payload.length])
          : Buffer.from([0x80 | opcode, 126, payload.length >> 8, payload.length & 0xff]);
      socket.write(Buffer.concat([header, payload]));
      if (opcode === 0x8) {
        socket.end();
        return;
      }
    }
  });
}

async function startEchoUpstream(): Promise<EchoUpstream> {
  const handshakes: IncomingHttpHeaders[] = [];
  const sockets = new Set<Duplex>();
  const server: Server = createServer((_req, res) => {
    res.writeHead(426, { 'content-type': 'text/plain' });
    res.end('upgrade required');
  });
  server.on('upgrade', (req, socket: Duplex) => {
    handshakes.push(req.headers);
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    const key = String(req.headers['sec-websocket-key']);
    const accept = createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`,
    );
    echoFrames(socket);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${String(port)}`,
    handshakes,
    close: () =>
      new Promise<void>((ok) => {
        for (const s of sockets) s.destroy();
        server.close(() => ok());
        server.closeAllConnections();
      }),
  };
}

async function freePort(): Promise<number> {
  const server = createNetServer();
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((ok) => server.close(() => ok()));
  return port;
}

let upstream: RecordingUpstream;
let echo: EchoUpstream;
let gw: TestGateway;
let issuer: string;
let agent: Agent;
let ca: string | undefined;
let token: string;

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  echo = await startEchoUpstream();
  const port = await freePort();
  issuer = `https://localhost:${String(port)}`;
  const cors = { allowOrigins: [APP], allowHeaders: ['content-type', 'x-csrf-token', 'authorization'] };
  gw = await startTestGateway(
    {
      gateway: { port, publicUrl: issuer },
      apis: [
        { name: 'browser', basePath: '/v1', openapi: 'api.yaml', upstream: { url: upstream.url }, cors },
        { name: 'chat', basePath: '/v2', openapi: 'api.yaml', upstream: { url: echo.url }, cors },
        { name: 'nocors', basePath: '/v3', openapi: 'api.yaml', upstream: { url: echo.url } },
      ],
    },
    { openapi: OPENAPI },
  );
  ca = gw.p.tls.source === 'development' ? gw.p.tls.caCertPem : undefined;
  agent = new Agent({ connect: { ca } });
  const keys = gw.p.keys;
  if (keys === undefined) throw new Error('the key manager should be running');
  const { client, clientSecret } = await createClient(gw.p.store.db, keys, {
    name: 'chat',
    grantTypes: ['client_credentials'],
    scope: 'chat:read',
  });
  const basic = Buffer.from(`${client.clientId}:${clientSecret ?? ''}`).toString('base64');
  const res = await undiciRequest(`${issuer}/token`, {
    method: 'POST',
    headers: { authorization: `Basic ${basic}`, 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'client_credentials',
      scope: 'chat:read',
      resource: `${issuer}/v2`,
    }).toString(),
    dispatcher: agent,
  });
  const text = await res.body.text();
  if (res.statusCode !== 200) throw new Error(`token request failed: ${String(res.statusCode)} ${text}`);
  token = (JSON.parse(text) as { access_token: string }).access_token;
}, 60_000);

afterAll(async () => {
  await gw.close();
  await agent.close();
  await upstream.close();
  await echo.close();
});

// ---------------------------------------------------------------------------------------------

describe('CSRF', () => {
  const TOKEN = 'aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5bC7dE9f';

  function post(path: string, headers: Record<string, string>, body = '{"name":"a"}') {
    return gw.request(path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body,
    });
  }

  it('a safe request gets the __Host-csrf cookie when it has none', async () => {
    const res = await gw.request('/v1/forms');
    expect(res.status).toBe(200);
    expect(res.headers['set-cookie']).toMatch(
      /^__Host-csrf=[A-Za-z0-9_-]{43}; Path=\/; Secure; SameSite=Strict$/,
    );
    const again = await gw.request('/v1/forms', { headers: { cookie: `__Host-csrf=${TOKEN}` } });
    expect(again.headers['set-cookie']).toBeUndefined();
  });

  it('a matching token from an allowed origin passes unchanged', async () => {
    upstream.received.length = 0;
    const res = await post('/v1/forms', {
      origin: APP,
      cookie: `__Host-csrf=${TOKEN}`,
      'x-csrf-token': TOKEN,
    });
    expect(res.status).toBe(200);
    expect(upstream.received).toHaveLength(1);
    expect(upstream.received[0]!.body).toBe('{"name":"a"}');
    expect(upstream.received[0]!.headers['x-csrf-token']).toBe(TOKEN);
    // A non-browser client (no Origin, no Sec-Fetch-Site) with the token passes too.
    const cli = await post('/v1/forms', { cookie: `__Host-csrf=${TOKEN}`, 'x-csrf-token': TOKEN });
    expect(cli.status).toBe(200);
  });

  it.each([
    ['no token header', { origin: APP, cookie: `__Host-csrf=${TOKEN}` }],
    ['no cookie', { origin: APP, 'x-csrf-token': TOKEN }],
    ['a mismatched token', { origin: APP, cookie: `__Host-csrf=${TOKEN}`, 'x-csrf-token': `${TOKEN}x` }],
    ['two cookies', { origin: APP, cookie: `__Host-csrf=${TOKEN}; __Host-csrf=x`, 'x-csrf-token': TOKEN }],
    [
      'a cross-site fetch without Origin',
      { 'sec-fetch-site': 'cross-site', cookie: `__Host-csrf=${TOKEN}`, 'x-csrf-token': TOKEN },
    ],
  ])('%s is refused with 403 and the upstream is not called', async (_name, headers) => {
    upstream.received.length = 0;
    const res = await post('/v1/forms', headers);
    expect(res.status).toBe(403);
    expect(JSON.parse(res.body)).toMatchObject({
      type: 'urn:portcullis:problem:forbidden',
      title: 'Forbidden',
    });
    expect(res.body).not.toContain(TOKEN);
    expect(upstream.received).toHaveLength(0);
  });

  it('a foreign Origin is refused with 403 even with a matching token', async () => {
    upstream.received.length = 0;
    const res = await post('/v1/forms', {
      origin: EVIL,
      cookie: `__Host-csrf=${TOKEN}`,
      'x-csrf-token': TOKEN,
    });
    expect(res.status).toBe(403);
    expect(upstream.received).toHaveLength(0);
  });

  it('a cookie-authenticated operation needs the token before its credential is even checked', async () => {
    const without = await post('/v1/session-items', { cookie: 'session=abc' }, '');
    expect(without.status).toBe(403);
    const withToken = await post(
      '/v1/session-items',
      { cookie: `session=abc; __Host-csrf=${TOKEN}`, 'x-csrf-token': TOKEN },
      '',
    );
    // Past the CSRF check, the (invalid) session key is refused by authentication.
    expect(withToken.status).toBe(401);
  });

  it('an operation that is neither cookie-authenticated nor flagged needs no token', async () => {
    expect((await gw.request('/v1/plain', { method: 'POST' })).status).toBe(200);
  });
});

// ---------------------------------------------------------------------------------------------

/**
 * An Agent of the undici that Node bundles (the WebSocket client's own), trusting the development
 * CA. The npm undici's Agent speaks a newer handler interface the bundled WebSocket cannot drive,
 * and negotiates HTTP/2, over which the gateway offers no WebSockets (RFC 8441 is out of scope).
 */
async function bundledAgent(caPem: string | undefined): Promise<Agent> {
  const key = Symbol.for('undici.globalDispatcher.1');
  // The bundled fetch creates the global dispatcher on first use.
  await fetch(`${echo.url}/`).then((r) => r.body?.cancel());
  const current = (globalThis as Record<symbol, unknown>)[key] as object;
  const Bundled = current.constructor as new (options: object) => Agent;
  return new Bundled({ connect: { ca: caPem } });
}

function upgradeRequest(path: string, headers: Record<string, string>): string {
  const lines = [
    `GET ${path} HTTP/1.1`,
    'Host: localhost',
    'Connection: Upgrade',
    'Upgrade: websocket',
    'Sec-WebSocket-Version: 13',
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
    ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
  ];
  return `${lines.join('\r\n')}\r\n\r\n`;
}

describe('WebSocket', () => {
  it('an allowed origin with a valid token connects through and echoes', async () => {
    echo.handshakes.length = 0;
    const h1 = await bundledAgent(ca);
    const ws = new WebSocket(
      `${gw.p.gatewayUrl.replace('https:', 'wss:').replace('127.0.0.1', 'localhost')}/v2/chat?room=1`,
      {
        headers: { origin: APP, authorization: `Bearer ${token}` },
        dispatcher: h1,
      } as unknown as string[],
    );
    await new Promise<void>((ok, fail) => {
      ws.onopen = () => ok();
      ws.onerror = () => {
        fail(new Error('websocket failed'));
      };
    });
    const reply = new Promise<string>((ok) => {
      ws.onmessage = (e: MessageEvent) => ok(String(e.data));
    });
    ws.send('hello through the gateway');
    expect(await reply).toBe('hello through the gateway');
    const closed = new Promise<void>((ok) => {
      ws.onclose = () => ok();
    });
    ws.close(1000);
    await closed;
    await h1.close();
    expect(echo.handshakes).toHaveLength(1);
    const seen = echo.handshakes[0]!;
    expect(seen.authorization).toBeUndefined(); // the credential stays at the gateway
    expect(seen['x-forwarded-proto']).toBe('https');
    expect(seen.origin).toBe(APP);
  });

  it.each([
    ['a forbidden origin', '/v2/chat', { Origin: EVIL }, 403, 'origin-not-allowed'],
    ['no origin', '/v2/chat', {}, 403, 'origin-not-allowed'],
    ['an API without CORS', '/v3/chat', { Origin: APP }, 403, 'origin-not-allowed'],
    ['an undeclared path', '/v2/nope', { Origin: APP }, 404, 'not-found'],
    ['a GET that is not declared as a WebSocket', '/v2/not-a-socket', { Origin: APP }, 404, 'not-found'],
    ['an undeclared query parameter', '/v2/chat?x=1', { Origin: APP }, 400, 'invalid-request'],
  ])('%s is refused before the upgrade', async (_name, path, headers, status, type) => {
    echo.handshakes.length = 0;
    const raw = await rawHttps(
      gw.p.gatewayUrl,
      ca,
      upgradeRequest(path, { ...headers, Authorization: `Bearer ${token}` }),
    );
    expect(statusOf(raw)).toBe(status);
    expect(JSON.parse(bodyOf(raw))).toMatchObject({ type: `urn:portcullis:problem:${type}` });
    expect(raw).not.toContain(token);
    expect(echo.handshakes).toHaveLength(0);
  });

  it('no credential is 401, a bad one too, and the upstream never sees them', async () => {
    echo.handshakes.length = 0;
    const none = await rawHttps(gw.p.gatewayUrl, ca, upgradeRequest('/v2/chat', { Origin: APP }));
    expect(statusOf(none)).toBe(401);
    expect(none.toLowerCase()).toContain('www-authenticate: bearer');
    const bad = await rawHttps(
      gw.p.gatewayUrl,
      ca,
      upgradeRequest('/v2/chat', { Origin: APP, Authorization: 'Bearer not-a-token' }),
    );
    expect(statusOf(bad)).toBe(401);
    expect(echo.handshakes).toHaveLength(0);
  });

  it('a raw upgrade with a valid token is switched, with the accept key of the upstream', async () => {
    const raw = await rawHttps(
      gw.p.gatewayUrl,
      ca,
      upgradeRequest('/v2/chat', { Origin: APP, Authorization: `Bearer ${token}` }),
      1_000,
    );
    expect(statusOf(raw)).toBe(101);
    expect(raw).toContain('sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=');
  });
});

// ---------------------------------------------------------------------------------------------

/** The audit events recorded under one correlation id. */
async function auditEventsOf(correlationId: string | undefined): Promise<Record<string, unknown>[]> {
  expect(correlationId).toBeTruthy();
  await gw.p.audit.flush();
  const rows = await gw.p.store.db
    .selectFrom('audit_events')
    .select(['trace_id', 'event'])
    .where('trace_id', '=', correlationId ?? '')
    .execute();
  return rows.map((r) => JSON.parse(r.event) as Record<string, unknown>);
}

/** The one audit event of a gateway request, by the correlation id its response carried. */
async function auditEventOf(correlationId: string | undefined): Promise<Record<string, unknown> | undefined> {
  const events = await auditEventsOf(correlationId);
  expect(events).toHaveLength(1); // one event per request
  return events[0];
}

/** The value of one Prometheus series (0 when absent). */
async function metric(name: string, labels: Record<string, string>): Promise<number> {
  const text = await gw.p.metrics.text();
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    const open = line.slice(name.length + 1, line.lastIndexOf('}'));
    const have = Object.fromEntries(
      open.split(',').map((pair) => {
        const [k = '', v = ''] = pair.split('=');
        return [k, v.replace(/^"|"$/g, '')];
      }),
    );
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(line.split(' ').at(-1));
  }
  return 0;
}

const correlationOf = (raw: string) => /\r\nx-request-id: ([^\r\n]+)/i.exec(raw)?.[1];

describe('every door is observed: one audit event and one metric per request', () => {
  it('a WebSocket upgrade accepted: an upgrade event and the accepted count', async () => {
    const before = await metric('portcullis_websocket_upgrades_total', { outcome: 'accepted' });
    const raw = await rawHttps(
      gw.p.gatewayUrl,
      ca,
      upgradeRequest('/v2/chat', { Origin: APP, Authorization: `Bearer ${token}` }),
      1_000,
    );
    expect(statusOf(raw)).toBe(101);
    expect(await auditEventOf(correlationOf(raw))).toMatchObject({
      'event.action': 'websocket-upgrade',
      'event.outcome': 'success',
      'http.response.status_code': 101,
      'url.path': '/v2/chat',
      'portcullis.api': 'chat',
      'portcullis.listener': 'gateway',
      'portcullis.scopes.granted': ['chat:read'],
    });
    expect(await metric('portcullis_websocket_upgrades_total', { outcome: 'accepted' })).toBe(before + 1);
    expect(
      await metric('portcullis_http_requests_total', { api: 'chat', route: '/v2/chat', status_class: '1xx' }),
    ).toBeGreaterThan(0);
  });

  it('a WebSocket upgrade refused: an event naming the stage that refused, and the denial count', async () => {
    const stage = { stage: 'cors', code: 'origin-not-allowed' };
    const denied = await metric('portcullis_denials_total', stage);
    const refused = await metric('portcullis_websocket_upgrades_total', { outcome: 'refused' });
    const raw = await rawHttps(
      gw.p.gatewayUrl,
      ca,
      upgradeRequest('/v2/chat', { Origin: EVIL, Authorization: `Bearer ${token}` }),
    );
    expect(statusOf(raw)).toBe(403);
    expect(await auditEventOf(correlationOf(raw))).toMatchObject({
      'event.category': 'authorization',
      'event.action': 'cors',
      'event.outcome': 'failure',
      'http.response.status_code': 403,
      'url.path': '/v2/chat',
    });
    expect(await metric('portcullis_denials_total', stage)).toBe(denied + 1);
    expect(await metric('portcullis_websocket_upgrades_total', { outcome: 'refused' })).toBe(refused + 1);
    // An unauthenticated upgrade names the authenticate stage.
    const none = await rawHttps(gw.p.gatewayUrl, ca, upgradeRequest('/v2/chat', { Origin: APP }));
    expect(statusOf(none)).toBe(401);
    expect(await auditEventOf(correlationOf(none))).toMatchObject({
      'event.category': 'authentication',
      'event.action': 'authenticate',
      'event.outcome': 'failure',
    });
  });

  it('authorization-server requests: a token issued and a token refused, each audited and counted', async () => {
    const keys = gw.p.keys;
    if (keys === undefined) throw new Error('the key manager should be running');
    const { client, clientSecret } = await createClient(gw.p.store.db, keys, {
      name: 'observed',
      grantTypes: ['client_credentials'],
      scope: 'chat:read',
    });
    const tokenRequest = async (secret: string) => {
      const basic = Buffer.from(`${client.clientId}:${secret}`).toString('base64');
      const res = await undiciRequest(`${issuer}/token`, {
        method: 'POST',
        headers: { authorization: `Basic ${basic}`, 'content-type': 'application/x-www-form-urlencoded' },
        // Three APIs declare chat:read: the resource names one (else invalid_target, issue 14 #1).
        body: new URLSearchParams({
          grant_type: 'client_credentials',
          scope: 'chat:read',
          resource: `${issuer}/v2`,
        }).toString(),
        dispatcher: agent,
      });
      await res.body.text();
      return { status: res.statusCode, id: String(res.headers['x-request-id']) };
    };
    const series = (statusClass: string) =>
      metric('portcullis_http_requests_total', { api: 'oauth', route: '/token', status_class: statusClass });
    const [ok2xx, refused4xx] = [await series('2xx'), await series('4xx')];

    // The door's request event, beside the authorization server's own (token issued, refused).
    const doorEvent = async (id: string) => {
      const events = await auditEventsOf(id);
      const door = events.filter((e) => e['event.action'] === 'authorization-server');
      expect(door).toHaveLength(1);
      return { door: door[0], others: events.filter((e) => e['event.action'] !== 'authorization-server') };
    };
    const issued = await tokenRequest(clientSecret ?? '');
    expect(issued.status).toBe(200);
    const issuedEvents = await doorEvent(issued.id);
    expect(issuedEvents.others.map((e) => e['event.action'])).toEqual(['oauth-token-issued']);
    expect(issuedEvents.door).toMatchObject({
      'event.action': 'authorization-server',
      'event.outcome': 'success',
      'http.request.method': 'POST',
      'http.response.status_code': 200,
      'url.path': '/token',
      'portcullis.listener': 'oauth',
    });
    expect(await series('2xx')).toBe(ok2xx + 1);

    const refused = await tokenRequest('not-the-secret');
    expect(refused.status).toBe(401);
    expect((await doorEvent(refused.id)).door).toMatchObject({
      'event.outcome': 'failure',
      'http.response.status_code': 401,
      'url.path': '/token',
      'portcullis.listener': 'oauth',
    });
    expect(await series('4xx')).toBe(refused4xx + 1);
    // The trail never holds the client's secret.
    const rows = await gw.p.store.db.selectFrom('audit_events').select('event').execute();
    expect(JSON.stringify(rows)).not.toContain(clientSecret ?? 'unset');
  });
});
