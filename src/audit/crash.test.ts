import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, expect, it } from 'vitest';
import { openStore } from '../store/index.ts';
import { readStoreLog } from './sinks/store.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CHILD = fileURLToPath(new URL('./testdata/crash-child.ts', import.meta.url));
const tmp = mkdtempSync(join(tmpdir(), 'portcullis-audit-crash-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Runs the child until it printed `lines` acknowledged events, then SIGKILLs it. */
function runAndKill(dataDir: string, run: string, lines: number): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--disable-warning=ExperimentalWarning', CHILD, dataDir, run], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.split('\n').length > lines) child.kill('SIGKILL');
    });
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', (_code, signal) => {
      if (signal !== 'SIGKILL') reject(new Error(`child exited on its own: ${err}`));
      // Only complete lines were acknowledged.
      else resolve(out.split('\n').slice(0, -1));
    });
  });
}

it('a SIGKILL loses no durable event, and the chain verifies after restarts', async () => {
  const dataDir = join(tmp, 'data');
  const acked = [
    ...(await runAndKill(dataDir, '1', 150)),
    ...(await runAndKill(dataDir, '2', 150)),
    ...(await runAndKill(dataDir, '3', 60)),
  ];
  expect(acked.length).toBeGreaterThanOrEqual(360);

  const store = await openStore({ url: 'sqlite:db.sqlite', dataDir });
  const { records, checkpoints } = await readStoreLog(store.db);
  await store.close();
  const bySeq = new Map(records.map((r) => [r.seq, r.event['event.reason']]));
  for (const line of acked) {
    const [reason, seq] = line.split(' ');
    expect(bySeq.get(Number(seq)), line).toBe(reason);
  }
  expect(checkpoints.length).toBeGreaterThan(10);

  const config = join(tmp, 'portcullis.yaml');
  writeFileSync(
    config,
    'version: 1\ngateway:\n  publicUrl: https://localhost:8443\nstore:\n  url: sqlite:db.sqlite\n',
  );
  const { stdout } = await promisify(execFile)('sh', [
    join(ROOT, 'scripts/node24.sh'),
    join(ROOT, 'src/cli/main.ts'),
    'audit',
    'verify',
    '--json',
    '--config',
    config,
    '--data-dir',
    dataDir,
  ]);
  expect(JSON.parse(stdout)).toMatchObject({ ok: true, records: records.length });
});
