/**
 * `portcullis users create --role`, `users grant-role` and `users revoke-role` as child
 * processes on SQLite and PostgreSQL: roles land in the store, unknown roles and
 * separation-of-duties conflicts are refused, and every change (refusals too) is an audit event
 * naming the OS user and host that made it.
 */
import { writeFileSync } from 'node:fs';
import { hostname, userInfo } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { queryStoreLog } from '../src/audit/sinks/store.ts';
import { openCliContext } from '../src/cli/context.ts';
import { cliBackends, runPortcullis } from './cli-harness.ts';

const { tmp, backends } = cliBackends('cli-roles');
const portcullis = (stdin: string, ...args: string[]) => runPortcullis(args, stdin);
let counter = 0;

describe.each(backends)('portcullis users roles on $name', (backend) => {
  it('grants roles at creation and later, refuses unknown roles and SoD conflicts, audits each', async () => {
    const dataDir = join(tmp, `data-${String(++counter)}`);
    const config = join(tmp, `portcullis-${String(counter)}.yaml`);
    writeFileSync(
      config,
      stringify({
        store: { url: backend.storeUrl() },
        admin: { enabled: false },
        roles: { clinician: { scopes: ['patients:admin'] } },
      }),
    );
    const common = ['--config', config, '--data-dir', dataDir];
    const created = await portcullis(
      'a password for erin 1\n',
      'users',
      'create',
      '--username',
      'erin',
      '--role',
      'clinician',
      '--role',
      'security-officer',
      '--json',
      ...common,
    );
    expect(created.code, created.stderr).toBe(0);
    expect(JSON.parse(created.stdout)).toMatchObject({
      username: 'erin',
      roles: ['clinician', 'security-officer'],
    });

    const unknown = await portcullis(
      '',
      'users',
      'grant-role',
      '--username',
      'erin',
      '--role',
      'surgeon',
      '--json',
      ...common,
    );
    expect(unknown.code).toBe(1);
    expect(JSON.parse(unknown.stdout).error).toContain('no role "surgeon"');

    const conflict = await portcullis(
      '',
      'users',
      'grant-role',
      '--username',
      'erin',
      '--role',
      'key-custodian',
      ...common,
    );
    expect(conflict.code).toBe(1);
    expect(conflict.stderr).toContain('separation of duties');

    const revoked = await portcullis(
      '',
      'users',
      'revoke-role',
      '--username',
      'erin',
      '--role',
      'clinician',
      '--json',
      ...common,
    );
    expect(revoked.code, revoked.stderr).toBe(0);
    expect(JSON.parse(revoked.stdout)).toMatchObject({ changed: true, roles: ['security-officer'] });

    const listed = await portcullis('', 'users', 'list', '--json', ...common);
    expect((JSON.parse(listed.stdout) as { users: { roles: string[] }[] }).users[0]?.roles).toEqual([
      'security-officer',
    ]);

    const ctx = await openCliContext({ config, dataDir });
    try {
      const events = (await queryStoreLog(ctx.store.db, { limit: 100 }))
        .map((r) => r.event)
        .filter((e) => e['event.action'] === 'role-grant' || e['event.action'] === 'role-revoke');
      expect(
        events.map((e) => [
          e['event.action'],
          e['event.outcome'],
          e['portcullis.role'],
          e['event.reason'] ?? null,
        ]),
      ).toEqual([
        ['role-grant', 'success', 'clinician', null],
        ['role-grant', 'success', 'security-officer', null],
        ['role-grant', 'failure', 'surgeon', 'unknown-role'],
        ['role-grant', 'failure', 'key-custodian', 'separation-of-duties'],
        ['role-revoke', 'success', 'clinician', null],
      ]);
      for (const e of events) {
        expect(e['portcullis.admin.principal']).toBe(`${userInfo().username}@${hostname()}`);
        expect(e['portcullis.admin.via']).toBe('cli');
        // The shared control-plane actor fields (src/audit/actor.ts) too.
        expect(e['user.name']).toBe(userInfo().username);
        expect(e['host.name']).toBe(hostname());
        expect(e['portcullis.listener']).toBe('cli');
        expect(e['portcullis.admin.target']).toBe('erin');
      }
    } finally {
      await ctx.close();
    }
  }, 240_000);
});
