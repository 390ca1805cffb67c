/**
 * Issue 13: the documented request-event fields are filled, end to end through the real gateway
 * (HTTPS, SQLite audit store): `http.response.body.bytes` on a 200, a 429 and 5xx records (a
 * refused upstream connection and an upstream's own 500, as the client got them), and on the 429
 * `portcullis.rate_limit.key` (the dimension and a keyed hash — never the address) and
 * `portcullis.rate_limit.retry_after` (the Retry-After the client got).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRecordingUpstream, startTestGateway } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';

let upstream: RecordingUpstream;
let gw: TestGateway;

async function eventOf(correlationId: string | undefined): Promise<Record<string, unknown>> {
  await gw.p.audit.flush();
  const rows = await gw.p.store.db.selectFrom('audit_events').select('event').orderBy('seq').execute();
  const found = rows
    .map((r) => JSON.parse(r.event) as Record<string, unknown>)
    .find((e) => e['trace.id'] === correlationId);
  if (found === undefined) throw new Error(`no audit event for ${String(correlationId)}`);
  return found;
}

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  gw = await startTestGateway({
    apis: [
      {
        name: 'items',
        openapi: 'api.yaml',
        basePath: '/v1',
        upstream: { url: upstream.url },
        rateLimits: { operations: { searchItems: { ip: { burst: { points: 2, seconds: 3600 } } } } },
      },
      // Nothing listens on port 9: every call is a refused connection (502).
      { name: 'down', openapi: 'api.yaml', basePath: '/v2/down', upstream: { url: 'http://127.0.0.1:9' } },
    ],
  });
}, 60_000);

afterAll(async () => {
  await gw.close();
  await upstream.close();
});

describe('documented request-event fields are filled', () => {
  it('http.response.body.bytes on an answered request', async () => {
    const ok = await gw.request('/v1/items/abc');
    expect(ok.status).toBe(200);
    const e = await eventOf(ok.headers['x-request-id']);
    expect(e['http.response.status_code']).toBe(200);
    expect(e['http.response.body.bytes']).toBe(Buffer.byteLength(ok.body));
    expect(e['http.response.body.bytes']).toBeGreaterThan(0);
    expect(e).not.toHaveProperty('portcullis.rate_limit.key');
  });

  it('a 429: the dimension and a keyed hash of the counter, the Retry-After, the problem size', async () => {
    const allowed = [await gw.request('/v1/items/search'), await gw.request('/v1/items/search')];
    for (const r of allowed) expect(r.status).toBe(200);
    const limited = await gw.request('/v1/items/search');
    expect(limited.status).toBe(429);
    const e = await eventOf(limited.headers['x-request-id']);
    expect(e).toMatchObject({
      'event.category': 'rate-limit',
      'event.outcome': 'failure',
      'http.response.status_code': 429,
      'http.response.body.bytes': Buffer.byteLength(limited.body),
      'portcullis.rate_limit.retry_after': Number(limited.headers['retry-after']),
    });
    expect(e['portcullis.rate_limit.retry_after']).toBeGreaterThan(0);
    const key = String(e['portcullis.rate_limit.key']);
    expect(key).toMatch(/^ip:[0-9a-f]{16}$/);
    // Never the raw counter key (the address) in any form.
    expect(JSON.stringify(e)).not.toMatch(/ip:127\.0\.0\.1/);
    expect(key).not.toContain('127.0.0.1');
    // The allowed requests carry no rate-limit fields (only a refusal names its counter).
    const a = await eventOf(allowed[0]?.headers['x-request-id']);
    expect(a).not.toHaveProperty('portcullis.rate_limit.key');
    expect(a).not.toHaveProperty('portcullis.rate_limit.retry_after');
  });

  it('5xx records: a refused upstream connection (502) and an upstream 500 carry the bytes sent to the client', async () => {
    const down = await gw.request('/v2/down/items/abc');
    expect(down.status).toBe(502);
    const d = await eventOf(down.headers['x-request-id']);
    expect(d).toMatchObject({
      'event.outcome': 'failure',
      'http.response.status_code': 502,
      'http.response.body.bytes': Buffer.byteLength(down.body),
    });
    upstream.respond(() => ({
      status: 500,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ error: 'upstream broke', detail: 'x'.repeat(100) }),
    }));
    const broken = await gw.request('/v1/items/abc');
    // The gateway does not pass an upstream's 5xx through as is (its body may reveal internals).
    expect(broken.status).toBeGreaterThanOrEqual(500);
    const b = await eventOf(broken.headers['x-request-id']);
    expect(b).toMatchObject({
      'event.outcome': 'failure',
      'http.response.status_code': broken.status,
      'http.response.body.bytes': Buffer.byteLength(broken.body),
    });
    expect(b['http.response.body.bytes']).toBeGreaterThan(0);
  });
});
