import { createServer } from 'node:https';
import type { Server } from 'node:https';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../config/load.ts';
import { ensureDevCertificates } from '../server/devca.ts';
import {
  ALERT_SIGNATURE_HEADER,
  AlertEngine,
  alertRulesFromConfig,
  alertWebhookFromConfig,
  defaultAlertRules,
  signAlertBody,
  startAlerting,
  verifyAlertSignature,
} from './alerts.ts';
import type { AlertBody, AlertRule, AlertsSettings } from './alerts.ts';
import { buildAuditEvent } from './event.ts';
import type { AuditEventInput } from './event.ts';
import { AuditLog } from './log.ts';
import type { AuditListener } from './log.ts';
import { fileCheckpointSigner } from './signer.ts';
import { fileSink, readFileLog } from './sinks/file.ts';

const SECRET = 'whsec-test-0123456789abcdef0123456789abcdef';
const TOKEN =
  'eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.c2lnbmF0dXJlc2lnbmF0dXJl';
const tmp = mkdtempSync(join(tmpdir(), 'portcullis-alerts-'));

/** A clock the test moves by hand (milliseconds). */
function clock(start = Date.UTC(2030, 0, 1)) {
  let t = start;
  return {
    now: () => t,
    advance: (seconds: number) => {
      t += seconds * 1000;
    },
  };
}

const authInput = (ip: string, extra: Partial<AuditEventInput> = {}): AuditEventInput => ({
  'event.category': 'authentication',
  'event.action': 'token-verify',
  'event.outcome': 'failure',
  'event.reason': 'token-expired',
  'client.ip': ip,
  ...extra,
});
const authFailure = (ip: string, extra: Partial<AuditEventInput> = {}) =>
  buildAuditEvent(authInput(ip, extra));

const RULE: AlertRule = {
  id: 'brute-force',
  when: { category: 'authentication', outcome: 'failure' },
  groupBy: 'client.ip',
  threshold: 3,
  windowSeconds: 60,
  severity: 'high',
  ackTarget: 'secops',
};

function engineWith(rules: readonly AlertRule[], now: () => number) {
  const emitted: AuditEventInput[] = [];
  const registry = new Registry();
  const engine = new AlertEngine({
    rules,
    now,
    registry,
    audit: {
      emit: (input) => {
        emitted.push(input);
        return Promise.resolve();
      },
    },
  });
  const fired = () => emitted.filter((e) => e['event.action'] === 'alert-fired');
  return { engine, emitted, fired, registry };
}

