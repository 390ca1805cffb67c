/**
 * Privacy at the front door (issue 16), end to end on a quickstart-like setup, on SQLite and on
 * PostgreSQL: the real gateway and authorization server over TLS, the demo patients API (its
 * annotated contract, verifying the caller assertion), a user created with the CLI who signs in
 * with openid-client, and the `portcullis privacy` commands on the same store.
 *
 * Each right is tested both ways (allowed, then each refusal with its problem type), and each
 * refusal and change is found in the audit trail.
 */
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { resolve } from 'node:path';
import * as oidc from 'openid-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { queryStoreLog } from '../src/audit/sinks/store.ts';
import type { AuditEvent } from '../src/audit/event.ts';
import { createClient } from '../src/oauth/clients.ts';
import { accountDisclosures } from '../src/privacy/disclosures.ts';
import { cliBackends, ROOT, runPortcullis } from './cli-harness.ts';
import { startTestGateway, tempDir } from './helpers.ts';
import type { TestGateway } from './helpers.ts';
import { authorize, createFlow, exchange, Jar } from './oauth-flow.ts';
import type { Flow } from './oauth-flow.ts';

const DEMO_OPENAPI = resolve(ROOT, 'examples/demo-upstream/openapi.yaml');
const REDIRECT = 'https://app.example/cb';
const GENEROUS = { burst: { points: 10_000, seconds: 1 }, sustained: { points: 100_000, seconds: 60 } };
const USER = { username: 'pat', password: 'pat-correct-horse-battery-9' };

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((ok) => server.close(() => ok()));
  return port;
}

const { backends } = cliBackends('privacy');

