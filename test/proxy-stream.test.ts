/**
 * The upstream call through the real gateway: a small sized body arrives read whole, a body
 * above the proxy's buffer limit and an unsized (chunked) one stream through, byte for byte;
 * an upstream 5xx body never reaches the client.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BUFFER_LIMIT } from '../src/gateway/stages/proxy/index.ts';
import { startRecordingUpstream, startTestGateway } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';

let upstream: RecordingUpstream;
let gw: TestGateway;

/** Printable, varied bytes (a hash chain), so a dropped or repeated chunk changes the digest. */
function payload(bytes: number): string {
  let out = '';
  let h = 'seed';
  while (out.length < bytes) {
    h = createHash('sha256').update(h).digest('hex');
    out += h;
  }
  return out.slice(0, bytes);
}

const digest = (s: string) => createHash('sha256').update(s).digest('hex');

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  gw = await startTestGateway({
    apis: [{ name: 'items', openapi: 'api.yaml', basePath: '/v1', upstream: { url: upstream.url } }],
  });
});

afterAll(async () => {
  await gw.close();
  await upstream.close();
});

describe('the upstream call', () => {
  it('answers a small sized body whole', async () => {
    const body = payload(1000);
    upstream.respond(() => ({ status: 200, headers: { 'content-type': 'text/plain' }, body }));
    const res = await gw.request('/v1/items');
    expect(res.status).toBe(200);
    expect(res.body).toBe(body);
  });

  it('streams a body above the buffer limit byte for byte', async () => {
    const body = payload(BUFFER_LIMIT * 3 + 17);
    upstream.respond(() => ({ status: 200, headers: { 'content-type': 'text/plain' }, body }));
    const res = await gw.request('/v1/items');
    expect(res.status).toBe(200);
    expect(res.body.length).toBe(body.length);
    expect(digest(res.body)).toBe(digest(body));
  });

  it('streams an unsized (chunked) body byte for byte', async () => {
    const body = payload(BUFFER_LIMIT + 4096);
    upstream.respond(() => ({
      status: 200,
      headers: { 'content-type': 'text/plain', 'transfer-encoding': 'chunked' },
      body,
    }));
    const res = await gw.request('/v1/items');
    expect(res.status).toBe(200);
    expect(digest(res.body)).toBe(digest(body));
  });

  it('never passes an upstream 5xx body on (small or large)', async () => {
    for (const size of [100, BUFFER_LIMIT * 2]) {
      const secret = `at internal.host.example:5432 ${payload(size)}`;
      upstream.respond(() => ({ status: 500, headers: { 'content-type': 'text/plain' }, body: secret }));
      const res = await gw.request('/v1/items');
      expect(res.status).toBe(502);
      expect(res.headers['content-type']).toBe('application/problem+json');
      expect(res.body).not.toContain('internal.host');
    }
  });
});
