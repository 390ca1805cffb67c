/**
 * `portcullis inventory --json|--csv` as a child process: each API and operation with owner,
 * data classification, environment, authentication, scopes and the documented exceptions.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { runPortcullis } from './cli-harness.ts';
import { TEST_OPENAPI } from './helpers.ts';

const dir = mkdtempSync(join(tmpdir(), 'portcullis-inventory-'));
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('portcullis inventory', () => {
  writeFileSync(join(dir, 'api.yaml'), stringify(TEST_OPENAPI));
  const config = join(dir, 'portcullis.yaml');
  writeFileSync(
    config,
    stringify({
      apis: [
        {
          name: 'items',
          owner: 'team, "items"',
          dataClassification: 'restricted',
          environment: 'staging',
          basePath: '/v1',
          openapi: 'api.yaml',
          upstream: { url: 'https://items.internal.example' },
        },
      ],
    }),
  );

  it('lists every operation with its owner, classification, environment, authentication and scopes', async () => {
    const json = await runPortcullis(['inventory', '--json', '--config', config]);
    expect(json.code, json.stderr).toBe(0);
    const { apis } = JSON.parse(json.stdout) as { apis: Record<string, unknown>[] };
    expect(apis).toHaveLength(1);
    expect(apis[0]).toMatchObject({
      name: 'items',
      owner: 'team, "items"',
      dataClassification: 'restricted',
      environment: 'staging',
    });
    const ops = apis[0]?.operations as {
      method: string;
      path: string;
      authentication: string[];
      scopes: string[];
    }[];
    expect(ops.length).toBe(TEST_OPENAPI_OPERATIONS);
    for (const op of ops) {
      expect(op.path.startsWith('/v1')).toBe(true);
      expect(op.authentication.length).toBeGreaterThan(0);
    }
    expect(JSON.stringify(apis)).not.toContain('items.internal.example'); // no upstream hosts

    const csv = await runPortcullis(['inventory', '--csv', '--config', config]);
    expect(csv.code, csv.stderr).toBe(0);
    const lines = csv.stdout.trimEnd().split('\r\n');
    expect(lines[0]).toBe(
      'api,owner,dataClassification,environment,method,path,operationId,authentication,scopes,exceptions',
    );
    expect(lines).toHaveLength(1 + TEST_OPENAPI_OPERATIONS);
    expect(lines[1]?.startsWith('items,"team, ""items""",restricted,staging,')).toBe(true);
  }, 120_000);
});

/** How many operations TEST_OPENAPI declares. */
const TEST_OPENAPI_OPERATIONS = Object.values(TEST_OPENAPI.paths as Record<string, object>).reduce(
  (n, item) =>
    n + Object.keys(item).filter((k) => ['get', 'put', 'post', 'delete', 'patch'].includes(k)).length,
  0,
);
