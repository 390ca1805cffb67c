import { Counter, Gauge } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { auditCheck, circuitsCheck, readiness, redisCheck } from './health.ts';
import type { HealthCheck } from './health.ts';
import { AUTH_FAILURE_REASONS, createMetrics, oauthRoute, statusClass } from './metrics.ts';

/** The label sets of one metric family in a text exposition. */
function series(text: string, name: string): string[] {
  return text
    .split('\n')
    .filter((l) => l.startsWith(`${name}{`))
    .map((l) => l.slice(name.length, l.lastIndexOf(' ')));
}

describe('metrics', () => {
  it('count requests and latency by API, route template, method and status class', async () => {
    const m = createMetrics({ defaultMetrics: false });
    m.observeRequest({
      api: 'patients',
      route: '/v1/patients/{id}',
      method: 'GET',
      status: 200,
      durationMs: 3,
    });
    m.observeRequest({
      api: 'patients',
      route: '/v1/patients/{id}',
      method: 'GET',
      status: 204,
      durationMs: 30,
    });
    m.observeRequest({ api: 'patients', route: '/v1/patients', method: 'POST', status: 422, durationMs: 1 });
    m.observeRequest({ api: null, route: null, method: 'BREW', status: 404, durationMs: 0.2 });
    const text = await m.text();
    expect(series(text, 'portcullis_http_requests_total').sort()).toEqual([
      '{api="patients",route="/v1/patients",method="POST",status_class="4xx"}',
      '{api="patients",route="/v1/patients/{id}",method="GET",status_class="2xx"}',
      '{api="unmatched",route="unmatched",method="other",status_class="4xx"}',
    ]);
    expect(text).toContain(
      'portcullis_http_requests_total{api="patients",route="/v1/patients/{id}",method="GET",status_class="2xx"} 2',
    );
    expect(text).toContain(
      'portcullis_http_request_duration_seconds_bucket{le="0.005",api="patients",route="/v1/patients/{id}",method="GET",status_class="2xx"} 1',
    );
    expect(text).toContain(
      'portcullis_http_request_duration_seconds_count{api="patients",route="/v1/patients/{id}",method="GET",status_class="2xx"} 2',
    );
  });

  it('keep every label bounded', async () => {
    const m = createMetrics({ defaultMetrics: false, maxRoutes: 2, maxUpstreams: 1 });
    for (let i = 0; i < 5; i++) {
      m.observeRequest({ api: 'a', route: `/r${String(i)}`, method: 'GET', status: 200, durationMs: 1 });
    }
    m.authFailure('token-expired');
    m.authFailure('api-key-revoked');
    m.authFailure('<script>attacker-chosen</script>');
    m.authFailure('token-something-new');
    m.rateLimited('ip');
    m.rateLimited('apiKey');
    m.rateLimited('203.0.113.1');
    m.tokenIssued('client_credentials');
    m.tokenIssued('password');
    m.circuitState('patients', 'open');
    m.circuitState('billing', 'half-open');
    m.circuitState('patients', 'closed');
    const text = await m.text();
    expect(series(text, 'portcullis_http_requests_total').sort()).toEqual([
      '{api="a",route="/r0",method="GET",status_class="2xx"}',
      '{api="a",route="/r1",method="GET",status_class="2xx"}',
      '{api="other",route="other",method="GET",status_class="2xx"}',
    ]);
    expect(text).toContain(
      'portcullis_http_requests_total{api="other",route="other",method="GET",status_class="2xx"} 3',
    );
    expect(series(text, 'portcullis_auth_failures_total').sort()).toEqual([
      '{reason="api-key-revoked"}',
      '{reason="other"}',
      '{reason="token-expired"}',
    ]);
    expect(text).toContain('portcullis_auth_failures_total{reason="other"} 2');
    expect(text).toContain('portcullis_rate_limited_total{dimension="ip"} 1');
    expect(text).toContain('portcullis_rate_limited_total{dimension="api-key"} 1');
    expect(text).toContain('portcullis_rate_limited_total{dimension="other"} 1');
    expect(text).toContain('portcullis_tokens_issued_total{grant="client_credentials"} 1');
    expect(text).toContain('portcullis_tokens_issued_total{grant="other"} 1');
    expect(text).toContain('portcullis_tokens_issued_total{grant="authorization_code"} 0');
    expect(text).toContain('portcullis_upstream_circuit_state{upstream="patients"} 0');
    expect(text).toContain('portcullis_upstream_circuit_state{upstream="other"} 1');
    expect(text).not.toContain('203.0.113.1');
    expect(text).not.toContain('script');
    expect(text).not.toContain('password');
  });

  it('name the reasons the gateway produces, and statuses and OAuth paths by class and template', () => {
    for (const r of [
      'credential-missing',
      'token-wrong-audience',
      'dpop-replayed',
      'client-certificate-untrusted',
    ])
      expect(AUTH_FAILURE_REASONS.has(r)).toBe(true);
    expect([statusClass(200), statusClass(503), statusClass(99), statusClass(600)]).toEqual([
      '2xx',
      '5xx',
      'other',
      'other',
    ]);
    expect(oauthRoute('/token')).toBe('/token');
    expect(oauthRoute('/auth/Xy1z')).toBe('/auth/{uid}');
    expect(oauthRoute('/interaction/abc')).toBe('/interaction/{uid}');
    expect(oauthRoute('/interaction/abc/login')).toBe('/interaction/{uid}/login');
    expect(oauthRoute('/interaction/abc/Zq9')).toBe('/interaction/{uid}/other');
    expect(oauthRoute('/anything/else')).toBe('other');
  });

  it('include the process metrics by default', async () => {
    const text = await createMetrics().text();
    expect(text).toContain('process_cpu_user_seconds_total');
    expect(text).toContain('nodejs_eventloop_lag_seconds');
  });
});

