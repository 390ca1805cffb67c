/**
 * Issue 13: failed TLS handshakes on the real gateway listener are counted in
 * `portcullis_tls_handshake_failures_total{listener,reason}` (served on the admin listener) and
 * audited in aggregate: one `validation` / `tls-handshake-failed` event per source and reason per
 * window, with the count. A plaintext HTTP request, an old protocol version, no shared cipher, a
 * client that rejects the server certificate and a client that never says hello each fail with
 * their reason; a good handshake counts nothing.
 */
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connect as tcp } from 'node:net';
import { connect } from 'node:tls';
import type { ConnectionOptions } from 'node:tls';
import { promisify } from 'node:util';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCredentials } from './admin-harness.ts';
import { startRecordingUpstream, startTestGateway, tempDir } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';
import { tlsFailureReason } from '../src/server/tls-failures.ts';
import { ca } from './pki.ts';

const run = promisify(execFile);
let upstream: RecordingUpstream;
let gw: TestGateway;
let port: number;
let gatewayCa: string | undefined;
/** The admin listener answers /metrics only to an administrator (a client certificate here). */
let creds: { cert: string; key: string };

const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function metric(): Promise<Map<string, number>> {
  const agent = new Agent({
    connect: { ca: gatewayCa, servername: 'localhost', cert: creds.cert, key: creds.key },
  });
  try {
    const res = await request(`${gw.p.adminUrl ?? ''}/metrics`, { dispatcher: agent });
    expect(res.statusCode).toBe(200);
    const text = await res.body.text();
    const out = new Map<string, number>();
    for (const m of text.matchAll(/^portcullis_tls_handshake_failures_total\{([^}]*)\} (\d+)/gm)) {
      const labels = m[1] ?? '';
      out.set(
        `${/listener="([^"]+)"/.exec(labels)?.[1] ?? ''}/${/reason="([^"]+)"/.exec(labels)?.[1] ?? ''}`,
        Number(m[2]),
      );
    }
    return out;
  } finally {
    await agent.close();
  }
}

async function tlsEvents(): Promise<Record<string, unknown>[]> {
  await gw.p.audit.flush();
  const rows = await gw.p.store.db.selectFrom('audit_events').select('event').orderBy('seq').execute();
  return rows
    .map((r) => JSON.parse(r.event) as Record<string, unknown>)
    .filter((e) => e['event.action'] === 'tls-handshake-failed');
}

/** A TLS client that fails; resolves once the connection is over. */
function failingTls(options: ConnectionOptions): Promise<void> {
  return new Promise((ok) => {
    const s = connect({ host: '127.0.0.1', port, servername: 'localhost', ...options });
    s.on('error', () => ok());
    s.on('close', () => ok());
    s.on('secureConnect', () => {
      s.destroy();
      ok();
    });
  });
}

function plaintext(localAddress: string): Promise<void> {
  return new Promise((ok) => {
    const s = tcp({ host: '127.0.0.1', port, localAddress });
    s.on('error', () => ok());
    s.on('close', () => ok());
    s.on('connect', () => s.write('GET /v1/items HTTP/1.1\r\nHost: localhost\r\n\r\n'));
  });
}

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  const admin = await adminCredentials(await tempDir('portcullis-tls-failures-'));
  creds = admin;
  gw = await startTestGateway({
    admin: admin.config,
    gateway: { connections: { handshakeTimeoutMs: 1000 } },
    audit: { aggregation: { windowSeconds: 2 } },
    apis: [{ name: 'items', openapi: 'api.yaml', basePath: '/v1', upstream: { url: upstream.url } }],
  });
  port = Number(new URL(gw.p.gatewayUrl).port);
  gatewayCa = gw.p.tls.source === 'development' ? gw.p.tls.caCertPem : undefined;
}, 60_000);

afterAll(async () => {
  await gw.close();
  await upstream.close();
});

