/**
 * `npm run bench:floods`: hostile traffic against a real Portcullis process, and what a
 * legitimate client sees meanwhile. Not part of `npm test`; loopback only; every flood is
 * bounded in count and time and the run stops by itself.
 *
 * One gateway (`portcullis start`, generated config, the fixed upstream of bench/fixed-upstream.ts
 * in its own process, `logging.level: warn`, no access log, rate limits raised so that they
 * count and never refuse) goes through these phases, `--duration` seconds each:
 *
 *   baseline       no flood
 *   connections    idle TCP connections that never send a ClientHello (bench/flood.ts)
 *   slow headers   slowloris: a header line every --interval-ms, never the end of the block
 *   slow bodies    complete headers for 64 KiB, then a body byte every --interval-ms
 *   rapid reset    HTTP/2 streams opened and cancelled at once, one session per source
 *   after          no flood again: does the gateway recover (latency, open files)?
 *
 * Floods come from 127.0.0.1–127.0.0.8, in a child process (bench/flood.ts) at nice 19 (an
 * attacker's CPU is its own; `--same-priority` to share the cores evenly) so that they never
 * delay the legitimate client, which runs here from 127.0.0.100: `--legit` loops of
 * `GET /v1/status`, half on one keep-alive connection each, half on a new TLS connection per
 * request, 20 ms apart, each request abandoned after 5 s. Per phase: the legitimate client's
 * p50/p99 (keep-alive and new connections apart), failures, the gateway's peak open files
 * (`/proc/<pid>/fd` sampled every 250 ms) and peak RSS (VmRSS sampled), open files 2 s after the
 * flood stopped (and how many of them are its upstream pool's connections, which stay open for
 * the upstream's keep-alive), and whether the process survived. If it exits, the run says so and stops. The
 * verdict (exit code 1 unless both) is whether it survived and whether it recovered: every
 * legitimate request of the last phase answered 200.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { loadavg, setPriority } from 'node:os';
import { Agent, request } from 'node:https';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { HIGH_RATE_LIMITS } from './apis.ts';
import { intOption, machineInfo, progress, runBench, table } from './cli.ts';
import type { FloodKind, FloodSpec, FloodStats } from './flood.ts';
import { percentile } from './load.ts';
import {
  cpuSeconds,
  makeTempDir,
  openFiles,
  procExe,
  procStatusKiB,
  ROOT,
  startGateway,
  startUpstream,
  stopTracked,
  trackChild,
} from './processes.ts';
import type { GatewayProcess } from './processes.ts';

const USAGE = `usage: npm run bench:floods -- [options]

Connection, HTTP/2 rapid-reset and slow-client floods against a real Portcullis process, with the
latency a legitimate client sees during each, the gateway's peak open files and RSS, and whether
it survived.

options:
  --duration <s>          seconds per phase (default 10)
  --connections <n>       idle connections in the connection flood (default 8000)
  --slow <n>              connections in each slow-client flood (default 1000)
  --interval-ms <ms>      slow clients: milliseconds between bytes (default 2000)
  --streams <n>           rapid reset: streams opened and cancelled per batch (default 100)
  --legit <n>             legitimate client loops (default 4)
  --floods <list>         which floods, comma-separated (default: all):
                          connections,rapid-reset,slow-headers,slow-bodies
  --gateway-nofile <n>    start the gateway under ulimit -n <n> (default: inherited)
  --same-priority         run the floods at the gateway's CPU priority (default: nice 19, as an
                          attacker's CPU is its own; on a busy machine they then flood less)
  --json                  results as JSON on stdout (progress stays on stderr)
  -h, --help              this help
`;

interface Options {
  durationS: number;
  connections: number;
  slow: number;
  intervalMs: number;
  streams: number;
  legit: number;
  nofile: number | undefined;
  floods: FloodKind[];
  json: boolean;
  samePriority: boolean;
}

/** The floods in their default order: rapid reset last, as it has left the gateway wedged. */
const FLOODS: Record<FloodKind, string> = {
  connections: 'connections',
  'slow-headers': 'slow headers',
  'slow-bodies': 'slow bodies',
  'rapid-reset': 'rapid reset',
};

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      duration: { type: 'string', default: '10' },
      connections: { type: 'string', default: '8000' },
      slow: { type: 'string', default: '1000' },
      'interval-ms': { type: 'string', default: '2000' },
      streams: { type: 'string', default: '100' },
      legit: { type: 'string', default: '4' },
      'gateway-nofile': { type: 'string' },
      floods: { type: 'string', default: Object.keys(FLOODS).join(',') },
      json: { type: 'boolean', default: false },
      'same-priority': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  const nofile = values['gateway-nofile'];
  const floods = values.floods.split(',').filter((f) => f !== '');
  for (const f of floods) {
    if (!Object.hasOwn(FLOODS, f)) throw new Error(`--floods: unknown flood ${f}`);
  }
  return {
    durationS: intOption('duration', values.duration, 1, 300),
    // The flood process has the same open-files limit as this one: stay well below it.
    connections: intOption('connections', values.connections, 1, 18_000),
    slow: intOption('slow', values.slow, 1, 10_000),
    intervalMs: intOption('interval-ms', values['interval-ms'], 10, 60_000),
    streams: intOption('streams', values.streams, 1, 10_000),
    legit: intOption('legit', values.legit, 1, 64),
    nofile: nofile === undefined ? undefined : intOption('gateway-nofile', nofile, 256, 1_048_576),
    floods: floods as FloodKind[],
    json: values.json,
    samePriority: values['same-priority'],
  };
}

