/**
 * `portcullis keys list|rotate` as a child process against a temporary data directory, on SQLite
 * and PostgreSQL.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { openCliContext } from '../src/cli/context.ts';
import type { KeyJson } from '../src/cli/keys.ts';
import { PRIVATE_JWK_MEMBERS } from '../src/keys/generate.ts';

const ROOT = resolve(import.meta.dirname, '..');
const PG_URL = process.env.PORTCULLIS_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const tmp = mkdtempSync(join(tmpdir(), 'portcullis-cli-keys-'));
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

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function portcullis(...args: string[]): Promise<Run> {
  const env = { ...process.env };
  delete env.PORTCULLIS_MASTER_KEY;
  return new Promise((ok, fail) => {
    const child = spawn('sh', ['scripts/node24.sh', 'src/cli/main.ts', ...args], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env,
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    child.on('error', fail);
    child.on('close', (code) => {
      ok({ code, stdout, stderr });
    });
  });
}

const backends = [
  { name: 'sqlite', storeUrl: () => 'sqlite:portcullis.db' },
  {
    name: 'postgres',
    storeUrl: () => {
      const schema = `portcullis_cli_keys_${randomBytes(8).toString('hex')}`;
      pgSchemas.push(schema);
      const url = new URL(PG_URL);
      url.searchParams.set('schema', schema);
      return url.href;
    },
  },
];

let counter = 0;

describe.each(backends)('portcullis keys on $name', (backend) => {
  it('lists and rotates keys without printing key material', async () => {
    const dir = join(tmp, `case-${String(++counter)}`);
    const dataDir = join(dir, 'data');
    const config = join(tmp, `portcullis-${String(counter)}.yaml`);
    writeFileSync(config, stringify({ version: 1, store: { url: backend.storeUrl() } }));
    const common = ['--config', config, '--data-dir', dataDir];
    const outputs: string[] = [];

    const listed = await portcullis('keys', 'list', ...common, '--json');
    outputs.push(listed.stdout, listed.stderr);
    expect(listed.stderr).toBe('');
    expect(listed.code).toBe(0);
    const before = (JSON.parse(listed.stdout) as { keys: KeyJson[] }).keys;
    expect(before.map((k) => [k.status, k.alg])).toEqual([
      ['current', 'ES256'],
      ['next', 'ES256'],
    ]);
    expect(before[0]?.activatedAt).toMatch(/^\d{4}-\d\d-\d\dT/);
    expect(before[1]?.activatedAt).toBeNull();
    expect(statSync(dataDir).mode & 0o777).toBe(0o700);
    expect(statSync(join(dataDir, 'master.key')).mode & 0o777).toBe(0o600);

    const rotated = await portcullis('keys', 'rotate', ...common, '--json', '--reason', 'cli test');
    outputs.push(rotated.stdout, rotated.stderr);
    expect(rotated.code).toBe(0);
    const after = (JSON.parse(rotated.stdout) as { keys: KeyJson[] }).keys;
    expect(after.map((k) => k.status)).toEqual(['current', 'next', 'previous']);
    expect(after[0]?.kid).toBe(before[1]?.kid);
    expect(after[2]?.kid).toBe(before[0]?.kid);
    expect(after[2]?.retiresAt).not.toBeNull();

    const human = await portcullis('keys', 'list', ...common);
    outputs.push(human.stdout, human.stderr);
    expect(human.code).toBe(0);
    expect(human.stdout).toMatch(/^STATUS\s+ALG\s+KID/);
    for (const key of after) expect(human.stdout).toContain(key.status.padEnd(8) + `  ES256  ${key.kid}`);

    const humanRotate = await portcullis('keys', 'rotate', ...common);
    outputs.push(humanRotate.stdout, humanRotate.stderr);
    expect(humanRotate.code).toBe(0);
    expect(humanRotate.stderr).toContain(`tokens are now signed with ${after[1]?.kid ?? '?'}`);

    // The same state, seen in-process; none of its secrets was printed.
    const ctx = await openCliContext({ config, dataDir });
    try {
      expect(ctx.keys.current().kid).toBe(after[1]?.kid);
      const secrets = ctx.keys
        .signingJwks()
        .keys.flatMap((k) => PRIVATE_JWK_MEMBERS.map((m) => (k as Record<string, unknown>)[m]))
        .filter((v): v is string => typeof v === 'string');
      expect(secrets.length).toBeGreaterThanOrEqual(4);
      const master = readFileSync(join(dataDir, 'master.key'));
      secrets.push(master.toString('base64url'), master.toString('base64'), master.toString('hex'));
      const printed = outputs.join('\n');
      for (const secret of secrets) expect(printed).not.toContain(secret);
    } finally {
      await ctx.close();
    }

    // A master key file others can read is refused, by name, without its contents.
    chmodSync(join(dataDir, 'master.key'), 0o644);
    const refused = await portcullis('keys', 'list', ...common, '--json');
    expect(refused.code).toBe(1);
    const error = JSON.parse(refused.stdout) as { error: string };
    expect(error.error).toContain(join(dataDir, 'master.key'));
    expect(error.error).toContain('0644');
    const refusedHuman = await portcullis('keys', 'rotate', ...common);
    expect(refusedHuman.code).toBe(1);
    expect(refusedHuman.stderr).toMatch(/^portcullis: master key file .* has mode 0644/);
    const master = readFileSync(join(dataDir, 'master.key'));
    for (const text of [refused.stdout, refused.stderr, refusedHuman.stdout, refusedHuman.stderr]) {
      expect(text).not.toContain(master.toString('base64url'));
      expect(text).not.toContain(master.toString('hex'));
    }
  });
});
