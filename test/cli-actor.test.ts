/**
 * Issue 13: every control-plane change made from the CLI names its actor — the OS account
 * (`user.name`), the account behind sudo (`portcullis.actor.sudo_user`) and the host
 * (`host.name`) — through the real `portcullis` command on SQLite and PostgreSQL, for a
 * successful change, a refused one and an audit prune; `controlPlaneActor` carries the admin
 * identity the admin API will pass.
 */
import { writeFileSync } from 'node:fs';
import { hostname, userInfo } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { controlPlaneActor } from '../src/audit/actor.ts';
import { openStore } from '../src/store/index.ts';
import { cliBackends, runPortcullis } from './cli-harness.ts';

const { tmp, backends } = cliBackends('cli-actor');
const PASSWORD = 'actor test password 8c2d';
let counter = 0;

describe.each(backends)('CLI changes name their actor on $name', (backend) => {
  it('records the OS user, the sudo user and the host on every CLI change', async () => {
    const dataDir = join(tmp, `data-${String(++counter)}`);
    const config = join(tmp, `portcullis-${String(counter)}.yaml`);
    const storeUrl = backend.storeUrl();
    writeFileSync(config, stringify({ store: { url: storeUrl }, admin: { enabled: false } }));
    const common = ['--config', config, '--data-dir', dataDir];

    // Plain: no SUDO_USER in the environment.
    const created = await runPortcullis(
      ['users', 'create', '--username', 'alice', ...common],
      `${PASSWORD}\n`,
      {
        SUDO_USER: '',
      },
    );
    expect(created.code, created.stderr).toBe(0);
    // Through sudo: the invoking account is recorded beside the effective one; a refusal too.
    const sudo = { SUDO_USER: 'operator-olga' };
    expect((await runPortcullis(['users', 'disable', '--username', 'alice', ...common], '', sudo)).code).toBe(
      0,
    );
    const refused = await runPortcullis(['users', 'disable', '--username', 'nobody', ...common], '', sudo);
    expect(refused.code).toBe(1);
    const readEvents = async () => {
      const store = await openStore({ url: storeUrl, dataDir });
      try {
        const rows = await store.db.selectFrom('audit_events').select('event').orderBy('seq').execute();
        return rows.map((r) => JSON.parse(r.event) as Record<string, unknown>);
      } finally {
        await store.close();
      }
    };
    const before = await readEvents();
    // A prune removes those records (the prune event stays): read them first.
    const pruned = await runPortcullis(
      ['audit', 'prune', '--before', new Date(Date.now() + 60_000).toISOString(), ...common],
      '',
      sudo,
    );
    expect(pruned.code, pruned.stderr).toBe(0);
    const events = [...before, ...(await readEvents())];
    const cli = events.filter((e) => e['portcullis.listener'] === 'cli');
    const actor = { 'user.name': userInfo().username, 'host.name': hostname() };
    const find = (action: string, outcome: string) =>
      cli.find((e) => e['event.action'] === action && e['event.outcome'] === outcome);
    const create = find('user-create', 'success');
    expect(create).toMatchObject(actor);
    expect(create).not.toHaveProperty('portcullis.actor.sudo_user');
    expect(find('user-disable', 'success')).toMatchObject({
      ...actor,
      'portcullis.actor.sudo_user': 'operator-olga',
    });
    expect(find('user-disable', 'failure')).toMatchObject({
      ...actor,
      'portcullis.actor.sudo_user': 'operator-olga',
    });
    expect(find('prune', 'success')).toMatchObject({
      ...actor,
      'portcullis.actor.sudo_user': 'operator-olga',
    });
    // Every CLI event names its actor; none carries the password.
    expect(cli.length).toBeGreaterThanOrEqual(4);
    for (const e of cli) expect(e).toMatchObject(actor);
    expect(JSON.stringify(events)).not.toContain(PASSWORD);
  }, 120_000);
});

describe('controlPlaneActor', () => {
  it('adds the admin identity for the admin API and leaves out what is unknown', () => {
    expect(controlPlaneActor({ admin: 'admin:ops-1', env: {} })).toEqual({
      'user.name': userInfo().username,
      'host.name': hostname(),
      'portcullis.actor.admin': 'admin:ops-1',
    });
    expect(controlPlaneActor({ env: { SUDO_USER: 'olga' } })).toMatchObject({
      'portcullis.actor.sudo_user': 'olga',
    });
    expect(controlPlaneActor({ env: {} })).not.toHaveProperty('portcullis.actor.admin');
  });
});