describe('TLS handshake failures', () => {
  it('a good handshake counts nothing', async () => {
    const before = await metric();
    expect((await gw.request('/v1/items')).status).toBe(200);
    expect(await metric()).toEqual(before);
  });

  it('each failure is counted with its reason, and audited once per source and reason per window', async () => {
    await plaintext('127.0.0.2');
    await plaintext('127.0.0.2');
    await plaintext('127.0.0.3');
    await failingTls({
      maxVersion: 'TLSv1.1',
      minVersion: 'TLSv1',
      ciphers: 'DEFAULT:@SECLEVEL=0',
      rejectUnauthorized: false,
    });
    await failingTls({ maxVersion: 'TLSv1.2', ciphers: 'AES128-SHA', rejectUnauthorized: false });
    // A client that does not trust the server certificate and says so (alert unknown_ca): it
    // trusts only an unrelated CA.
    const otherCa = join(gw.dir, 'other-ca.pem');
    await writeFile(otherCa, (await ca('Unrelated Test CA')).pem);
    await run(
      'openssl',
      [
        's_client',
        '-connect',
        `127.0.0.1:${String(port)}`,
        '-servername',
        'localhost',
        '-verify_return_error',
        '-CAfile',
        otherCa,
      ],
      { timeout: 10_000 },
    ).catch(() => undefined);
    // A client that connects and never says hello: the handshake timeout.
    const silent = tcp({ host: '127.0.0.1', port });
    silent.on('error', () => undefined);
    await new Promise((ok) => silent.on('close', ok));

    const counted = await metric();
    expect(counted.get('gateway/plaintext-http')).toBe(3);
    expect(counted.get('gateway/protocol-version')).toBe(1);
    expect(counted.get('gateway/no-shared-cipher')).toBe(1);
    expect(counted.get('gateway/client-rejected-certificate')).toBe(1);
    expect(counted.get('gateway/timeout')).toBe(1);

    // The window (2 s from each first failure) ends: one event per source and reason.
    let events = await tlsEvents();
    for (let i = 0; i < 50 && events.length < 6; i++) {
      await wait(200);
      events = await tlsEvents();
    }
    await wait(500);
    events = await tlsEvents();
    const plain = events.filter((e) => e['event.reason'] === 'plaintext-http');
    expect(plain).toHaveLength(2);
    expect(plain.find((e) => e['client.ip'] === '127.0.0.2')).toMatchObject({
      'event.category': 'validation',
      'event.outcome': 'failure',
      'portcullis.listener': 'gateway',
      'portcullis.aggregate.count': 2,
    });
    expect(plain.find((e) => e['client.ip'] === '127.0.0.3')?.['portcullis.aggregate.count']).toBe(1);
    for (const reason of ['protocol-version', 'no-shared-cipher', 'client-rejected-certificate', 'timeout']) {
      expect(
        events.filter((e) => e['event.reason'] === reason),
        reason,
      ).toEqual([expect.objectContaining({ 'client.ip': '127.0.0.1', 'portcullis.aggregate.count': 1 })]);
    }
    for (const e of events) {
      expect(typeof e['event.start']).toBe('string');
      expect(typeof e['event.end']).toBe('string');
    }
  }, 30_000);

  it('maps handshake errors to a bounded set of reasons', () => {
    expect(tlsFailureReason({ code: 'ERR_SSL_HTTP_REQUEST' })).toBe('plaintext-http');
    expect(tlsFailureReason({ code: 'ERR_SSL_WRONG_VERSION_NUMBER' })).toBe('malformed');
    expect(tlsFailureReason({ code: 'ECONNRESET' })).toBe('reset');
    expect(tlsFailureReason({ code: 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE' })).toBe(
      'client-certificate-missing',
    );
    expect(tlsFailureReason({ code: 'something new' })).toBe('other');
    expect(tlsFailureReason(undefined)).toBe('other');
  });
});
