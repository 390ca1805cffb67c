/**
 * `portcullis lint` through the real CLI: the demo contract has no error-level finding, and a
 * deliberately weak contract is caught rule by rule (Portcullis's own rules, Spectral's OpenAPI
 * rules and the OWASP API Security 2023 ruleset), each finding with its line. A `$ref` to a URL is
 * never fetched.
 */
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { ROOT, runPortcullis } from './cli-harness.ts';

interface Report {
  ok: boolean;
  reports: {
    api: string;
    file: string;
    errors: number;
    findings: { rule: string; severity: string; line?: number; message: string; path: string }[];
  }[];
  satisfiedByGateway: Record<string, string>;
}

let dir: string;
let fetched = 0;
const refServer = createServer((_req, res) => {
  fetched++;
  res.end('type: string\n');
});

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'portcullis-lint-'));
  refServer.listen(0, '127.0.0.1');
  await once(refServer, 'listening');
});
afterAll(async () => {
  refServer.close();
  await rm(dir, { recursive: true, force: true });
});

describe('portcullis lint', () => {
  it('finds no error in the demo contract, and says which OWASP rules the gateway satisfies itself', async () => {
    const r = await runPortcullis(
      ['lint', '--config', 'examples/quickstart/portcullis.yaml', '--json'],
      undefined,
      {},
      ROOT,
    );
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as Report;
    expect(out.ok).toBe(true);
    expect(out.reports).toHaveLength(1);
    expect(out.reports[0]!.api).toBe('patients');
    expect(out.reports[0]!.errors).toBe(0);
    expect(out.satisfiedByGateway['owasp:api4:2023-rate-limit-responses-429']).toMatch(/429/);
    expect(out.reports[0]!.findings.map((f) => f.rule)).not.toContain(
      'owasp:api4:2023-rate-limit-responses-429',
    );
    expect(r.stderr).toContain('linting ');
  }, 60_000);

  it('catches a weak contract finding by finding, with lines, exits 1, and never fetches a URL $ref', async () => {
    const { port } = refServer.address() as AddressInfo;
    const weak = join(dir, 'weak.yaml');
    await writeFile(
      weak,
      stringify({
        openapi: '3.1.0',
        info: { title: 'weak', version: '1' },
        components: {
          securitySchemes: {
            oauth: {
              type: 'oauth2',
              flows: {
                clientCredentials: { tokenUrl: 'https://as.example/token', scopes: { everything: 'all' } },
              },
            },
          },
          schemas: { Remote: { $ref: `http://127.0.0.1:${String(port)}/remote.yaml` } },
        },
        paths: {
          '/items': {
            get: {
              operationId: 'listItems',
              parameters: [{ name: 'q', in: 'query', schema: { type: 'string' } }],
              responses: { '200': { description: 'ok' } },
            },
            post: {
              operationId: 'createItem',
              security: [{ oauth: ['everything'] }],
              requestBody: {
                content: {
                  'application/json': { schema: { type: 'object', properties: { n: { type: 'integer' } } } },
                },
              },
              responses: { '201': { description: 'created' } },
            },
          },
        },
      }),
    );
    const r = await runPortcullis(['lint', weak, '--json'], undefined, {}, dir);
    expect(r.code, r.stderr).toBe(1);
    const out = JSON.parse(r.stdout) as Report;
    expect(out.ok).toBe(false);
    const findings = out.reports[0]!.findings;
    const byRule = (rule: string) => findings.filter((f) => f.rule === rule);
    // Portcullis's own rules.
    expect(byRule('portcullis-operation-security')).toEqual([
      expect.objectContaining({ severity: 'error', path: 'paths./items.get', line: expect.any(Number) }),
    ]);
    expect(byRule('portcullis-scope-names')[0]).toMatchObject({
      severity: 'warning',
      message: /"everything"/,
    });
    expect(byRule('portcullis-error-responses').map((f) => f.path)).toEqual([
      'paths./items.get.responses',
      'paths./items.post.responses',
    ]);
    // The OWASP ruleset: unbounded string, integer without format.
    expect(byRule('owasp:api4:2023-string-limit').length).toBeGreaterThan(0);
    expect(byRule('owasp:api4:2023-integer-format').length).toBeGreaterThan(0);
    for (const f of findings) expect(f.line, f.rule).toBeGreaterThan(0);
    expect(fetched).toBe(0);

    const human = await runPortcullis(['lint', weak], undefined, {}, dir);
    expect(human.code).toBe(1);
    expect(human.stdout).toMatch(/weak\.yaml: \d+ error\(s\), \d+ warning\(s\)/);
    expect(human.stdout).toMatch(
      /^\d+:\d+ +error +portcullis-operation-security +GET \/items declares no security/m,
    );
  }, 60_000);
});
