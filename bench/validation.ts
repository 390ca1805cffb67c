/**
 * The cost of request/response validation and of rate limiting, side by side with the bare
 * proxy, in one run. Not part of `npm test`.
 *
 *   sh scripts/node24.sh bench/validation.ts [--duration 5] [--connections 16] [--rounds 3]
 *                                            [--warmup 2] [--json]
 *
 * The same demo upstream (its own process) and the same request, `POST /v1/patients` with a
 * valid JSON body (201, a new record each time), through three `portcullis start` processes that
 * differ only in what the gateway checks (documents in bench/apis.ts):
 *   (a) bare: the body declared `*\/*` without a schema (passed as bytes) and the responses
 *       declared without content (passed unchanged); `rateLimits.mode: off` under a documented
 *       `rate-limits` exception. The closest the gateway comes to a bare proxy.
 *   (b) validated: the demo's `PatientInput` schema on the body (bounded JSON parse, Ajv) and
 *       response enforcement of the 201 (`Patient` schema, `Location` header); rate limits off.
 *   (c) validated + rate limits: (b) with the memory limiter on every dimension, set so high that
 *       it counts every request and refuses none.
 * plus the upstream called directly, for reference. Rounds rotate the order of the targets;
 * medians are reported, ratios against (a).
 */
import { parseArgs } from 'node:util';
import { apisFor, HIGH_RATE_LIMITS, RATE_LIMITS_OFF, VALID_PATIENT, writeBenchDocs } from './apis.ts';
import { measure, stopActiveLoad } from './load.ts';
import type { LoadTarget, Measurement } from './load.ts';
import { cleanup, makeTempDir, procStatusKiB, startGateway, startUpstream } from './processes.ts';

const USAGE = `usage: sh scripts/node24.sh bench/validation.ts [options]

The cost of validation and rate limiting beside the bare proxy (POST /v1/patients).

options:
  --duration <s>      seconds per measurement (default 5)
  --connections <n>   concurrent connections, pipelining 1 (default 16)
  --rounds <n>        rounds over the targets, medians reported (default 3)
  --warmup <s>        warm-up seconds per target (default 2)
  --json              results as JSON on stdout (progress stays on stderr)
  -h, --help          this help
`;

interface Options {
  durationS: number;
  connections: number;
  rounds: number;
  warmupS: number;
  json: boolean;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      duration: { type: 'string', default: '5' },
      connections: { type: 'string', default: '16' },
      rounds: { type: 'string', default: '3' },
      warmup: { type: 'string', default: '2' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  const int = (name: string, text: string, min: number, max: number): number => {
    const n = Number(text);
    if (!/^\d+$/.test(text) || n < min || n > max) {
      throw new Error(`--${name} must be an integer from ${String(min)} to ${String(max)}`);
    }
    return n;
  };
  return {
    durationS: int('duration', values.duration, 1, 600),
    connections: int('connections', values.connections, 1, 1000),
    rounds: int('rounds', values.rounds, 1, 50),
    warmupS: int('warmup', values.warmup, 0, 60),
    json: values.json,
  };
}

function progress(message: string): void {
  process.stderr.write(`bench: ${message}\n`);
}

const median = (values: number[]): number => {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[mid] ?? 0) : ((s[mid - 1] ?? 0) + (s[mid] ?? 0)) / 2;
};

function table(rows: string[][]): string {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((row) => row[i]?.length ?? 0))) ?? [];
  return rows
    .map((row) =>
      row.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  '),
    )
    .join('\n');
}

const BARE = '(a) bare proxy';

