/**
 * Issue 13: the built-in `api-key-anomaly` alert fires on what the gateway really emits. Through
 * the real gateway (HTTPS, SQLite, alerting on with a webhook), API keys are used from loopback
 * sources in different /24 networks: a key used from a new network, and a revoked key still in
 * use, each raise the alert on a real HTTPS webhook receiver in this test, whose signature is
 * checked (a forged one is refused). A key used only from its known network raises nothing; a
 * refused request of a known key names the key id (never the key) on its audit event.
 */
import { once } from 'node:events';
import { createServer } from 'node:https';
import type { Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyAlertSignature } from '../src/audit/alerts.ts';
import { ensureDevCertificates } from '../src/server/devca.ts';
import { issueApiKey, revokeApiKey } from '../src/tokens/api-keys.ts';
import { startRecordingUpstream, startTestGateway, tempDir } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';

const SECRET = 'whsec-api-key-alert-test-0123456789abcdef';
const OPENAPI = {
  openapi: '3.1.0',
  info: { title: 'keyed', version: '1' },
  components: { securitySchemes: { key: { type: 'apiKey', in: 'header', name: 'x-api-key' } } },
  paths: {
    '/keyed': {
      get: { operationId: 'keyed', security: [{ key: [] }], responses: { '200': { description: 'ok' } } },
    },
  },
};

interface Delivery {
  readonly body: string;
  readonly signature: string | undefined;
}

let upstream: RecordingUpstream;
let gw: TestGateway;
let receiver: Server;
const deliveries: Delivery[] = [];
const agents = new Map<string, Agent>();
const secrets: string[] = [SECRET];

/** One request to /v1/keyed from `localAddress` with `key`. */
async function call(localAddress: string, key: string): Promise<number> {
  let agent = agents.get(localAddress);
  if (agent === undefined) {
    agent = new Agent({
      connect: {
        ca: gw.p.tls.source === 'development' ? gw.p.tls.caCertPem : undefined,
        servername: 'localhost',
      },
      localAddress,
    });
    agents.set(localAddress, agent);
  }
  const res = await request(`${gw.p.gatewayUrl}/v1/keyed`, {
    headers: { 'x-api-key': key },
    dispatcher: agent,
  });
  await res.body.text();
  return res.statusCode;
}

/** The alerts delivered so far whose signature verifies, as parsed bodies. */
function verifiedAlerts(): Record<string, unknown>[] {
  return deliveries
    .filter((d) => verifyAlertSignature({ secret: SECRET, body: d.body, header: d.signature }))
    .map((d) => JSON.parse(d.body) as Record<string, unknown>);
}

async function waitFor<T>(what: string, probe: () => T | undefined, ms = 15_000): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    const v = probe();
    if (v !== undefined) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function anomalyAlertFor(keyId: string): Record<string, unknown> | undefined {
  return verifiedAlerts().find(
    (a) =>
      (a.rule as { id?: string } | undefined)?.id === 'api-key-anomaly' &&
      JSON.stringify(a.group).includes(keyId),
  );
}

beforeAll(async () => {
  const dir = await tempDir('portcullis-api-key-alert-');
  const certs = await ensureDevCertificates(join(dir, 'receiver'));
  receiver = createServer({ cert: certs.certPem, key: certs.keyPem }, (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const sig = req.headers['x-portcullis-signature'];
      deliveries.push({
        body: Buffer.concat(chunks).toString('utf8'),
        signature: Array.isArray(sig) ? sig[0] : sig,
      });
      res.statusCode = 204;
      res.end();
    });
  });
  receiver.listen(0, '127.0.0.1');
  await once(receiver, 'listening');
  const url = `https://localhost:${String((receiver.address() as AddressInfo).port)}/alerts`;
  upstream = await startRecordingUpstream();
  gw = await startTestGateway(
    {
      alerts: { webhook: { url, secret: SECRET, caFile: certs.caCertFile } },
      apis: [{ name: 'keyed', openapi: 'api.yaml', basePath: '/v1', upstream: { url: upstream.url } }],
    },
    { openapi: OPENAPI, dir },
  );
}, 60_000);

