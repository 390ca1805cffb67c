/**
 * One load run with wrk (the Debian package `wrk`): fixed connections, one thread by default,
 * keep-alive, HTTP/1.1 (wrk sends no ALPN). The figures come from wrk itself: requests and
 * duration, and its latency percentiles (`--latency`) as exact microseconds through a `done()`
 * script (bench/wrk-report.lua), so nothing runs per response in Lua.
 *
 * wrk does not verify certificates: the benchmarks check every target once with a verifying
 * client first. It counts responses with a status above 399 (`errors.status`, the "Non-2xx or
 * 3xx responses" line); a target that expects a 2xx must have none, a target that expects a
 * refusal must have one for every request (the exact code is checked by the probe beforehand).
 */
import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import type { LoadOptions, LoadTarget, Measurement } from './load.ts';
import { onCleanup, ROOT } from './processes.ts';

export interface WrkOptions extends LoadOptions {
  /** wrk threads (default 1). */
  threads?: number;
}

interface WrkReport {
  requests: number;
  duration_us: number;
  connect: number;
  read: number;
  write: number;
  status: number;
  timeout: number;
  p50_us: number;
  p99_us: number;
}

let active: ChildProcess | undefined;
onCleanup(async () => {
  active?.kill('SIGKILL');
});

/** `wrk debian/4.1.0-3+b2 [epoll] Copyright …` → `wrk debian/4.1.0-3+b2`. */
const banner = (text: string): string => /^wrk \S+/.exec(text)?.[0] ?? 'wrk';

/** Fails with a clear message when wrk is not installed. */
export function requireWrk(): string {
  try {
    return banner(
      execFileSync('wrk', ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }),
    );
  } catch (err) {
    // `wrk --version` prints its banner and exits 1.
    const out = (err as { stdout?: unknown }).stdout;
    if (typeof out === 'string' && out.startsWith('wrk ')) return banner(out);
    throw new Error(
      'wrk is not installed: this benchmark needs the Debian package wrk (apt-get install wrk; .ci/run installs it)',
      { cause: err },
    );
  }
}

export async function measureWrk(target: LoadTarget, options: WrkOptions): Promise<Measurement> {
  if (target.method !== undefined && target.method !== 'GET') throw new Error('wrk targets are GETs here');
  const args = [
    '-t',
    String(options.threads ?? 1),
    '-c',
    String(options.connections),
    '-d',
    `${String(options.durationS)}s`,
    '--timeout',
    '10s',
    '--latency',
    '-s',
    join(ROOT, 'bench/wrk-report.lua'),
  ];
  for (const [name, value] of Object.entries(target.headers ?? {})) args.push('-H', `${name}: ${value}`);
  args.push(target.url);
  const child = spawn('wrk', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  active = child;
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString('utf8')));
  child.stderr.on('data', (c: Buffer) => (err += c.toString('utf8')));
  const [code] = (await once(child, 'close')) as [number | null];
  active = undefined;
  const line = out.split('\n').find((l) => l.startsWith('WRK_JSON '));
  if (code !== 0 || line === undefined) {
    throw new Error(`wrk ${target.name}: exit ${String(code)}\n${err.trim()}\n${out.trim()}`);
  }
  const r = JSON.parse(line.slice('WRK_JSON '.length)) as WrkReport;
  const refusal = target.expectStatus >= 400;
  // wrk counts responses with a status above 399; the probe beforehand checked the exact code.
  const unexpected = refusal ? r.requests - r.status : r.status;
  return {
    target: target.name,
    rps: r.duration_us > 0 ? r.requests / (r.duration_us / 1e6) : 0,
    p50: r.p50_us / 1000,
    p99: r.p99_us / 1000,
    responses: r.requests,
    unexpected,
    errors: r.connect + r.read + r.write + r.timeout,
    // Only what wrk can tell: how many had the expected class.
    statuses: { [target.expectStatus]: r.requests - unexpected },
  };
}
