/**
 * `portcullis start --workers N`: N gateway processes on one host sharing its listeners through
 * `node:cluster` (the primary accepts connections and hands them to the workers in turn).
 *
 * The primary serves nothing. Before forking it validates the configuration (including that
 * `cluster.nodes` counts these processes), and prepares what the first start creates, so that
 * workers do not race each other for it: the data directory, the development certificate, the
 * store schema (migrations), the local KMS key file and the initial keys. Then it forks the
 * workers, prints the banner once they all listen, and supervises them:
 *
 * - a worker that dies is restarted with a backoff (250 ms doubling to 10 s, reset after 30 s
 *   up); 5 unexpected exits within 30 s is a crash loop: the primary stops the rest, exits 1;
 * - a worker that fails during the first start (a port in use…) stops the whole start (exit 1);
 * - SIGTERM / SIGINT: every worker drains (`gateway.shutdownGraceMs`), stragglers are killed
 *   after that plus a margin, the primary exits 0 (a second SIGINT kills them at once);
 * - SIGHUP: every worker reloads.
 *
 * Signals belong to the primary: Ctrl-C reaches the terminal's whole process group, so workers
 * ignore SIGINT and drain when the primary tells them. A worker sent SIGTERM or SIGHUP directly
 * still drains or reloads. Each worker watches the configuration and its OpenAPI files itself
 * (the same watcher as a single process), so an edit reloads every worker without the primary.
 * A worker exits when the primary disappears (node:cluster closes the IPC channel).
 */
import { AggregatorRegistry } from 'prom-client';
import cluster from 'node:cluster';
import type { Worker } from 'node:cluster';
import { mkdir } from 'node:fs/promises';
import { resolve } from 'node:path';
import { InvalidArgumentError } from 'commander';
import { formatIssue, loadConfig } from '../config/load.ts';
import type { LoadedConfig } from '../config/load.ts';
import { compileRuntime } from '../gateway/compile.ts';
import type { Runtime } from '../gateway/compile.ts';
import { openKeyManager } from '../keys/index.ts';
import { startPortcullis } from '../server/lifecycle.ts';
import type { Portcullis } from '../server/lifecycle.ts';
import { createLogger, describeError } from '../log/index.ts';
import type { Logger } from '../log/index.ts';
import { loadTlsMaterial } from '../server/tls.ts';
import type { TlsMaterial } from '../server/tls.ts';
import { openStore } from '../store/index.ts';
import { startBanner } from './banner.ts';
import { recordStart } from './paths.ts';

export const MAX_WORKERS = 64;
/** The environment variable that gives a worker its slot (1..N), kept across restarts. */
const SLOT_ENV = 'PORTCULLIS_WORKER_SLOT';
/** Beyond `gateway.shutdownGraceMs`: time for a worker to close the store and exit. */
const SHUTDOWN_MARGIN_MS = 5_000;

export type Role = 'all' | 'gateway' | 'authorization-server';

export interface WorkersOptions {
  /** `--config` and `--data-dir` as given (the banner repeats them). */
  readonly configArg: string;
  readonly dataDirArg: string;
  readonly role: Role;
  readonly workers: number;
}

/** `--workers` as commander parses it: an integer from 1 to {@link MAX_WORKERS}. */
export function parseWorkerCount(value: string): number {
  const n = /^[0-9]{1,3}$/.test(value) ? Number(value) : NaN;
  if (!(n >= 1 && n <= MAX_WORKERS)) {
    throw new InvalidArgumentError(`expected an integer from 1 to ${String(MAX_WORKERS)}.`);
  }
  return n;
}

/**
 * Refuses more processes than `cluster.nodes` declares: while Redis is unreachable each process
 * enforces 1/nodes of every limit, so uncounted processes would together allow more than it.
 */
export function checkWorkerCount(loaded: LoadedConfig, workers: number): void {
  const { nodes } = loaded.config.cluster;
  if (workers <= nodes) return;
  // locate() falls back to the nearest written parent: the same place means the key is absent.
  const at = loaded.locate(['cluster', 'nodes']);
  const parent = loaded.locate(['cluster']);
  const written = at !== undefined && (at.line !== parent?.line || at.column !== parent.column);
  const message =
    `--workers ${String(workers)} but cluster.nodes is ${String(nodes)}` +
    (written ? '' : ' (the default; this file does not set it)') +
    `: while Redis is unreachable each process enforces 1/${String(nodes)} of every rate limit, so ` +
    `${String(workers)} processes would allow more than the limit; set cluster.nodes to the total ` +
    'number of gateway processes on all hosts (counting every worker)';
  throw new Error(
    formatIssue(loaded.file, {
      path: 'cluster.nodes',
      message,
      ...(written ? { line: at.line, column: at.column } : {}),
    }),
  );
}

