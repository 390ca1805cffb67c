/**
 * What every benchmark script shares: the standard options, progress on stderr, medians, a
 * plain-text table, and a runner that cleans up its processes and temp dirs on success, failure,
 * Ctrl-C or SIGTERM and exits with a meaningful code (2 for bad options).
 */
import { availableParallelism, cpus, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import type { LoadOptions, LoadTarget, Measurement } from './load.ts';
import { measure, stopActiveLoad } from './load.ts';
import { cleanup, cpuSeconds } from './processes.ts';

export interface BenchOptions extends LoadOptions {
  rounds: number;
  warmupS: number;
  json: boolean;
}

export const BENCH_OPTIONS_USAGE = `options:
  --duration <s>      seconds per measurement (default 5)
  --connections <n>   concurrent connections, pipelining 1 (default 16)
  --rounds <n>        rounds over the targets, medians reported (default 3)
  --warmup <s>        warm-up seconds per target (default 2)
  --json              results as JSON on stdout (progress stays on stderr)
  -h, --help          this help
`;

/** An integer option within bounds; the error names the option. */
export function intOption(name: string, text: string, min: number, max: number): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < min || n > max) {
    throw new Error(`--${name} must be an integer from ${String(min)} to ${String(max)}`);
  }
  return n;
}

/** The standard options (see BENCH_OPTIONS_USAGE); `--help` prints `usage` and exits 0. */
export function parseBenchOptions(argv: string[], usage: string): BenchOptions {
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
    process.stdout.write(usage);
    process.exit(0);
  }
  return {
    durationS: intOption('duration', values.duration, 1, 600),
    connections: intOption('connections', values.connections, 1, 1000),
    rounds: intOption('rounds', values.rounds, 1, 50),
    warmupS: intOption('warmup', values.warmup, 0, 60),
    json: values.json,
  };
}

export function progress(message: string): void {
  process.stderr.write(`bench: ${message}\n`);
}

export interface RoundResult {
  readonly m: Measurement;
  /** CPU seconds the `cpuPid` process used per wall second of the measurement. */
  readonly cores: number | undefined;
}

/**
 * Warms every target up, then measures them `rounds` times, rotating the order each round so
 * that no target always runs right after another; progress goes to stderr. With `cpuPid`, also
 * how many cores that process (the gateway) used during each measurement. `run` is the load
 * generator: autocannon by default, or wrk (bench/wrk.ts).
 */
export async function measureRounds<T extends LoadTarget = LoadTarget>(
  targets: readonly T[],
  options: LoadOptions & { readonly rounds: number; readonly warmupS: number },
  cpuPid?: number,
  run: (target: T, options: LoadOptions) => Promise<Measurement> = measure,
): Promise<Map<T, RoundResult[]>> {
  const load: LoadOptions = { durationS: options.durationS, connections: options.connections };
  if (options.warmupS > 0) {
    for (const t of targets) {
      progress(`warm-up ${t.name} ${String(options.warmupS)} s`);
      await run(t, { ...load, durationS: options.warmupS });
    }
  }
  const width = Math.max(...targets.map((t) => t.name.length));
  const runs = new Map<T, RoundResult[]>(targets.map((t) => [t, []]));
  for (let round = 0; round < options.rounds; round++) {
    const order = targets.map((_, i) => targets[(i + round) % targets.length] as T);
    for (const t of order) {
      const cpu0 = cpuPid === undefined ? 0 : cpuSeconds(cpuPid);
      const wall0 = performance.now();
      const m = await run(t, load);
      const cores =
        cpuPid === undefined ? undefined : (cpuSeconds(cpuPid) - cpu0) / ((performance.now() - wall0) / 1000);
      runs.get(t)?.push({ m, cores });
      progress(
        `round ${String(round + 1)}/${String(options.rounds)}  ${t.name.padEnd(width)} ${m.rps.toFixed(0).padStart(6)} req/s` +
          `  p50 ${m.p50.toFixed(2)} ms  p99 ${m.p99.toFixed(2)} ms` +
          (cores === undefined ? '' : `  gateway ${cores.toFixed(2)} cores`) +
          (m.unexpected + m.errors > 0
            ? `  (${String(m.unexpected)} unexpected, ${String(m.errors)} errors)`
            : ''),
      );
    }
  }
  return runs;
}

