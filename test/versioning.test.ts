/**
 * Versioning and deprecation end to end: a deprecated API version announces itself with
 * `Deprecation` (RFC 9745), `Sunset` (RFC 8594) and `Link` headers; after its sunset (the clock is
 * moved, not waited for) every operation answers 410 and the upstream is not called.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { startRecordingUpstream, startTestGateway } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';

const LINK = 'https://docs.example.com/migrate-to-v2';

let up: RecordingUpstream;
let gw: TestGateway;

beforeAll(async () => {
  up = await startRecordingUpstream();
  gw = await startTestGateway({
    apis: [
      {
        name: 'old',
        basePath: '/v1',
        openapi: 'api.yaml',
        upstream: { url: up.url },
        deprecation: { deprecatedAt: '2025-01-01', sunsetAt: '2099-12-31T12:00:00Z', link: LINK },
      },
      { name: 'current', basePath: '/v2', openapi: 'api.yaml', upstream: { url: up.url } },
    ],
  });
}, 60_000);

afterEach(() => {
  vi.useRealTimers();
});

afterAll(async () => {
  await gw.close();
  await up.close();
});

describe('before the sunset', () => {
  it('a deprecated version answers with Deprecation, Sunset and Link headers', async () => {
    up.received.length = 0;
    const res = await gw.request('/v1/items');
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body)).toMatchObject({ ok: true, url: '/items' });
    expect(res.headers.deprecation).toBe('@1735689600');
    expect(res.headers.sunset).toBe('Thu, 31 Dec 2099 12:00:00 GMT');
    expect(res.headers.link).toBe(`<${LINK}>; rel="deprecation", <${LINK}>; rel="sunset"`);
    expect(up.received).toHaveLength(1);
  });

  it('an upstream Link header is kept beside ours', async () => {
    up.respond(() => ({
      status: 200,
      headers: { 'content-type': 'application/json', link: '</v1/items?page=2>; rel="next"' },
      body: '{"ok":true}',
    }));
    try {
      const res = await gw.request('/v1/items');
      expect(res.headers.link).toContain('</v1/items?page=2>; rel="next"');
      expect(res.headers.link).toContain(`<${LINK}>; rel="deprecation"`);
    } finally {
      up.respond((req) => ({
        status: 200,
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ ok: true, method: req.method, url: req.url }),
      }));
    }
  });

  it('the current version carries none of them', async () => {
    const res = await gw.request('/v2/items');
    expect(res.status).toBe(200);
    expect(res.headers.deprecation).toBeUndefined();
    expect(res.headers.sunset).toBeUndefined();
    expect(res.headers.link).toBeUndefined();
  });
});

describe('after the sunset', () => {
  it('every operation of the retired version is 410 and the upstream is not called', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(new Date('2099-12-31T12:00:01Z'));
    up.received.length = 0;
    for (const [path, init] of [
      ['/v1/items', {}],
      ['/v1/items/abc', { method: 'DELETE' }],
      ['/v1/items', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' }],
      ['/v1/private', {}],
    ] as const) {
      const res = await gw.request(path, init);
      expect(res.status).toBe(410);
      const problem = JSON.parse(res.body) as Record<string, unknown>;
      expect(problem).toMatchObject({ type: 'urn:portcullis:problem:gone', title: 'Gone', status: 410 });
      expect(res.headers.sunset).toBe('Thu, 31 Dec 2099 12:00:00 GMT');
      expect(res.headers.link).toContain(`<${LINK}>; rel="sunset"`);
    }
    expect(up.received).toHaveLength(0);
    // The other version is untouched.
    expect((await gw.request('/v2/items')).status).toBe(200);
  });

  it('just before the sunset it still answers', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(new Date('2099-12-31T11:59:59Z'));
    expect((await gw.request('/v1/items')).status).toBe(200);
  });
});

describe('configuration', () => {
  it('a sunset before the deprecation date is refused, naming the key', async () => {
    await expect(
      startTestGateway({
        apis: [
          {
            name: 'old',
            basePath: '/v1',
            openapi: 'api.yaml',
            upstream: { url: up.url },
            deprecation: { deprecatedAt: '2025-06-01', sunsetAt: '2025-01-01', link: LINK },
          },
        ],
      }),
    ).rejects.toThrow(/deprecation.*sunsetAt must not be before deprecatedAt/s);
  });

  it('a plain-http migration link is refused', async () => {
    await expect(
      startTestGateway({
        apis: [
          {
            name: 'old',
            basePath: '/v1',
            openapi: 'api.yaml',
            upstream: { url: up.url },
            deprecation: { deprecatedAt: '2025-06-01', link: 'http://docs.example.com/' },
          },
        ],
      }),
    ).rejects.toThrow(/link/);
  });
});
