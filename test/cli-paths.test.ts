/**
 * Every command finds the configuration and data directory `portcullis start` uses, wherever it
 * is run from, and no command but `start` creates a data directory it was not given (a command
 * run from another folder used to create a new `.portcullis/` with a new master key and database
 * that the running gateway never saw).
 */
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { cliBackends, runPortcullis } from './cli-harness.ts';
import { recordStart, resolvePaths } from '../src/cli/paths.ts';

const { tmp } = cliBackends('cli-paths');
const state = join(tmp, 'state');
const env = { PORTCULLIS_STATE_DIR: state };
const project = join(tmp, 'project');
const config = join(project, 'gateway.yaml');
const dataDir = join(project, '.portcullis');
const elsewhere = join(tmp, 'elsewhere');

function keyIds(stdout: string): string[] {
  return (JSON.parse(stdout) as { keys: { kid: string }[] }).keys.map((k) => k.kid);
}

describe('where commands find the configuration and the data directory', () => {
  let kids: string[];
  beforeAll(async () => {
    mkdirSync(project, { recursive: true });
    mkdirSync(elsewhere, { recursive: true });
    writeFileSync(config, stringify({ version: 1 }));
    // What `start` leaves behind: its data directory, a record in it and in the per-user index.
    const first = await runPortcullis(
      ['keys', 'list', '--json', '--config', config, '--data-dir', dataDir],
      undefined,
      env,
    );
    expect(first.code).toBe(0);
    kids = keyIds(first.stdout);
    recordStart({ configFile: config, dataDir }, { ...process.env, ...env });
  });

  it('from another folder, --config alone finds the data directory start used', async () => {
    const run = await runPortcullis(
      ['keys', 'list', '--json', '--config', config],
      undefined,
      env,
      elsewhere,
    );
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect(keyIds(run.stdout)).toEqual(kids);
    expect(readdirSync(elsewhere)).toEqual([]);
  });

  it('from the folder start ran in, no flag is needed', async () => {
    const run = await runPortcullis(['keys', 'list', '--json'], undefined, env, project);
    expect(run.code).toBe(0);
    expect(keyIds(run.stdout)).toEqual(kids);
    const nested = join(project, 'sub', 'dir');
    mkdirSync(nested, { recursive: true });
    const below = await runPortcullis(['keys', 'list', '--json'], undefined, env, nested);
    expect(below.code).toBe(0);
    expect(keyIds(below.stdout)).toEqual(kids);
    expect(existsSync(join(nested, '.portcullis'))).toBe(false);
  });

  it('--data-dir alone finds the configuration start recorded', async () => {
    const run = await runPortcullis(
      ['keys', 'list', '--json', '--data-dir', dataDir],
      undefined,
      env,
      elsewhere,
    );
    expect(run.code).toBe(0);
    expect(keyIds(run.stdout)).toEqual(kids);
  });

  it('PORTCULLIS_CONFIG and PORTCULLIS_DATA_DIR stand for the flags', async () => {
    const run = await runPortcullis(
      ['keys', 'list', '--json'],
      undefined,
      { ...env, PORTCULLIS_CONFIG: config, PORTCULLIS_DATA_DIR: dataDir },
      elsewhere,
    );
    expect(run.code).toBe(0);
    expect(keyIds(run.stdout)).toEqual(kids);
  });

  it('without a configuration to find, says exactly what to pass and creates nothing', async () => {
    const run = await runPortcullis(['keys', 'list'], undefined, env, elsewhere);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('no configuration file: pass --config FILE');
    expect(run.stderr).toContain('examples/quickstart/portcullis.yaml');
    const json = await runPortcullis(['clients', 'list', '--json'], undefined, env, elsewhere);
    expect(json.code).toBe(1);
    expect((JSON.parse(json.stdout) as { error: string }).error).toContain('pass --config FILE');
    expect(readdirSync(elsewhere)).toEqual([]);
  });

  it('a configuration start never used gets no implicit data directory', async () => {
    const other = join(elsewhere, 'never-started.yaml');
    writeFileSync(other, stringify({ version: 1 }));
    const run = await runPortcullis(['keys', 'list', '--config', other], undefined, env, elsewhere);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain(`no data directory for ${other}`);
    expect(run.stderr).toContain('--data-dir DIR');
    expect(readdirSync(elsewhere)).toEqual(['never-started.yaml']);
    // Given explicitly, a data directory is still created (the operator asked for it).
    const explicit = join(elsewhere, 'data');
    const made = await runPortcullis(
      ['keys', 'list', '--config', other, '--data-dir', explicit],
      undefined,
      env,
      elsewhere,
    );
    expect(made.code).toBe(0);
    expect(existsSync(join(explicit, 'master.key'))).toBe(true);
  });

  it('flags win over the environment, which wins over what was found', () => {
    const found = resolvePaths({ command: 'other', cwd: project, env });
    expect(found).toMatchObject({
      configFile: config,
      dataDir,
      configFrom: 'start-record',
      dataDirFrom: 'found',
    });
    const byEnv = resolvePaths({
      command: 'other',
      cwd: project,
      env: { ...env, PORTCULLIS_CONFIG: '/x/env.yaml', PORTCULLIS_DATA_DIR: '/x/env-data' },
    });
    expect(byEnv).toMatchObject({ configFile: '/x/env.yaml', dataDir: '/x/env-data', configFrom: 'env' });
    const byFlag = resolvePaths({
      command: 'other',
      cwd: project,
      config: 'flag.yaml',
      dataDir: 'flag-data',
      env: { ...env, PORTCULLIS_CONFIG: '/x/env.yaml' },
    });
    expect(byFlag).toMatchObject({
      configFile: join(project, 'flag.yaml'),
      dataDir: join(project, 'flag-data'),
      configFrom: 'flag',
      dataDirFrom: 'flag',
    });
    // `start` with a configuration and no data directory: the one it used before, else ./.portcullis.
    expect(resolvePaths({ command: 'start', cwd: elsewhere, config, env }).dataDir).toBe(dataDir);
    expect(resolvePaths({ command: 'start', cwd: elsewhere, config: 'new.yaml', env }).dataDir).toBe(
      join(elsewhere, '.portcullis'),
    );
  });
});