const SOURCES = Array.from({ length: 8 }, (_, i) => `127.0.0.${String(i + 1)}`);
const LEGIT_SOURCE = '127.0.0.100';
const LEGIT_TIMEOUT_MS = 5_000;
const LEGIT_PAUSE_MS = 20;

interface LegitStats {
  ok: number;
  /** Failures by kind: `timeout`, an error code, or `HTTP <status>`. */
  failures: Record<string, number>;
  keepAliveP50: number;
  keepAliveP99: number;
  newConnectionP50: number;
  newConnectionP99: number;
  maxMs: number;
}

/** `GET /v1/status` in loops until `until`; latencies of successes and timeouts (as 5 s). */
async function legitimate(gw: GatewayProcess, loops: number, until: number): Promise<LegitStats> {
  const keepAlive = new Agent({ keepAlive: true, maxSockets: loops, localAddress: LEGIT_SOURCE });
  const samples = { keep: [] as number[], fresh: [] as number[] };
  const failures: Record<string, number> = {};
  let ok = 0;
  const fail = (why: string) => (failures[why] = (failures[why] ?? 0) + 1);
  const once1 = (fresh: boolean): Promise<void> =>
    new Promise((done) => {
      const t0 = performance.now();
      let settled = false;
      const end = (why: string | undefined) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        const ms = performance.now() - t0;
        if (why === undefined) {
          ok++;
          (fresh ? samples.fresh : samples.keep).push(ms);
        } else {
          fail(why);
          if (why === 'timeout') (fresh ? samples.fresh : samples.keep).push(ms);
        }
        done();
      };
      const req = request(
        `${gw.url}/v1/status`,
        {
          ca: gw.ca,
          servername: gw.servername,
          ...(fresh ? { agent: false, localAddress: LEGIT_SOURCE } : { agent: keepAlive }),
        },
        (res) => {
          res.resume();
          res.on('end', () => end(res.statusCode === 200 ? undefined : `HTTP ${String(res.statusCode)}`));
          res.on('error', (err: NodeJS.ErrnoException) => end(err.code ?? 'error'));
        },
      );
      const timer = setTimeout(() => {
        end('timeout');
        req.destroy();
      }, LEGIT_TIMEOUT_MS);
      req.on('error', (err: NodeJS.ErrnoException) => end(err.code ?? 'error'));
      req.end();
    });
  await Promise.all(
    Array.from({ length: loops }, async (_, i) => {
      const fresh = i % 2 === 1;
      while (Date.now() < until) {
        await once1(fresh);
        await sleep(LEGIT_PAUSE_MS);
      }
    }),
  );
  keepAlive.destroy();
  const sorted = (xs: number[]) => Float64Array.from(xs).sort();
  const keep = sorted(samples.keep);
  const fresh = sorted(samples.fresh);
  return {
    ok,
    failures,
    keepAliveP50: percentile(keep, 50),
    keepAliveP99: percentile(keep, 99),
    newConnectionP50: percentile(fresh, 50),
    newConnectionP99: percentile(fresh, 99),
    maxMs: Math.max(keep.at(-1) ?? 0, fresh.at(-1) ?? 0),
  };
}

