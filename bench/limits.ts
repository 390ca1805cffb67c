/**
 * The cost of rate limiting, side by side in one run: `GET /v1/status` through three gateways
 * that differ only in `rateLimits` — off (with the documented exception that needs), the memory
 * backend, and the Redis backend (127.0.0.1:6379, a fresh key prefix). Limits are set high
 * enough that no request is refused: this measures counting, not refusing. Rounds alternate
 * the targets; medians are reported. Not part of `npm test`.
 *
 *   sh scripts/node24.sh bench/limits.ts [--duration 5] [--connections 16] [--rounds 3]
 */
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import { measure } from './load.ts';
import type { LoadTarget, Measurement } from './load.ts';
import { cleanup, makeTempDir, startGateway, startUpstream } from './processes.ts';

const { values } = parseArgs({
  options: {
    duration: { type: 'string', default: '5' },
    connections: { type: 'string', default: '16' },
    rounds: { type: 'string', default: '3' },
  },
});
const durationS = Number(values.duration);
const connections = Number(values.connections);
const rounds = Number(values.rounds);

const HIGH = {
  burst: { points: 1_000_000_000, seconds: 1 },
  sustained: { points: 1_000_000_000, seconds: 60 },
};
const limits = { ip: HIGH, client: HIGH, apiKey: HIGH, user: HIGH };
const EXCEPTION = {
  id: 'bench-limits-off',
  control: 'rate-limits',
  scope: 'benchmark baseline only',
  rationale: 'measures the gateway without rate limiting, as the baseline',
  compensatingControls: ['loopback only, short-lived process'],
  owner: 'bench',
  approver: 'bench',
  expires: '2999-12-31',
};

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? Number.NaN;
};

async function main(): Promise<void> {
  const root = await makeTempDir();
  const upstream = await startUpstream();
  const variants = [
    { label: 'limits off', extra: { rateLimits: { mode: 'off' }, exceptions: [EXCEPTION] } },
    { label: 'memory limiter', extra: { rateLimits: limits } },
    {
      label: 'redis limiter',
      extra: {
        rateLimits: { ...limits, backend: 'redis' },
        redis: { url: 'redis://127.0.0.1:6379', keyPrefix: `bench:${randomUUID()}:` },
      },
    },
  ];
  const targets: LoadTarget[] = [];
  for (const v of variants) {
    const gw = await startGateway(root, {
      name: v.label.replace(/ /g, '-'),
      upstreamUrl: upstream.url,
      logLevel: 'warn',
      accessLog: false,
      extraConfig: v.extra,
    });
    targets.push({
      name: v.label,
      url: `${gw.url}/v1/status`,
      expectStatus: 200,
      servername: gw.servername,
      ca: gw.ca,
    });
    process.stderr.write(`started ${v.label} at ${gw.url}\n`);
  }
  const runs = new Map<string, Measurement[]>(targets.map((t) => [t.name, []]));
  for (const t of targets) await measure(t, { durationS: 1, connections }); // warm-up
  for (let r = 0; r < rounds; r++) {
    for (const t of targets) {
      const m = await measure(t, { durationS, connections });
      runs.get(t.name)?.push(m);
      process.stderr.write(
        `round ${String(r + 1)} ${t.name}: ${m.rps.toFixed(0)} req/s, p99 ${m.p99.toFixed(2)} ms\n`,
      );
    }
  }
  const base = median(runs.get('limits off')?.map((m) => m.rps) ?? []);
  const rows = [['target', 'req/s', 'p50 ms', 'p99 ms', 'vs off', 'unexpected', 'errors']];
  for (const [name, ms] of runs) {
    const rps = median(ms.map((m) => m.rps));
    rows.push([
      name,
      rps.toFixed(0),
      median(ms.map((m) => m.p50)).toFixed(2),
      median(ms.map((m) => m.p99)).toFixed(2),
      `${((rps / base) * 100).toFixed(0)}%`,
      String(ms.reduce((n, m) => n + m.unexpected, 0)),
      String(ms.reduce((n, m) => n + m.errors, 0)),
    ]);
  }
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((row) => row[i]?.length ?? 0))) ?? [];
  for (const row of rows) {
    process.stdout.write(
      row.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ') + '\n',
    );
  }
}

try {
  await main();
} finally {
  await cleanup();
}