async function main(options: Options): Promise<void> {
  const root = await makeTempDir();
  const upstream = await startUpstream();
  const docs = await writeBenchDocs(root);
  const variants = [
    { label: BARE, extra: { ...apisFor(docs.bare, upstream.url), ...RATE_LIMITS_OFF } },
    { label: '(b) validation', extra: { ...apisFor(docs.validated, upstream.url), ...RATE_LIMITS_OFF } },
    {
      label: '(c) validation + rate limits',
      extra: { ...apisFor(docs.validated, upstream.url), rateLimits: HIGH_RATE_LIMITS },
    },
  ];
  const body = JSON.stringify(VALID_PATIENT);
  const post = { method: 'POST' as const, headers: { 'content-type': 'application/json' }, body };
  const targets: LoadTarget[] = [
    { name: 'direct (http)', url: `${upstream.url}/patients`, expectStatus: 201, ...post },
  ];
  const pids = new Map<string, number>();
  for (const [i, v] of variants.entries()) {
    const gw = await startGateway(root, {
      name: `validation-${String(i)}`,
      upstreamUrl: upstream.url,
      logLevel: 'warn',
      accessLog: false,
      extraConfig: v.extra,
    });
    pids.set(v.label, gw.pid);
    targets.push({
      name: v.label,
      url: `${gw.url}/v1/patients`,
      expectStatus: 201,
      servername: gw.servername,
      ca: gw.ca,
      ...post,
    });
    progress(`started ${v.label} at ${gw.url} (pid ${String(gw.pid)})`);
  }

  const load = { durationS: options.durationS, connections: options.connections };
  if (options.warmupS > 0) {
    for (const t of targets) await measure(t, { ...load, durationS: options.warmupS });
  }
  const runs = new Map<string, Measurement[]>(targets.map((t) => [t.name, []]));
  for (let r = 0; r < options.rounds; r++) {
    // Rotate the order, so that no target always runs right after another.
    const order = targets.map((_, i) => targets[(i + r) % targets.length]!);
    for (const t of order) {
      const m = await measure(t, load);
      runs.get(t.name)?.push(m);
      progress(`round ${String(r + 1)} ${t.name}: ${m.rps.toFixed(0)} req/s, p99 ${m.p99.toFixed(2)} ms`);
    }
  }

  const bare = runs.get(BARE) ?? [];
  const baseRps = median(bare.map((m) => m.rps));
  const baseP99 = median(bare.map((m) => m.p99));
  const summaries = targets.map((t) => {
    const ms = runs.get(t.name) ?? [];
    const pid = pids.get(t.name);
    const rps = median(ms.map((m) => m.rps));
    const p99 = median(ms.map((m) => m.p99));
    return {
      target: t.name,
      rps,
      p50: median(ms.map((m) => m.p50)),
      p99,
      rpsRatio: rps / baseRps,
      p99Ratio: p99 / baseP99,
      perRound: ms.map((m) => m.rps),
      bad: ms.reduce((n, m) => n + m.unexpected + m.errors, 0),
      peakRssMiB: pid === undefined ? undefined : (procStatusKiB(pid, 'VmHWM') ?? 0) / 1024,
    };
  });
  if (options.json) {
    process.stdout.write(JSON.stringify({ options, summaries }, null, 2) + '\n');
  } else {
    const rows = [
      [
        'target',
        'req/s',
        'p50 ms',
        'p99 ms',
        'req/s vs (a)',
        'p99 vs (a)',
        'req/s per round',
        'bad',
        'peak RSS MiB',
      ],
    ];
    for (const s of summaries) {
      rows.push([
        s.target,
        s.rps.toFixed(0),
        s.p50.toFixed(2),
        s.p99.toFixed(2),
        s.rpsRatio.toFixed(2),
        s.p99Ratio.toFixed(2),
        s.perRound.map((x) => x.toFixed(0)).join(' / '),
        String(s.bad),
        s.peakRssMiB === undefined ? '-' : s.peakRssMiB.toFixed(1),
      ]);
    }
    process.stdout.write(table(rows) + '\n');
  }
  const bad = summaries.filter((s) => s.bad > 0);
  if (bad.length > 0) {
    progress(`warning: unexpected statuses or errors for ${bad.map((s) => s.target).join(', ')}`);
  }
}

let exiting = false;
async function exit(code: number): Promise<void> {
  if (exiting) return;
  exiting = true;
  stopActiveLoad();
  await cleanup();
  process.exit(code);
}
process.on('SIGINT', () => {
  progress('interrupted; stopping the processes and removing the temp dir');
  void exit(130);
});
process.on('SIGTERM', () => {
  progress('terminated; stopping the processes and removing the temp dir');
  void exit(143);
});

let options: Options;
try {
  options = parseOptions(process.argv.slice(2));
} catch (err) {
  process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n\n${USAGE}`);
  process.exit(2);
}
try {
  await main(options);
  await exit(0);
} catch (err) {
  process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  await exit(1);
}
