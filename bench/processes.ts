/**
 * Child processes for the benchmark: the demo upstream and Portcullis gateways, started on free
 * loopback ports with temporary data directories, and always cleaned up (normal end, failure,
 * Ctrl-C or SIGTERM).
 */
import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, openSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { request } from 'node:https';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { stringify } from 'yaml';

export const ROOT = resolve(import.meta.dirname, '..');
const OPENAPI = join(ROOT, 'examples/demo-upstream/openapi.yaml');

// ---------------------------------------------------------------------------------------------
// Cleanup registry

const children = new Set<ChildProcess>();
const tempDirs = new Set<string>();
const cleanups: (() => Promise<void>)[] = [];
let cleaning: Promise<void> | undefined;

/** Runs every registered cleanup once: stops children (SIGTERM, then SIGKILL), removes temp dirs. */
export function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    for (const fn of cleanups.reverse()) await fn().catch(() => undefined);
    await Promise.all([...children].map((c) => stopChild(c)));
    for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
    tempDirs.clear();
  })();
  return cleaning;
}

/** Registers an async cleanup, run before the children are stopped (e.g. stop a load run). */
export function onCleanup(fn: () => Promise<void>): void {
  cleanups.push(fn);
}

// Last resort when the process exits without going through cleanup(): nothing may survive us.
process.on('exit', () => {
  for (const c of children) if (isRunning(c)) c.kill('SIGKILL');
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

function isRunning(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

async function stopChild(child: ChildProcess, graceMs = 5_000): Promise<void> {
  if (isRunning(child)) {
    const exited = once(child, 'exit');
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(timer);
  }
  children.delete(child);
}

export async function makeTempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'portcullis-bench-'));
  tempDirs.add(dir);
  return dir;
}

// ---------------------------------------------------------------------------------------------
// Helpers

/** Distinct free loopback ports (free now; a tiny race remains until the child binds them). */
export async function freePorts(count: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from({ length: count }, async () => {
      const s = createServer();
      s.listen(0, '127.0.0.1');
      await once(s, 'listening');
      return s;
    }),
  );
  const ports = servers.map((s) => (s.address() as AddressInfo).port);
  await Promise.all(servers.map((s) => new Promise((ok) => s.close(ok))));
  return ports;
}

export interface HttpsAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/**
 * One HTTPS request that verifies the server certificate against `tls.ca` for the name
 * `tls.servername` (autocannon does not; see load.ts).
 */