/** Runs one flood in bench/flood.ts until it stops by itself (killed 5 s after its time). */
async function flood(
  spec: FloodSpec,
  gatewayUp: () => boolean,
  lowPriorityFloods: boolean,
): Promise<FloodStats | undefined> {
  const child = spawn(
    process.execPath,
    ['--disable-warning=ExperimentalWarning', join(ROOT, 'bench/flood.ts'), JSON.stringify(spec)],
    { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] },
  );
  trackChild(child);
  if (lowPriorityFloods && child.pid !== undefined) {
    try {
      // An attacker spends its own machine's CPU, not the gateway's: here it shares the
      // gateway's cores, so it yields them (its counts show how hard it still flooded).
      setPriority(child.pid, 19);
    } catch {
      // not permitted: the flood keeps the default priority
    }
  }
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString('utf8')));
  const closed = once(child, 'close');
  const deadline = Date.now() + (spec.durationS + 5) * 1000;
  // Stop early when the gateway is gone; never wait past the deadline.
  const watch = setInterval(() => {
    if (!gatewayUp()) child.kill('SIGTERM');
    if (Date.now() > deadline) child.kill('SIGKILL');
  }, 250);
  await closed;
  clearInterval(watch);
  await stopTracked(child);
  const line = out.split('\n').find((l) => l.startsWith('{'));
  return line === undefined ? undefined : (JSON.parse(line) as FloodStats);
}

/**
 * Established TCP connections to `port` on this machine, from /proc/net/tcp{,6}: only the gateway
 * connects to the upstream, so these are its upstream pool's connections (open descriptors that
 * are no client's).
 */
function connectionsTo(port: number): number | undefined {
  try {
    const hex = port.toString(16).toUpperCase().padStart(4, '0');
    let n = 0;
    for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
      for (const line of readFileSync(file, 'utf8').split('\n').slice(1)) {
        const f = line.trim().split(/\s+/);
        if (f[2]?.endsWith(`:${hex}`) === true && f[3] === '01') n++;
      }
    }
    return n;
  } catch {
    return undefined;
  }
}

/**
 * The kernel's count of connections dropped because a listen queue was full (all listeners of the
 * machine: other work may add to it): a dropped SYN costs a client a 1 s retransmission.
 */
function listenOverflows(): number | undefined {
  try {
    const lines = readFileSync('/proc/net/netstat', 'utf8').split('\n');
    const names = lines.find((l) => l.startsWith('TcpExt:'))?.split(/\s+/) ?? [];
    const values = lines.filter((l) => l.startsWith('TcpExt:'))[1]?.split(/\s+/) ?? [];
    const i = names.indexOf('ListenOverflows');
    return i < 0 ? undefined : Number(values[i]);
  } catch {
    return undefined;
  }
}

interface PhaseResult {
  phase: string;
  legit: LegitStats;
  flood: FloodStats | undefined;
  peakOpenFiles: number;
  openFilesAfter: number | undefined;
  /** Of those, connections of the gateway's upstream pool (idle keep-alive ones included). */
  upstreamAfter: number | undefined;
  /** Listen-queue overflows (SYNs dropped) on the machine during the phase. */
  overflows: number | undefined;
  peakRssKiB: number;
  /** CPU seconds the gateway used per wall second of the phase. */
  gatewayCores: number | undefined;
  gatewayUp: boolean;
}

/** CPU seconds of a process, undefined once it is gone. */
function cpuOf(pid: number): number | undefined {
  try {
    return cpuSeconds(pid);
  } catch {
    return undefined;
  }
}

function maxOpenFiles(pid: number): string {
  try {
    const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(readFileSync(`/proc/${String(pid)}/limits`, 'utf8'));
    return m === null ? '?' : `${m[1] ?? '?'} (hard ${m[2] ?? '?'})`;
  } catch {
    return '?';
  }
}

function floodSummary(f: FloodStats | undefined): string {
  if (f === undefined) return 'no report (killed)';
  const errors = Object.entries(f.errors)
    .map(([k, v]) => `${k} ${String(v)}`)
    .join(', ');
  const parts =
    f.kind === 'rapid-reset'
      ? [`${String(f.streams)} streams reset`, `${String(f.opened)} sessions`, `${String(f.goaways)} GOAWAY`]
      : [`${String(f.opened)} opened`, `peak ${String(f.peakOpen)} open`];
  parts.push(`${String(f.closedByPeer)} closed by the gateway`);
  if (f.heldMedianMs !== undefined) {
    parts.push(
      `held ${(f.heldMedianMs / 1000).toFixed(1)} s median, ${((f.heldMaxMs ?? 0) / 1000).toFixed(1)} s max`,
    );
  }
  if (errors !== '') parts.push(`errors: ${errors}`);
  return parts.join('; ');
}

