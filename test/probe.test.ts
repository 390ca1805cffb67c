/**
 * `portcullis probe` through the real CLI, both ways:
 * - against a deliberately weak API served without the gateway (HTTPS with TLS 1.0 allowed, no
 *   authentication, no object ownership, reflected HTML, mass assignment, no body limit, 500 on
 *   bad JSON, every method and path answered, no rate limit, no security headers, a Server
 *   version), every weakness is caught, finding by finding;
 * - against the quickstart (the demo patients API behind Portcullis, a real token from the CLI and
 *   /token, another subject's patient id), nothing is found.
 * The request budget bounds what it sends, and only the given origin is contacted.
 */
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { createServer as createHttpsServer } from 'node:https';
import type { Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { ensureDevCertificates } from '../src/server/devca.ts';
import { ROOT, runPortcullis } from './cli-harness.ts';
import { startQuickstart } from './quickstart-harness.ts';
import type { RunningQuickstart } from './quickstart-harness.ts';
import { tempDir } from './helpers.ts';

interface Report {
  target: string;
  requests: number;
  findings: { check: string; severity: string; operation: string; request: string; evidence: string }[];
  skipped: string[];
}

const WEAK_CONTRACT = {
  openapi: '3.1.0',
  info: { title: 'weak', version: '1' },
  components: {
    securitySchemes: {
      oauth: {
        type: 'oauth2',
        flows: { clientCredentials: { tokenUrl: 'https://x/token', scopes: { 'things:read': 'r' } } },
      },
    },
    schemas: {
      Thing: {
        type: 'object',
        additionalProperties: false,
        required: ['name'],
        properties: { id: { type: 'string', readOnly: true }, name: { type: 'string', maxLength: 20 } },
      },
    },
  },
  security: [{ oauth: ['things:read'] }],
  paths: {
    '/things': {
      get: {
        parameters: [{ name: 'q', in: 'query', schema: { type: 'string', maxLength: 50 } }],
        responses: { '200': { description: 'ok' } },
      },
      post: {
        requestBody: { content: { 'application/json': { schema: { $ref: '#/components/schemas/Thing' } } } },
        responses: { '201': { description: 'created' } },
      },
    },
    '/things/{thingId}': {
      get: {
        parameters: [
          { name: 'thingId', in: 'path', required: true, schema: { type: 'string', examples: ['mine'] } },
        ],
        responses: { '200': { description: 'ok' } },
      },
    },
  },
};

let dir: string;
let weak: Server;
let weakUrl: string;
let caFile: string;
let weakRequests = 0;

/** Every weakness the probe looks for, on purpose. */
function startWeak(cert: string, key: string): Server {
  return createHttpsServer({ cert, key, minVersion: 'TLSv1', ciphers: 'DEFAULT@SECLEVEL=0' }, (req, res) => {
    weakRequests++;
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const url = new URL(req.url ?? '/', 'https://weak');
      res.setHeader('server', 'WeakServer/1.2.3');
      const body = Buffer.concat(chunks).toString('utf8');
      if (body !== '' && (req.headers['content-type'] ?? '').includes('json') && body.length < 1000) {
        try {
          JSON.parse(body);
        } catch {
          res.writeHead(500).end('SyntaxError at JSON.parse (server.js:12)');
          return;
        }
      }
      const q = url.searchParams.get('q');
      if (q !== null) {
        res.writeHead(200, { 'content-type': 'text/html' }).end(`<p>results for ${q}</p>`);
        return;
      }
      res
        .writeHead(req.method === 'POST' ? 201 : 200, { 'content-type': 'application/json' })
        .end('{"ok":true}');
    });
  });
}

beforeAll(async () => {
  dir = await tempDir('portcullis-probe-');
  const dev = await ensureDevCertificates(join(dir, 'weak-tls'));
  caFile = dev.caCertFile;
  weak = startWeak(dev.certPem, dev.keyPem);
  weak.listen(0, '127.0.0.1');
  await once(weak, 'listening');
  weakUrl = `https://localhost:${String((weak.address() as AddressInfo).port)}/api`;
  await writeFile(join(dir, 'weak.yaml'), stringify(WEAK_CONTRACT));
}, 60_000);

afterAll(async () => {
  weak.close();
  await rm(dir, { recursive: true, force: true });
});

