/**
 * What the gateway observes, end to end: every request decision becomes one audit event with
 * the fields the schema requires, configuration changes are audited durably, the metrics count
 * requests by route template, and nothing secret reaches the audit trail.
 */
import { writeFile } from 'node:fs/promises';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRecordingUpstream, startTestGateway } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';

let upstream: RecordingUpstream;
let gw: TestGateway;
const SECRET_TOKEN = 'eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJvYnNlcnZlLXRlc3QifQ.c2lnbmF0dXJlLW9ic2VydmU';

async function events() {
  await gw.p.audit.flush();
  const rows = await gw.p.store.db.selectFrom('audit_events').selectAll().orderBy('seq').execute();
  return rows.map((r) => ({ ...r, event: JSON.parse(r.event) as Record<string, unknown> }));
}

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

describe('audit events for request decisions', () => {
  it('records allowed and refused requests with category, outcome, reason, route template and correlation id', async () => {
    const ok = await gw.request('/v1/items/abc');
    const missing = await gw.request('/v1/nope');
    const unauth = await gw.request('/v1/private', { headers: { authorization: `Bearer ${SECRET_TOKEN}` } });
    const all = await events();
    const byTrace = (id: string | undefined) => all.find((e) => e.trace_id === id)?.event;

    expect(byTrace(ok.headers['x-request-id'])).toMatchObject({
      'event.category': 'authorization',
      'event.action': 'allow',
      'event.outcome': 'success',
      'event.reason': 'public-operation',
      'url.path': '/v1/items/{id}',
      'http.request.method': 'GET',
      'http.response.status_code': 200,
      'client.ip': '127.0.0.1',
      'portcullis.api': 'items',
      'portcullis.listener': 'gateway',
    });
    expect(byTrace(missing.headers['x-request-id'])).toMatchObject({
      'event.category': 'validation',
      'event.action': 'route',
      'event.outcome': 'failure',
      'event.reason': 'undeclared-path',
      'http.response.status_code': 404,
    });
    expect(byTrace(unauth.headers['x-request-id'])).toMatchObject({
      'event.category': 'authentication',
      'event.outcome': 'failure',
      'url.path': '/v1/private',
      'portcullis.scopes.required': ['read'],
      'http.response.status_code': 401,
    });
    expect(String(byTrace(unauth.headers['x-request-id'])?.['event.reason'])).toMatch(/^token-/);
    // The concrete path and the token never enter the trail.
    const text = JSON.stringify(all);
    expect(text).not.toContain(SECRET_TOKEN);
    expect(text).not.toContain('/v1/items/abc');
  });

  it('records a configuration reload durably, with its version, before it applies', async () => {
    await writeFile(
      gw.configFile,
      stringify({
        gateway: { port: 0 },
        admin: { port: 0 },
        apis: [{ name: 'items', openapi: 'api.yaml', basePath: '/v2', upstream: { url: upstream.url } }],
      }),
    );
    const result = await gw.p.reload('test');
    expect(result.status).toBe('applied');
    const reloads = (await events()).filter((e) => e.event['event.action'] === 'config-reload');
    expect(reloads.at(-1)?.event).toMatchObject({
      'event.category': 'configuration',
      'event.outcome': 'success',
      'portcullis.config.version': result.version,
    });
    await writeFile(gw.configFile, 'gateway:\n  port: 0\n  bogus: 1\n');
    expect((await gw.p.reload('test')).status).toBe('refused');
    const refused = (await events()).filter(
      (e) => e.event['event.action'] === 'config-reload' && e.event['event.outcome'] === 'failure',
    );
    expect(refused).toHaveLength(1);
  });
});

describe('metrics', () => {
  it('count requests by API, route template and status class, never raw paths', async () => {
    await gw.request('/v2/items/one');
    await gw.request('/v2/items/two');
    const text = await gw.p.metrics.text();
    expect(text).toMatch(/portcullis_http_requests_total\{[^}]*route="\/v2\/items\/\{id\}"[^}]*\} [2-9]/);
    expect(text).not.toContain('/v2/items/one');
  });
});

describe('turning request events off', () => {
  it('is refused without a documented exception, and with one, requests leave no event but still count', async () => {
    const { parseConfig, ConfigError } = await import('../src/config/load.ts');
    expect(() => parseConfig('audit:\n  requestEvents: false\n', '/etc/p.yaml')).toThrow(ConfigError);
    const quiet = await startTestGateway({
      audit: { requestEvents: false },
      exceptions: [
        {
          id: 'bench-1',
          control: 'audit-request-events',
          scope: 'benchmark gateway only',
          rationale: 'measures the cost of request auditing against a baseline without it',
          compensatingControls: ['access log on', 'isolated benchmark host'],
          owner: 'platform team',
          approver: 'security officer',
          expires: '2099-12-31',
        },
      ],
      apis: [{ name: 'items', openapi: 'api.yaml', basePath: '/v1', upstream: { url: upstream.url } }],
    });
    try {
      const res = await quiet.request('/v1/items/abc');
      expect(res.status).toBe(200);
      await quiet.p.audit.flush();
      const rows = await quiet.p.store.db
        .selectFrom('audit_events')
        .select(['trace_id', 'category'])
        .execute();
      expect(rows.some((r) => r.trace_id === res.headers['x-request-id'])).toBe(false);
      expect(rows.some((r) => r.category === 'configuration')).toBe(true); // control-plane still recorded
      expect(await quiet.p.metrics.text()).toMatch(/route="\/v1\/items\/\{id\}"/);
    } finally {
      await quiet.close();
    }
  });
});
