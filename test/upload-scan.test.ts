/**
 * Upload scanning with a real clamd (test/clamd-harness.ts: its own socket and an EICAR
 * signature database written by the test). Clean uploads reach the upstream; infected ones are
 * refused (422 upload-rejected) before it, audited with the signature; content clamd cannot scan
 * is refused; an unreachable scanner fails closed (503) unless configured to allow; operations
 * not configured carry no scan stage and are never sent to clamd.
 */
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { queryStoreLog } from '../src/audit/sinks/store.ts';
import { parseConfig } from '../src/config/load.ts';
import type { OpenApiOperation } from '../src/gateway/openapi.ts';
import { parseReply } from '../src/gateway/stages/scan/clamd.ts';
import { compileScan, isScanned } from '../src/gateway/stages/scan/index.ts';
import { EICAR, EICAR_SIGNATURE, startClamd } from './clamd-harness.ts';
import type { TestClamd } from './clamd-harness.ts';
import { startRecordingUpstream, startTestGateway } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';

const BODY = {
  content: { 'multipart/form-data': {}, 'application/octet-stream': {} },
};
const OPENAPI = {
  openapi: '3.1.0',
  info: { title: 'files', version: '1' },
  paths: {
    '/attachments': {
      post: { operationId: 'upload', requestBody: BODY, responses: { '201': { description: 'stored' } } },
    },
    '/notes': {
      post: {
        operationId: 'note',
        'x-portcullis-scan': false,
        requestBody: BODY,
        responses: { '201': { description: 'stored' } },
      },
    },
    '/items': { get: { operationId: 'list', responses: { '200': { description: 'ok' } } } },
  },
};

function multipart(name: string, content: string): { body: string; type: string } {
  const boundary = `----portcullis${randomUUID()}`;
  const body =
    `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="${name}"\r\n` +
    `Content-Type: application/octet-stream\r\n\r\n${content}\r\n--${boundary}--\r\n`;
  return { body, type: `multipart/form-data; boundary=${boundary}` };
}

let clamd: TestClamd;
let upstream: RecordingUpstream;
beforeAll(async () => {
  clamd = await startClamd({ streamMaxLength: '64K' });
  upstream = await startRecordingUpstream();
  upstream.respond(() => ({
    status: 201,
    headers: { 'content-type': 'application/json' },
    body: '{"ok":true}',
  }));
}, 60_000);
afterAll(async () => {
  await upstream.close();
  await clamd.stop();
});

function gatewayWith(uploads: Record<string, unknown>): Promise<TestGateway> {
  return startTestGateway(
    {
      uploads: { apis: ['files'], ...uploads },
      apis: [{ name: 'files', basePath: '/v1', openapi: 'api.yaml', upstream: { url: upstream.url } }],
    },
    { openapi: OPENAPI },
  );
}

const send = (gw: TestGateway, path: string, m: { body: string; type: string }) =>
  gw.request(path, { method: 'POST', headers: { 'content-type': m.type }, body: m.body });

describe('clamd verdicts', () => {
  it('parses clamd replies', () => {
    expect(parseReply('stream: OK\0')).toEqual({ kind: 'clean' });
    expect(parseReply('stream: Eicar-Test-Signature FOUND\0')).toEqual({
      kind: 'infected',
      signature: 'Eicar-Test-Signature',
    });
    expect(parseReply('stream: <script> FOUND\0')).toEqual({
      kind: 'infected',
      signature: 'unnamed-signature',
    });
    expect(parseReply('INSTREAM size limit exceeded. ERROR\0').kind).toBe('unscannable');
  });

  it('compiles a stage only for the operations configured', () => {
    const config = parseConfig('uploads:\n  apis: [files]\n  clamd:\n    socket: /x\n', '/etc/p.yaml').config;
    const op = (method: string, definition: Record<string, unknown>) =>
      ({ method, path: '/x', operationId: 'x', definition, security: [] }) as unknown as OpenApiOperation;
    expect(isScanned(config.uploads, 'files', op('post', { requestBody: BODY }))).toBe(true);
    expect(isScanned(config.uploads, 'files', op('get', {}))).toBe(false);
    expect(isScanned(config.uploads, 'other', op('post', { requestBody: BODY }))).toBe(false);
    expect(isScanned(config.uploads, 'other', op('post', { 'x-portcullis-scan': true }))).toBe(true);
    expect(isScanned(config.uploads, 'files', op('post', { 'x-portcullis-scan': false }))).toBe(false);
    expect(compileScan(config.uploads, 'other', op('post', {}), undefined)).toBeUndefined();
    expect(() => isScanned(config.uploads, 'files', op('post', { 'x-portcullis-scan': 'yes' }))).toThrow(
      /x-portcullis-scan must be true or false/,
    );
  });
});