describe('readiness', () => {
  const fixed = (name: string, status: 'ok' | 'degraded' | 'failed'): HealthCheck => ({
    name,
    check: () => ({ status }),
  });

  it('is ready, degraded or not ready after the worst check', async () => {
    expect((await readiness([fixed('a', 'ok'), fixed('b', 'ok')])).status).toBe('ready');
    expect((await readiness([fixed('a', 'ok'), fixed('b', 'degraded')])).status).toBe('degraded');
    expect((await readiness([fixed('a', 'degraded'), fixed('b', 'failed')])).status).toBe('not-ready');
  });

  it('fails a check that throws or does not answer in time', async () => {
    const r = await readiness(
      [
        {
          name: 'throws',
          check: () => {
            throw new Error('secret connection string');
          },
        },
        { name: 'hangs', check: () => new Promise(() => undefined) },
      ],
      50,
    );
    expect(r).toEqual({
      status: 'not-ready',
      checks: {
        throws: { status: 'failed', detail: 'error' },
        hangs: { status: 'failed', detail: 'timeout' },
      },
    });
  });

  it('reports a silent dependency whose outage only degrades as degraded, not failed', async () => {
    const r = await readiness(
      [
        { name: 'store', onTimeout: 'degraded', check: () => new Promise(() => undefined) },
        { name: 'config', check: () => ({ status: 'ok' }) },
      ],
      50,
    );
    expect(r).toEqual({
      status: 'degraded',
      checks: { store: { status: 'degraded', detail: 'timeout' }, config: { status: 'ok' } },
    });
  });

  it('reports open circuits as degraded', async () => {
    const m = createMetrics({ defaultMetrics: false });
    const check = circuitsCheck(m);
    expect(await check.check()).toEqual({ status: 'ok' });
    m.circuitState('billing', 'open');
    m.circuitState('patients', 'half-open');
    expect(await check.check()).toEqual({ status: 'degraded', detail: 'open circuits: billing' });
    m.circuitState('billing', 'closed');
    expect(await check.check()).toEqual({ status: 'ok', detail: '1 half-open' });
  });

  it('reports audit spooling as degraded and dropped events as failed for a while', async () => {
    const m = createMetrics({ defaultMetrics: false });
    let spooledNow = 0;
    const spooled = new Gauge({
      name: 't_spooled',
      help: 'x',
      labelNames: ['sink'],
      registers: [m.registry],
      collect() {
        this.set({ sink: 'syslog' }, spooledNow);
      },
    });
    const dropped = new Counter({
      name: 't_dropped',
      help: 'x',
      labelNames: ['sink'],
      registers: [m.registry],
    });
    let now = 0;
    const check = auditCheck({ metrics: { spooled, dropped } }, { now: () => now, dropWindowMs: 1000 });
    expect(await check.check()).toEqual({ status: 'ok' });
    spooledNow = 3;
    expect(await check.check()).toEqual({ status: 'degraded', detail: 'spooling: syslog' });
    dropped.inc({ sink: 'syslog' }, 2);
    expect(await check.check()).toEqual({ status: 'failed', detail: 'events dropped (spool full)' });
    now = 999;
    expect((await check.check()).status).toBe('failed');
    now = 1000;
    spooledNow = 0;
    expect(await check.check()).toEqual({ status: 'ok' });
  });

  it('reports Redis as degraded when unreachable, failed when required', async () => {
    const down = { status: 'reconnecting', ping: () => Promise.reject(new Error('ECONNREFUSED')) };
    expect(await redisCheck(down).check()).toEqual({ status: 'degraded', detail: 'unreachable' });
    expect(await redisCheck(down, { required: true }).check()).toEqual({
      status: 'failed',
      detail: 'unreachable',
    });
    const up = { status: 'ready', ping: () => Promise.resolve('PONG') };
    expect(await redisCheck(up).check()).toEqual({ status: 'ok' });
  });
});