/** When a dead worker is started again, and when to give up. */
export interface RestartPolicyOptions {
  readonly initialDelayMs: number;
  readonly maxDelayMs: number;
  /** This many unexpected exits (all workers together) within `windowMs` is a crash loop. */
  readonly maxExits: number;
  readonly windowMs: number;
  /** A worker up this long before it died starts again from `initialDelayMs`. */
  readonly stableMs: number;
}

export const DEFAULT_RESTART_POLICY: RestartPolicyOptions = {
  initialDelayMs: 250,
  maxDelayMs: 10_000,
  maxExits: 5,
  windowMs: 30_000,
  stableMs: 30_000,
};

export type RestartDecision =
  | { readonly action: 'restart'; readonly delayMs: number }
  | { readonly action: 'give-up'; readonly exits: number };

export interface RestartPolicy {
  /**
   * A worker in `slot` exited unexpectedly at `now`, having been up `upMs` (undefined: it never
   * finished starting).
   */
  exited(slot: number, now: number, upMs: number | undefined): RestartDecision;
}

export function createRestartPolicy(options: RestartPolicyOptions = DEFAULT_RESTART_POLICY): RestartPolicy {
  const exits: number[] = [];
  const failures = new Map<number, number>();
  return {
    exited(slot, now, upMs) {
      exits.push(now);
      while (exits.length > 0 && (exits[0] ?? now) <= now - options.windowMs) exits.shift();
      if (exits.length >= options.maxExits) return { action: 'give-up', exits: exits.length };
      const previous = upMs !== undefined && upMs >= options.stableMs ? 0 : (failures.get(slot) ?? 0);
      failures.set(slot, previous + 1);
      const delayMs = Math.min(options.maxDelayMs, options.initialDelayMs * 2 ** Math.min(previous, 30));
      return { action: 'restart', delayMs };
    },
  };
}

/** Worker → primary. */
type WorkerMessage =
  | {
      readonly type: 'listening';
      readonly pid: number;
      readonly gatewayUrl: string;
      readonly adminUrl: string | undefined;
      readonly redirectUrl: string | undefined;
      readonly demoUpstreamUrl: string | undefined;
    }
  | { readonly type: 'failed'; readonly error: string }
  /** `/metrics` on this worker's admin listener: the primary answers with every worker's. */
  | { readonly type: 'metrics-request'; readonly id: number };

/** Primary → worker. */
type PrimaryMessage =
  | { readonly type: 'shutdown' }
  | { readonly type: 'reload'; readonly trigger: string }
  | { readonly type: 'metrics'; readonly id: number; readonly text?: string; readonly error?: string };

const isRecord = (m: unknown): m is Record<string, unknown> => typeof m === 'object' && m !== null;
const optionalString = (v: unknown): v is string | undefined => v === undefined || typeof v === 'string';

function asWorkerMessage(m: unknown): WorkerMessage | undefined {
  if (!isRecord(m)) return undefined;
  if (m.type === 'failed' && typeof m.error === 'string') return { type: 'failed', error: m.error };
  if (m.type === 'metrics-request' && Number.isSafeInteger(m.id))
    return { type: 'metrics-request', id: m.id as number };
  if (
    m.type === 'listening' &&
    typeof m.pid === 'number' &&
    typeof m.gatewayUrl === 'string' &&
    optionalString(m.adminUrl) &&
    optionalString(m.redirectUrl) &&
    optionalString(m.demoUpstreamUrl)
  ) {
    return {
      type: 'listening',
      pid: m.pid,
      gatewayUrl: m.gatewayUrl,
      adminUrl: m.adminUrl,
      redirectUrl: m.redirectUrl,
      demoUpstreamUrl: m.demoUpstreamUrl,
    };
  }
  return undefined;
}

