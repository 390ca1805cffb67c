/**
 * The data map as the gateway compiles it (issue 16): a contract returning personal data without
 * a category is warned about at load (which property, which operation); the privacy stage is
 * compiled only for operations whose purposes go beyond the service, so every other route keeps
 * exactly its chain; a public operation cannot declare such purposes; without annotations there
 * is no privacy API at all.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../src/config/load.ts';
import { normalizeTarget } from '../src/gateway/path.ts';
import { runPortcullis } from './cli-harness.ts';
import { startRecordingUpstream, startTestGateway, TEST_OPENAPI } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';

const SCHEMES = {
  securitySchemes: {
    oauth: {
      type: 'oauth2',
      flows: {
        clientCredentials: { tokenUrl: 'https://localhost/token', scopes: { 'people:read': 'read' } },
      },
    },
  },
};

function contract(extra: Record<string, unknown> = {}) {
  return {
    openapi: '3.1.0',
    info: { title: 'people', version: '1' },
    security: [{ oauth: ['people:read'] }],
    components: SCHEMES,
    paths: {
      '/people': {
        get: {
          operationId: 'listPeople',
          responses: {
            '200': {
              description: 'ok',
              content: {
                'application/json': {
                  schema: {
                    type: 'object',
                    properties: {
                      email: { type: 'string', format: 'email' },
                      familyName: { type: 'string', 'x-portcullis-data': { category: 'identifier' } },
                    },
                  },
                },
              },
            },
          },
        },
      },
      '/people/stats': {
        get: {
          operationId: 'peopleStats',
          'x-portcullis-purposes': ['analytics'],
          responses: { '200': { description: 'ok' } },
        },
      },
      ...extra,
    },
  };
}

let upstream: RecordingUpstream;
let gw: TestGateway;

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  gw = await startTestGateway(
    { apis: [{ name: 'people', basePath: '/v1', openapi: 'api.yaml', upstream: { url: upstream.url } }] },
    { openapi: contract() },
  );
}, 60_000);

afterAll(async () => {
  await gw.close();
  await upstream.close();
});

function stagesOf(g: TestGateway, method: string, path: string): string[] {
  const match = g.p.runtime().routes.match(method, normalizeTarget(path, 8192).segments);
  if (match.kind !== 'found') throw new Error(`no route ${path}`);
  return (match.data.requestStages ?? []).map((s) => s.name);
}

describe('the data map at load', () => {
  it('warns about personal data returned without a category, naming the property and the operation', () => {
    const warnings = gw.logLines().filter((l) => l.event === 'contract-warning');
    expect(warnings.map((l) => l.msg)).toEqual([
      "apis[0].openapi (people): GET /people (listPeople): the answer's property /email looks like personal data but has no x-portcullis-data category",
    ]);
  });

  it('`portcullis config validate` and `privacy map` report the same warning', async () => {
    const validate = await runPortcullis(['config', 'validate', '--json', '--config', gw.configFile]);
    expect(validate.code, validate.stderr).toBe(0);
    expect((JSON.parse(validate.stdout) as { warnings: string[] }).warnings).toContainEqual(
      expect.stringMatching(
        /GET \/people \(listPeople\): the answer's property \/email looks like personal data/,
      ),
    );
    const map = await runPortcullis(['privacy', 'map', '--config', gw.configFile]);
    expect(map.code, map.stderr).toBe(0);
    expect(map.stdout).toContain('GET    /v1/people/stats  purposes: analytics');
    expect(map.stderr).toMatch(/warning: .*\/email looks like personal data/);
  }, 120_000);

  it('compiles the privacy stage only for operations with purposes beyond the service', () => {
    const plain = stagesOf(gw, 'GET', '/v1/people');
    expect(plain).not.toContain('privacy');
    const annotated = stagesOf(gw, 'GET', '/v1/people/stats');
    // The same chain with the privacy stage after authentication and the owner check.
    expect(annotated.filter((s) => s !== 'privacy')).toEqual(plain);
    expect(annotated.indexOf('privacy')).toBeGreaterThan(annotated.lastIndexOf('authenticate'));
    expect(annotated.filter((s) => s === 'privacy')).toHaveLength(1);
    // The subject API exists because the contract is annotated.
    expect(stagesOf(gw, 'GET', '/privacy/v1/consents')).toEqual([
      'cors',
      'rate-limit',
      'authenticate',
      'rate-limit',
    ]);
    expect(stagesOf(gw, 'GET', '/.well-known/gpc.json')).toEqual(['rate-limit']);
  });

  it('refuses purposes beyond the service on a public operation (there is no subject to ask)', async () => {
    const bad = contract({
      '/open': {
        get: {
          security: [],
          'x-portcullis-purposes': ['marketing'],
          responses: { '200': { description: 'ok' } },
        },
      },
    });
    const err = await startTestGateway(
      { apis: [{ name: 'people', basePath: '/v1', openapi: 'api.yaml', upstream: { url: upstream.url } }] },
      { openapi: bad },
    ).then(
      async (g) => {
        await g.close();
        return undefined;
      },
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).issues[0]?.message).toMatch(
      /GET \/open: x-portcullis-purposes beyond service need a protected operation/,
    );
  });

  it('serves no privacy API when no contract is annotated', async () => {
    const plain = await startTestGateway(
      {
        apis: [{ name: 'items', basePath: '/v1', openapi: 'api.yaml', upstream: { url: upstream.url } }],
      },
      { openapi: TEST_OPENAPI },
    );
    try {
      expect((await plain.request('/privacy/v1/consents')).status).toBe(404);
      expect((await plain.request('/.well-known/gpc.json')).status).toBe(404);
    } finally {
      await plain.close();
    }
  });
});