export const median = (values: number[]): number => {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[mid] ?? 0) : ((s[mid - 1] ?? 0) + (s[mid] ?? 0)) / 2;
};

/** Rows of cells as aligned columns: the first left-aligned, the rest right-aligned. */
export function table(rows: string[][]): string {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((row) => row[i]?.length ?? 0))) ?? [];
  return rows
    .map((row) =>
      row.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  '),
    )
    .join('\n');
}

/** One target's medians over the rounds, with the gateway's CPU use. */
export interface CpuRow {
  target: string;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  /** CPU seconds the gateway used per wall second during the runs (median). */
  gatewayCores: number;
  /** Requests per CPU-second of the gateway process. */
  perCoreSecond: number;
  rpsPerRound: number[];
  bad: number;
}

/** Medians per target of rounds measured with a `cpuPid` (see {@link measureRounds}). */
export function cpuRows(targets: readonly LoadTarget[], runs: Map<LoadTarget, RoundResult[]>): CpuRow[] {
  return targets.map((t) => {
    const r = (runs.get(t) ?? []).map((x) => ({ m: x.m, cores: x.cores ?? 0 }));
    return {
      target: t.name,
      rps: median(r.map((x) => x.m.rps)),
      p50Ms: median(r.map((x) => x.m.p50)),
      p99Ms: median(r.map((x) => x.m.p99)),
      gatewayCores: median(r.map((x) => x.cores)),
      perCoreSecond: median(r.map((x) => (x.cores > 0 ? x.m.rps / x.cores : 0))),
      rpsPerRound: r.map((x) => x.m.rps),
      bad: r.reduce((n, x) => n + x.m.unexpected + x.m.errors, 0),
    };
  });
}

/** The machine the figures come from. */
export function machineInfo() {
  return {
    cpus: availableParallelism(),
    cpuModel: cpus()[0]?.model ?? 'unknown',
    node: process.version,
    loadAverageAtEnd: loadavg().map((l) => Number(l.toFixed(2))),
  };
}

/** The human report of {@link cpuRows}: machine, settings and the table (lines). */
export function cpuReport(rows: readonly CpuRow[], options: BenchOptions): string[] {
  const machine = machineInfo();
  return [
    '',
    `${String(machine.cpus)} CPUs (${machine.cpuModel}), Node ${machine.node}, load average ${machine.loadAverageAtEnd.join(' ')}`,
    `${String(options.rounds)} rounds x ${String(options.durationS)} s, ${String(options.connections)} connections, pipelining 1`,
    '',
    table([
      ['target', 'req/s', 'p50 ms', 'p99 ms', 'gw cores', 'req per core-s', 'req/s per round', 'bad'],
      ...rows.map((r) => [
        r.target,
        r.rps.toFixed(0),
        r.p50Ms.toFixed(2),
        r.p99Ms.toFixed(2),
        r.gatewayCores.toFixed(2),
        r.perCoreSecond.toFixed(0),
        r.rpsPerRound.map((x) => x.toFixed(0)).join(' / '),
        String(r.bad),
      ]),
    ]),
    '',
  ];
}

/**
 * Parses the options, runs `main` and exits: 0 (or the number `main` returns), 1 on a failure,
 * 2 on bad options, 130/143 on SIGINT/SIGTERM. Load, processes and temp dirs are always cleaned up.
 */
export async function runBench<O>(
  usage: string,
  parse: (argv: string[]) => O,
  main: (options: O) => Promise<unknown>,
): Promise<void> {
  const state = { exiting: false };
  const exit = async (code: number): Promise<void> => {
    if (state.exiting) return;
    state.exiting = true;
    stopActiveLoad();
    await cleanup();
    process.exit(code);
  };
  process.on('SIGINT', () => {
    progress('interrupted; stopping the processes and removing the temp dir');
    void exit(130);
  });
  process.on('SIGTERM', () => {
    progress('terminated; stopping the processes and removing the temp dir');
    void exit(143);
  });
  let options: O;
  try {
    options = parse(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n\n${usage}`);
    process.exit(2);
  }
  try {
    const code = await main(options);
    await exit(typeof code === 'number' ? code : 0);
  } catch (err) {
    // A failure caused by our own Ctrl-C handling is not worth reporting.
    if (!state.exiting) {
      process.stderr.write(
        `bench: failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
      );
    }
    await exit(1);
  }
}