describe('portcullis probe against a weak API served without the gateway', () => {
  it('catches each weakness, with the operation, the request and the evidence, within the budget', async () => {
    const r = await runPortcullis(
      [
        'probe',
        weakUrl,
        '--openapi',
        join(dir, 'weak.yaml'),
        '--ca',
        caFile,
        '--foreign-id',
        'thingId=someone-else',
        '--max-requests',
        '300',
        '--rate',
        '200',
        '--json',
      ],
      undefined,
      { PORTCULLIS_PROBE_TOKEN: 'not-even-a-jwt' },
    );
    expect(r.code, r.stderr).toBe(1);
    const report = JSON.parse(r.stdout) as Report;
    const checks = new Set(report.findings.map((f) => f.check));
    for (const check of [
      'auth-bypass',
      'object-level-authorization',
      'injection',
      'mass-assignment',
      'oversized-body',
      'malformed-body',
      'undeclared-method',
      'undeclared-path',
      'rate-limit',
      'security-headers',
      'server-version',
      'tls-version',
    ]) {
      expect(checks, `${check} in ${JSON.stringify(report.findings, null, 1)}`).toContain(check);
    }
    const bypass = report.findings.find(
      (f) => f.check === 'auth-bypass' && f.request.includes('without a credential'),
    );
    expect(bypass).toMatchObject({ severity: 'high', operation: 'GET /things', evidence: 'HTTP 200' });
    expect(report.findings.find((f) => f.check === 'object-level-authorization')).toMatchObject({
      operation: 'GET /things/{thingId}',
      request: expect.stringContaining('/things/someone-else'),
    });
    expect(report.findings.find((f) => f.check === 'tls-version')?.evidence).toMatch(/TLSv1(\.1)?/);
    expect(report.requests).toBeLessThanOrEqual(300);
    expect(weakRequests).toBeLessThanOrEqual(300);
    expect(r.stderr).toMatch(/probe: \d+ requests sent/);
    // The token is never echoed.
    expect(r.stdout).not.toContain('not-even-a-jwt');
  }, 120_000);

  it('stops at the request budget', async () => {
    const before = weakRequests;
    const r = await runPortcullis([
      'probe',
      weakUrl,
      '--openapi',
      join(dir, 'weak.yaml'),
      '--ca',
      caFile,
      '--max-requests',
      '7',
      '--json',
    ]);
    const report = JSON.parse(r.stdout) as Report;
    expect(report.requests).toBe(7);
    expect(weakRequests - before).toBe(7);
  }, 60_000);
});

describe('portcullis probe against the quickstart', () => {
  let qs: RunningQuickstart;

  beforeAll(async () => {
    qs = await startQuickstart('portcullis-probe-qs-');
  }, 90_000);

  afterAll(async () => {
    await qs.close();
  }, 30_000);

  it('comes out clean with a real token and another subject’s patient id', async () => {
    const created = await runPortcullis([
      'clients',
      'create',
      '--name',
      'probe',
      '--grant',
      'client_credentials',
      '--scope',
      'patients:read patients:write',
      '--json',
      '--config',
      qs.configFile,
      '--data-dir',
      qs.dataDir,
    ]);
    expect(created.code, created.stderr).toBe(0);
    const client = JSON.parse(created.stdout) as { client_id: string; client_secret: string };
    const ca = join(qs.dataDir, 'tls/ca.crt');
    const agent = new Agent({ connect: { ca: readFileSync(ca, 'utf8') } });
    const res = await request(`${qs.gatewayUrl}/token`, {
      method: 'POST',
      headers: {
        authorization: `Basic ${Buffer.from(`${client.client_id}:${client.client_secret}`).toString('base64')}`,
        'content-type': 'application/x-www-form-urlencoded',
      },
      body: 'grant_type=client_credentials&scope=patients%3Aread%20patients%3Awrite',
      dispatcher: agent,
    });
    const token = ((await res.body.json()) as { access_token: string }).access_token;
    await agent.close();
    const r = await runPortcullis(
      [
        'probe',
        `${qs.gatewayUrl}/v1`,
        '--openapi',
        join(ROOT, 'examples/demo-upstream/openapi.yaml'),
        '--ca',
        ca,
        '--foreign-id',
        'patientId=pat_0h52dgzb28m6',
        '--rate',
        '20',
        '--json',
      ],
      undefined,
      { PORTCULLIS_PROBE_TOKEN: token },
    );
    const report = JSON.parse(r.stdout) as Report;
    expect(report.findings, JSON.stringify(report.findings, null, 1)).toEqual([]);
    expect(r.code).toBe(0);
    expect(report.skipped).toEqual([]);
    expect(report.requests).toBeGreaterThan(40);
    expect(qs.output()).not.toContain(token);
  }, 180_000);
});
