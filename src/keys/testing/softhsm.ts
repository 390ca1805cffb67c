/**
 * Test helper: a real SoftHSM2 token in a temporary directory (Debian package `softhsm2`).
 * SoftHSM reads SOFTHSM2_CONF when the module is initialised, so a test file calls this once,
 * before anything opens the module, and gets its own token store.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const SOFTHSM_MODULE = '/usr/lib/softhsm/libsofthsm2.so';

export interface TestToken {
  readonly dir: string;
  readonly conf: string;
  readonly module: string;
  readonly label: string;
  readonly pin: string;
  cleanup(): void;
}

export function initSoftHsmToken(label = 'portcullis-test', pin = '1234'): TestToken {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-softhsm-'));
  const tokens = join(dir, 'tokens');
  mkdirSync(tokens);
  const conf = join(dir, 'softhsm2.conf');
  writeFileSync(conf, `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\n`);
  execFileSync(
    'softhsm2-util',
    ['--init-token', '--free', '--label', label, '--pin', pin, '--so-pin', '5678'],
    { env: { ...process.env, SOFTHSM2_CONF: conf }, stdio: 'pipe' },
  );
  process.env.SOFTHSM2_CONF = conf;
  return {
    dir,
    conf,
    module: SOFTHSM_MODULE,
    label,
    pin,
    cleanup: () => {
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
