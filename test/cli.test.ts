/**
 * The real `portcullis` command, run as a child process on Node 24 with no stdin.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml, stringify } from 'yaml';
import { TEST_OPENAPI } from './helpers.ts';

const ROOT = resolve(import.meta.dirname, '..');
const QUICKSTART = 'examples/quickstart/portcullis.yaml';

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a command in the repository root with no stdin; kills it after `timeoutMs`. */
function run(
  command: string,
  args: readonly string[],
  timeoutMs = 30_000,
  env: Record<string, string> = {},
): Promise<Run> {
  return new Promise((ok, fail) => {
    const child = spawn(command, args, {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', fail);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      ok({ code, signal, stdout, stderr });
    });
  });
}

const portcullis = (...args: string[]) => run('sh', ['scripts/node24.sh', 'src/cli/main.ts', ...args]);

/** A port that was free a moment ago. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((ok) => server.close(() => ok()));
  return port;
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'portcullis-cli-'));
  await writeFile(join(dir, 'api.yaml'), stringify(TEST_OPENAPI));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function configFile(name: string, text: string): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, text);
  return file;
}

const API = [
  'apis:',
  '  - name: items',
  '    openapi: api.yaml',
  '    basePath: /v1',
  '    upstream:',
  '      url: http://127.0.0.1:4010',
];

describe('portcullis --help', () => {
  it('lists the start and config commands', async () => {
    const r = await portcullis('--help');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Usage: portcullis/);
    expect(r.stdout).toMatch(/^\s+start\b/m);
    expect(r.stdout).toMatch(/^\s+config\b/m);
  });

  it('--version prints the version of the package', async () => {
    const r = await portcullis('--version');
    expect(r.code).toBe(0);
    const { version } = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
    expect(r.stdout.trim()).toBe(version);
  });

  it('config validate --help documents --config, --data-dir and --json', async () => {
    const r = await portcullis('config', 'validate', '--help');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('--config <file>');
    expect(r.stdout).toContain('--data-dir <dir>');
    expect(r.stdout).toContain('--json');
  });

  it('an unknown command fails with a non-zero exit', async () => {
    const r = await portcullis('frobnicate');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/unknown command/);
  });

  it('works through the package bin with npx from the project folder (never from the registry)', async () => {
    // --yes=false and offline: if npx did not resolve the project's own bin it would fail
    // instead of fetching a package of the same name from the registry.
    const r = await run('npx', ['--yes=false', 'portcullis', '--help'], 60_000, {
      npm_config_offline: 'true',
    });
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Usage: portcullis/);
    expect(r.stdout).toContain('Security-first API gateway');
  });

  it('works through bin/portcullis directly', async () => {
    const r = await run('bin/portcullis', ['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Usage: portcullis/);
  });
});

describe('portcullis config validate', () => {
  it('accepts the quickstart and prints the effective configuration as YAML with defaults filled', async () => {
    const r = await portcullis('config', 'validate', '--config', QUICKSTART);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/portcullis\.yaml: valid \(version [0-9a-f]{12}\)/);
    const effective = parseYaml(r.stdout) as Record<string, Record<string, unknown>>;
    expect(effective.gateway).toMatchObject({
      port: 8443,
      host: '127.0.0.1',
      http2: true,
      limits: { bodyBytes: 1048576, headerBytes: 16384, urlBytes: 8192 },
      trustedProxies: [],
    });
    expect(effective.admin).toEqual({
      enabled: true,
      host: '127.0.0.1',
      port: 9443,
      rateLimit: { points: 120, seconds: 60 },
    });
    expect(effective.store).toEqual({
      url: 'sqlite:portcullis.db',
      connectTimeoutMs: 1500,
      queryTimeoutMs: 1500,
    });
    expect(effective.apis).toMatchObject([
      { name: 'patients', basePath: '/v1', upstream: { url: 'http://127.0.0.1:4010', connections: 128 } },
    ]);
  });

  it('--json prints parseable JSON with valid: true', async () => {
    const r = await portcullis('config', 'validate', '--config', QUICKSTART, '--json');
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout) as {
      valid: boolean;
      file: string;
      version: string;
      warnings: unknown[];
      config: { gateway: { limits: { bodyBytes: number } } };
    };
    expect(out.valid).toBe(true);
    expect(out.file).toBe(join(ROOT, QUICKSTART));
    expect(out.version).toMatch(/^[0-9a-f]{64}$/);
    expect(out.warnings).toEqual([]);
    expect(out.config.gateway.limits.bodyBytes).toBe(1048576);
  });

  it('masks the password in a postgres store URL, in YAML and JSON output alike', async () => {
    const password = 'Xq7-very-secret-pw';
    const file = await configFile(
      'pg.yaml',
      [
        'store:',
        `  url: postgres://portcullis:${password}@db.internal:5432/portcullis?sslmode=verify-full`,
      ].join('\n') + '\n',
    );
    const yamlRun = await portcullis('config', 'validate', '--config', file);
    expect(yamlRun.code).toBe(0);
    expect((parseYaml(yamlRun.stdout) as { store: { url: string } }).store.url).toBe(
      'postgres://portcullis:****@db.internal:5432/portcullis?sslmode=verify-full',
    );
    const jsonRun = await portcullis('config', 'validate', '--config', file, '--json');
    expect(jsonRun.code).toBe(0);
    expect((JSON.parse(jsonRun.stdout) as { config: { store: { url: string } } }).config.store.url).toBe(
      'postgres://portcullis:****@db.internal:5432/portcullis?sslmode=verify-full',
    );
    for (const r of [yamlRun, jsonRun]) {
      expect(r.stdout + r.stderr).not.toContain(password);
    }
  });

  it('an invalid configuration exits 1 and stderr names file:line, the key path and what is expected', async () => {
    const file = await configFile(
      'invalid.yaml',
      ['gateway:', '  port: eighty', '  publicUrl: http://localhost', 'loging:', '  level: info'].join('\n') +
        '\n',
    );
    const r = await portcullis('config', 'validate', '--config', file);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain('portcullis: invalid configuration');
    expect(r.stderr).toContain(`${file}:2:3: gateway.port: expected integer`);
    expect(r.stderr).toContain(
      `${file}:3:3: gateway.publicUrl: has the wrong form: expected to match ^https://`,
    );
    expect(r.stderr).toContain(`${file}:4:1: loging: unknown key`);
  });

  it('--json on an invalid configuration prints valid: false with the issues', async () => {
    const file = await configFile('invalid-json.yaml', ['admin:', '  host: 0.0.0.0'].join('\n') + '\n');
    const r = await portcullis('config', 'validate', '--config', file, '--json');
    expect(r.code).toBe(1);
    const out = JSON.parse(r.stdout) as { valid: boolean; file: string; issues: Record<string, unknown>[] };
    expect(out.valid).toBe(false);
    expect(out.file).toBe(file);
    expect(out.issues).toHaveLength(1);
    expect(out.issues[0]).toMatchObject({ path: 'admin.host', line: 2 });
    expect(out.issues[0]?.message).toContain('admin-loopback');
  });

  it('a missing configuration file is reported, with exit 1', async () => {
    const file = join(dir, 'does-not-exist.yaml');
    const r = await portcullis('config', 'validate', '--config', file);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${file}: (top level): cannot read the file (ENOENT)`);
  });

  it('a missing OpenAPI file is reported against apis[0].openapi with its line', async () => {
    const file = await configFile(
      'missing-openapi.yaml',
      [...API.map((l) => l.replace('api.yaml', 'nowhere.yaml'))].join('\n') + '\n',
    );
    const r = await portcullis('config', 'validate', '--config', file);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${file}:3:5: apis[0].openapi: cannot read`);
    expect(r.stderr).toContain('ENOENT');
  });

  it('a broken OpenAPI file is reported against apis[0].openapi with its line', async () => {
    await writeFile(join(dir, 'broken-api.yaml'), 'openapi: 3.1.0\npaths: [\n');
    await writeFile(join(dir, 'not-openapi.yaml'), 'swagger: "2.0"\npaths: {}\n');
    const broken = await configFile(
      'broken-openapi.yaml',
      [...API.map((l) => l.replace('api.yaml', 'broken-api.yaml'))].join('\n') + '\n',
    );
    const r = await portcullis('config', 'validate', '--config', broken, '--json');
    expect(r.code).toBe(1);
    const out = JSON.parse(r.stdout) as { valid: boolean; issues: Record<string, unknown>[] };
    expect(out.valid).toBe(false);
    expect(out.issues).toEqual([
      expect.objectContaining({
        path: 'apis[0].openapi',
        line: 3,
        message: expect.stringMatching(/not valid YAML/),
      }),
    ]);
    const notOpenapi = await configFile(
      'not-openapi-config.yaml',
      [...API.map((l) => l.replace('api.yaml', 'not-openapi.yaml'))].join('\n') + '\n',
    );
    const r2 = await portcullis('config', 'validate', '--config', notOpenapi);
    expect(r2.code).toBe(1);
    expect(r2.stderr).toMatch(/:3:5: apis\[0\]\.openapi: .*3\.0\.x or 3\.1\.x/);
  });

  it('a per-operation rate limit for an operationId the document does not declare is reported with its line', async () => {
    const limits = (id: string) => [
      ...API,
      '    rateLimits:',
      '      operations:',
      `        ${id}:`,
      '          ip: { burst: { points: 5, seconds: 1 } }',
    ];
    const typo = await configFile('typo-operation.yaml', limits('serchItems').join('\n') + '\n');
    const r = await portcullis('config', 'validate', '--config', typo);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      `${typo}:9:9: apis[0].rateLimits.operations.serchItems: operationId "serchItems" is not declared in api.yaml`,
    );
    const right = await configFile('right-operation.yaml', limits('searchItems').join('\n') + '\n');
    expect((await portcullis('config', 'validate', '--config', right)).code).toBe(0);
  });

  it('an operation requiring a security scheme the gateway cannot verify is refused at load, naming it', async () => {
    await writeFile(
      join(dir, 'basic-api.yaml'),
      stringify({
        openapi: '3.1.0',
        info: { title: 'basic', version: '1' },
        components: { securitySchemes: { password: { type: 'http', scheme: 'basic' } } },
        paths: {
          '/a': { get: { security: [{ password: [] }], responses: { '200': { description: 'ok' } } } },
        },
      }),
    );
    const file = await configFile(
      'basic-config.yaml',
      API.map((l) => l.replace('api.yaml', 'basic-api.yaml')).join('\n') + '\n',
    );
    const r = await portcullis('config', 'validate', '--config', file);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /:3:5: apis\[0\]\.openapi: paths\."\/a"\.get: security scheme "password" is http "basic"/,
    );
  });

  it('every invalid schema of an OpenAPI file is reported at once, with its line and pointer in words', async () => {
    await writeFile(
      join(dir, 'bad-schemas.yaml'),
      [
        'openapi: 3.1.0',
        'info: { title: t, version: "1" }',
        'paths:',
        '  /a:',
        '    get:',
        '      parameters:',
        '        - { name: q, in: query, schema: { type: strnig } }',
        '      responses:',
        '        "200": { description: ok, content: { application/json: { schema: { required: 5 } } } }',
      ].join('\n') + '\n',
    );
    const file = await configFile(
      'bad-schemas-config.yaml',
      API.map((l) => l.replace('api.yaml', 'bad-schemas.yaml')).join('\n') + '\n',
    );
    const r = await portcullis('config', 'validate', '--config', file);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      'apis[0].openapi: bad-schemas.yaml:7:49 /paths/~1a/get/parameters/0/schema/type: must be one of array, boolean, integer, null, number, object, string (got "strnig")',
    );
    expect(r.stderr).toContain(
      'apis[0].openapi: bad-schemas.yaml:9:86 /paths/~1a/get/responses/200/content/application~1json/schema/required: must be array (got 5)',
    );
    expect(r.stderr).not.toMatch(/data\/properties|undefined/);
  });

  it('a configuration with a working OpenAPI file beside it is valid', async () => {
    const file = await configFile('good.yaml', API.join('\n') + '\n');
    const r = await portcullis('config', 'validate', '--config', file, '--json');
    expect(r.code).toBe(0);
    expect((JSON.parse(r.stdout) as { valid: boolean }).valid).toBe(true);
  });
});

describe('portcullis start with a bad configuration', () => {
  it('exits non-zero with the same kind of message, and starts nothing', async () => {
    const port = await freePort();
    const file = await configFile(
      'start-bad.yaml',
      ['gateway:', `  port: ${String(port)}`, '  limits:', '    bodyBytes: 5000000'].join('\n') + '\n',
    );
    const dataDir = join(dir, 'start-bad-data');
    const r = await portcullis('start', '--config', file, '--data-dir', dataDir);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('portcullis: invalid configuration');
    expect(r.stderr).toContain(`${file}:4:5: gateway.limits.bodyBytes:`);
    expect(r.stderr).toContain('"request-limits"');
    expect(r.stderr).not.toContain('Portcullis is running');
    expect(r.stdout).not.toContain('"started"');
    // Nothing was created or opened: the configuration is checked before anything else.
    expect(existsSync(dataDir)).toBe(false);
  });

  it('a broken OpenAPI file also stops start-up, naming apis[0].openapi', async () => {
    const file = await configFile(
      'start-broken-openapi.yaml',
      [
        'gateway:',
        '  port: 0',
        'admin:',
        '  port: 0',
        ...API.map((l) => l.replace('api.yaml', 'nowhere.yaml')),
      ].join('\n') + '\n',
    );
    const r = await portcullis('start', '--config', file, '--data-dir', join(dir, 'start-broken-data'));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${file}:7:5: apis[0].openapi: cannot read`);
    expect(r.stdout).not.toContain('"started"');
  });
});