describe('a gateway scanning uploads', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await gatewayWith({ clamd: { socket: clamd.socket } });
  }, 60_000);
  afterAll(async () => {
    await gw.close();
  });

  it('passes a clean upload to the upstream and logs the verdict', async () => {
    upstream.received.length = 0;
    const res = await send(gw, '/v1/attachments', multipart('report.txt', 'quarterly figures'));
    expect(res.status).toBe(201);
    expect(upstream.received).toHaveLength(1);
    const scans = gw.logLines().filter((l) => l.event === 'upload-scan');
    expect(scans.at(-1)).toMatchObject({ verdict: 'clean' });
  });

  it('refuses an infected upload before the upstream, audited with the signature', async () => {
    upstream.received.length = 0;
    const res = await send(gw, '/v1/attachments', multipart('eicar.com', EICAR));
    expect(res.status).toBe(422);
    const problem = JSON.parse(res.body) as { type: string; correlationId: string };
    expect(problem.type).toBe('urn:portcullis:problem:upload-rejected');
    expect(res.body).not.toContain('EICAR');
    expect(upstream.received).toHaveLength(0);
    const raw = { body: EICAR, type: 'application/octet-stream' };
    expect((await send(gw, '/v1/attachments', raw)).status).toBe(422);
    expect(upstream.received).toHaveLength(0);
    let refused: Record<string, unknown> | undefined;
    for (let i = 0; i < 40 && refused === undefined; i++) {
      const events = await queryStoreLog(gw.p.store.db, { limit: 200 });
      refused = events
        .map((e) => e.event as Record<string, unknown>)
        .find((e) => e['trace.id'] === problem.correlationId);
      if (refused === undefined) await new Promise((r) => setTimeout(r, 100));
    }
    expect(refused).toMatchObject({
      'event.action': 'scan',
      'event.outcome': 'failure',
      'http.response.status_code': 422,
    });
    expect(String(refused?.['event.reason'])).toContain(EICAR_SIGNATURE);
  });

  it('refuses what clamd cannot scan (above its stream limit)', async () => {
    upstream.received.length = 0;
    const res = await send(gw, '/v1/attachments', {
      body: 'a'.repeat(100 * 1024),
      type: 'application/octet-stream',
    });
    expect(res.status).toBe(422);
    expect(upstream.received).toHaveLength(0);
  });

  it('does not scan operations that opted out or take no body', async () => {
    upstream.received.length = 0;
    const before = gw.logLines().filter((l) => l.event === 'upload-scan').length;
    const res = await send(gw, '/v1/notes', multipart('eicar.com', EICAR));
    expect(res.status).toBe(201);
    expect(upstream.received).toHaveLength(1);
    expect(gw.logLines().filter((l) => l.event === 'upload-scan')).toHaveLength(before);
  });
});

describe('scanner unavailable', () => {
  const missing = () => join(clamd.dir, 'no-such.sock');

  it('fails closed by default: 503, nothing reaches the upstream', async () => {
    const gw = await gatewayWith({ clamd: { socket: missing() } });
    try {
      upstream.received.length = 0;
      const res = await send(gw, '/v1/attachments', multipart('report.txt', 'figures'));
      expect(res.status).toBe(503);
      expect((JSON.parse(res.body) as { type: string }).type).toBe('urn:portcullis:problem:unavailable');
      expect(upstream.received).toHaveLength(0);
      expect(
        gw.logLines().some((l) => l.event === 'upload-scan' && l.verdict === 'scanner-unavailable'),
      ).toBe(true);
    } finally {
      await gw.close();
    }
  }, 60_000);

  it('passes unscanned when configured to allow, and says so in the log', async () => {
    const gw = await gatewayWith({ clamd: { socket: missing() }, onScannerUnavailable: 'allow' });
    try {
      upstream.received.length = 0;
      const res = await send(gw, '/v1/attachments', multipart('report.txt', 'figures'));
      expect(res.status).toBe(201);
      expect(upstream.received).toHaveLength(1);
      expect(
        gw
          .logLines()
          .some(
            (l) => l.event === 'upload-scan' && l.verdict === 'scanner-unavailable' && l.failOpen === true,
          ),
      ).toBe(true);
    } finally {
      await gw.close();
    }
  }, 60_000);

  it('refuses a configuration that scans without naming clamd', async () => {
    await expect(gatewayWith({})).rejects.toThrow(/uploads\.clamd/);
  }, 60_000);
});
