/**
 * `npm run bench`: the cost of putting Portcullis in front of an API, measured side by side.
 *
 * Starts the demo upstream and Portcullis (a separate `portcullis start` process, logging at
 * `warn`, no access log) on free loopback ports, then loads `GET /v1/status` alternately
 * direct to the upstream (HTTP) and through the gateway (HTTPS, HTTP/1.1), plus a refused request
 * (404, undeclared path) through the gateway, and optionally a second gateway with the access log
 * on. Every figure is the median over the rounds; the baseline is measured in the same run
 * because the machine is shared and noisy. Never part of `npm test`. See bench/README.md.
 */
import { availableParallelism, cpus, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import type { LoadOptions, LoadTarget, Measurement } from './load.ts';
import { httpsGet, makeTempDir, procStatusKiB, startGateway, startUpstream } from './processes.ts';
import type { GatewayProcess } from './processes.ts';
import { intOption, measureRounds, median, progress, runBench, table } from './cli.ts';
import { HIGH_RATE_LIMITS } from './apis.ts';

const USAGE = `usage: npm run bench -- [options]

Measures GET /v1/status direct to the demo upstream and through Portcullis, side by side.

options:
  --duration <s>      seconds per measurement (default 5)
  --connections <n>   concurrent connections, pipelining 1 (default 16)
  --rounds <n>        rounds of (direct, gateway, …), medians reported (default 3)
  --warmup <s>        warm-up seconds per target before the rounds (default 2)
  --no-access-log     skip the second gateway that writes an access log line per request
  --json              print the results as JSON on stdout (progress stays on stderr)
  -h, --help          this help
`;

interface Options extends LoadOptions {
  rounds: number;
  warmupS: number;
  accessLog: boolean;
  json: boolean;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    allowNegative: true,
    options: {
      duration: { type: 'string', default: '5' },
      connections: { type: 'string', default: '16' },
      rounds: { type: 'string', default: '3' },
      warmup: { type: 'string', default: '2' },
      'access-log': { type: 'boolean', default: true },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  return {
    durationS: intOption('duration', values.duration, 1, 600),
    connections: intOption('connections', values.connections, 1, 1000),
    rounds: intOption('rounds', values.rounds, 1, 50),
    warmupS: intOption('warmup', values.warmup, 0, 60),
    accessLog: values['access-log'],
    json: values.json,
  };
}

interface Summary {
  target: string;
  url: string;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  /** This target over direct: throughput (lower is slower) and p99 latency (higher is slower). */
  rpsRatio: number;
  p99Ratio: number;
  rpsPerRound: number[];
  responses: number;
  unexpectedStatus: number;
  errors: number;
}

function summarize(target: LoadTarget, runs: Measurement[], direct: Measurement[]): Summary {
  const rps = median(runs.map((m) => m.rps));
  const p99 = median(runs.map((m) => m.p99));
  return {
    target: target.name,
    url: target.url,
    rps,
    p50Ms: median(runs.map((m) => m.p50)),
    p99Ms: p99,
    rpsRatio: rps / median(direct.map((m) => m.rps)),
    p99Ratio: p99 / median(direct.map((m) => m.p99)),
    rpsPerRound: runs.map((m) => m.rps),
    responses: runs.reduce((n, m) => n + m.responses, 0),
    unexpectedStatus: runs.reduce((n, m) => n + m.unexpected, 0),
    errors: runs.reduce((n, m) => n + m.errors, 0),
  };
}

const mib = (kib: number | undefined) => (kib === undefined ? 'n/a' : `${(kib / 1024).toFixed(1)} MiB`);

async function checkStatus(what: string, got: Promise<{ status: number }>, want: number): Promise<void> {
  const { status } = await got;
  if (status !== want) throw new Error(`${what}: expected HTTP ${want}, got ${status}`);
}

async function main(options: Options): Promise<void> {
  const machine = {
    cpus: availableParallelism(),
    cpuModel: cpus()[0]?.model ?? 'unknown',
    node: process.version,
    loadAverageAtStart: loadavg().map((l) => Number(l.toFixed(2))),
  };
  const root = await makeTempDir();
  progress(`temp dir ${root}`);

  progress('starting the demo upstream');
  const upstream = await startUpstream();
  progress(`demo upstream ${upstream.url} (pid ${upstream.pid})`);

  const gateways: { gw: GatewayProcess; label: string }[] = [];
  progress('starting the gateway (logging.level warn, accessLog false)');
  const gw = await startGateway(root, {
    name: 'gateway',
    upstreamUrl: upstream.url,
    logLevel: 'warn',
    accessLog: false,
    // Limits that count but never refuse: this measures the proxy path, not the 429 path.
    extraConfig: { rateLimits: HIGH_RATE_LIMITS },
  });
  gateways.push({ gw, label: 'gateway' });
  progress(`gateway ${gw.url} (pid ${gw.pid}, ${gw.exe})`);
  let gwLog: GatewayProcess | undefined;
  if (options.accessLog) {
    progress('starting the second gateway (logging.level info, accessLog true, logs to a file)');
    gwLog = await startGateway(root, {
      name: 'gateway-accesslog',
      upstreamUrl: upstream.url,
      logLevel: 'info',
      accessLog: true,
      extraConfig: { rateLimits: HIGH_RATE_LIMITS },
    });
    gateways.push({ gw: gwLog, label: 'gateway + access log' });
    progress(`gateway + access log ${gwLog.url} (pid ${gwLog.pid})`);
  }

  const targets: LoadTarget[] = [
    { name: 'direct (http)', url: `${upstream.url}/status`, expectStatus: 200 },
    {
      name: 'gateway (https/1.1)',
      url: `${gw.url}/v1/status`,
      expectStatus: 200,
      servername: gw.servername,
      ca: gw.ca,
    },
    ...(gwLog
      ? [
          {
            name: 'gateway + access log',
            url: `${gwLog.url}/v1/status`,
            expectStatus: 200,
            servername: gwLog.servername,
            ca: gwLog.ca,
          },
        ]
      : []),
    {
      name: 'denied 404 (gateway)',
      url: `${gw.url}/v1/undeclared`,
      expectStatus: 404,
      servername: gw.servername,
      ca: gw.ca,
    },
  ];

  // Each target answers as expected, and each gateway's certificate verifies against its dev CA
  // for `localhost` (autocannon itself does not verify; see load.ts).
  await checkStatus('direct', fetch(targets[0]!.url), 200);
  for (const t of targets.slice(1)) {
    await checkStatus(t.name, httpsGet(t.url, t.ca!, t.servername!), t.expectStatus);
  }
  progress('checks passed: 200 direct and through the gateway (certificate verified), 404 when undeclared');

  const rssAtStart = new Map(gateways.map(({ gw: g }) => [g.pid, procStatusKiB(g.pid, 'VmRSS')]));
  const measured = await measureRounds(targets, options);
  const runs = new Map<LoadTarget, Measurement[]>(
    [...measured].map(([t, rounds]) => [t, rounds.map((r) => r.m)]),
  );

  const memory = gateways.map(({ gw: g, label }) => ({
    gateway: label,
    pid: g.pid,
    exe: g.exe,
    rssBeforeLoadKiB: rssAtStart.get(g.pid),
    peakRssKiB: procStatusKiB(g.pid, 'VmHWM'),
    rssKiB: procStatusKiB(g.pid, 'VmRSS'),
  }));
  const direct = runs.get(targets[0]!)!;
  const summaries = targets.map((t) => summarize(t, runs.get(t)!, direct));

  const settings = {
    operation: 'GET /v1/status',
    connections: options.connections,
    pipelining: 1,
    durationS: options.durationS,
    rounds: options.rounds,
    warmupS: options.warmupS,
  };
  if (options.json) {
    process.stdout.write(JSON.stringify({ settings, machine, results: summaries, memory }, null, 2) + '\n');
  } else {
    const rows = [
      ['target', 'req/s', 'p50 ms', 'p99 ms', 'req/s ratio', 'p99 ratio', 'req/s per round', 'bad'],
      ...summaries.map((s) => [
        s.target,
        s.rps.toFixed(0),
        s.p50Ms.toFixed(2),
        s.p99Ms.toFixed(2),
        s.rpsRatio.toFixed(2),
        s.p99Ratio.toFixed(2),
        s.rpsPerRound.map((r) => r.toFixed(0)).join(' / '),
        String(s.unexpectedStatus + s.errors),
      ]),
    ];
    const out = [
      '',
      `Portcullis bench: ${settings.operation}, ${options.connections} connections, pipelining 1, ` +
        `${options.rounds} rounds x ${options.durationS} s per target (medians over rounds; ratio = target / direct)`,
      `machine: ${machine.cpus} CPUs, ${machine.cpuModel}, Node ${machine.node}, load average at start ${machine.loadAverageAtStart.join(' ')}`,
      '',
      table(rows),
      '',
      ...memory.map(
        (m) =>
          `${m.gateway}: peak RSS (VmHWM) ${mib(m.peakRssKiB)}; RSS before load ${mib(m.rssBeforeLoadKiB)}, at end ${mib(m.rssKiB)} (pid ${m.pid}, ${m.exe})`,
      ),
      '',
    ];
    process.stdout.write(out.join('\n'));
  }
  const bad = summaries.filter((s) => s.unexpectedStatus + s.errors > 0);
  if (bad.length > 0) {
    progress(`warning: unexpected statuses or errors for ${bad.map((s) => s.target).join(', ')}`);
  }
}

await runBench(USAGE, parseOptions, main);