describe.each(backends)('privacy rights on $name', (backend) => {
  let gw: TestGateway;
  let flow: Flow;
  let cli: (stdin: string | undefined, ...args: string[]) => ReturnType<typeof runPortcullis>;
  let subject: string;
  let userToken: string;
  let serviceToken: string;
  let webClientId: string;

  beforeAll(async () => {
    const port = await freePort();
    const demoPort = await freePort();
    const issuer = `https://localhost:${String(port)}`;
    const dir = await tempDir('portcullis-privacy-');
    gw = await startTestGateway(
      {
        gateway: { port, publicUrl: issuer },
        store: { url: backend.storeUrl() },
        demoUpstream: { port: demoPort },
        rateLimits: { token: GENEROUS, login: GENEROUS },
        apis: [
          {
            name: 'patients',
            basePath: '/v1',
            openapi: DEMO_OPENAPI,
            upstream: { url: `http://127.0.0.1:${String(demoPort)}` },
          },
        ],
      },
      { dir },
    );
    const common = ['--config', gw.configFile, '--data-dir', resolve(dir, 'data')];
    cli = (stdin, ...args) => runPortcullis([...args, ...common], stdin);
    // The user is created with the CLI, on the store the running gateway uses.
    const created = await cli(`${USER.password}\n`, 'users', 'create', '--username', USER.username, '--json');
    expect(created.code, created.stderr).toBe(0);
    subject = (JSON.parse(created.stdout) as { id: string }).id;

    const keys = gw.p.keys;
    if (keys === undefined) throw new Error('the key manager should be running');
    const web = await createClient(gw.p.store.db, keys, {
      name: 'patient portal',
      grantTypes: ['authorization_code'],
      scope: 'openid patients:read',
      redirectUris: [REDIRECT],
    });
    webClientId = web.client.clientId;
    flow = createFlow(issuer, gw.p.tls.source === 'development' ? gw.p.tls.caCertPem : undefined);
    const config = await flow.discover(web.client.clientId, oidc.ClientSecretBasic(web.clientSecret ?? ''));
    const a = await authorize(flow, config, new Jar(), USER, {
      redirect_uri: REDIRECT,
      scope: 'openid patients:read',
    });
    userToken = (await exchange(config, a)).access_token;

    const machine = await createClient(gw.p.store.db, keys, {
      name: 'batch job',
      grantTypes: ['client_credentials'],
      scope: 'patients:read',
    });
    const machineConfig = await flow.discover(
      machine.client.clientId,
      oidc.ClientSecretBasic(machine.clientSecret ?? ''),
    );
    serviceToken = (await oidc.clientCredentialsGrant(machineConfig, { scope: 'patients:read' }))
      .access_token;
  }, 120_000);

  afterAll(async () => {
    // Neither the logs nor the audit trail hold a credential or the notice bodies' requests.
    const logs = gw.logs();
    for (const secret of [USER.password, userToken, serviceToken]) expect(logs).not.toContain(secret);
    const trail = JSON.stringify((await queryStoreLog(gw.p.store.db, { limit: 10_000 })).map((r) => r.event));
    for (const secret of [USER.password, userToken, serviceToken]) expect(trail).not.toContain(secret);
    expect(trail).not.toContain('world-domination');
    await flow.close();
    await gw.close();
  });

  const call = async (
    path: string,
    init: { method?: string; token?: string | null; headers?: Record<string, string>; body?: unknown } = {},
  ) => {
    const token = init.token === undefined ? userToken : init.token;
    const res = await gw.request(path, {
      method: init.method ?? 'GET',
      headers: {
        ...(token === null ? {} : { authorization: `Bearer ${token}` }),
        ...(init.body === undefined ? {} : { 'content-type': 'application/json' }),
        ...init.headers,
      },
      ...(init.body === undefined ? {} : { body: JSON.stringify(init.body) }),
    });
    const type = res.headers['content-type'] ?? '';
    return {
      status: res.status,
      correlationId: res.headers['x-request-id'] ?? '',
      body: (type.includes('json') ? JSON.parse(res.body) : res.body) as Record<string, unknown>,
    };
  };

  /** The audit events of one request (request events are group-committed: waits for them). */
  const auditOf = async (
    correlationId: string,
    count = 1,
    until: (events: AuditEvent[]) => boolean = () => true,
  ): Promise<AuditEvent[]> => {
    for (let i = 0; i < 60; i++) {
      const events = (await queryStoreLog(gw.p.store.db, { correlationId })).map((r) => r.event);
      if (events.length >= count && until(events)) return events;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`no audit event for ${correlationId}`);
  };

  const expectRefused = async (
    res: Awaited<ReturnType<typeof call>>,
    code: string,
    reason: string,
  ): Promise<void> => {
    expect(res.status).toBe(403);
    expect(res.body.type).toBe(`urn:portcullis:problem:${code}`);
    const events = await auditOf(res.correlationId, 1, (all) =>
      all.some((e) => e['event.outcome'] === 'failure'),
    );
    const refusal = events.find((e) => e['event.outcome'] === 'failure');
    expect(refusal).toMatchObject({
      'event.category': 'authorization',
      'event.action': 'privacy',
      'event.reason': reason,
      'http.response.status_code': 403,
    });
  };

  it('consent: refused without it, allowed once granted, refused again after withdrawal; changes audited', async () => {
    // No consent yet: analytics and profiling are refused.
    await expectRefused(await call('/v1/insights'), 'consent-required', 'consent-missing');

    // Granting needs the notice version (GDPR Art. 7(1): consent must be demonstrable).
    const noNotice = await call('/privacy/v1/consents/analytics', { method: 'PUT', body: {} });
    expect(noNotice.status).toBe(400);
    expect(noNotice.body.errors).toEqual([{ in: 'body', pointer: '/noticeVersion', rule: 'required' }]);
    const unknown = await call('/privacy/v1/consents/world-domination', {
      method: 'PUT',
      body: { noticeVersion: '2026-12' },
    });
    expect(unknown.status).toBe(400);

    const granted = await call('/privacy/v1/consents/analytics', {
      method: 'PUT',
      body: { noticeVersion: '2026-12' },
    });
    expect(granted.status).toBe(200);
    expect(granted.body).toMatchObject({
      purpose: 'analytics',
      state: 'granted',
      noticeVersion: '2026-12',
      source: 'subject',
    });
    const grantEvents = await auditOf(granted.correlationId, 2);
    expect(grantEvents.find((e) => e['event.category'] === 'privacy')).toMatchObject({
      'event.action': 'consent-grant',
      'user.id': subject,
      'portcullis.privacy.choice': 'analytics',
      'portcullis.privacy.notice': '2026-12',
      'portcullis.privacy.source': 'subject',
      'portcullis.client_id': webClientId,
    });

    // One of the two purposes is not enough.
    await expectRefused(await call('/v1/insights'), 'consent-required', 'consent-missing');
    expect(
      (await call('/privacy/v1/consents/profiling', { method: 'PUT', body: { noticeVersion: '2026-12' } }))
        .status,
    ).toBe(200);
    const allowed = await call('/v1/insights');
    expect(allowed.status).toBe(200);
    // The consents reached the upstream in the signed caller assertion.
    expect(allowed.body.received).toEqual({ consents: ['analytics', 'profiling'], optOuts: [] });

    // The eligibility check (an automated decision) needs its own consent.
    await expectRefused(await call('/v1/care-programme/eligibility'), 'consent-required', 'consent-missing');
    expect(
      (
        await call('/privacy/v1/consents/automated-decision', {
          method: 'PUT',
          body: { noticeVersion: '2026-12' },
        })
      ).status,
    ).toBe(200);
    const decided = await call('/v1/care-programme/eligibility');
    expect(decided.status).toBe(200);
    expect(decided.body.received).toEqual({
      consents: ['analytics', 'automated-decision', 'profiling'],
      optOuts: [],
    });

    // Withdrawal takes effect on the next request, and the assertion (reused for 30 s for the
    // same caller otherwise) carries the new consents at once.
    const withdrawn = await call('/privacy/v1/consents/profiling', { method: 'DELETE' });
    expect(withdrawn.status).toBe(200);
    expect(withdrawn.body).toMatchObject({ purpose: 'profiling', state: 'withdrawn' });
    expect(
      (await auditOf(withdrawn.correlationId, 2)).find((e) => e['event.category'] === 'privacy'),
    ).toMatchObject({
      'event.action': 'consent-withdraw',
      'portcullis.privacy.choice': 'profiling',
    });
    await expectRefused(await call('/v1/insights'), 'consent-required', 'consent-withdrawn');
    const after = await call('/v1/care-programme/eligibility');
    expect(after.status).toBe(200);
    expect(after.body.received).toEqual({ consents: ['analytics', 'automated-decision'], optOuts: [] });

    const listed = await call('/privacy/v1/consents');
    expect(listed.status).toBe(200);
    expect(listed.body.subject).toBe(subject);
    expect(
      (listed.body.consents as { purpose: string; state: string }[]).map((c) => `${c.purpose}:${c.state}`),
    ).toEqual(['analytics:granted', 'automated-decision:granted', 'profiling:withdrawn']);

    // Operations for the service alone have no privacy stage and are unaffected.
    expect((await call('/v1/patients')).status).toBe(200);
  });

  it('the subject API and annotated operations need a signed-in subject', async () => {
    const anonymous = await call('/privacy/v1/consents', { token: null });
    expect(anonymous.status).toBe(401);
    expect((await auditOf(anonymous.correlationId))[0]).toMatchObject({
      'event.outcome': 'failure',
      'event.action': 'authenticate',
    });
    // A client acting for itself has no subject whose consent could count.
    const machine = await call('/privacy/v1/consents', { token: serviceToken });
    expect(machine.status).toBe(403);
    expect(machine.body.type).toBe('urn:portcullis:problem:forbidden');
    const failure = (all: AuditEvent[]) => all.some((e) => e['event.outcome'] === 'failure');
    expect((await auditOf(machine.correlationId, 1, failure))[0]).toMatchObject({
      'event.category': 'authorization',
      'event.action': 'privacy',
      'event.reason': 'no-data-subject',
    });
    const badInput = await call('/privacy/v1/opt-outs/everything', { method: 'PUT' });
    expect(badInput.status).toBe(400);
    expect(badInput.body.errors).toEqual([{ in: 'path', pointer: '/optOut', rule: 'enum' }]);
    expect((await auditOf(badInput.correlationId, 1, failure))[0]).toMatchObject({
      'event.outcome': 'failure',
      'event.reason': 'privacy-input',
    });
    await expectRefused(
      await call('/v1/insights', { token: serviceToken }),
      'consent-required',
      'no-data-subject',
    );
    // A forged token is refused like everywhere else.
    expect((await call('/privacy/v1/consents', { token: `${userToken.slice(0, -4)}AAAA` })).status).toBe(401);
    // The browser cannot call it cross-origin.
    expect((await call('/privacy/v1/consents', { headers: { origin: 'https://evil.example' } })).status).toBe(
      403,
    );
  });

  it('Sec-GPC: 1 records an opt-out of sale and sharing; sale, sharing and targeted advertising are refused from then on', async () => {
    for (const purpose of ['marketing', 'sharing', 'targeted-advertising']) {
      expect(
        (await call(`/privacy/v1/consents/${purpose}`, { method: 'PUT', body: { noticeVersion: '2026-12' } }))
          .status,
      ).toBe(200);
    }
    const before = await call('/v1/offers');
    expect(before.status).toBe(200);

    const signalled = await call('/v1/offers', { headers: { 'sec-gpc': '1' } });
    await expectRefused(signalled, 'sale-sharing-opted-out', 'opted-out-sale-sharing');
    const events = await auditOf(signalled.correlationId, 2);
    expect(events.find((e) => e['event.category'] === 'privacy')).toMatchObject({
      'event.action': 'opt-out',
      'user.id': subject,
      'portcullis.privacy.choice': 'sale-sharing',
      'portcullis.privacy.source': 'gpc',
    });
    // Without the header, still refused: the opt-out is recorded for the subject.
    await expectRefused(await call('/v1/offers'), 'sale-sharing-opted-out', 'opted-out-sale-sharing');
    const optOuts = await call('/privacy/v1/opt-outs');
    expect(optOuts.body.optOuts).toEqual([
      expect.objectContaining({ optOut: 'sale-sharing', state: 'opted-out', source: 'gpc' }),
    ]);
    // Other purposes carry on, and the upstream learns of the opt-out.
    const decided = await call('/v1/care-programme/eligibility');
    expect(decided.status).toBe(200);
    expect((decided.body.received as { optOuts: string[] }).optOuts).toEqual(['sale-sharing']);
    // A repeated signal records nothing new.
    const again = await call('/v1/care-programme/eligibility', { headers: { 'sec-gpc': '1' } });
    expect(again.status).toBe(200);
    expect((await auditOf(again.correlationId)).filter((e) => e['event.category'] === 'privacy')).toEqual([]);

    const gpc = await call('/.well-known/gpc.json', { token: null });
    expect(gpc.status).toBe(200);
    expect(gpc.body).toEqual({
      gpc: true,
      lastUpdate: expect.stringMatching(/^\d{4}-\d{2}-\d{2}$/) as unknown,
    });
  });

  it('limiting sensitive data and opting out of automated decisions are recorded and enforced', async () => {
    expect(
      (await call('/privacy/v1/consents/profiling', { method: 'PUT', body: { noticeVersion: '2026-12' } }))
        .status,
    ).toBe(200);
    expect((await call('/v1/insights')).status).toBe(200);
    const limited = await call('/privacy/v1/opt-outs/sensitive-data', { method: 'PUT' });
    expect(limited.status).toBe(200);
    expect(
      (await auditOf(limited.correlationId, 2)).find((e) => e['event.category'] === 'privacy'),
    ).toMatchObject({
      'event.action': 'opt-out',
      'portcullis.privacy.choice': 'sensitive-data',
    });
    await expectRefused(await call('/v1/insights'), 'sensitive-data-limited', 'sensitive-data-limited');
    // The sensitive data is still used for the service the subject asked for.
    expect((await call('/v1/patients')).status).toBe(200);
    expect((await call('/privacy/v1/opt-outs/sensitive-data', { method: 'DELETE' })).status).toBe(200);
    expect((await call('/v1/insights')).status).toBe(200);

    expect((await call('/privacy/v1/opt-outs/automated-decision', { method: 'PUT' })).status).toBe(200);
    await expectRefused(
      await call('/v1/care-programme/eligibility'),
      'automation-opted-out',
      'opted-out-automated-decision',
    );
    expect((await call('/privacy/v1/opt-outs/automated-decision', { method: 'DELETE' })).status).toBe(200);
    expect((await call('/v1/care-programme/eligibility')).status).toBe(200);
    expect((await call('/privacy/v1/opt-outs/everything', { method: 'PUT' })).status).toBe(400);

    // The information endpoint describes the annotated decision's logic (public).
    const info = await call('/privacy/v1/automated-decisions', { token: null });
    expect(info.status).toBe(200);
    expect(info.body.decisions).toEqual([
      expect.objectContaining({
        api: 'patients',
        method: 'GET',
        path: '/v1/care-programme/eligibility',
        operationId: 'checkProgrammeEligibility',
        logic: expect.stringContaining('birth date') as unknown,
        significance: expect.any(String) as unknown,
        humanReview: expect.stringContaining('care-team@example.org') as unknown,
      }),
    ]);
  });

  it('the CLI: data map, consents on the admin side (seen by the gateway), accounting of disclosures', async () => {
    const map = await cli(undefined, 'privacy', 'map', '--json');
    expect(map.code, map.stderr).toBe(0);
    const records = (
      JSON.parse(map.stdout) as {
        records: {
          api: string;
          recipients: string[];
          sensitiveCategories: string[];
          operations: { operationId: string; purposes: string[] }[];
        }[];
      }
    ).records;
    expect(records[0]).toMatchObject({ api: 'patients', sensitiveCategories: ['government-id', 'health'] });
    expect(records[0]?.recipients[0]).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(records[0]?.operations.find((o) => o.operationId === 'listPartnerOffers')?.purposes).toEqual([
      'marketing',
      'sharing',
      'targeted-advertising',
    ]);

    expect((await call('/v1/care-programme/eligibility')).status).toBe(200);
    const withdraw = await cli(
      undefined,
      'privacy',
      'consent',
      'withdraw',
      '--username',
      USER.username,
      '--purpose',
      'automated-decision',
      '--json',
    );
    expect(withdraw.code, withdraw.stderr).toBe(0);
    expect(JSON.parse(withdraw.stdout)).toMatchObject({
      name: 'automated-decision',
      state: 'withdrawn',
      source: 'cli',
    });
    // Another process changed it: the gateway sees it when its cached copy expires (5 s).
    let status = 0;
    for (let i = 0; i < 80 && status !== 403; i++) {
      status = (await call('/v1/care-programme/eligibility')).status;
      if (status !== 403) await new Promise((r) => setTimeout(r, 100));
    }
    expect(status).toBe(403);
    const badPurpose = await cli(
      undefined,
      'privacy',
      'consent',
      'grant',
      '--subject',
      subject,
      '--purpose',
      'service',
      '--notice',
      'v1',
    );
    expect(badPurpose.code).toBe(1);

    const listed = await cli(undefined, 'privacy', 'consent', 'list', '--subject', subject, '--json');
    expect(listed.code, listed.stderr).toBe(0);
    const choices = (
      JSON.parse(listed.stdout) as { choices: { kind: string; name: string; state: string }[] }
    ).choices;
    expect(choices).toContainEqual(
      expect.objectContaining({ kind: 'consent', name: 'automated-decision', state: 'withdrawn' }),
    );
    expect(choices).toContainEqual(
      expect.objectContaining({ kind: 'opt-out', name: 'sale-sharing', state: 'opted-out' }),
    );

    // The CLI change is in the audit trail, durably; so is the refused one.
    const cliEvents = (await queryStoreLog(gw.p.store.db, { category: 'privacy', limit: 1000 })).map(
      (r) => r.event,
    );
    expect(cliEvents).toContainEqual(
      expect.objectContaining({
        'event.action': 'consent-withdraw',
        'portcullis.listener': 'cli',
        'portcullis.privacy.source': 'cli',
        'user.id': subject,
      }),
    );
    expect(cliEvents).toContainEqual(
      expect.objectContaining({
        'event.action': 'consent-grant',
        'event.outcome': 'failure',
        'portcullis.listener': 'cli',
        'portcullis.privacy.choice': 'service',
      }),
    );

    // Accounting of disclosures: the reads of the subject's data by the portal, with scopes.
    const disclosures = await cli(undefined, 'privacy', 'disclosures', '--subject', subject, '--json');
    expect(disclosures.code, disclosures.stderr).toBe(0);
    const list = (
      JSON.parse(disclosures.stdout) as {
        disclosures: { clientId: string; route: string; access: string; scopes: string[] }[];
      }
    ).disclosures;
    expect(list.length).toBeGreaterThan(3);
    expect(list.every((d) => d.clientId === webClientId && d.access === 'read')).toBe(true);
    expect(list.map((d) => d.route)).toContain('/v1/insights');
    expect(list.map((d) => d.route)).not.toContain('/privacy/v1/consents');
    expect(list[0]?.scopes).toContain('patients:read');
    // The service function gives the same, and nothing for another subject.
    expect((await accountDisclosures(gw.p.store.db, { subject })).length).toBe(list.length);
    expect(await accountDisclosures(gw.p.store.db, { subject: `${subject}%` })).toEqual([]);
  }, 180_000);
});