describe('alert rules', () => {
  it('fire exactly once per window per group', () => {
    const c = clock();
    const { engine, fired } = engineWith([RULE], c.now);
    engine.observe(authFailure('203.0.113.1'));
    engine.observe(authFailure('203.0.113.1'));
    expect(fired()).toHaveLength(0); // below the threshold
    engine.observe(authFailure('203.0.113.1'));
    expect(fired()).toHaveLength(1);
    expect(fired()[0]).toMatchObject({
      'event.category': 'audit',
      'event.outcome': 'success',
      'portcullis.alert.rule': 'brute-force',
      'portcullis.alert.severity': 'high',
      'client.ip': '203.0.113.1',
    });
    // The same source keeps failing within the window: no second alert.
    for (let i = 0; i < 20; i++) {
      c.advance(2);
      engine.observe(authFailure('203.0.113.1'));
    }
    expect(fired()).toHaveLength(1);
    // Another source counts on its own.
    engine.observe(authFailure('198.51.100.7'));
    engine.observe(authFailure('198.51.100.7'));
    engine.observe(authFailure('198.51.100.7'));
    expect(fired().map((e) => e['client.ip'])).toEqual(['203.0.113.1', '198.51.100.7']);
    // A window after the first alert, the first source fires again once.
    c.advance(30);
    engine.observe(authFailure('203.0.113.1'));
    engine.observe(authFailure('203.0.113.1'));
    engine.observe(authFailure('203.0.113.1'));
    engine.observe(authFailure('203.0.113.1'));
    expect(fired().map((e) => e['client.ip'])).toEqual(['203.0.113.1', '198.51.100.7', '203.0.113.1']);
  });

  it('count only events inside the sliding window', () => {
    const c = clock();
    const { engine, fired } = engineWith([RULE], c.now);
    engine.observe(authFailure('203.0.113.1'));
    c.advance(40);
    engine.observe(authFailure('203.0.113.1'));
    c.advance(40); // the first one left the window
    engine.observe(authFailure('203.0.113.1'));
    expect(fired()).toHaveLength(0);
    c.advance(1);
    engine.observe(authFailure('203.0.113.1'));
    expect(fired()).toHaveLength(1);
  });

  it('match category, action and outcome, and skip events without the group field', () => {
    const c = clock();
    const rule: AlertRule = {
      ...RULE,
      id: 'key-misuse',
      when: { category: 'authentication', action: 'api-key-verify', outcome: 'failure' },
      groupBy: 'portcullis.api_key_id',
      threshold: 1,
    };
    const { engine, fired } = engineWith([rule], c.now);
    engine.observe(authFailure('203.0.113.1')); // wrong action, no key id
    engine.observe(authFailure('203.0.113.1', { 'event.action': 'api-key-verify' })); // no key id
    engine.observe(
      authFailure('203.0.113.1', {
        'event.action': 'api-key-verify',
        'event.outcome': 'success',
        'portcullis.api_key_id': 'k1',
      }),
    );
    expect(fired()).toHaveLength(0);
    engine.observe(
      authFailure('203.0.113.1', { 'event.action': 'api-key-verify', 'portcullis.api_key_id': 'k1' }),
    );
    expect(fired()).toHaveLength(1);
    expect(fired()[0]?.['portcullis.api_key_id']).toBe('k1');
  });

  it('never count their own events', () => {
    const c = clock();
    const rule: AlertRule = {
      ...RULE,
      id: 'audit-any',
      when: { category: 'audit' },
      groupBy: null,
      threshold: 1,
    };
    const { engine, fired } = engineWith([rule], c.now);
    engine.observe(
      buildAuditEvent({
        'event.category': 'audit',
        'event.action': 'alert-fired',
        'event.outcome': 'success',
      }),
    );
    expect(fired()).toHaveLength(0);
    engine.sinkError('syslog');
    expect(fired()).toHaveLength(1);
    engine.sinkError('listener'); // a listener's error is not a sink outage
    c.advance(5);
    engine.sinkError('syslog');
    expect(fired()).toHaveLength(1); // once per window
  });

  it('keep a bounded number of groups, forgetting the least recently seen', () => {
    const c = clock();
    const sequence = ['192.0.2.1', '192.0.2.2', '192.0.2.3', '192.0.2.1'];
    const unbounded = engineWith([{ ...RULE, threshold: 2 }], c.now);
    for (const ip of sequence) unbounded.engine.observe(authFailure(ip));
    expect(unbounded.fired().map((e) => e['client.ip'])).toEqual(['192.0.2.1']);
    const emitted: AuditEventInput[] = [];
    const small = new AlertEngine({
      rules: [{ ...RULE, threshold: 2 }],
      now: c.now,
      maxGroups: 2,
      audit: {
        emit: (e) => {
          emitted.push(e);
          return Promise.resolve();
        },
      },
    });
    // 192.0.2.1 is forgotten when 192.0.2.3 arrives, so its second failure counts as its first.
    for (const ip of sequence) small.observe(authFailure(ip));
    expect(emitted).toEqual([]);
  });

  it('refuse malformed rules at set-up', () => {
    expect(() => new AlertEngine({ rules: [RULE, RULE] })).toThrow(/duplicate/);
    expect(() => new AlertEngine({ rules: [{ ...RULE, threshold: 0 }] })).toThrow(/threshold/);
    expect(() => new AlertEngine({ rules: [{ ...RULE, id: 'Bad Id' }] })).toThrow(/rule id/);
    expect(
      () => new AlertEngine({ rules: [RULE], webhook: { url: 'http://127.0.0.1/x', secret: SECRET } }),
    ).toThrow(/https/);
    expect(
      () => new AlertEngine({ rules: [RULE], webhook: { url: 'https://x.test/', secret: 'short' } }),
    ).toThrow(/at least 32/);
  });

  it('built-in defaults cover auth failures, rate limits, API keys, config and key changes, sink outage', () => {
    const c = clock();
    const { engine, fired } = engineWith(defaultAlertRules('secops'), c.now);
    engine.observe(
      buildAuditEvent({
        'event.category': 'configuration',
        'event.action': 'config-reload',
        'event.outcome': 'success',
      }),
    );
    engine.observe(
      buildAuditEvent({
        'event.category': 'key-lifecycle',
        'event.action': 'key-rotate',
        'event.outcome': 'success',
      }),
    );
    engine.sinkError('store');
    for (let i = 0; i < 10; i++)
      engine.observe(authFailure('203.0.113.9', { 'portcullis.api_key_id': 'kid-1' }));
    // The anomaly event as the gateway emits it (src/server/lifecycle.ts): one is enough.
    engine.observe(
      buildAuditEvent({
        'event.category': 'authentication',
        'event.action': 'api-key-anomaly',
        'event.outcome': 'success',
        'event.reason': 'new-source-network',
        'portcullis.api_key_id': 'kid-2',
        'portcullis.listener': 'gateway',
      }),
    );
    for (let i = 0; i < 20; i++)
      engine.observe(
        buildAuditEvent({
          'event.category': 'rate-limit',
          'event.action': 'limit',
          'event.outcome': 'failure',
          'client.ip': '203.0.113.10',
        }),
      );
    expect(
      fired()
        .map((e) => e['portcullis.alert.rule'])
        .sort(),
    ).toEqual([
      'api-key-anomaly',
      'api-key-failures',
      'audit-sink-outage',
      'auth-failures-per-source',
      'configuration-change',
      'key-change',
      'rate-limit-offender',
    ]);
    expect(engine.rules.every((r) => r.ackTarget === 'secops')).toBe(true);
  });

  it('merge configured rules over the defaults by id', () => {
    const settings: AlertsSettings = {
      defaults: true,
      ackTarget: 'soc',
      rules: [{ ...RULE, id: 'key-change', threshold: 2 }, RULE],
    };
    const rules = alertRulesFromConfig(settings);
    expect(rules.find((r) => r.id === 'key-change')?.threshold).toBe(2);
    expect(rules.find((r) => r.id === 'brute-force')).toBeDefined();
    expect(rules).toHaveLength(defaultAlertRules('soc').length + 1);
    expect(alertRulesFromConfig({ ...settings, defaults: false }).map((r) => r.id)).toEqual([
      'key-change',
      'brute-force',
    ]);
  });

  it('resolve the webhook secret from the environment, never accepting a short or missing one', () => {
    const base: AlertsSettings = { defaults: true, ackTarget: 'soc', rules: [] };
    const read = () => 'PEM';
    const url = 'https://alerts.example/hook';
    expect(alertWebhookFromConfig(base, { readFile: read })).toBeUndefined();
    expect(
      alertWebhookFromConfig(
        { ...base, webhook: { url, secretEnv: 'HOOK_SECRET', caFile: 'ca.pem' } },
        { env: { HOOK_SECRET: SECRET }, readFile: read },
      ),
    ).toEqual({ url, secret: SECRET, ca: 'PEM' });
    expect(() =>
      alertWebhookFromConfig(
        { ...base, webhook: { url, secretEnv: 'HOOK_SECRET' } },
        { env: {}, readFile: read },
      ),
    ).toThrow(/HOOK_SECRET is not set/);
    expect(() =>
      alertWebhookFromConfig(
        { ...base, webhook: { url, secretEnv: 'HOOK_SECRET' } },
        { env: { HOOK_SECRET: 'short' }, readFile: read },
      ),
    ).toThrow(/at least 32 bytes/);
    expect(() =>
      alertWebhookFromConfig(
        { ...base, webhook: { url, secret: SECRET, secretEnv: 'X' } },
        { readFile: read },
      ),
    ).toThrow(/exactly one/);
    expect(() => alertWebhookFromConfig({ ...base, webhook: { url } }, { readFile: read })).toThrow(
      /exactly one/,
    );
  });
});

