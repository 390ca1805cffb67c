/**
 * The listeners as a client meets them: TLS policy on the real gateway socket, the loopback
 * admin listener's health endpoints, the redirect-only HTTP listener and trusted proxies.
 */
import { once } from 'node:events';
import { request as httpRequest } from 'node:http';
import { connect } from 'node:tls';
import type { ConnectionOptions } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent, request } from 'undici';
import { startRecordingUpstream, startTestGateway } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';

let upstream: RecordingUpstream;
let gw: TestGateway;
let ca: string;

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  gw = await startTestGateway({
    gateway: {
      redirectHttp: { port: 0 },
      trustedProxies: ['127.0.0.1'],
      publicUrl: 'https://api.example.test:8443',
    },
    apis: [{ name: 'items', openapi: 'api.yaml', basePath: '/v1', upstream: { url: upstream.url } }],
  });
  if (gw.p.tls.source !== 'development') throw new Error('expected the development certificate');
  ca = gw.p.tls.caCertPem;
});

afterAll(async () => {
  await gw.close();
  await upstream.close();
});

async function handshake(
  options: ConnectionOptions,
): Promise<{ ok: boolean; protocol?: string | null; cipher?: string }> {
  const { port } = new URL(gw.p.gatewayUrl);
  const socket = connect({ host: '127.0.0.1', port: Number(port), ca, servername: 'localhost', ...options });
  try {
    await Promise.race([
      once(socket, 'secureConnect'),
      once(socket, 'error').then(([e]) => Promise.reject(e as Error)),
    ]);
    return { ok: true, protocol: socket.getProtocol(), cipher: socket.getCipher().name };
  } catch {
    return { ok: false };
  } finally {
    socket.destroy();
  }
}

describe('gateway TLS policy', () => {
  it('negotiates TLS 1.3 by default and TLS 1.2 with an ECDHE AEAD suite', async () => {
    expect(await handshake({})).toMatchObject({ ok: true, protocol: 'TLSv1.3' });
    expect(
      await handshake({ maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256' }),
    ).toMatchObject({
      ok: true,
      protocol: 'TLSv1.2',
      cipher: 'ECDHE-ECDSA-AES128-GCM-SHA256',
    });
  });

  it('refuses TLS 1.1 and 1.0', async () => {
    for (const v of ['TLSv1.1', 'TLSv1'] as const) {
      expect(await handshake({ minVersion: v, maxVersion: v, ciphers: 'DEFAULT@SECLEVEL=0' })).toEqual({
        ok: false,
      });
    }
  });

  it('refuses TLS 1.2 clients offering only CBC suites', async () => {
    expect(
      await handshake({ maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA' }),
    ).toEqual({
      ok: false,
    });
  });
});

describe('admin listener', () => {
  it('listens on loopback and answers health and readiness', async () => {
    expect(gw.p.adminUrl).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const agent = new Agent({ connect: { ca, servername: 'localhost' } });
    try {
      const health = await request(`${String(gw.p.adminUrl)}/healthz`, { dispatcher: agent });
      expect(health.statusCode).toBe(200);
      expect(await health.body.json()).toEqual({ status: 'ok' });
      const ready = await request(`${String(gw.p.adminUrl)}/readyz`, { dispatcher: agent });
      expect(ready.statusCode).toBe(200);
      expect(await ready.body.json()).toMatchObject({ status: 'ready', checks: { store: { status: 'ok' } } });
      expect(ready.headers['strict-transport-security']).toBeDefined();
      const missing = await request(`${String(gw.p.adminUrl)}/nope`, { dispatcher: agent });
      expect(missing.statusCode).toBe(404);
      expect(missing.headers['content-type']).toMatch(/problem\+json/);
      await missing.body.dump();
    } finally {
      await agent.close();
    }
  });
});

describe('plain-HTTP listener', () => {
  function get(path: string, host: string): Promise<{ status: number; location?: string | undefined }> {
    const { port } = new URL(String(gw.p.redirectUrl));
    return new Promise((ok, fail) => {
      const req = httpRequest({ host: '127.0.0.1', port: Number(port), path, headers: { host } }, (res) => {
        res.resume();
        ok({ status: res.statusCode ?? 0, location: res.headers.location });
      });
      req.on('error', fail);
      req.end();
    });
  }

  it('only redirects to the configured HTTPS origin, whatever Host says', async () => {
    expect(await get('/v1/items?x=1', 'evil.example')).toEqual({
      status: 308,
      location: 'https://api.example.test:8443/v1/items?x=1',
    });
    expect(upstream.received).toHaveLength(0);
  });
});

describe('trusted proxies', () => {
  it('believes X-Forwarded-For and the correlation id from a configured proxy', async () => {
    upstream.received.length = 0;
    const res = await gw.request('/v1/items', {
      headers: { 'x-forwarded-for': '203.0.113.50', 'x-request-id': 'lb-request-0001' },
    });
    expect(res.status).toBe(200);
    expect(res.headers['x-request-id']).toBe('lb-request-0001');
    expect(upstream.received[0]!.headers['x-forwarded-for']).toBe('203.0.113.50');
    expect(upstream.received[0]!.headers['x-request-id']).toBe('lb-request-0001');
    const access = gw
      .logLines()
      .filter((l) => l.event === 'access')
      .at(-1)!;
    expect(access.clientIp).toBe('203.0.113.50');
  });
});
