/**
 * `portcullis users create|disable` as a child process, on SQLite and PostgreSQL: the password
 * comes from stdin (never argv), the TOTP URI is printed once, and the user can then sign in.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { openCliContext } from '../src/cli/context.ts';
import { openKms } from '../src/keys/kms.ts';
import { base32Decode, createUsers, hotp, kmsSecretWrapper, totpStep } from '../src/oauth/users.ts';

const ROOT = resolve(import.meta.dirname, '..');
const PG_URL = process.env.PORTCULLIS_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const tmp = mkdtempSync(join(tmpdir(), 'portcullis-cli-users-'));
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

function portcullis(stdin: string, ...args: string[]): Promise<Run> {
  const env = { ...process.env };
  delete env.PORTCULLIS_MASTER_KEY;
  return new Promise((ok, fail) => {
    const child = spawn('sh', ['scripts/node24.sh', 'src/cli/main.ts', ...args], {
      cwd: ROOT,
      stdio: ['pipe', 'pipe', 'pipe'],
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
    child.stdin.end(stdin);
  });
}

const backends = [
  { name: 'sqlite', storeUrl: () => 'sqlite:portcullis.db' },
  {
    name: 'postgres',
    storeUrl: () => {
      const schema = `portcullis_cli_users_${randomBytes(8).toString('hex')}`;
      pgSchemas.push(schema);
      const url = new URL(PG_URL);
      url.searchParams.set('schema', schema);
      return url.href;
    },
  },
];

let counter = 0;

describe.each(backends)('portcullis users on $name', (backend) => {
  it('creates users from a password on stdin, prints the TOTP URI once, disables them', async () => {
    const dataDir = join(tmp, `data-${String(++counter)}`);
    const config = join(tmp, `portcullis-${String(counter)}.yaml`);
    writeFileSync(config, stringify({ store: { url: backend.storeUrl() }, admin: { enabled: false } }));
    const common = ['--config', config, '--data-dir', dataDir];
    const password = 'cli password for carol 1';

    const created = await portcullis(
      `${password}\n`,
      'users',
      'create',
      '--username',
      'carol',
      '--json',
      ...common,
    );
    expect(created.code, created.stderr).toBe(0);
    const out = JSON.parse(created.stdout) as {
      id: string;
      username: string;
      totp: boolean;
      totpUri?: string;
    };
    expect(out.username).toBe('carol');
    expect(out.totp).toBe(false);
    expect(out.totpUri).toBeUndefined();

    const withTotp = await portcullis(
      `dave's long password\n`,
      'users',
      'create',
      '--username',
      'dave',
      '--totp',
      ...common,
    );
    expect(withTotp.code, withTotp.stderr).toBe(0);
    const uri = withTotp.stdout.trim();
    expect(uri).toMatch(/^otpauth:\/\/totp\/localhost%3A8443:dave\?secret=[A-Z2-7]+&/);

    // Refusals: weak password, duplicate, empty stdin, unknown user to disable.
    const weak = await portcullis('short\n', 'users', 'create', '--username', 'erin', '--json', ...common);
    expect(weak.code).toBe(1);
    expect(JSON.parse(weak.stdout)).toEqual({ error: 'password must have at least 12 characters' });
    const dup = await portcullis(`${password}\n`, 'users', 'create', '--username', 'carol', ...common);
    expect(dup.code).toBe(1);
    expect(dup.stderr).toContain('exists');
    const empty = await portcullis('', 'users', 'create', '--username', 'frank', ...common);
    expect(empty.code).toBe(1);
    expect(empty.stderr).toContain('no password on stdin');
    const missing = await portcullis('', 'users', 'disable', '--username', 'nobody', ...common);
    expect(missing.code).toBe(1);
    // The password never appears in output.
    for (const r of [created, withTotp, weak, dup]) expect(r.stdout + r.stderr).not.toContain(password);

    // The users work: carol signs in, dave needs his TOTP code.
    const ctx = await openCliContext({ config, dataDir });
    try {
      const users = createUsers({
        db: ctx.store.db,
        wrapper: kmsSecretWrapper(openKms(ctx.loaded.config.oauth.kms, dataDir).kms),
        login: ctx.loaded.config.oauth.login,
      });
      expect(await users.authenticate({ username: 'carol', password, ip: '127.0.0.1' })).toMatchObject({
        ok: true,
        secondFactor: 'none',
      });
      const dave = await users.authenticate({
        username: 'dave',
        password: "dave's long password",
        ip: '127.0.0.1',
      });
      expect(dave).toMatchObject({ ok: true, secondFactor: 'totp' });
      const secret = base32Decode(new URL(uri).searchParams.get('secret') ?? '');
      const id = dave.ok ? dave.user.id : '';
      expect(
        await users.verifyTotp({ accountId: id, code: hotp(secret, totpStep(Date.now())), ip: '127.0.0.1' }),
      ).toMatchObject({
        ok: true,
      });
    } finally {
      await ctx.close();
    }

    const disabled = await portcullis('', 'users', 'disable', '--username', 'carol', '--json', ...common);
    expect(disabled.code, disabled.stderr).toBe(0);
    expect(JSON.parse(disabled.stdout)).toMatchObject({ username: 'carol', disabled: true });
    const ctx2 = await openCliContext({ config, dataDir });
    try {
      const users = createUsers({
        db: ctx2.store.db,
        wrapper: kmsSecretWrapper(openKms(ctx2.loaded.config.oauth.kms, dataDir).kms),
        login: ctx2.loaded.config.oauth.login,
      });
      expect(await users.authenticate({ username: 'carol', password, ip: '127.0.0.2' })).toEqual({
        ok: false,
      });
    } finally {
      await ctx2.close();
    }
  }, 120_000);
});
