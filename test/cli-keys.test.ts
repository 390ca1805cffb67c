/**
 * `portcullis keys list|rotate` as a child process against a temporary data directory, on SQLite
 * and PostgreSQL.
 */
import { chmodSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { cliBackends, runPortcullis } from './cli-harness.ts';
import { openCliContext } from '../src/cli/context.ts';
import type { KeyJson } from '../src/cli/keys.ts';
import { PRIVATE_JWK_MEMBERS } from '../src/keys/generate.ts';

const { tmp, backends } = cliBackends('cli-keys');

const portcullis = (...args: string[]) => runPortcullis(args);

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