describe('alerts configuration', () => {
  function configFile(name: string, yaml: string): string {
    const file = join(tmp, name);
    writeFileSync(file, yaml);
    return file;
  }

  it('loads rules and a webhook, and starts an engine attached to the log', async () => {
    const loaded = await loadConfig(
      configFile(
        'alerts-ok.yaml',
        [
          'alerts:',
          '  ackTarget: soc-rota',
          '  rules:',
          '    - id: admin-failures',
          '      when: { category: admin, outcome: failure }',
          '      groupBy: client.ip',
          '      threshold: 2',
          '      windowSeconds: 30',
          '      severity: critical',
          '      ackTarget: platform-oncall',
          '  webhook:',
          '    url: https://alerts.example/hook',
          '    secretEnv: PORTCULLIS_TEST_HOOK_SECRET',
          '',
        ].join('\n'),
      ),
    );
    const { alerts } = loaded.config;
    expect(alerts.defaults).toBe(true);
    expect(alerts.rules[0]?.groupBy).toBe('client.ip');
    const listeners: AuditListener[] = [];
    const emitted: AuditEventInput[] = [];
    const engine = startAlerting({
      config: alerts,
      audit: {
        emit: (e) => {
          emitted.push(e);
          return Promise.resolve();
        },
        onEvent: (l) => {
          listeners.push(l);
          return () => listeners.splice(listeners.indexOf(l), 1);
        },
      },
      resolvePath: (f) => loaded.resolvePath(f),
      env: { PORTCULLIS_TEST_HOOK_SECRET: SECRET },
    });
    expect(engine.rules.map((r) => [r.id, r.ackTarget])).toContainEqual([
      'admin-failures',
      'platform-oncall',
    ]);
    expect(engine.rules.map((r) => [r.id, r.ackTarget])).toContainEqual(['key-change', 'soc-rota']);
    expect(listeners).toHaveLength(1);
    // No webhook delivery here: the hook host does not exist, so stop before it would retry.
    await engine.close(0);
    expect(listeners).toHaveLength(0);
  });

  it('refuses a plain-HTTP webhook, a short inline secret and an unknown severity', async () => {
    for (const [name, yaml, key] of [
      [
        'http.yaml',
        'alerts:\n  webhook: { url: "http://alerts.example/hook", secretEnv: X }\n',
        'alerts.webhook.url',
      ],
      [
        'short.yaml',
        'alerts:\n  webhook: { url: "https://a.example/", secret: "short" }\n',
        'alerts.webhook.secret',
      ],
      [
        'severity.yaml',
        'alerts:\n  rules:\n    - { id: x, when: { category: admin }, threshold: 1, windowSeconds: 1, severity: urgent, ackTarget: me }\n',
        'alerts.rules[0].severity',
      ],
    ] as const) {
      const error = await loadConfig(configFile(name, yaml)).catch((e: unknown) => e);
      expect(error, name).toBeInstanceOf(ConfigError);
      expect(
        (error as ConfigError).issues.map((i) => i.path),
        name,
      ).toContain(key);
    }
  });
});

