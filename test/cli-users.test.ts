/**
 * `portcullis users create|disable` as a child process, on SQLite and PostgreSQL: the password
 * comes from stdin (never argv), the TOTP URI is printed once, and the user can then sign in.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { cliBackends, runPortcullis } from './cli-harness.ts';
import { queryStoreLog } from '../src/audit/sinks/store.ts';
import { openCliContext } from '../src/cli/context.ts';
import { openKms } from '../src/keys/kms.ts';
import { base32Decode, createUsers, hotp, kmsSecretWrapper, totpStep } from '../src/oauth/users.ts';

const { tmp, backends } = cliBackends('cli-users');

const portcullis = (stdin: string, ...args: string[]) => runPortcullis(args, stdin);

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

  it('lists and shows users, resets a password (audited), and refuses what it must', async () => {
    const dataDir = join(tmp, `data-${String(++counter)}`);
    const config = join(tmp, `portcullis-${String(counter)}.yaml`);
    writeFileSync(config, stringify({ store: { url: backend.storeUrl() }, admin: { enabled: false } }));
    const common = ['--config', config, '--data-dir', dataDir];
    const first = 'first password of grace';
    const second = 'second password of grace';
    expect((await portcullis(`${first}\n`, 'users', 'create', '--username', 'grace', ...common)).code).toBe(
      0,
    );
    expect((await portcullis(`${first} 2\n`, 'users', 'create', '--username', 'heidi', ...common)).code).toBe(
      0,
    );

    const listed = await portcullis('', 'users', 'list', ...common);
    expect(listed.code, listed.stderr).toBe(0);
    const lines = listed.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^USERNAME\s+ID\s+STATUS\s+TOTP\s+ROLES\s+CREATED\s+LAST LOGIN$/);
    expect(lines.slice(1).map((l) => l.split(/\s+/)[0])).toEqual(['grace', 'heidi']);
    const json = await portcullis('', 'users', 'list', '--json', ...common);
    const users = (JSON.parse(json.stdout) as { users: Record<string, unknown>[] }).users;
    expect(users.map((u) => u.username)).toEqual(['grace', 'heidi']);
    for (const u of users) expect(Object.keys(u).join(' ')).not.toMatch(/password_hash|secret/i);

    const shown = await portcullis('', 'users', 'show', '--username', 'grace', '--json', ...common);
    expect(shown.code).toBe(0);
    expect(JSON.parse(shown.stdout)).toMatchObject({ username: 'grace', disabled: false, lastLoginAt: null });
    const unknown = await portcullis('', 'users', 'show', '--username', 'nobody', '--json', ...common);
    expect(unknown.code).toBe(1);
    expect(JSON.parse(unknown.stdout)).toEqual({ error: 'no such user' });

    // A weak new password is refused and changes nothing; a good one replaces the old.
    const weak = await portcullis('short\n', 'users', 'reset-password', '--username', 'grace', ...common);
    expect(weak.code).toBe(1);
    expect(weak.stderr).toContain('at least 12 characters');
    const reset = await portcullis(
      `${second}\n`,
      'users',
      'reset-password',
      '--username',
      'grace',
      '--json',
      ...common,
    );
    expect(reset.code, reset.stderr).toBe(0);
    expect((JSON.parse(reset.stdout) as { passwordChangedAt: string }).passwordChangedAt).toMatch(/^\d{4}-/);
    const nobody = await portcullis(
      `${second}\n`,
      'users',
      'reset-password',
      '--username',
      'nobody',
      ...common,
    );
    expect(nobody.code).toBe(1);
    for (const r of [listed, json, shown, weak, reset, nobody]) {
      expect(r.stdout + r.stderr).not.toContain(first);
      expect(r.stdout + r.stderr).not.toContain(second);
    }

    const ctx = await openCliContext({ config, dataDir });
    try {
      const directory = createUsers({
        db: ctx.store.db,
        wrapper: kmsSecretWrapper(openKms(ctx.loaded.config.oauth.kms, dataDir).kms),
        login: ctx.loaded.config.oauth.login,
      });
      expect(await directory.authenticate({ username: 'grace', password: first, ip: '127.0.0.1' })).toEqual({
        ok: false,
      });
      expect(
        await directory.authenticate({ username: 'grace', password: second, ip: '127.0.0.1' }),
      ).toMatchObject({ ok: true });
      const events = await queryStoreLog(ctx.store.db, { limit: 100 });
      const resets = events.filter((e) => e.event['event.action'] === 'user-reset-password');
      expect(resets.map((e) => e.event['event.outcome'])).toEqual(['failure', 'success', 'failure']);
    } finally {
      await ctx.close();
    }
  }, 240_000);
});
