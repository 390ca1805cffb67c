/**
 * The front door through the real listener: HTTP/1.1 and HTTP/2 reach the same pipeline and the
 * same denial path (one problem, one audit event naming the stage), and an HTTP/1.1 parser error
 * on an established TLS connection gets a problem and the connection is closed by the server.
 */
import { once } from 'node:events';
import { connect as h2connect } from 'node:http2';
import { connect as tlsConnect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bodyOf, startRecordingUpstream, startTestGateway, statusOf } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';

let upstream: RecordingUpstream;
let gw: TestGateway;
let ca: string | undefined;

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  gw = await startTestGateway({
    apis: [{ name: 'items', openapi: 'api.yaml', basePath: '/v1', upstream: { url: upstream.url } }],
  });
  ca = gw.p.tls.source === 'development' ? gw.p.tls.caCertPem : undefined;
});

afterAll(async () => {
  await gw.close();
  await upstream.close();
});

async function eventOf(id: string): Promise<Record<string, unknown>[]> {
  await gw.p.audit.flush();
  const rows = await gw.p.store.db
    .selectFrom('audit_events')
    .select('event')
    .where('trace_id', '=', id)
    .execute();
  return rows.map((r) => JSON.parse(r.event) as Record<string, unknown>);
}

describe('one door for HTTP/1.1 and HTTP/2', () => {
  it('an HTTP/2 request is answered and refused like an HTTP/1.1 one, each with one audit event', async () => {
    const session = h2connect(gw.p.gatewayUrl, { ca, servername: 'localhost' });
    try {
      const get = (path: string) =>
        new Promise<{ status: number; headers: Record<string, unknown>; body: string }>((ok, fail) => {
          const req = session.request({ ':path': path, ':method': 'GET' });
          let body = '';
          let headers: Record<string, unknown> = {};
          req.on('response', (h) => (headers = h));
          req.setEncoding('utf8');
          req.on('data', (c: string) => (body += c));
          req.on('end', () => ok({ status: Number(headers[':status']), headers, body }));
          req.on('error', fail);
          req.end();
        });
      const ok = await get('/v1/items/abc');
      expect(ok.status).toBe(200);
      expect(ok.headers['strict-transport-security']).toBeDefined();
      const missing = await get('/v1/nope');
      expect(missing.status).toBe(404);
      expect(missing.headers['content-type']).toBe('application/problem+json');
      expect(missing.headers.connection).toBeUndefined(); // never a connection header on HTTP/2
      const id = String(missing.headers['x-request-id']);
      expect(JSON.parse(missing.body)).toMatchObject({ correlationId: id, status: 404 });
      expect(await eventOf(id)).toMatchObject([
        { 'event.action': 'route', 'event.reason': 'undeclared-path', 'http.response.status_code': 404 },
      ]);
      expect(await eventOf(String(ok.headers['x-request-id']))).toMatchObject([
        { 'event.action': 'allow', 'url.path': '/v1/items/{id}' },
      ]);
    } finally {
      session.close();
    }
  });
});

describe('HTTP/1.1 parser errors', () => {
  it('get a 400 problem on an established TLS connection, which the server then closes', async () => {
    const { hostname, port } = new URL(gw.p.gatewayUrl);
    const socket = tlsConnect({
      host: hostname,
      port: Number(port),
      ca,
      servername: 'localhost',
      ALPNProtocols: ['http/1.1'],
    });
    await once(socket, 'secureConnect');
    let received = '';
    socket.on('data', (c: Buffer) => (received += c.toString('utf8')));
    const before = upstream.received.length;
    socket.write('GET /v1/items HTTP/1.1\r\nHost: localhost\r\nBad Header Line\r\n\r\n');
    await once(socket, 'close');
    expect(statusOf(received)).toBe(400);
    expect(received.toLowerCase()).toContain('connection: close');
    expect(JSON.parse(bodyOf(received))).toMatchObject({ type: 'urn:portcullis:problem:bad-request' });
    expect(upstream.received).toHaveLength(before);
  });
});
