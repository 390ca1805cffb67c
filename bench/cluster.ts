/**
 * Distributed mode, side by side in one run: `GET /v1/status` direct to the upstream, and through
 * four gateways that differ only in where their state lives —
 *   single (memory)     one process, SQLite, memory limiter (the quickstart's shape)
 *   single (pg+redis)   one process, PostgreSQL store and audit chain, Redis limiter
 *   memory limiter      as above but the rate limiter in memory (isolates the limiter's cost)
 *   --workers 2         two processes on this host sharing the port, PostgreSQL and Redis
 * Limits are high enough that no request is refused: this measures counting, signalling and
 * auditing, not refusing. Rounds alternate the targets; medians are reported, with each target's
 * throughput and p99 as a ratio of the direct call's. Needs PostgreSQL and Redis
 * (PORTCULLIS_BENCH_PG_URL, PORTCULLIS_BENCH_REDIS_URL; defaults on 127.0.0.1; bench/apis.ts). Not part of `npm test`.
 *
 *   npm run bench:cluster -- [--duration 5] [--connections 16] [--rounds 3] [--json]
 */
import { distributedConfig, HIGH_RATE_LIMITS } from './apis.ts';
import {
  BENCH_OPTIONS_USAGE,
  measureRounds,
  median,
  parseBenchOptions,
  progress,
  runBench,
  table,
} from './cli.ts';
import type { BenchOptions } from './cli.ts';
import { measure } from './load.ts';
import type { LoadOptions, LoadTarget, Measurement } from './load.ts';
import { cpuSeconds, makeTempDir, procChildren, startGateway, startUpstream } from './processes.ts';

/** CPU seconds of a process and its direct children (the primary and its workers). */
function treeCpuSeconds(pid: number): number {
  let total = 0;
  for (const p of [pid, ...procChildren(pid)]) {
    try {
      total += cpuSeconds(p);
    } catch {
      /* exited meanwhile */
    }
  }
  return total;
}

const USAGE = `usage: npm run bench:cluster -- [options]

Measures GET /v1/status through Portcullis in single-process and distributed mode (PostgreSQL +
Redis, one process and --workers 2), side by side with a direct call to the upstream.

${BENCH_OPTIONS_USAGE}`;

async function main(options: BenchOptions): Promise<void> {
  const root = await makeTempDir();
  const upstream = await startUpstream();
  const variants = [
    { label: 'single (memory)', extra: { rateLimits: HIGH_RATE_LIMITS }, args: [] },
    { label: 'single (pg+redis)', extra: distributedConfig(1, 'redis'), args: [] },
    { label: 'memory limiter', extra: distributedConfig(1, 'memory'), args: [] },
    { label: '--workers 2', extra: distributedConfig(2, 'redis'), args: ['--workers', '2'] },
  ];
  const targets: LoadTarget[] = [{ name: 'direct (http)', url: `${upstream.url}/status`, expectStatus: 200 }];
  // The gateway's CPU time per request (primary and workers): steadier than req/s on a shared
  // machine, and what --workers must not multiply.
  const pids = new Map<string, number>([['direct (http)', upstream.pid]]);
  const cpuPerRequest = new Map<string, number[]>();
  const run = async (t: LoadTarget, load: LoadOptions): Promise<Measurement> => {
    const pid = pids.get(t.name);
    const cpu0 = pid === undefined ? 0 : treeCpuSeconds(pid);
    const m = await measure(t, load);
    if (pid !== undefined && m.responses > 0) {
      const list = cpuPerRequest.get(t.name) ?? [];
      list.push(((treeCpuSeconds(pid) - cpu0) * 1e6) / m.responses);
      cpuPerRequest.set(t.name, list);
    }
    return m;
  };
  for (const v of variants) {
    progress(`starting ${v.label}`);
    const gw = await startGateway(root, {
      name: v.label.replace(/[^a-z0-9]+/gi, '-'),
      upstreamUrl: upstream.url,
      logLevel: 'warn',
      accessLog: false,
      extraConfig: v.extra,
      args: v.args,
    });
    pids.set(v.label, gw.pid);
    targets.push({
      name: v.label,
      url: `${gw.url}/v1/status`,
      expectStatus: 200,
      servername: gw.servername,
      ca: gw.ca,
    });
  }
  const measured = await measureRounds(targets, options, undefined, run);
  const runs = new Map<string, Measurement[]>(
    [...measured].map(([t, rounds]) => [t.name, rounds.map((r) => r.m)]),
  );
  const direct = runs.get('direct (http)') ?? [];
  const baseRps = median(direct.map((m) => m.rps));
  const baseP99 = median(direct.map((m) => m.p99));
  const results = [...runs].map(([name, ms]) => ({
    name,
    rps: median(ms.map((m) => m.rps)),
    p50: median(ms.map((m) => m.p50)),
    p99: median(ms.map((m) => m.p99)),
    unexpected: ms.reduce((n, m) => n + m.unexpected, 0),
    errors: ms.reduce((n, m) => n + m.errors, 0),
    cpuUsPerRequest: median(cpuPerRequest.get(name) ?? []),
  }));
  if (options.json) {
    process.stdout.write(JSON.stringify({ options, baseline: 'direct (http)', results }, null, 2) + '\n');
  } else {
    const rows = [
      [
        'target',
        'req/s',
        'p50 ms',
        'p99 ms',
        'rps/direct',
        'p99/direct',
        'CPU µs/req',
        'unexpected',
        'errors',
      ],
    ];
    for (const r of results) {
      rows.push([
        r.name,
        r.rps.toFixed(0),
        r.p50.toFixed(2),
        r.p99.toFixed(2),
        (r.rps / baseRps).toFixed(3),
        (r.p99 / baseP99).toFixed(1),
        r.cpuUsPerRequest.toFixed(0),
        String(r.unexpected),
        String(r.errors),
      ]);
    }
    process.stdout.write(table(rows) + '\n');
  }
  if (results.some((r) => r.unexpected > 0 || r.errors > 0)) {
    throw new Error('some requests failed or got an unexpected status: the figures are not comparable');
  }
}

await runBench(USAGE, (argv) => parseBenchOptions(argv, USAGE), main);