export function httpsCall(
  url: string,
  tls: { readonly ca: string; readonly servername: string },
  method: 'GET' | 'POST',
  headers: Record<string, string> = {},
  body?: string,
  timeoutMs = 10_000,
): Promise<HttpsAnswer> {
  return new Promise((ok, fail) => {
    const options = {
      method,
      ca: tls.ca,
      servername: tls.servername,
      agent: false,
      headers,
      timeout: timeoutMs,
    };
    const req = request(url, options, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => ok({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
      res.on('error', fail);
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${url}: timed out`)));
    req.on('error', fail);
    req.end(body);
  });
}

/** One HTTPS GET that verifies the server certificate against `ca` for the name `servername`. */
export function httpsGet(
  url: string,
  ca: string,
  servername: string,
  timeoutMs = 2_000,
): Promise<HttpsAnswer> {
  return httpsCall(url, { ca, servername }, 'GET', {}, undefined, timeoutMs);
}

let clockTicks: number | undefined;

/** CPU seconds (user + system) a process has used, from /proc/<pid>/stat. */
export function cpuSeconds(pid: number): number {
  if (clockTicks === undefined) {
    try {
      const n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
      clockTicks = Number.isInteger(n) && n > 0 ? n : 100;
    } catch {
      clockTicks = 100;
    }
  }
  const stat = readFileSync(`/proc/${String(pid)}/stat`, 'utf8');
  // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / clockTicks;
}

/** Runs `portcullis ARGS --json` on a gateway's configuration and data; returns the JSON output. */
export async function runCliJson(
  args: readonly string[],
  gw: { readonly configFile: string; readonly dataDir: string },
): Promise<Record<string, unknown>> {
  const child = spawn(
    'sh',
    [
      'scripts/node24.sh',
      'src/cli/main.ts',
      ...args,
      '--json',
      '--config',
      gw.configFile,
      '--data-dir',
      gw.dataDir,
    ],
    { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString('utf8')));
  child.stderr.on('data', (c: Buffer) => (err += c.toString('utf8')));
  const [code] = (await once(child, 'close')) as [number];
  if (code !== 0) throw new Error(`${args.slice(0, 2).join(' ')} failed: ${err}`);
  return JSON.parse(out) as Record<string, unknown>;
}

/** A field of /proc/<pid>/status in KiB (VmHWM: peak resident set; VmRSS: current). */
export function procStatusKiB(pid: number, field: 'VmHWM' | 'VmRSS'): number | undefined {
  try {
    const status = readFileSync(`/proc/${String(pid)}/status`, 'utf8');
    const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(status);
    return m?.[1] === undefined ? undefined : Number(m[1]);
  } catch {
    return undefined;
  }
}

/** The executable of a process, e.g. `/…/.node/bin/node`. */
export function procExe(pid: number): string | undefined {
  try {
    return readlinkSync(`/proc/${String(pid)}/exe`);
  } catch {
    return undefined;
  }
}

function tail(text: string, lines = 20): string {
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

// ---------------------------------------------------------------------------------------------
// The demo upstream

export interface UpstreamProcess {
  url: string;
  pid: number;
}

/** Tracks a child process: stopped by {@link cleanup} (SIGTERM, then SIGKILL) and on exit. */
export function trackChild(child: ChildProcess): void {
  children.add(child);
}

/** Stops a tracked child now (SIGTERM, then SIGKILL after `graceMs`). */
export function stopTracked(child: ChildProcess, graceMs = 5_000): Promise<void> {
  return stopChild(child, graceMs);
}

/**
 * Starts `node <script> ARGS` (a file under bench/) that prints one JSON line `{"url", "pid"}`
 * once it listens, and resolves with that line. The child stays tracked for cleanup.
 */
export async function startReadyChild(
  script: string,
  args: readonly string[] = [],
  what = script,
): Promise<UpstreamProcess> {
  const child = spawn(
    process.execPath,
    ['--disable-warning=ExperimentalWarning', join(ROOT, script), ...args],
    { cwd: ROOT, stdio: ['pipe', 'pipe', 'inherit'] },
  );
  children.add(child);
  const lines = createInterface({ input: child.stdout });
  const exited = once(child, 'exit').then(([code]) => {
    throw new Error(`${what} exited early (code ${String(code)})`);
  });
  const first = (async () => {
    for await (const line of lines) return JSON.parse(line) as UpstreamProcess;
    throw new Error(`${what} closed its stdout`);
  })();
  const info = await Promise.race([first, exited]);
  exited.catch(() => undefined);
  lines.close();
  child.stdout.resume();
  return info;
}

/** The demo upstream, or with `fixed` the fixed one (bench/fixed-upstream.ts), in its own process. */
export function startUpstream(kind: 'demo' | 'fixed' = 'demo'): Promise<UpstreamProcess> {
  return startReadyChild(
    'bench/upstream.ts',
    kind === 'fixed' ? ['--fixed'] : [],
    kind === 'fixed' ? 'the fixed upstream' : 'the demo upstream',
  );
}

/** The pids of a process's direct children (`/proc/<pid>/task/*\/children`). */
export function procChildren(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const task of readdirSync(`/proc/${String(pid)}/task`)) {
      const text = readFileSync(`/proc/${String(pid)}/task/${task}/children`, 'utf8').trim();
      if (text !== '') out.push(...text.split(/\s+/).map(Number));
    }
  } catch {
    // The process is gone.
  }
  return out;
}

/** Sum of a /proc status field over a process and its direct children (e.g. `--workers N`). */
export function procTreeStatusKiB(pid: number, field: 'VmHWM' | 'VmRSS'): number | undefined {
  const own = procStatusKiB(pid, field);
  if (own === undefined) return undefined;
  return procChildren(pid).reduce((n, child) => n + (procStatusKiB(child, field) ?? 0), own);
}

/** Open file descriptors of a process (entries of /proc/<pid>/fd), undefined when it is gone. */
export function openFiles(pid: number): number | undefined {
  try {
    return readdirSync(`/proc/${String(pid)}/fd`).length;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Portcullis gateways

export interface GatewayOptions {
  /** A short name for the data directory and messages. */
  name: string;
  upstreamUrl: string;
  logLevel: 'warn' | 'info';
  accessLog: boolean;
  /** Further top-level configuration sections (e.g. `rateLimits`). */
  extraConfig?: Record<string, unknown>;
  /** Further `portcullis start` arguments (e.g. `--workers 2`). */
  args?: readonly string[];
  /** Start it under `ulimit -n <nofile>` (its open-files limit, soft and hard). */
  nofile?: number;
}

export interface GatewayProcess {
  name: string;
  /** e.g. https://127.0.0.1:41234 (no trailing slash). */
  url: string;
  /** The name to send in SNI and to verify the certificate against. */
  servername: string;
  /** PEM of the development CA that signed the gateway's certificate. */
  ca: string;
  caFile: string;
  /** The pid of the gateway's node process (the `sh` wrapper execs node, so it is the child's). */
  pid: number;
  exe: string;
  /** Where the gateway's stdout (its JSON logs) goes. */
  logFile: string;
  /** The configuration file and data directory it was started with (for CLI commands). */
  configFile: string;
  dataDir: string;
  /** The last lines the gateway wrote on stderr (e.g. why it exited). */
  stderrTail(): string;
}

/** Starts `portcullis start` as a child process and waits until its admin /readyz answers 200. */
export async function startGateway(
  root: string,
  options: GatewayOptions,
  attempts = 3,
): Promise<GatewayProcess> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startGatewayOnce(root, options, attempt);
    } catch (err) {
      // Free ports are chosen before the child binds them; another process may win that race.
      if (attempt >= attempts || !(err instanceof Error) || !err.message.includes('EADDRINUSE')) throw err;
    }
  }
}

async function startGatewayOnce(
  root: string,
  options: GatewayOptions,
  attempt: number,
): Promise<GatewayProcess> {
  const dir = join(root, `${options.name}-${String(attempt)}`);
  const dataDir = join(dir, 'data');
  await mkdir(dir, { recursive: true });
  const [port, adminPort] = (await freePorts(2)) as [number, number];
  const config = {
    version: 1,
    gateway: {
      host: '127.0.0.1',
      port,
      publicUrl: `https://localhost:${String(port)}`,
      shutdownGraceMs: 2_000,
    },
    admin: { host: '127.0.0.1', port: adminPort },
    logging: { level: options.logLevel, accessLog: options.accessLog },
    apis: [{ name: 'patients', openapi: OPENAPI, basePath: '/v1', upstream: { url: options.upstreamUrl } }],
    ...options.extraConfig,
  };
  const configFile = join(dir, 'portcullis.yaml');
  await writeFile(configFile, stringify(config));

  const logFile = join(dir, 'stdout.log');
  const logFd = openSync(logFile, 'a');
  const startArgs = [
    'scripts/node24.sh',
    'src/cli/main.ts',
    'start',
    '--config',
    configFile,
    '--data-dir',
    dataDir,
    ...(options.args ?? []),
  ];
  // `ulimit -n` then `exec`: the pid stays the gateway's (node24.sh execs node in turn).
  const child =
    options.nofile === undefined
      ? spawn('sh', startArgs, { cwd: ROOT, stdio: ['ignore', logFd, 'pipe'] })
      : spawn('sh', ['-c', `ulimit -n ${String(options.nofile)} && exec sh "$@"`, 'sh', ...startArgs], {
          cwd: ROOT,
          stdio: ['ignore', logFd, 'pipe'],
        });
  closeSync(logFd);
  children.add(child);
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    stderr = (stderr + chunk).slice(-16_384);
  });
  const pid = child.pid;
  const failure = async (why: string) => {
    const log = await readFile(logFile, 'utf8').catch(() => '');
    return new Error(
      `gateway ${options.name}: ${why}\n--- stderr\n${tail(stderr)}\n--- stdout\n${tail(log)}`,
    );
  };
  if (pid === undefined) throw await failure('could not spawn');

  const caFile = join(dataDir, 'tls/ca.crt');
  const servername = 'localhost';
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (!isRunning(child)) {
      await stopChild(child);
      throw await failure(`exited during start-up (code ${String(child.exitCode ?? child.signalCode)})`);
    }
    if (Date.now() > deadline) {
      await stopChild(child);
      throw await failure('not ready after 60 s');
    }
    const ca = await readFile(caFile, 'utf8').catch(() => undefined);
    if (ca !== undefined) {
      const ready = await httpsGet(`https://127.0.0.1:${String(adminPort)}/readyz`, ca, servername).catch(
        () => undefined,
      );
      if (ready?.status === 200) {
        // `sh scripts/node24.sh` ends in `exec node …`: the child's pid must now be node itself.
        const exe = procExe(pid) ?? '';
        if (!/\/node[^/]*$/.test(exe)) throw await failure(`pid ${String(pid)} is ${exe}, not node`);
        return {
          name: options.name,
          url: `https://127.0.0.1:${String(port)}`,
          servername,
          ca,
          caFile,
          pid,
          exe,
          logFile,
          configFile,
          dataDir,
          stderrTail: () => tail(stderr, 10),
        };
      }
    }
    await sleep(100);
  }
}