function asPrimaryMessage(m: unknown): PrimaryMessage | undefined {
  if (!isRecord(m)) return undefined;
  if (m.type === 'shutdown') return { type: 'shutdown' };
  if (m.type === 'reload' && typeof m.trigger === 'string') return { type: 'reload', trigger: m.trigger };
  if (
    m.type === 'metrics' &&
    Number.isSafeInteger(m.id) &&
    optionalString(m.text) &&
    optionalString(m.error)
  ) {
    return {
      type: 'metrics',
      id: m.id as number,
      ...(m.text === undefined ? {} : { text: m.text }),
      ...(m.error === undefined ? {} : { error: m.error }),
    };
  }
  return undefined;
}

const messageOf = (err: unknown): string => (err instanceof Error ? err.message : String(err));

interface Prepared {
  readonly tls: TlsMaterial;
  /** Compiled once to validate the APIs before forking; the banner reads it. */
  readonly runtime: Runtime;
}

/** Everything the first start creates, created once, before any worker exists. */
async function prepare(loaded: LoadedConfig, dataDir: string, logger: Logger): Promise<Prepared> {
  const { config } = loaded;
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const resolveFile = (f: string | undefined) => (f === undefined ? undefined : loaded.resolvePath(f));
  const tls = await loadTlsMaterial(
    { certFile: resolveFile(config.gateway.tls.certFile), keyFile: resolveFile(config.gateway.tls.keyFile) },
    dataDir,
    'gateway.tls',
  );
  const store = await openStore({ url: config.store.url, dataDir });
  try {
    const keys = await openKeyManager({ store, dataDir, config: config.oauth, keys: config.keys, logger });
    keys.close();
  } finally {
    await store.close();
  }
  const runtime = await compileRuntime(loaded);
  return { tls, runtime };
}

interface Slot {
  readonly n: number;
  worker: Worker | undefined;
  pid: number | undefined;
  /** When the current worker reported listening. */
  upSince: number | undefined;
  /** The pid of the worker this one replaces. */
  replaces: number | undefined;
  /** Why the current worker could not start, when it said so. */
  startError: string | undefined;
  timer: NodeJS.Timeout | undefined;
}

/**
 * The primary: prepares, forks `options.workers` workers and supervises them until a signal or
 * a crash loop ends the process. Throws (before forking) on an invalid configuration or a
 * worker count above `cluster.nodes`.
 */