describe('alert signatures', () => {
  const body = JSON.stringify({ type: 'portcullis.alert', id: 'a' });
  const t = 1_900_000_000;
  const header = signAlertBody(SECRET, body, t);

  it('verify the body and timestamp they were made for', () => {
    expect(header).toMatch(/^t=1900000000,v1=[0-9a-f]{64}$/);
    expect(verifyAlertSignature({ secret: SECRET, body, header, now: t })).toBe(true);
    expect(verifyAlertSignature({ secret: SECRET, body: Buffer.from(body), header, now: t + 299 })).toBe(
      true,
    );
  });

  it('fail for a tampered body, an old or future timestamp, another secret or a malformed header', () => {
    expect(verifyAlertSignature({ secret: SECRET, body: body.replace('"a"', '"b"'), header, now: t })).toBe(
      false,
    );
    expect(verifyAlertSignature({ secret: SECRET, body, header, now: t + 301 })).toBe(false);
    expect(verifyAlertSignature({ secret: SECRET, body, header, now: t - 301 })).toBe(false);
    expect(verifyAlertSignature({ secret: SECRET + 'x', body, header, now: t })).toBe(false);
    // The timestamp is signed: moving it forward breaks the signature.
    const moved = header.replace(`t=${String(t)}`, `t=${String(t + 100)}`);
    expect(verifyAlertSignature({ secret: SECRET, body, header: moved, now: t + 100 })).toBe(false);
    for (const bad of [
      undefined,
      '',
      'v1=00',
      `t=${String(t)}`,
      `t=x,v1=${'0'.repeat(64)}`,
      `${header},t=${String(t)}`,
    ])
      expect(verifyAlertSignature({ secret: SECRET, body, header: bad, now: t })).toBe(false);
  });
});

