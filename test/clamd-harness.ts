/**
 * A real ClamAV daemon for tests (Debian `clamav-daemon`): its own temporary configuration,
 * unix socket and signature database — one signature, the EICAR test file, written here (no
 * freshclam, no internet). Started once per test file; stopped by its pid.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** The EICAR anti-virus test file: harmless, detected by every scanner that loads its signature. */
export const EICAR = 'X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*';
export const EICAR_SIGNATURE = 'Portcullis.Test.EICAR';

export interface TestClamd {
  readonly socket: string;
  readonly dir: string;
  stop(): Promise<void>;
}

export async function startClamd(options: { streamMaxLength?: string } = {}): Promise<TestClamd> {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-clamd-'));
  const db = join(dir, 'db');
  mkdirSync(db);
  // An extended (.ndb) signature: any file type, anywhere, the EICAR bytes.
  writeFileSync(
    join(db, 'portcullis-test.ndb'),
    `${EICAR_SIGNATURE}:0:*:${Buffer.from(EICAR).toString('hex')}\n`,
  );
  const socket = join(dir, 'clamd.sock');
  const conf = join(dir, 'clamd.conf');
  writeFileSync(
    conf,
    [
      `LocalSocket ${socket}`,
      `DatabaseDirectory ${db}`,
      `TemporaryDirectory ${dir}`,
      `LogFile ${join(dir, 'clamd.log')}`,
      'Foreground yes',
      `StreamMaxLength ${options.streamMaxLength ?? '10M'}`,
      'SelfCheck 3600',
      '',
    ].join('\n'),
  );
  const child: ChildProcess = spawn('/usr/sbin/clamd', ['-c', conf], { stdio: 'ignore' });
  const state = { exited: false };
  child.on('exit', () => {
    state.exited = true;
  });
  for (let i = 0; i < 200 && !existsSync(socket); i++) {
    if (state.exited) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  if (!existsSync(socket)) {
    child.kill();
    throw new Error(`clamd did not start (is clamav-daemon installed? see ${join(dir, 'clamd.log')})`);
  }
  return {
    socket,
    dir,
    stop: async () => {
      if (!state.exited) {
        const done = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await done;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
