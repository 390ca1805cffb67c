/**
 * Running the real `portcullis` command in tests: a child process on Node 24 from the project
 * folder, no inherited master key, stdin closed or fed; and the two store backends the CLI tests
 * run on (SQLite in a temp dir, PostgreSQL in a fresh schema dropped after the file).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import pg from 'pg';
import { afterAll } from 'vitest';

export const ROOT = resolve(import.meta.dirname, '..');
export const PG_URL = process.env.PORTCULLIS_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `portcullis ARGS`; `stdin` is written and closed (undefined: no stdin at all). The
 * master key is not inherited; `extraEnv` adds variables (e.g. a master key of the test's).
 */
export function runPortcullis(
  args: readonly string[],
  stdin?: string,
  extraEnv: Readonly<Record<string, string>> = {},
  cwd: string = ROOT,
): Promise<Run> {
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.PORTCULLIS_MASTER_KEY;
  Object.assign(env, extraEnv);
  return new Promise((ok, fail) => {
    const child = spawn('sh', [join(ROOT, 'scripts/node24.sh'), join(ROOT, 'src/cli/main.ts'), ...args], {
      cwd,
      stdio: [stdin === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      env,
    });
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    child.stderr?.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    child.on('error', fail);
    child.on('close', (code) => {
      ok({ code, stdout, stderr });
    });
    if (stdin !== undefined) child.stdin?.end(stdin);
  });
}

/**
 * A temp dir and the SQLite/PostgreSQL backends for one test file, cleaned up after it.
 * `prefix` names the temp dir and the PostgreSQL schemas.
 */
export function cliBackends(prefix: string) {
  const tmp = mkdtempSync(join(tmpdir(), `portcullis-${prefix}-`));
  const pgSchemas: string[] = [];
  afterAll(async () => {
    rmSync(tmp, { recursive: true, force: true });
    if (pgSchemas.length === 0) return;
    const client = new pg.Client({ connectionString: PG_URL });
    await client.connect();
    try {
      for (const schema of pgSchemas) await client.query(`drop schema if exists "${schema}" cascade`);
    } finally {
      await client.end();
    }
  });
  const backends = [
    { name: 'sqlite', storeUrl: () => 'sqlite:portcullis.db' },
    {
      name: 'postgres',
      storeUrl: () => {
        const schema = `portcullis_${prefix.replaceAll('-', '_')}_${randomBytes(8).toString('hex')}`;
        pgSchemas.push(schema);
        const url = new URL(PG_URL);
        url.searchParams.set('schema', schema);
        return url.href;
      },
    },
  ];
  return { tmp, backends };
}
