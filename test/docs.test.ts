import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { PROBLEMS } from '../src/gateway/problems.ts';

describe('docs', () => {
  it('docs/problems.md lists exactly the registered problem codes with their statuses', async () => {
    const text = await readFile(new URL('../docs/problems.md', import.meta.url), 'utf8');
    const rows = [...text.matchAll(/^\|\s*`([a-z-]+)`\s*\|\s*(\d{3})\s*\|/gm)].map((m) => [
      m[1],
      Number(m[2]),
    ]);
    expect(Object.fromEntries(rows)).toEqual(
      Object.fromEntries(Object.entries(PROBLEMS).map(([k, v]) => [k, v.status])),
    );
    expect(rows).toHaveLength(Object.keys(PROBLEMS).length);
  });
});

describe('configuration reference', () => {
  it('docs/configuration.md is generated from the current schema (run `npm run docs:config`)', async () => {
    const { renderConfigReference } = await import('../src/config/reference.ts');
    const text = await readFile(new URL('../docs/configuration.md', import.meta.url), 'utf8');
    expect(text).toBe(renderConfigReference());
  });
});

describe('deployment guide', () => {
  it('its configuration example is a valid distributed configuration, passwords from the environment', async () => {
    const { parseConfig } = await import('../src/config/load.ts');
    const text = await readFile(new URL('../docs/deployment.md', import.meta.url), 'utf8');
    const example = /## Configuration[\s\S]*?```yaml\n([\s\S]*?)```/.exec(text)?.[1];
    expect(example).toBeDefined();
    const loaded = parseConfig(example ?? '', '/etc/portcullis/portcullis.yaml', new Date(), {
      PORTCULLIS_PG_PASSWORD: 'pg-pass',
      PORTCULLIS_REDIS_PASSWORD: 'redis-pass',
    });
    expect(loaded.config.cluster.nodes).toBe(4);
    expect(loaded.config.redis?.url).toContain(':redis-pass@');
    // Without the variables it is refused, naming them.
    expect(() => parseConfig(example ?? '', '/etc/portcullis/portcullis.yaml', new Date(), {})).toThrow(
      /PORTCULLIS_PG_PASSWORD is not set/,
    );
  });

  it('its master-key command produces a key the gateway accepts', async () => {
    const { execFileSync } = await import('node:child_process');
    const { loadLocalKek } = await import('../src/keys/kms.ts');
    const text = await readFile(new URL('../docs/deployment.md', import.meta.url), 'utf8');
    // The command as a reader copies it out of the table (`\|` is a table cell's escaped pipe).
    const command = /`(openssl rand 32 [^`]+)`/.exec(text)?.[1]?.replaceAll('\\|', '|');
    expect(command).toBeDefined();
    const key = execFileSync('sh', ['-c', command ?? ''], { encoding: 'utf8' }).trim();
    const loaded = loadLocalKek({
      dataDir: '/nonexistent',
      masterKeyFile: 'master.key',
      masterKeyEnv: 'PORTCULLIS_MASTER_KEY',
      env: { PORTCULLIS_MASTER_KEY: key },
    });
    expect(loaded.kek.length).toBe(32);
    expect(loaded.source).toBe('env:PORTCULLIS_MASTER_KEY');
  });

  it('the systemd unit starts the command with options that exist', async () => {
    const unit = await readFile(new URL('../deploy/portcullis.service', import.meta.url), 'utf8');
    const exec = /^ExecStart=(.*)$/m.exec(unit)?.[1]?.split(/\s+/) ?? [];
    expect(exec.slice(0, 3)).toEqual(['/usr/bin/node', '/opt/portcullis/src/cli/main.ts', 'start']);
    const { execFileSync } = await import('node:child_process');
    const help = execFileSync('sh', ['scripts/node24.sh', 'src/cli/main.ts', 'start', '--help'], {
      cwd: new URL('..', import.meta.url),
      encoding: 'utf8',
    });
    const options = exec.filter((a) => a.startsWith('--'));
    expect(options).toEqual(['--config', '--data-dir', '--workers']);
    for (const option of options) expect(help, option).toContain(`${option} <`);
    expect(unit).toMatch(/^EnvironmentFile=\/etc\/portcullis\/secrets\.env$/m);
    expect(unit).toMatch(/^User=portcullis$/m);
    expect(unit).toMatch(/^NoNewPrivileges=yes$/m);
  });
});
