/**
 * `sh scripts/node24.sh bench/audit-crash.ts`: the audit log's loss bound on a crash under load.
 *
 * A child process opens the audit log as the gateway does (`openAuditLog`, the store sink on
 * SQLite, the default group commit: 256 events or 50 ms) and records request events as fast as it
 * can: a burst of `--burst` `emit` calls, then one line `<last index> <ms since start>` on stdout
 * (stdout is a pipe, written synchronously: a printed line was acknowledged), then a turn of the
 * event loop, as a request handler would give. After a random 1–3 s the parent SIGKILLs it,
 * reopens the store and counts the events that were acknowledged but are not in `audit_events`.
 *
 * Reported per mode (batched, strict), the maximum over `--runs`: events lost, and the loss
 * window: how long before the kill the oldest lost event was acknowledged. In strict mode `emit`
 * resolves only after the commit, so nothing acknowledged may be missing. Never part of `npm test`.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Value } from '@sinclair/typebox/value';
import { openAuditLog } from '../src/audit/index.ts';
import type { AuditEventInput } from '../src/audit/event.ts';
import { ConfigSchema } from '../src/config/schema.ts';
import type { AuditConfig } from '../src/config/schema.ts';
import { openStore } from '../src/store/index.ts';

const USAGE = `usage: sh scripts/node24.sh bench/audit-crash.ts [options]

  --runs <n>     kills per mode (default 8)
  --burst <n>    emits between two acknowledgement lines (default 16)
  --json         JSON on stdout
`;

type Mode = 'batched' | 'strict';
const defaults = (Value.Default(ConfigSchema, {}) as { audit: AuditConfig }).audit;

function input(i: number): AuditEventInput {
  return {
    'event.category': 'authorization',
    'event.action': 'allow',
    'event.outcome': 'success',
    'event.reason': 'public-operation',
    'portcullis.api': 'patients',
    'url.path': '/v1/status',
    'http.request.method': 'GET',
    'http.response.status_code': 200,
    'client.ip': '127.0.0.1',
    'portcullis.listener': 'gateway',
    'trace.id': String(i),
    'event.duration': 1_000_000,
  };
}

// ---------------------------------------------------------------------------------------------
// The child: emit as fast as possible until killed.

async function child(dataDir: string, mode: Mode, burst: number): Promise<never> {
  const store = await openStore({ url: 'sqlite:bench.db', dataDir });
  const audit = await openAuditLog({ config: { ...defaults, durability: mode }, dataDir, store });
  const t0 = performance.now();
  for (let i = 0; ;) {
    const pending: Promise<void>[] = [];
    for (let k = 0; k < burst; k++) pending.push(audit.emit(input(i++)));
    // batched: resolved at once; strict: after the commit.
    await Promise.all(pending);
    process.stdout.write(`${String(i - 1)} ${(performance.now() - t0).toFixed(1)}\n`);
    await new Promise<void>((ok) => setImmediate(ok));
  }
}

// ---------------------------------------------------------------------------------------------
// The parent.

interface RunResult {
  mode: Mode;
  acknowledged: number;
  committed: number;
  lost: number;
  lossWindowMs: number;
  ranMs: number;
}

function runOnce(mode: Mode, burst: number): Promise<RunResult> {
  const dataDir = mkdtempSync(join(tmpdir(), 'portcullis-bench-crash-'));
  return new Promise<{ acks: [number, number][]; ranMs: number }>((ok, fail) => {
    const c = spawn(
      process.execPath,
      [
        '--disable-warning=ExperimentalWarning',
        import.meta.filename,
        '--child',
        dataDir,
        '--mode',
        mode,
        '--burst',
        String(burst),
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    let out = '';
    let timer: NodeJS.Timeout | undefined;
    c.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      timer ??= setTimeout(() => c.kill('SIGKILL'), 1000 + Math.random() * 2000);
    });
    c.on('exit', (_code, signal) => {
      if (signal !== 'SIGKILL') {
        fail(new Error('the child exited on its own'));
        return;
      }
      const acks = out
        .split('\n')
        .slice(0, -1) // only complete lines were acknowledged
        .map((l) => l.split(' ').map(Number) as [number, number]);
      ok({ acks, ranMs: acks.at(-1)?.[1] ?? 0 });
    });
  }).then(async ({ acks, ranMs }) => {
    const store = await openStore({ url: 'sqlite:bench.db', dataDir });
    const rows = await store.db.selectFrom('audit_events').select('trace_id').execute();
    await store.close();
    rmSync(dataDir, { recursive: true, force: true });
    const committed = new Set(rows.map((r) => Number(r.trace_id)));
    const lastAcked = acks.at(-1)?.[0] ?? -1;
    let lost = 0;
    let firstLost = -1;
    for (let i = 0; i <= lastAcked; i++) {
      if (committed.has(i)) continue;
      lost++;
      if (firstLost < 0) firstLost = i;
    }
    const ackedAt = acks.find(([idx]) => idx >= firstLost)?.[1] ?? ranMs;
    return {
      mode,
      acknowledged: lastAcked + 1,
      committed: committed.size,
      lost,
      lossWindowMs: lost === 0 ? 0 : Number((ranMs - ackedAt).toFixed(1)),
      ranMs: Number(ranMs.toFixed(0)),
    };
  });
}

const { values } = parseArgs({
  options: {
    child: { type: 'string' },
    mode: { type: 'string', default: 'batched' },
    runs: { type: 'string', default: '8' },
    burst: { type: 'string', default: '16' },
    json: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (values.help) {
  process.stdout.write(USAGE);
  process.exit(0);
}
const burst = Number(values.burst);
if (values.child !== undefined) await child(values.child, values.mode as Mode, burst);

const runs = Number(values.runs);
const all: RunResult[] = [];
for (const mode of ['batched', 'strict'] as const) {
  for (let r = 0; r < runs; r++) {
    const result = await runOnce(mode, burst);
    process.stderr.write(`${mode} run ${String(r + 1)}/${String(runs)}: ${JSON.stringify(result)}\n`);
    all.push(result);
  }
}
const summary = (['batched', 'strict'] as const).map((mode) => {
  const rs = all.filter((r) => r.mode === mode);
  return {
    mode,
    runs: rs.length,
    maxLostEvents: Math.max(...rs.map((r) => r.lost)),
    maxLossWindowMs: Math.max(...rs.map((r) => r.lossWindowMs)),
    eventsPerSecond: Math.round(
      rs.reduce((s, r) => s + r.acknowledged, 0) / (rs.reduce((s, r) => s + r.ranMs, 0) / 1000),
    ),
  };
});
if (values.json) {
  process.stdout.write(JSON.stringify({ burst, node: process.version, summary, runs: all }, null, 2) + '\n');
} else {
  process.stdout.write(
    `audit loss on SIGKILL under load (SQLite store sink, default group commit, burst ${String(burst)}, max over ${String(runs)} runs)\n\n` +
      '| mode    | acknowledged events/s | max lost events | max loss window ms |\n|---|---|---|---|\n' +
      summary
        .map(
          (s) =>
            `| ${s.mode.padEnd(7)} | ${String(s.eventsPerSecond).padStart(21)} | ${String(s.maxLostEvents).padStart(15)} | ${String(s.maxLossWindowMs).padStart(18)} |`,
        )
        .join('\n') +
      '\n',
  );
}
