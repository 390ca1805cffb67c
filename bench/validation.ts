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
import { apisFor, HIGH_RATE_LIMITS, RATE_LIMITS_OFF, VALID_PATIENT, writeBenchDocs } from './apis.ts';
import type { LoadTarget, Measurement } from './load.ts';
import { makeTempDir, procStatusKiB, startGateway, startUpstream } from './processes.ts';
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

type Options = BenchOptions;

const USAGE = `usage: sh scripts/node24.sh bench/validation.ts [options]

The cost of validation and rate limiting beside the bare proxy (POST /v1/patients).

${BENCH_OPTIONS_USAGE}`;

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

  const measured = await measureRounds(targets, options);
  const runs = new Map<string, Measurement[]>(
    [...measured].map(([t, rounds]) => [t.name, rounds.map((r) => r.m)]),
  );

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

await runBench(USAGE, (argv) => parseBenchOptions(argv, USAGE), main);