describe('alert webhook', () => {
  let server: Server;
  let url: string;
  let ca: string;
  const received: { body: string; signature: string | undefined }[] = [];
  let statuses: number[] = [];

  beforeAll(async () => {
    const certs = await ensureDevCertificates(join(tmp, 'tls'));
    ca = certs.caCertPem;
    server = createServer({ cert: certs.certPem, key: certs.keyPem }, (req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const sig = req.headers[ALERT_SIGNATURE_HEADER];
        received.push({
          body: Buffer.concat(chunks).toString('utf8'),
          signature: typeof sig === 'string' ? sig : undefined,
        });
        res.statusCode = statuses.shift() ?? 204;
        res.end();
      });
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    url = `https://localhost:${String((server.address() as AddressInfo).port)}/hooks/portcullis`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((ok) => server.close(ok));
    rmSync(tmp, { recursive: true, force: true });
  });

  it('delivers a signed JSON body, retries after a 500, and carries nothing secret', async () => {
    received.length = 0;
    statuses = [500, 503];
    const c = clock();
    const registry = new Registry();
    const errors: string[] = [];
    const engine = new AlertEngine({
      rules: [RULE],
      now: c.now,
      registry,
      webhook: { url, secret: SECRET, ca },
      retryInitialMs: 10,
      onError: (_e, what) => errors.push(what),
    });
    try {
      for (let i = 0; i < 3; i++)
        engine.observe(
          authFailure('203.0.113.5', { 'event.reason': `Bearer ${TOKEN}`, 'trace.id': `c${String(i)}` }),
        );
      await engine.idle();
      expect(received).toHaveLength(3); // 500, 503, then delivered
      const first = received[0];
      const last = received[2];
      if (first === undefined || last === undefined) throw new Error('no delivery');
      expect(first.body).toBe(last.body);
      for (const r of received) {
        expect(
          verifyAlertSignature({ secret: SECRET, body: r.body, header: r.signature, now: c.now() / 1000 }),
        ).toBe(true);
        expect(
          verifyAlertSignature({
            secret: SECRET,
            body: r.body + ' ',
            header: r.signature,
            now: c.now() / 1000,
          }),
        ).toBe(false);
      }
      const alert = JSON.parse(last.body) as AlertBody;
      expect(alert).toMatchObject({
        type: 'portcullis.alert',
        version: 1,
        severity: 'high',
        ackTarget: 'secops',
        group: { by: 'client.ip', value: '203.0.113.5' },
        count: 3,
        rule: { id: 'brute-force', threshold: 3, windowSeconds: 60 },
      });
      expect(alert.events.map((e) => e['trace.id'])).toEqual(['c0', 'c1', 'c2']);
      expect(alert.summary).toContain('203.0.113.5');
      for (const r of received) {
        expect(r.body).not.toContain(SECRET);
        expect(r.body).not.toContain(TOKEN);
        expect(r.body).not.toContain(TOKEN.split('.')[1]);
      }
      const metrics = await registry.metrics();
      expect(metrics).toContain('portcullis_alert_deliveries_total{outcome="retried"} 2');
      expect(metrics).toContain('portcullis_alert_deliveries_total{outcome="delivered"} 1');
      expect(metrics).toContain('portcullis_alerts_fired_total{rule="brute-force",severity="high"} 1');
      expect(errors).toEqual([]);
    } finally {
      await engine.close();
    }
  });

  it('gives up after the last attempt and audits the failure; a 4xx is not retried', async () => {
    received.length = 0;
    statuses = [500, 500, 400];
    const c = clock();
    const emitted: AuditEventInput[] = [];
    const engine = new AlertEngine({
      rules: [{ ...RULE, threshold: 1 }],
      now: c.now,
      webhook: { url, secret: SECRET, ca },
      retryInitialMs: 5,
      maxAttempts: 2,
      audit: {
        emit: (e) => {
          emitted.push(e);
          return Promise.resolve();
        },
      },
    });
    try {
      engine.observe(authFailure('203.0.113.6'));
      engine.observe(authFailure('203.0.113.7'));
      await engine.idle();
      expect(received).toHaveLength(3); // two attempts for the first, one (400) for the second
      expect(emitted.map((e) => [e['event.action'], e['event.reason']])).toEqual([
        ['alert-fired', expect.stringContaining('203.0.113.6')],
        ['alert-fired', expect.stringContaining('203.0.113.7')],
        ['alert-delivery-failed', 'alert webhook delivery failed (HTTP 500)'],
        ['alert-delivery-failed', 'alert webhook delivery failed (HTTP 400)'],
      ]);
    } finally {
      await engine.close();
    }
  });

  it('runs over a real audit log: alerts fire from committed events and are themselves audited', async () => {
    received.length = 0;
    statuses = [];
    const dir = join(tmp, 'log');
    const log = await AuditLog.open({
      chain: await fileSink({ path: join(dir, 'audit.jsonl'), maxBytes: 1024 * 1024 }),
      signer: fileCheckpointSigner(dir),
      spoolDir: join(dir, 'spool'),
      maxDelayMs: 5,
    });
    const engine = new AlertEngine({ rules: [RULE], webhook: { url, secret: SECRET, ca }, audit: log });
    engine.attach(log);
    try {
      for (let i = 0; i < 3; i++) void log.emit(authInput('203.0.113.8'));
      await log.flush();
      await engine.idle();
      await log.flush();
      expect(received).toHaveLength(1);
      const records = (await readFileLog(join(dir, 'audit.jsonl'))).records;
      const alerts = records.filter((r) => r.event['event.action'] === 'alert-fired');
      expect(alerts).toHaveLength(1);
      expect(alerts[0]?.event).toMatchObject({
        'portcullis.alert.rule': 'brute-force',
        'client.ip': '203.0.113.8',
      });
    } finally {
      await engine.close();
      await log.close();
    }
  });
});