export async function runPrimary(options: WorkersOptions): Promise<void> {
  const configFile = resolve(options.configArg);
  const dataDir = resolve(options.dataDirArg);
  const loaded = await loadConfig(configFile);
  checkWorkerCount(loaded, options.workers);
  const logger = createLogger(loaded.config.logging.level).child({ pid: process.pid });
  const { tls, runtime } = await prepare(loaded, dataDir, logger);
  recordStart({ configFile, dataDir });
  let closingRuntime: Promise<void> | undefined;
  const closeRuntime = () => (closingRuntime ??= runtime.close().catch(() => undefined));

  const policy = createRestartPolicy();
  const slots: Slot[] = Array.from({ length: options.workers }, (_, i) => ({
    n: i + 1,
    worker: undefined,
    pid: undefined,
    upSince: undefined,
    replaces: undefined,
    startError: undefined,
    timer: undefined,
  }));
  /** Until every worker listened once, a failed start ends the whole start. */
  let allUp = false;
  let stopping: { code: number } | undefined;
  let killTimer: NodeJS.Timeout | undefined;

  const finish = () => {
    if (stopping === undefined || slots.some((s) => s.worker !== undefined)) return;
    clearTimeout(killTimer);
    logger.info({ event: 'cluster-stopped', code: stopping.code }, 'all workers stopped');
    void closeRuntime().then(() => process.exit(stopping?.code ?? 1));
  };

  const send = (worker: Worker, message: PrimaryMessage): boolean => {
    if (!worker.isConnected()) return false;
    try {
      worker.send(message);
      return true;
    } catch {
      return false;
    }
  };

  const stop = (code: number) => {
    if (stopping !== undefined) return;
    stopping = { code };
    for (const s of slots) clearTimeout(s.timer);
    for (const s of slots) {
      if (s.worker !== undefined && !send(s.worker, { type: 'shutdown' })) s.worker.process.kill('SIGTERM');
    }
    killTimer = setTimeout(() => {
      for (const s of slots) {
        if (s.worker === undefined) continue;
        logger.warn({ event: 'worker-killed', worker: s.n, workerPid: s.pid }, 'worker did not stop in time');
        s.worker.process.kill('SIGKILL');
      }
    }, loaded.config.gateway.shutdownGraceMs + SHUTDOWN_MARGIN_MS);
    finish();
  };

  const onListening = (slot: Slot, m: Extract<WorkerMessage, { type: 'listening' }>) => {
    slot.upSince = Date.now();
    const fields = { worker: slot.n, workerPid: m.pid, gateway: m.gatewayUrl, admin: m.adminUrl };
    if (slot.replaces === undefined) logger.info({ event: 'worker-started', ...fields }, 'worker started');
    else {
      logger.info({ event: 'worker-restarted', ...fields, previousPid: slot.replaces }, 'worker restarted');
    }
    slot.replaces = undefined;
    if (allUp || stopping !== undefined || slots.some((s) => s.upSince === undefined)) return;
    allUp = true;
    logger.info(
      { event: 'cluster-started', workers: slots.length, gateway: m.gatewayUrl, admin: m.adminUrl },
      'all workers listening',
    );
    process.stderr.write(
      startBanner({
        gatewayUrl: m.gatewayUrl,
        adminUrl: m.adminUrl,
        redirectUrl: m.redirectUrl,
        demoUpstreamUrl: m.demoUpstreamUrl,
        tls,
        runtime,
        role: options.role,
        configFile,
        dataDir,
        workers: slots.length,
      }).join('\n'),
    );
    void closeRuntime(); // it was there to validate the APIs and to write the banner
  };

  const onExit = (slot: Slot, worker: Worker, code: number | null, signal: string | null) => {
    if (slot.worker !== worker) return;
    const pid = slot.pid;
    const upMs = slot.upSince === undefined ? undefined : Date.now() - slot.upSince;
    slot.worker = undefined;
    slot.upSince = undefined;
    const fields = { event: 'worker-exited', worker: slot.n, workerPid: pid, code, signal };
    if (stopping !== undefined) {
      logger.info(fields, 'worker stopped');
      finish();
      return;
    }
    logger.warn(fields, 'worker exited unexpectedly');
    if (!allUp && upMs === undefined) {
      const reason = slot.startError ?? `it exited (code ${String(code)}, signal ${String(signal)})`;
      logger.error({ event: 'worker-start-failed', worker: slot.n, error: reason }, 'worker could not start');
      process.stderr.write(`portcullis: worker ${String(slot.n)} could not start: ${reason}\n`);
      stop(1);
      return;
    }
    const decision = policy.exited(slot.n, Date.now(), upMs);
    if (decision.action === 'give-up') {
      const window = DEFAULT_RESTART_POLICY.windowMs / 1000;
      logger.error(
        { event: 'worker-crash-loop', exits: decision.exits, windowSeconds: window },
        'workers keep exiting; stopping',
      );
      process.stderr.write(
        `portcullis: workers exited ${String(decision.exits)} times within ${String(window)} s; stopping\n`,
      );
      stop(1);
      return;
    }
    slot.replaces = pid;
    slot.timer = setTimeout(() => {
      slot.timer = undefined;
      if (stopping === undefined) fork(slot);
    }, decision.delayMs);
  };

  // Sums every worker's registry (gauges by their own aggregator), for any worker's /metrics.
  const aggregator = new AggregatorRegistry();
  const fork = (slot: Slot) => {
    const worker = cluster.fork({ [SLOT_ENV]: String(slot.n) });
    slot.worker = worker;
    slot.pid = worker.process.pid;
    slot.startError = undefined;
    worker.on('message', (raw: unknown) => {
      const m = asWorkerMessage(raw);
      if (m?.type === 'listening') onListening(slot, m);
      else if (m?.type === 'failed') slot.startError = m.error;
      else if (m?.type === 'metrics-request') {
        aggregator.clusterMetrics().then(
          (text) => send(worker, { type: 'metrics', id: m.id, text }),
          (err: unknown) => send(worker, { type: 'metrics', id: m.id, error: messageOf(err) }),
        );
      }
    });
    worker.on('error', (err: unknown) =>
      logger.warn({ event: 'worker-ipc-error', worker: slot.n, error: describeError(err) }, 'worker IPC'),
    );
    worker.on('exit', (code: number | null, signal: string | null) => onExit(slot, worker, code, signal));
  };

  const onStopSignal = (signal: NodeJS.Signals) => {
    if (stopping === undefined) {
      logger.info({ event: 'stopping', signal }, 'stopping every worker');
      stop(0);
      return;
    }
    // A second Ctrl-C means now (as for a single process). A repeated SIGTERM does not: tools
    // such as timeout(1) send it to the process and to its group.
    if (signal !== 'SIGINT') return;
    logger.warn({ event: 'stopping-now', signal }, 'second interrupt: killing the workers');
    for (const s of slots) s.worker?.process.kill('SIGKILL');
  };
  process.on('SIGTERM', onStopSignal);
  process.on('SIGINT', onStopSignal);
  process.on('SIGHUP', () => {
    if (stopping !== undefined) return;
    const up = slots.filter((s) => s.worker !== undefined && s.upSince !== undefined);
    logger.info({ event: 'cluster-reload', signal: 'SIGHUP', workers: up.length }, 'reloading every worker');
    for (const s of up) if (s.worker !== undefined) send(s.worker, { type: 'reload', trigger: 'SIGHUP' });
  });

  for (const slot of slots) fork(slot);
}

