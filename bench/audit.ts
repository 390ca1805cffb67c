/**
 * `sh scripts/node24.sh bench/audit.ts`: what auditing costs, side by side in one run.
 *
 * Two measurements:
 *
 * **`--gateway`: end to end.** Every gateway request emits one audit event (src/server/observe.ts).
 * Starts the demo upstream and two `portcullis start` processes (bench/processes.ts), one with
 * `audit.durability: batched` (the default) and one with `strict`, and loads
 * `GET /v1/status` (a public operation: authorization/allow event) on each with autocannon, plus
 * the upstream directly as a reference. Auditing cannot be switched off by configuration (the
 * chain needs the store or the file sink), so there is no "audit off" gateway: **batched is the
 * baseline**, and the audit log's own cost without a gateway is the second measurement. After
 * the rounds it counts `audit_events` in each gateway's store against the responses.
 *
 * **Default: the audit log alone.** N concurrent "requests" (async loops) each record one request
 * event per iteration through `AuditLog.emit`, against the real store sink (SQLite by default,
 * PostgreSQL with `--store postgres://…`), in three modes:
 *
 * - `off`: the event is built (`buildAuditEvent`, the credential guard included) and dropped;
 *   the baseline of the loop itself.
 * - `batched`: `emit` queues the event and resolves at once; a group commit writes it
 *   (`audit.batchMaxEvents` 256, `audit.batchMaxDelayMs` 50 ms).
 * - `strict`: `emit` resolves only when the event is committed (`audit.durability: strict`).
 *
 * Each round runs every mode in turn (the order rotates), a fresh database per measurement;
 * the figures are medians over the rounds. Throughput counts events committed by the end of the
 * measurement (batched: after the final flush). The gateway measurement reports
 * medians of req/s and p99 the same way. Never part of `npm test`.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { openAuditLog } from '../src/audit/index.ts';
import { buildAuditEvent } from '../src/audit/event.ts';
import type { AuditEventInput } from '../src/audit/event.ts';
import { ConfigSchema } from '../src/config/schema.ts';
import type { AuditConfig } from '../src/config/schema.ts';
import { openStore } from '../src/store/index.ts';
import { Value } from '@sinclair/typebox/value';
import pg from 'pg';
import { benchGateway } from './audit-gateway.ts';

const USAGE = `usage: sh scripts/node24.sh bench/audit.ts [options]

  --duration <s>      seconds per measurement (default 5)
  --concurrency <n>   concurrent request loops (default 16)
  --rounds <n>        rounds of (off, batched, strict), medians reported (default 3)
  --store <url>       sqlite (default) or a postgres:// URL (a fresh schema per measurement)
  --gateway           measure the gateway end to end (batched vs strict vs the upstream direct);
                      --concurrency is then the number of connections
  --json              JSON on stdout
`;

type Mode = 'off' | 'batched' | 'strict';
const MODES: readonly Mode[] = ['off', 'batched', 'strict'];

interface Result {
  mode: Mode;
  eventsPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  committed: number;
}

const { values } = parseArgs({
  options: {
    duration: { type: 'string', default: '5' },
    concurrency: { type: 'string', default: '16' },
    rounds: { type: 'string', default: '3' },
    store: { type: 'string', default: 'sqlite' },
    gateway: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (values.help) {
  process.stdout.write(USAGE);
  process.exit(0);
}
const durationMs = Number(values.duration) * 1000;
const concurrency = Number(values.concurrency);
const rounds = Number(values.rounds);
const pgUrl = values.store === 'sqlite' ? undefined : values.store;

const defaults = (Value.Default(ConfigSchema, {}) as { audit: AuditConfig }).audit;

if (values.gateway) {
  await benchGateway({ durationS: durationMs / 1000, connections: concurrency, rounds, json: values.json });
  process.exit(0);
}

function input(i: number): AuditEventInput {
  return {
    'event.category': 'authorization',
    'event.action': 'request',
    'event.outcome': i % 10 === 0 ? 'failure' : 'success',
    'portcullis.api': 'patients',
    'url.path': '/v1/patients/{id}',
    'http.request.method': 'GET',
    'http.response.status_code': i % 10 === 0 ? 403 : 200,
    'client.ip': '203.0.113.7',
    'portcullis.client_id': 'bench-client',
    'trace.id': `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`,
    'event.duration': 1_500_000,
  };
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;
}

const median = (xs: readonly number[]) =>
  percentile(
    [...xs].sort((a, b) => a - b),
    50,
  );

async function measure(mode: Mode): Promise<Result> {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-bench-audit-'));
  let schema: string | undefined;
  let url = 'sqlite:bench.db';
  if (pgUrl !== undefined) {
    schema = `portcullis_bench_${randomBytes(6).toString('hex')}`;
    const u = new URL(pgUrl);
    u.searchParams.set('schema', schema);
    url = u.href;
  }
  const store = await openStore({ url, dataDir: dir });
  const audit =
    mode === 'off'
      ? undefined
      : await openAuditLog({
          config: { ...defaults, durability: mode === 'strict' ? 'strict' : 'batched' },
          dataDir: dir,
          store,
        });
  let committed = 0;
  audit?.onEvent(() => {
    committed++;
  });
  const latencies: number[] = [];
  let n = 0;
  let built = 0;
  const until = performance.now() + durationMs;
  const loop = async () => {
    while (performance.now() < until) {
      const i = n++;
      const t0 = performance.now();
      if (audit === undefined) {
        buildAuditEvent(input(i));
        built++;
        await Promise.resolve();
      } else {
        await audit.emit(input(i));
      }
      latencies.push(performance.now() - t0);
      // A request does other work too: yield to the event loop like a real handler would.
      await new Promise<void>((ok) => setImmediate(ok));
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: concurrency }, loop));
  await audit?.flush();
  const elapsed = (performance.now() - started) / 1000;
  await audit?.close();
  await store.close();
  rmSync(dir, { recursive: true, force: true });
  if (schema !== undefined && pgUrl !== undefined) {
    const client = new pg.Client({ connectionString: pgUrl });
    await client.connect();
    await client.query(`drop schema if exists "${schema}" cascade`);
    await client.end();
  }
  const count = audit === undefined ? built : committed;
  latencies.sort((a, b) => a - b);
  return {
    mode,
    eventsPerSecond: count / elapsed,
    p50Ms: percentile(latencies, 50),
    p99Ms: percentile(latencies, 99),
    committed: count,
  };
}

const results = new Map<Mode, Result[]>(MODES.map((m) => [m, []]));
for (let r = 0; r < rounds; r++) {
  const order = MODES.map((_, k) => MODES[(k + r) % MODES.length] as Mode);
  for (const mode of order) {
    process.stderr.write(`round ${String(r + 1)}/${String(rounds)}: ${mode}…\n`);
    results.get(mode)?.push(await measure(mode));
  }
}

const summary = MODES.map((mode) => {
  const rs = results.get(mode) ?? [];
  return {
    mode,
    eventsPerSecond: Math.round(median(rs.map((x) => x.eventsPerSecond))),
    emitP50Ms: Number(median(rs.map((x) => x.p50Ms)).toFixed(3)),
    emitP99Ms: Number(median(rs.map((x) => x.p99Ms)).toFixed(3)),
  };
});
const base = summary[0]?.eventsPerSecond ?? 1;
const meta = {
  store: pgUrl === undefined ? 'sqlite' : 'postgres',
  durationS: durationMs / 1000,
  concurrency,
  rounds,
  node: process.version,
};
if (values.json) {
  process.stdout.write(JSON.stringify({ ...meta, results: summary }, null, 2) + '\n');
} else {
  process.stdout.write(
    `audit log throughput (${meta.store}, ${String(concurrency)} concurrent loops, ${String(rounds)} x ${String(meta.durationS)} s, medians)\n\n` +
      '| mode    | events/s | vs off | emit p50 ms | emit p99 ms |\n|---|---|---|---|---|\n' +
      summary
        .map(
          (s) =>
            `| ${s.mode.padEnd(7)} | ${String(s.eventsPerSecond).padStart(8)} | ${((s.eventsPerSecond / base) * 100).toFixed(1).padStart(5)}% | ${s.emitP50Ms.toFixed(3).padStart(11)} | ${s.emitP99Ms.toFixed(3).padStart(11)} |`,
        )
        .join('\n') +
      '\n',
  );
}