afterAll(async () => {
  for (const a of agents.values()) await a.close();
  // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- beforeAll may have failed
  if (gw !== undefined) {
    await gw.p.audit.flush();
    const rows = await gw.p.store.db.selectFrom('audit_events').select('event').execute();
    const trail = rows.map((r) => r.event).join('\n');
    const logs = gw.logs();
    const bodies = deliveries.map((d) => d.body).join('\n');
    for (const s of secrets) {
      expect(trail.includes(s), 'a secret is in the audit trail').toBe(false);
      expect(logs.includes(s), 'a secret is in the logs').toBe(false);
      expect(bodies.includes(s), 'a secret is in an alert').toBe(false);
    }
    await gw.close();
  }
  await upstream.close();
  receiver.closeAllConnections();
  await new Promise((ok) => receiver.close(ok));
});

describe('api-key-anomaly through the gateway', () => {
  it('a key used only from its usual network raises nothing; from a new network it alerts', async () => {
    const issued = await issueApiKey(gw.p.store, gw.p.keys!, { name: 'partner', apis: ['keyed'] });
    secrets.push(issued.key);
    for (let i = 0; i < 6; i++) expect(await call('127.0.0.1', issued.key)).toBe(200);
    await gw.p.audit.flush();
    // Give a (wrong) alert time to be delivered before asserting there is none.
    await new Promise((r) => setTimeout(r, 1500));
    expect(anomalyAlertFor(issued.id)).toBeUndefined();

    // The same key from another /24: allowed (no source restriction), and an anomaly.
    expect(await call('127.0.1.2', issued.key)).toBe(200);
    const alert = await waitFor('the new-network alert', () => anomalyAlertFor(issued.id));
    expect(alert).toMatchObject({ type: 'portcullis.alert', severity: 'high', count: 1 });
    expect(JSON.stringify(alert)).toContain('new-source-network');
    const rows = await gw.p.store.db.selectFrom('audit_events').select('event').execute();
    const events = rows.map((r) => JSON.parse(r.event) as Record<string, unknown>);
    expect(
      events.find((e) => e['event.action'] === 'api-key-anomaly' && e['portcullis.api_key_id'] === issued.id),
    ).toMatchObject({
      'event.category': 'authentication',
      'event.outcome': 'success',
      'event.reason': 'new-source-network',
    });
    expect(
      events.find((e) => e['event.action'] === 'alert-fired' && e['portcullis.api_key_id'] === issued.id),
    ).toMatchObject({ 'portcullis.alert.rule': 'api-key-anomaly' });
  });

  it('a revoked key still in use alerts, and its refused requests carry the key id', async () => {
    const issued = await issueApiKey(gw.p.store, gw.p.keys!, { name: 'former', apis: ['keyed'] });
    secrets.push(issued.key);
    expect(await call('127.0.2.1', issued.key)).toBe(200);
    await revokeApiKey(gw.p.store, issued.id);
    // Revocation from another process (the store directly) applies within the cache lifetime.
    let status = 200;
    for (let i = 0; i < 60 && status === 200; i++) {
      await new Promise((r) => setTimeout(r, 250));
      status = await call('127.0.2.1', issued.key);
    }
    expect(status).toBe(401);
    const alert = await waitFor('the revoked-key alert', () => anomalyAlertFor(issued.id));
    expect(JSON.stringify(alert)).toContain('used-after-revocation');
    await gw.p.audit.flush();
    const rows = await gw.p.store.db.selectFrom('audit_events').select('event').execute();
    const events = rows.map((r) => JSON.parse(r.event) as Record<string, unknown>);
    expect(
      events.find((e) => e['event.action'] === 'api-key-anomaly' && e['portcullis.api_key_id'] === issued.id),
    ).toMatchObject({ 'event.outcome': 'failure', 'event.reason': 'used-after-revocation' });
    const refused = events.find(
      (e) => e['http.response.status_code'] === 401 && e['portcullis.api_key_id'] === issued.id,
    );
    expect(refused).toMatchObject({
      'event.category': 'authentication',
      'event.outcome': 'failure',
      'event.reason': 'api-key-revoked',
    });
  });

  it('every delivery is signed with the webhook secret; a forged or altered one does not verify', () => {
    expect(deliveries.length).toBeGreaterThan(0);
    for (const d of deliveries) {
      expect(verifyAlertSignature({ secret: SECRET, body: d.body, header: d.signature })).toBe(true);
      expect(verifyAlertSignature({ secret: `${SECRET}-other`, body: d.body, header: d.signature })).toBe(
        false,
      );
      expect(verifyAlertSignature({ secret: SECRET, body: `${d.body} `, header: d.signature })).toBe(false);
    }
  });
});