/**
 * A worker: one full Portcullis process (the primary's listeners shared), told by the primary
 * over IPC when to drain or reload. Never returns an error: it reports it to the primary and
 * exits 1.
 */
export async function runWorker(options: Omit<WorkersOptions, 'workers'>): Promise<void> {
  const slot = Number(process.env[SLOT_ENV] ?? cluster.worker?.id ?? 0);
  let p: Portcullis | undefined;
  let logger: Logger | undefined;
  /** A shutdown asked for before the listeners were up: done right after. */
  const pending = { stop: false };
  const stop = (reason: string) => {
    if (p === undefined) {
      pending.stop = true;
      return;
    }
    logger?.info({ event: 'stopping', signal: reason }, 'draining in-flight requests');
    void p.close().then(() => process.exit(0));
  };
  // Ctrl-C signals the whole process group: the primary decides, and says 'shutdown'.
  process.on('SIGINT', () => undefined);
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGHUP', () => void p?.reload('SIGHUP'));
  // Answers the primary's collection of metrics (prom-client's cluster protocol), and asks it
  // for the whole host's when this worker's admin listener is scraped.
  new AggregatorRegistry();
  const metricsWaiting = new Map<number, { ok: (text: string) => void; fail: (err: Error) => void }>();
  let metricsIds = 0;
  const clusterMetrics = (): Promise<string> =>
    new Promise((ok, fail) => {
      const id = ++metricsIds;
      const timer = setTimeout(() => {
        metricsWaiting.delete(id);
        fail(new Error('metrics: the primary did not answer'));
      }, 5_000);
      metricsWaiting.set(id, {
        ok: (text) => {
          clearTimeout(timer);
          ok(text);
        },
        fail: (err) => {
          clearTimeout(timer);
          fail(err);
        },
      });
      void tell({ type: 'metrics-request', id });
    });
  process.on('message', (raw: unknown) => {
    const m = asPrimaryMessage(raw);
    if (m?.type === 'shutdown') stop('shutdown');
    else if (m?.type === 'reload') void p?.reload(m.trigger);
    else if (m?.type === 'metrics') {
      const waiting = metricsWaiting.get(m.id);
      metricsWaiting.delete(m.id);
      if (m.text !== undefined) waiting?.ok(m.text);
      else waiting?.fail(new Error(m.error ?? 'metrics: no answer'));
    }
  });
  const tell = (message: WorkerMessage) =>
    new Promise<void>((ok) => {
      if (process.send === undefined) ok();
      else process.send(message, undefined, {}, () => ok());
    });

  try {
    const configFile = resolve(options.configArg);
    const loaded = await loadConfig(configFile);
    logger = createLogger(loaded.config.logging.level).child({ pid: process.pid, worker: slot });
    p = await startPortcullis({
      configFile,
      dataDir: resolve(options.dataDirArg),
      logger,
      role: options.role,
      signals: false,
      watch: true,
      instance: `worker-${String(slot)}`,
      metricsText: clusterMetrics,
    });
    AggregatorRegistry.setRegistries([p.metrics.registry]);
  } catch (err) {
    logger?.error({ event: 'start-failed', error: describeError(err) }, 'could not start');
    await tell({ type: 'failed', error: messageOf(err) });
    process.exit(1);
  }
  await tell({
    type: 'listening',
    pid: process.pid,
    gatewayUrl: p.gatewayUrl,
    adminUrl: p.adminUrl,
    redirectUrl: p.redirectUrl,
    demoUpstreamUrl: p.demoUpstreamUrl,
  });
  if (pending.stop) stop('shutdown');
}
