/**
 * `portcullis apikeys issue|list|rotate|revoke` as a child process against a temporary data
 * directory, on SQLite and PostgreSQL; the keys it prints are verified in-process with the same
 * key manager (pepper) a gateway would use.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { cliBackends, ROOT, runPortcullis } from './cli-harness.ts';
import type { ApiKeyJson } from '../src/cli/apikeys.ts';
import { openCliContext } from '../src/cli/context.ts';
import { API_KEY_PATTERN, createApiKeyAuthority } from '../src/tokens/api-keys.ts';

const { tmp, backends } = cliBackends('cli-apikeys');

const portcullis = (...args: string[]) => runPortcullis(args);

let counter = 0;

describe.each(backends)('portcullis apikeys on $name', (backend) => {
  it(
    'issues, lists, rotates and revokes; keys are printed once and verify in-process',
    { timeout: 120_000 },
    async () => {
      const dataDir = join(tmp, `case-${String(++counter)}`, 'data');
      const config = join(tmp, `portcullis-${String(counter)}.yaml`);
      writeFileSync(
        config,
        stringify({
          version: 1,
          store: { url: backend.storeUrl() },
          apis: [
            {
              name: 'patients',
              openapi: join(ROOT, 'examples/demo-upstream/openapi.yaml'),
              basePath: '/v1',
              upstream: { url: 'http://127.0.0.1:4010' },
            },
          ],
        }),
      );
      const common = ['--config', config, '--data-dir', dataDir];
      const outputs: string[] = [];
      const run = async (...args: string[]) => {
        const r = await portcullis('apikeys', ...args, ...common);
        outputs.push(r.stdout, r.stderr);
        return r;
      };

      const issued = await run(
        'issue',
        '--name',
        'nightly export',
        '--api',
        'patients',
        '--operation',
        'listPatients',
        '--cidr',
        '192.0.2.0/24',
        '--expires-in',
        '30',
        '--json',
      );
      expect(issued.stderr).toBe('');
      expect(issued.code).toBe(0);
      const first = JSON.parse(issued.stdout) as ApiKeyJson & { key: string };
      expect(Object.keys(first).slice(0, 2)).toEqual(['id', 'key']);
      expect(first.key).toMatch(/^pcl_live_[0-9A-Za-z]{43}_[0-9A-Za-z]{6}$/);
      expect(first).toMatchObject({
        name: 'nightly export',
        apis: ['patients'],
        operations: ['listPatients'],
      });
      expect(first.cidrs).toEqual(['192.0.2.0/24']);

      const human = await run('issue', '--name', 'ops', '--api', 'patients', '--env', 'test');
      expect(human.code).toBe(0);
      const humanKey = human.stdout.trim();
      expect(humanKey).toMatch(/^pcl_test_/);
      expect(human.stderr).toMatch(/shown only this once/);

      // Refusals: an API the configuration does not name, bad CIDRs and expiries.
      for (const bad of [
        ['--api', 'billing'],
        ['--api', 'patients', '--cidr', '10.0.0.0/40'],
        ['--api', 'patients', '--expires-in', '400'],
        ['--api', 'patients', '--expires-in', '1e3'],
      ]) {
        const r = await run('issue', '--name', 'x', ...bad, '--json');
        expect(r.code, bad.join(' ')).toBe(1);
        expect((JSON.parse(r.stdout) as { error: string }).error).toBeTruthy();
      }

      const rotated = await run('rotate', first.id, '--grace-hours', '2', '--json');
      expect(rotated.code).toBe(0);
      const second = JSON.parse(rotated.stdout) as ApiKeyJson & { key: string; previous: ApiKeyJson };
      expect(second.key).not.toBe(first.key);
      expect(second.previous).toMatchObject({ id: first.id, status: 'rotating', replacedBy: second.id });

      const revoked = await run('revoke', second.id, '--json');
      expect(revoked.code).toBe(0);
      expect(JSON.parse(revoked.stdout)).toMatchObject({ id: second.id, status: 'revoked' });
      const missing = await run('revoke', 'ak_doesnotexist', '--json');
      expect(missing.code).toBe(1);

      const listed = await run('list', '--json');
      expect(listed.code).toBe(0);
      const all = (JSON.parse(listed.stdout) as { apikeys: ApiKeyJson[] }).apikeys;
      expect(all.map((k) => [k.name, k.status])).toEqual(
        expect.arrayContaining([
          ['nightly export', 'rotating'],
          ['nightly export', 'revoked'],
          ['ops', 'active'],
        ]),
      );
      const table = await run('list');
      expect(table.stdout).toMatch(/^ID\s+NAME\s+ENV\s+STATUS/);

      // The printed keys verify with the store's own pepper, as a gateway would.
      const ctx = await openCliContext({ config, dataDir });
      try {
        const authority = createApiKeyAuthority(ctx.store, ctx.keys, { flushIntervalMs: 0 });
        const at = { api: 'patients', operationId: 'listPatients', clientIp: '192.0.2.7' };
        expect(await authority.verify(first.key, at)).toMatchObject({ ok: true, id: first.id });
        expect(await authority.verify(second.key, at)).toMatchObject({ ok: false, reason: 'revoked' });
        expect(await authority.verify(first.key, { ...at, clientIp: '198.51.100.1' })).toMatchObject({
          reason: 'source-not-allowed',
        });
        expect(await authority.verify(humanKey, at)).toMatchObject({
          ok: false,
          reason: 'wrong-environment',
        });
        await authority.close();
      } finally {
        await ctx.close();
      }

      // Each key appears exactly in the one output that issued it, nowhere else.
      const printed = outputs.join('\n');
      for (const key of [first.key, second.key, humanKey]) {
        expect(printed.split(key).length - 1, key.slice(0, 12)).toBe(1);
      }
      expect(listed.stdout.match(API_KEY_PATTERN)).toBeNull();
      expect(table.stdout.match(API_KEY_PATTERN)).toBeNull();
    },
  );
});
