/**
 * Client-secret rotation and expiry, end to end on SQLite and PostgreSQL: `portcullis clients
 * rotate-secret` (a separate process) against the store of a running gateway, and openid-client's
 * client-credentials grant against the real token endpoint.
 *
 * - after a rotation the old secret works during the grace period and is refused after it; the
 *   new one works; both steps are audited, and no secret reaches the audit trail or the logs;
 * - an expired secret is refused;
 * - a secret close to its expiry is audited at start and raises the built-in alert.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import * as oidc from 'openid-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createClient } from '../src/oauth/clients.ts';
import { cliBackends, runPortcullis } from './cli-harness.ts';
import { startRecordingUpstream, startTestGateway } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';
import { createFlow, oauthError } from './oauth-flow.ts';
import type { Flow } from './oauth-flow.ts';

const OPENAPI = {
  openapi: '3.1.0',
  info: { title: 'items', version: '1' },
  components: {
    securitySchemes: {
      oauth: {
        type: 'oauth2',
        flows: {
          clientCredentials: { tokenUrl: 'https://localhost/token', scopes: { 'items:read': 'read' } },
        },
      },
    },
  },
  paths: {
    '/items': {
      get: {
        operationId: 'list',
        security: [{ oauth: ['items:read'] }],
        responses: { '200': { description: 'ok' } },
      },
    },
  },
};
const GENEROUS = { burst: { points: 10_000, seconds: 1 }, sustained: { points: 100_000, seconds: 60 } };

const { tmp, backends } = cliBackends('client-secrets');
let upstream: RecordingUpstream;
beforeAll(async () => {
  upstream = await startRecordingUpstream();
});
afterAll(async () => {
  await upstream.close();
});

async function freePort(): Promise<number> {
  const { createServer } = await import('node:net');
  const s = createServer().listen(0, '127.0.0.1');
  await new Promise((ok) => s.once('listening', ok));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((ok) => s.close(() => ok()));
  return port;
}

describe.each(backends)('client secrets on $name', ({ name, storeUrl }) => {
  let gw: TestGateway;
  let flow: Flow;
  let issuer = '';
  let gatewayConfig: Record<string, unknown> = {};
  const dir = join(tmp, name);
  const secrets: string[] = [];
  const logs: string[] = [];

  const start = async () => {
    gw = await startTestGateway(gatewayConfig, { openapi: OPENAPI, dir });
    flow = createFlow(issuer, gw.p.tls.source === 'development' ? gw.p.tls.caCertPem : undefined);
  };
  const stop = async () => {
    logs.push(gw.logs());
    await flow.close();
    await gw.close();
  };

  beforeAll(async () => {
    const port = await freePort();
    issuer = `https://localhost:${String(port)}`;
    await mkdir(dir, { recursive: true });
    gatewayConfig = {
      gateway: { port, publicUrl: issuer },
      store: { url: storeUrl() },
      rateLimits: { token: GENEROUS },
      apis: [{ name: 'items', basePath: '/v1', openapi: 'api.yaml', upstream: { url: upstream.url } }],
    };
    await start();
  }, 60_000);

  afterAll(async () => {
    await stop();
    const all = logs.join('\n');
    for (const s of secrets) expect(all).not.toContain(s);
  });

  const register = async () => {
    const { client, clientSecret } = await createClient(gw.p.store.db, gw.p.keys!, {
      name: 'svc',
      grantTypes: ['client_credentials'],
      scope: 'items:read',
    });
    secrets.push(clientSecret ?? '');
    return { id: client.clientId, secret: clientSecret ?? '' };
  };

  /** A client-credentials grant: 'ok' or the OAuth error. */
  const grant = async (id: string, secret: string) => {
    const config = await flow.discover(id, oidc.ClientSecretBasic(secret));
    const p = oidc.clientCredentialsGrant(config, { scope: 'items:read' });
    try {
      const tokens = await p;
      secrets.push(tokens.access_token);
      return 'ok';
    } catch {
      return oauthError(p);
    }
  };

  const cli = (...args: string[]) =>
    runPortcullis([...args, '--config', gw.configFile, '--data-dir', join(gw.dir, 'data')]);

  async function auditEvents(): Promise<Record<string, unknown>[]> {
    await gw.p.audit.flush();
    const rows = await gw.p.store.db.selectFrom('audit_events').select('event').orderBy('seq').execute();
    return rows.map((r) => JSON.parse(r.event) as Record<string, unknown>);
  }

  it('rotate-secret: the old secret works during the grace period and is refused after; both audited', async () => {
    const c = await register();
    expect(await grant(c.id, c.secret)).toBe('ok');
    const run = await cli('clients', 'rotate-secret', c.id, '--grace', '6s', '--json');
    const rotatedAt = Date.now();
    expect(run.code, run.stderr).toBe(0);
    const out = JSON.parse(run.stdout) as {
      client_secret: string;
      client_secret_expires_at: string | null;
      previous_secret_valid_until: string;
    };
    secrets.push(out.client_secret);
    expect(out.client_secret).not.toBe(c.secret);
    expect(out.client_secret_expires_at).toBeNull();
    expect(Date.parse(out.previous_secret_valid_until)).toBeGreaterThan(rotatedAt);
    expect(run.stderr).not.toContain(out.client_secret);
    expect(await grant(c.id, out.client_secret)).toBe('ok');
    expect(await grant(c.id, c.secret)).toBe('ok'); // in grace
    expect(await grant(c.id, `${c.secret.slice(0, -2)}xx`)).toBe('invalid_client');
    await new Promise((r) =>
      setTimeout(r, Math.max(0, Date.parse(out.previous_secret_valid_until) - Date.now() + 200)),
    );
    expect(await grant(c.id, c.secret)).toBe('invalid_client'); // grace over
    expect(await grant(c.id, out.client_secret)).toBe('ok');
    // Rotating again with no grace: the previous secret ends at once.
    const again = await cli('clients', 'rotate-secret', c.id, '--grace', '0', '--json');
    expect(again.code, again.stderr).toBe(0);
    const third = (JSON.parse(again.stdout) as { client_secret: string }).client_secret;
    secrets.push(third);
    expect(await grant(c.id, out.client_secret)).toBe('invalid_client');
    expect(await grant(c.id, third)).toBe('ok');
    const events = await auditEvents();
    const mine = events.filter((e) => e['portcullis.client_id'] === c.id);
    expect(mine.map((e) => e['event.action'])).toEqual(
      expect.arrayContaining(['client-secret-rotate', 'client-secret-retire']),
    );
    expect(mine.filter((e) => e['event.action'] === 'client-secret-rotate')).toHaveLength(2);
    expect(mine.find((e) => e['event.action'] === 'client-secret-retire')?.['event.reason']).toBe(
      `previous secret valid until ${out.previous_secret_valid_until}`,
    );
    const dump = JSON.stringify(events);
    for (const s of secrets) expect(dump).not.toContain(s);
    // Refused: an unknown client, a bad duration (audited failure where the change was attempted).
    expect((await cli('clients', 'rotate-secret', 'pc_AAAAAAAAAAAAAAAAAAAAAA')).code).not.toBe(0);
    expect((await cli('clients', 'rotate-secret', c.id, '--grace', 'soon')).code).not.toBe(0);
    expect(
      (await auditEvents()).filter((e) => e['event.action'] === 'client-secret-rotate').at(-1),
    ).toMatchObject({
      'event.outcome': 'failure',
      'portcullis.client_id': 'pc_AAAAAAAAAAAAAAAAAAAAAA',
    });
  }, 90_000);

  it('an expired secret is refused; one close to expiry raises the built-in alert', async () => {
    const c = await register();
    const run = await cli('clients', 'rotate-secret', c.id, '--grace', '0', '--expires', '5d', '--json');
    expect(run.code, run.stderr).toBe(0);
    const out = JSON.parse(run.stdout) as { client_secret: string; client_secret_expires_at: string };
    secrets.push(out.client_secret);
    expect(Date.parse(out.client_secret_expires_at) - Date.now()).toBeGreaterThan(5 * 86_400_000 - 60_000);
    expect(await grant(c.id, out.client_secret)).toBe('ok');
    // Within the 14-day warning window: the check at start records the event, the rule fires.
    await stop();
    await start();
    let events: Record<string, unknown>[] = [];
    for (let i = 0; i < 50; i++) {
      events = await auditEvents();
      if (
        events.some(
          (e) => e['event.action'] === 'alert-fired' && e['portcullis.alert.rule'] === 'client-secret-expiry',
        )
      )
        break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(events.filter((e) => e['event.action'] === 'client-secret-expiring')).toEqual([
      expect.objectContaining({
        'portcullis.client_id': c.id,
        'event.reason': `secret expires at ${out.client_secret_expires_at}`,
      }),
    ]);
    expect(events).toContainEqual(
      expect.objectContaining({
        'event.action': 'alert-fired',
        'portcullis.alert.rule': 'client-secret-expiry',
        'portcullis.client_id': c.id,
      }),
    );
    // Time passes: the expiry moves into the past (as five days would), and the secret is refused.
    await gw.p.store.db
      .updateTable('oauth_clients')
      .set({ secret_expires_at: new Date(Date.now() - 1_000).toISOString() })
      .where('client_id', '=', c.id)
      .execute();
    expect(await grant(c.id, out.client_secret)).toBe('invalid_client');
  }, 90_000);
});
