/**
 * Cookies and CORS headers across the proxy, through the real gateway (issue 12 §3): the
 * authorization server's cookies never reach an upstream, cookies go upstream only where the
 * contract declares them, upstream `Set-Cookie` passes only where declared (never for a reserved
 * name) and upstream `Access-Control-*` headers never reach the client.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRecordingUpstream, startTestGateway } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';

const APP = 'https://app.example.com';

const OPENAPI = {
  openapi: '3.1.0',
  info: { title: 'cookies', version: '1' },
  paths: {
    '/plain': { get: { responses: { '200': { description: 'ok' } } } },
    '/prefs': {
      get: {
        parameters: [
          { name: 'theme', in: 'cookie', schema: { type: 'string' } },
          // Declaring a reserved name does not make it cross.
          { name: '_session', in: 'cookie', schema: { type: 'string' } },
        ],
        responses: {
          '200': {
            description: 'ok',
            headers: { 'Set-Cookie': { schema: { type: 'string' } } },
          },
        },
      },
    },
  },
};

/** What a signed-in browser sends to the origin the APIs share with the authorization server. */
const BROWSER_COOKIES = [
  '_session=sess-secret-1',
  '_session.sig=sig-1',
  '_interaction=int-1',
  '_interaction_resume=res-1',
  '_state.client-1=st-1',
  '__Host-csrf=csrf-1',
  'theme=dark',
  'tracking=t-1',
].join('; ');

const UPSTREAM_SET_COOKIES = [
  'theme=light; Path=/; Secure',
  '_session=evil; Path=/; HttpOnly',
  '_session.sig=evil; Path=/',
  '_interaction_resume=evil; Path=/',
  '_state.client-1=evil; Path=/',
  '__Host-csrf=evil; Path=/; Secure',
];

let upstream: RecordingUpstream;
let gw: TestGateway;

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  upstream.respond(() => ({
    status: 200,
    headers: {
      'content-type': 'application/json',
      'set-cookie': UPSTREAM_SET_COOKIES,
      'access-control-allow-origin': '*',
      'access-control-allow-credentials': 'true',
      'access-control-expose-headers': 'x-internal',
    },
    body: '{}',
  }));
  gw = await startTestGateway(
    {
      apis: [
        {
          name: 'cookies',
          openapi: 'api.yaml',
          basePath: '/v1',
          upstream: { url: upstream.url },
          cors: { allowOrigins: [APP] },
        },
      ],
    },
    { openapi: OPENAPI },
  );
});

afterAll(async () => {
  await gw.close();
  await upstream.close();
});

describe('cookies across the proxy', () => {
  it('drops the Cookie header on an operation that declares no cookie', async () => {
    upstream.received.length = 0;
    const res = await gw.request('/v1/plain', { headers: { cookie: BROWSER_COOKIES } });
    expect(res.status).toBe(200);
    expect(upstream.received).toHaveLength(1);
    expect(upstream.received[0]?.headers.cookie).toBeUndefined();
  });

  it('forwards only the declared cookies, never an authorization-server or gateway cookie', async () => {
    upstream.received.length = 0;
    const res = await gw.request('/v1/prefs', { headers: { cookie: BROWSER_COOKIES } });
    expect(res.status).toBe(200);
    expect(upstream.received[0]?.headers.cookie).toBe('theme=dark');
  });

  it('sends no Cookie header when none of the declared cookies is present', async () => {
    upstream.received.length = 0;
    const res = await gw.request('/v1/prefs', { headers: { cookie: '_session=s; tracking=t' } });
    expect(res.status).toBe(200);
    expect(upstream.received[0]?.headers.cookie).toBeUndefined();
  });

  it('drops upstream Set-Cookie on an operation that does not declare it', async () => {
    const res = await gw.request('/v1/plain');
    expect(res.status).toBe(200);
    expect(res.headers['set-cookie']).toBeUndefined();
  });

  it('passes a declared Set-Cookie, except for reserved cookie names', async () => {
    const res = await gw.request('/v1/prefs');
    expect(res.status).toBe(200);
    expect(res.headers['set-cookie']).toBe('theme=light; Path=/; Secure');
  });

  it('never passes upstream Access-Control-* headers; the gateway CORS policy answers', async () => {
    for (const path of ['/v1/plain', '/v1/prefs']) {
      const anonymous = await gw.request(path);
      expect(anonymous.status).toBe(200);
      expect(Object.keys(anonymous.headers).filter((h) => h.startsWith('access-control-'))).toEqual([]);
      const fromApp = await gw.request(path, { headers: { origin: APP } });
      expect(fromApp.status).toBe(200);
      expect(fromApp.headers['access-control-allow-origin']).toBe(APP);
      expect(fromApp.headers['access-control-expose-headers'] ?? '').not.toContain('x-internal');
    }
  });
});