async function main(options: Options): Promise<number> {
  // Other work on the machine shows in every latency: say how busy it was.
  const loadAtStart = loadavg().map((x) => x.toFixed(2));
  const root = await makeTempDir();
  const upstream = await startUpstream('fixed');
  const upstreamPort = Number(new URL(upstream.url).port);
  const gw = await startGateway(root, {
    name: 'floods',
    upstreamUrl: upstream.url,
    logLevel: 'warn',
    accessLog: false,
    extraConfig: { rateLimits: HIGH_RATE_LIMITS },
    ...(options.nofile === undefined ? {} : { nofile: options.nofile }),
  });
  const limit = maxOpenFiles(gw.pid);
  progress(`gateway pid ${String(gw.pid)} at ${gw.url}, open files limit ${limit}`);
  const up = () => procExe(gw.pid) === gw.exe;
  const origin = new URL(gw.url);
  const spec = (kind: FloodKind): FloodSpec => ({
    kind,
    host: origin.hostname,
    port: Number(origin.port),
    servername: gw.servername,
    ca: gw.ca,
    sources: SOURCES,
    durationS: options.durationS,
    count:
      kind === 'connections' ? options.connections : kind === 'rapid-reset' ? options.streams : options.slow,
    intervalMs: options.intervalMs,
  });
  const phases: [string, FloodKind | undefined][] = [
    ['baseline', undefined],
    ...options.floods.map((f): [string, FloodKind] => [FLOODS[f], f]),
    ['after', undefined],
  ];
  const results: PhaseResult[] = [];
  const openFilesAtStart = openFiles(gw.pid);
  // The last peak seen: /proc has nothing once the process is gone.
  let lastHwm = procStatusKiB(gw.pid, 'VmHWM');
  for (const [phase, kind] of phases) {
    if (!up()) break;
    progress(`${phase}: ${String(options.durationS)} s${kind === undefined ? ', no flood' : ''}`);
    let peakOpenFiles = openFiles(gw.pid) ?? 0;
    let peakRssKiB = procStatusKiB(gw.pid, 'VmRSS') ?? 0;
    const sampler = setInterval(() => {
      peakOpenFiles = Math.max(peakOpenFiles, openFiles(gw.pid) ?? 0);
      peakRssKiB = Math.max(peakRssKiB, procStatusKiB(gw.pid, 'VmRSS') ?? 0);
      lastHwm = procStatusKiB(gw.pid, 'VmHWM') ?? lastHwm;
    }, 250);
    const cpu0 = cpuOf(gw.pid);
    const overflows0 = listenOverflows();
    const wall0 = performance.now();
    const until = Date.now() + options.durationS * 1000;
    const [legit, floodStats] = await Promise.all([
      legitimate(gw, options.legit, until),
      kind === undefined ? Promise.resolve(undefined) : flood(spec(kind), up, !options.samePriority),
    ]);
    clearInterval(sampler);
    const overflows1 = listenOverflows();
    const cpu1 = cpuOf(gw.pid);
    const gatewayCores =
      cpu0 === undefined || cpu1 === undefined
        ? undefined
        : (cpu1 - cpu0) / ((performance.now() - wall0) / 1000);
    await sleep(2_000);
    const result: PhaseResult = {
      phase,
      legit,
      flood: floodStats,
      peakOpenFiles,
      openFilesAfter: openFiles(gw.pid),
      upstreamAfter: connectionsTo(upstreamPort),
      overflows: overflows0 === undefined || overflows1 === undefined ? undefined : overflows1 - overflows0,
      peakRssKiB,
      gatewayCores,
      gatewayUp: up(),
    };
    results.push(result);
    progress(
      `${phase}: legit ${String(legit.ok)} ok, p99 keep-alive ${legit.keepAliveP99.toFixed(1)} ms, ` +
        `new connection ${legit.newConnectionP99.toFixed(1)} ms, failures ${JSON.stringify(legit.failures)}; ` +
        `peak open files ${String(peakOpenFiles)}; ${kind === undefined ? 'no flood' : floodSummary(floodStats)}` +
        (result.gatewayUp ? '' : '; THE GATEWAY EXITED'),
    );
  }
  const survived = up();
  const last = results.at(-1);
  const recovered =
    survived && last?.phase === 'after' && last.legit.ok > 0 && Object.keys(last.legit.failures).length === 0;
  const hwm = procStatusKiB(gw.pid, 'VmHWM') ?? lastHwm;
  // Why it exited, in its own words: the last lines of its log (stdout, JSON) and its stderr.
  const lastLog = survived
    ? []
    : [(await readFile(gw.logFile, 'utf8').catch(() => '')).trimEnd(), gw.stderrTail().trimEnd()]
        .join('\n')
        .split('\n')
        .filter((l) => l !== '')
        .slice(-10)
        .map((l) => l.slice(0, 400));
  const notRun = phases.slice(results.length).map(([p]) => p);

  if (options.json) {
    process.stdout.write(
      JSON.stringify(
        {
          machine: machineInfo(),
          options,
          gateway: { openFilesLimit: limit, openFilesAtStart, peakRssKiB: hwm, survived, recovered, lastLog },
          results,
          notRun,
        },
        null,
        2,
      ) + '\n',
    );
  } else {
    const ms = (x: number) => (Number.isNaN(x) ? '-' : x.toFixed(1));
    const base = results[0]?.legit;
    const rows = [
      [
        'phase',
        'legit ok',
        'failed',
        'keep-alive p50/p99 ms',
        'new conn p50/p99 ms',
        'p99 vs baseline',
        'max ms',
        'peak fds',
        'fds 2 s after',
        'of which upstream',
        'SYNs dropped',
        'peak RSS MiB',
        'gw cores',
        'gateway',
      ],
      ...results.map((r) => [
        r.phase,
        String(r.legit.ok),
        String(Object.values(r.legit.failures).reduce((a, b) => a + b, 0)),
        `${ms(r.legit.keepAliveP50)} / ${ms(r.legit.keepAliveP99)}`,
        `${ms(r.legit.newConnectionP50)} / ${ms(r.legit.newConnectionP99)}`,
        base === undefined
          ? '-'
          : `${(r.legit.keepAliveP99 / base.keepAliveP99).toFixed(1)}x / ${(r.legit.newConnectionP99 / base.newConnectionP99).toFixed(1)}x`,
        ms(r.legit.maxMs),
        String(r.peakOpenFiles),
        String(r.openFilesAfter ?? 'gone'),
        String(r.upstreamAfter ?? '?'),
        String(r.overflows ?? '?'),
        (r.peakRssKiB / 1024).toFixed(1),
        r.gatewayCores === undefined ? '-' : r.gatewayCores.toFixed(2),
        r.gatewayUp ? 'up' : 'EXITED',
      ]),
    ];
    const m = machineInfo();
    process.stdout.write(
      [
        '',
        `Portcullis floods: ${String(options.durationS)} s per phase, floods from ${String(SOURCES.length)} sources (127.0.0.1-8), ` +
          `legitimate client from ${LEGIT_SOURCE} (${String(options.legit)} loops of GET /v1/status)` +
          (options.samePriority ? '' : '; floods at nice 19'),
        `machine: ${String(m.cpus)} CPUs, ${m.cpuModel}, Node ${m.node}, load average at start ${loadAtStart.join(' ')}, at end ${m.loadAverageAtEnd.join(' ')}; ` +
          `gateway open files limit ${limit}, ${String(openFilesAtStart ?? '?')} open at start`,
        '',
        table(rows),
        '',
        ...results
          .filter((r) => r.flood !== undefined || !['baseline', 'after'].includes(r.phase))
          .map((r) => `${r.phase}: ${floodSummary(r.flood)}`),
        ...results
          .filter((r) => Object.keys(r.legit.failures).length > 0)
          .map((r) => `${r.phase}: legitimate failures ${JSON.stringify(r.legit.failures)}`),
        '',
        `gateway peak RSS (VmHWM) ${hwm === undefined ? 'n/a' : (hwm / 1024).toFixed(1)} MiB` +
          (survived ? '' : ' (last seen before it exited)'),
        survived
          ? recovered
            ? 'verdict: the gateway survived every flood and recovered'
            : `verdict: FAILED: the gateway survived but did not recover: ${String(
                Object.values(last?.legit.failures ?? {}).reduce((a, b) => a + b, 0),
              )} of the legitimate requests after the floods failed, ${String(last?.legit.ok ?? 0)} answered`
          : `verdict: FAILED: the gateway process exited during "${results.at(-1)?.phase ?? '?'}"` +
            (notRun.length > 0 ? `; not run: ${notRun.join(', ')}` : '') +
            `\nits last log and stderr lines:\n${lastLog.map((l) => `  ${l}`).join('\n')}`,
        '',
      ].join('\n'),
    );
  }
  return recovered ? 0 : 1;
}

await runBench(USAGE, parseOptions, main);
