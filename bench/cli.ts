/**
 * What every benchmark script shares: the standard options, progress on stderr, medians, a
 * plain-text table, and a runner that cleans up its processes and temp dirs on success, failure,
 * Ctrl-C or SIGTERM and exits with a meaningful code (2 for bad options).
 */
import { parseArgs } from 'node:util';
import type { LoadOptions } from './load.ts';
import { stopActiveLoad } from './load.ts';
import { cleanup } from './processes.ts';

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
