/**
 * `portcullis keys rotate-master` as a child process, on SQLite and PostgreSQL: every wrapped
 * secret moves to a new master key; a run killed part-way (test hook) is resumed by the next
 * run; tokens' keys and peppers are unchanged by it; the rotation is audited; a master key from
 * the environment is refused. Also the backup-and-restore procedure of docs/deployment.md.
 */
import { cpSync, existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { cliBackends, runPortcullis } from './cli-harness.ts';
import { openCliContext } from '../src/cli/context.ts';
import { envelopeKeyId, localKeyId } from '../src/keys/kms.ts';

const { tmp, backends } = cliBackends('cli-master');
let counter = 0;

interface Snapshot {
  kids: string[];
  hmac: string;
  audit: string;
  envelopes: (string | undefined)[];
}

async function snapshot(config: string, dataDir: string): Promise<Snapshot> {
  const ctx = await openCliContext({ config, dataDir });
  try {
    const db = ctx.store.db;
    const rows = [
      ...(await db.selectFrom('signing_keys').select('private_jwk_wrapped as w').execute()),
      ...(await db.selectFrom('audit_keys').select('private_jwk_wrapped as w').execute()),
      ...(await db.selectFrom('key_peppers').select('wrapped as w').execute()),
    ];
    return {
      kids: ctx.keys.list().map((k) => k.kid),
      hmac: ctx.keys.hmac('api-key', 'pcl_test_value'),
      audit: ctx.keys.auditCheckpointSigner().kid,
      envelopes: rows.map((r) => envelopeKeyId(Buffer.from(r.w, 'base64url'))),
    };
  } finally {
    await ctx.close();
  }
}

describe.each(backends)('portcullis keys rotate-master on $name', (backend) => {
  it(
    'moves every wrapped key to a new master key, resumes after a crash, and is audited',
    { timeout: 180_000 },
    async () => {
      const dir = join(tmp, `case-${String(++counter)}`);
      const dataDir = join(dir, 'data');
      const config = join(tmp, `portcullis-${String(counter)}.yaml`);
      writeFileSync(config, stringify({ version: 1, store: { url: backend.storeUrl() } }));
      const common = ['--config', config, '--data-dir', dataDir];
      const listed = await runPortcullis(['keys', 'list', ...common, '--json']);
      expect(listed.code).toBe(0);
      const keyFile = join(dataDir, 'master.key');
      const oldId = localKeyId(readFileSync(keyFile));
      const before = await snapshot(config, dataDir);
      expect(new Set(before.envelopes)).toEqual(new Set([oldId]));

      // Killed after two secrets moved: the journal and the `.next` key survive.
      const crashed = await runPortcullis(['keys', 'rotate-master', ...common, '--json'], undefined, {
        PORTCULLIS_TEST_ROTATE_MASTER_EXIT_AFTER: '2',
      });
      expect(crashed.code).toBe(75);
      expect(existsSync(`${keyFile}.next`)).toBe(true);
      const newId = localKeyId(readFileSync(`${keyFile}.next`));
      expect(localKeyId(readFileSync(keyFile))).toBe(oldId);
      // Half-way, everything still opens (each envelope names its key) and nothing changed.
      const middle = await snapshot(config, dataDir);
      expect(middle.envelopes.filter((e) => e === newId)).toHaveLength(2);
      expect(middle.envelopes.filter((e) => e === oldId).length).toBeGreaterThan(0);
      expect({ ...middle, envelopes: [] }).toEqual({ ...before, envelopes: [] });

      const resumed = await runPortcullis(['keys', 'rotate-master', ...common, '--json']);
      expect(resumed.stderr).toBe('');
      expect(resumed.code).toBe(0);
      const result = JSON.parse(resumed.stdout) as {
        from: string;
        to: string;
        resumed: boolean;
        rewrapped: number;
      };
      expect(result).toMatchObject({ from: oldId, to: newId, resumed: true });
      expect(result.rewrapped).toBe(before.envelopes.length - 2);
      expect(localKeyId(readFileSync(keyFile))).toBe(newId);
      expect(existsSync(`${keyFile}.next`)).toBe(false);
      expect(existsSync(`${keyFile}.retired-${oldId}`)).toBe(true);

      const after = await snapshot(config, dataDir);
      expect(new Set(after.envelopes)).toEqual(new Set([newId]));
      expect({ ...after, envelopes: [] }).toEqual({ ...before, envelopes: [] });

      // A second rotation starts afresh from the new key.
      const again = await runPortcullis(['keys', 'rotate-master', ...common, '--json']);
      expect(again.code).toBe(0);
      expect(JSON.parse(again.stdout)).toMatchObject({ from: newId, resumed: false });

      const search = await runPortcullis([
        'audit',
        'search',
        ...common,
        '--category',
        'key-lifecycle',
        '--json',
      ]);
      expect(search.code).toBe(0);
      expect(search.stdout).toContain(`master key ${oldId} -> ${newId} (resumed)`);
      // Never a key in any output.
      for (const out of [listed, crashed, resumed, again, search]) {
        for (const f of readdirSync(dataDir).filter((n) => n.startsWith('master.key'))) {
          const key = readFileSync(join(dataDir, f));
          expect(out.stdout + out.stderr).not.toContain(key.toString('base64url'));
        }
      }
    },
  );

  it(
    'refuses to rotate a master key that comes from the environment, naming the setting',
    { timeout: 90_000 },
    async () => {
      const dir = join(tmp, `case-${String(++counter)}`);
      const dataDir = join(dir, 'data');
      const config = join(tmp, `portcullis-${String(counter)}.yaml`);
      writeFileSync(config, stringify({ version: 1, store: { url: backend.storeUrl() } }));
      const env = { PORTCULLIS_MASTER_KEY: Buffer.alloc(32, 7).toString('base64url') };
      const common = ['--config', config, '--data-dir', dataDir];
      expect((await runPortcullis(['keys', 'list', ...common], undefined, env)).code).toBe(0);
      const refused = await runPortcullis(['keys', 'rotate-master', ...common], undefined, env);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toContain('PORTCULLIS_MASTER_KEY (oauth.kms.masterKeyEnv)');
      expect(refused.stderr).not.toContain(env.PORTCULLIS_MASTER_KEY);
    },
  );
});

describe('backup and restore of the data directory (docs/deployment.md, Key custody)', () => {
  it(
    'a copy of the data directory with its master key works in a new place; without the key it refuses',
    { timeout: 90_000 },
    async () => {
      const dir = join(tmp, `backup-${String(++counter)}`);
      const dataDir = join(dir, 'data');
      const config = join(tmp, `portcullis-backup.yaml`);
      writeFileSync(config, stringify({ version: 1 }));
      const common = ['--config', config, '--data-dir', dataDir];
      expect((await runPortcullis(['keys', 'rotate', ...common])).code).toBe(0);
      const before = await snapshot(config, dataDir);

      const restored = join(dir, 'restored');
      cpSync(dataDir, restored, { recursive: true });
      const after = await snapshot(config, restored);
      expect({ ...after, envelopes: [] }).toEqual({ ...before, envelopes: [] });

      // The database without its master key: refused loudly, nothing regenerated over it.
      const lost = join(dir, 'lost');
      cpSync(dataDir, lost, { recursive: true, filter: (src) => !src.endsWith('master.key') });
      const refused = await runPortcullis(['keys', 'list', '--config', config, '--data-dir', lost]);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(/cannot decrypt|authentication failed/);
    },
  );
});

describe('portcullis keys rotate-audit', () => {
  it(
    'replaces the audit-checkpoint key; audit verify accepts the checkpoints of the old and the new key',
    { timeout: 120_000 },
    async () => {
      const dir = join(tmp, `audit-${String(++counter)}`);
      const dataDir = join(dir, 'data');
      const config = join(tmp, `portcullis-audit.yaml`);
      writeFileSync(config, stringify({ version: 1 }));
      const common = ['--config', config, '--data-dir', dataDir];
      expect((await runPortcullis(['keys', 'rotate', ...common])).code).toBe(0);
      const rotated = await runPortcullis(['keys', 'rotate-audit', ...common, '--json']);
      expect(rotated.code).toBe(0);
      const { retired, kid } = JSON.parse(rotated.stdout) as { retired: string; kid: string };
      expect(retired).not.toBe(kid);
      expect((await runPortcullis(['keys', 'rotate', ...common])).code).toBe(0);

      const verified = await runPortcullis(['audit', 'verify', ...common, '--json']);
      expect(verified.code).toBe(0);
      const result = JSON.parse(verified.stdout) as { ok: boolean; checkpoints: number };
      expect(result.ok).toBe(true);
      const ctx = await openCliContext({ config, dataDir });
      let kids: string[];
      try {
        kids = (await ctx.store.db.selectFrom('audit_checkpoints').select('kid').execute()).map((r) => r.kid);
      } finally {
        await ctx.close();
      }
      expect(kids).toContain(retired);
      expect(kids).toContain(kid);
      expect(result.checkpoints).toBeGreaterThanOrEqual(2);
    },
  );
});
