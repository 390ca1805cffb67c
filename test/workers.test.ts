/**
 * `portcullis start --workers N` (node:cluster): the real command as a child process on
 * PostgreSQL (a fresh schema, dropped afterwards) and Redis (a fresh key prefix). Two workers
 * share port 0's listener; one killed with SIGKILL comes back; SIGHUP reloads both; SIGTERM
 * drains both and the primary exits 0. Refused starts: more workers than `cluster.nodes`, a bad
 * `--workers`, a worker that cannot listen. The restart policy is checked in-process.
 */
import { spawn } from 'node:child_process';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import { mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import pg from 'pg';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { createRestartPolicy, DEFAULT_RESTART_POLICY } from '../src/cli/workers.ts';
import { PG_URL, ROOT, runPortcullis } from './cli-harness.ts';
import { pgSchema, redisPrefix } from './cluster-harness.ts';
import { adminCredentials } from './admin-harness.ts';
import { FUNCTIONAL_TEST_LIMITS, startRecordingUpstream, tempDir, TEST_OPENAPI } from './helpers.ts';
import type { RecordingUpstream } from './helpers.ts';

const REDIS_URL = process.env.PORTCULLIS_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
// How long to wait for a log line: start-up of a primary and its workers took 30 s on a loaded machine.
const WAIT_MS = 45_000;

type LogLine = Record<string, unknown>;

/** `portcullis ARGS` left running: its JSON log lines (stdout) and its stderr. */
class Running {
  readonly child: ChildProcessWithoutNullStreams;
  readonly lines: LogLine[] = [];
  stdout = '';
  stderr = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private buffer = '';

  constructor(args: readonly string[]) {
    const env = { ...process.env };
    delete env.PORTCULLIS_MASTER_KEY; // the primary creates the key file
    this.child = spawn('sh', ['scripts/node24.sh', 'src/cli/main.ts', ...args], { cwd: ROOT, env });
    this.child.stdin.end();
    this.child.stdout.on('data', (chunk: Buffer) => {
      const text = chunk.toString('utf8');
      this.stdout += text;
      this.buffer += text;
      let nl: number;
      while ((nl = this.buffer.indexOf('\n')) >= 0) {
        const line = this.buffer.slice(0, nl);
        this.buffer = this.buffer.slice(nl + 1);
        if (line.trim() !== '') this.lines.push(JSON.parse(line) as LogLine);
      }
    });
    this.child.stderr.on('data', (chunk: Buffer) => (this.stderr += chunk.toString('utf8')));
    this.exited = once(this.child, 'exit').then(([code, signal]) => ({
      code: code as number | null,
      signal: signal as NodeJS.Signals | null,
    }));
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  /** Log lines from index `from` on that match. */
  find(match: (l: LogLine) => boolean, from = 0): LogLine[] {
    return this.lines.slice(from).filter(match);
  }

  /** Waits until `count` lines from index `from` on match; returns them. */
  async waitFor(match: (l: LogLine) => boolean, { from = 0, count = 1 } = {}): Promise<LogLine[]> {
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const found = this.find(match, from);
      if (found.length >= count) return found;
      if (this.child.exitCode !== null || this.child.signalCode !== null || Date.now() > deadline) {
        throw new Error(
          `expected ${String(count)} matching log line(s), found ${String(found.length)}; stderr:\n` +
            `${this.stderr}\nlog:\n${this.lines.map((l) => JSON.stringify(l)).join('\n')}`,
        );
      }
      await new Promise((ok) => setTimeout(ok, 50));
    }
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function waitUntilGone(pids: readonly number[]): Promise<number[]> {
  const deadline = Date.now() + 5_000;
  while (pids.some(alive) && Date.now() < deadline) await new Promise((ok) => setTimeout(ok, 50));
  return pids.filter(alive);
}

// Dropped / deleted after the file, once this file's afterAll has stopped every process.
const schema = pgSchema('workers');
const storeUrl = (() => {
  const url = new URL(PG_URL);
  url.searchParams.set('schema', schema);
  return url.href;
})();
const keyPrefix = redisPrefix('workers');
const redisAdmin = new Redis(REDIS_URL, { maxRetriesPerRequest: 1, lazyConnect: true });

let dir: string;
let upstream: RecordingUpstream;
/** The configuration path: a symlink into real/, so an edit of the target fires no file watcher. */
const configFile = () => join(dir, 'portcullis.yaml');
const target = () => join(dir, 'real', 'portcullis.yaml');
const dataDir = () => join(dir, 'data');
/** Every process a test started, killed in afterAll if still there. */
const spawned: Running[] = [];
const workerPids = new Set<number>();

/** The configuration: cluster.nodes 2 on PostgreSQL and Redis, `apis` on the recording upstream. */
/** The admin listener's client certificate (it answers /metrics only to an administrator). */
let adminCreds: Awaited<ReturnType<typeof adminCredentials>> | undefined;

function configText(apis: readonly { name: string; basePath: string }[], gatewayPort = 0): string {
  return stringify({
    gateway: { port: gatewayPort },
    admin: { port: 0, ...adminCreds?.config },
    store: { url: storeUrl },
    redis: { url: REDIS_URL, keyPrefix },
    cluster: { nodes: 2 },
    rateLimits: { ...FUNCTIONAL_TEST_LIMITS, backend: 'redis' },
    idempotency: { backend: 'redis' },
    apis: apis.map((a) => ({ ...a, openapi: 'api.yaml', upstream: { url: upstream.url } })),
  });
}

beforeAll(async () => {
  // Both servers are required: fail loudly without them.
  await redisAdmin.connect();
  expect(await redisAdmin.ping()).toBe('PONG');
  const client = new pg.Client({ connectionString: PG_URL });
  await client.connect();
  await client.end();
  dir = await tempDir('portcullis-workers-');
  adminCreds = await adminCredentials(dir);
  upstream = await startRecordingUpstream();
  await writeFile(join(dir, 'api.yaml'), stringify(TEST_OPENAPI));
  await mkdir(join(dir, 'real'));
  await writeFile(target(), configText([{ name: 'items', basePath: '/v1' }]));
  await symlink(target(), configFile());
});

afterAll(async () => {
  for (const r of spawned)
    if (r.child.exitCode === null && r.child.signalCode === null) r.child.kill('SIGKILL');
  for (const pid of workerPids) if (alive(pid)) process.kill(pid, 'SIGKILL');
  await upstream.close();
  await rm(dir, { recursive: true, force: true });
  await redisAdmin.quit();
});

describe('portcullis start --workers 2', () => {
  let primary: Running;
  let agent: Agent;
  /** The workers serving now, by slot. */
  let current: number[] = [];

  /**
   * Sends `n` requests, each on a new connection (the primary hands connections out in turn),
   * expects 200 for each, and returns the pids of the workers that served them (access log).
   */
  const gateway = () => String(primary.find((l) => l.event === 'cluster-started')[0]?.gateway);
  const spread = async (n: number, path: string): Promise<Set<unknown>> => {
    const from = primary.lines.length;
    for (let i = 0; i < n; i++) {
      const res = await request(`${gateway()}${path}`, { dispatcher: agent, reset: true });
      await res.body.text();
      expect(res.statusCode).toBe(200);
    }
    // The route of a parameterless operation is its path.
    const served = await primary.waitFor(
      (l) => l.event === 'access' && l.route === path && l.status === 200,
      {
        from,
        count: n,
      },
    );
    return new Set(served.map((l) => l.pid));
  };

  beforeAll(async () => {
    primary = new Running(['start', '--workers', '2', '--config', configFile(), '--data-dir', dataDir()]);
    spawned.push(primary);
    await primary.waitFor((l) => l.event === 'cluster-started');
    for (const l of primary.find((x) => x.event === 'worker-started')) workerPids.add(Number(l.workerPid));
    const ca = await readFile(join(dataDir(), 'tls', 'ca.crt'), 'utf8');
    agent = new Agent({
      connect: { ca, servername: 'localhost', cert: adminCreds?.cert, key: adminCreds?.key },
      allowH2: false,
    });
  }, 60_000);

  afterAll(async () => {
    await agent.close();
  });

  it('prepares once in the primary, forks two workers on one port and prints the banner once', () => {
    const started = primary.find((l) => l.event === 'started');
    expect(started).toHaveLength(2);
    const pids = started.map((l) => l.pid);
    expect(new Set(pids).size).toBe(2);
    expect(pids).not.toContain(primary.pid);
    expect(started.map((l) => l.worker).sort()).toEqual([1, 2]);
    // Port 0: the workers share the primary's listener, so both report the same port.
    expect(started[0]?.gateway).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(started[1]?.gateway).toBe(started[0]?.gateway);
    expect(started[1]?.admin).toBe(started[0]?.admin);

    const reported = primary.find((l) => l.event === 'worker-started' && l.pid === primary.pid);
    expect(new Set(reported.map((l) => l.workerPid))).toEqual(new Set(pids));
    current = [1, 2].map((slot) => Number(started.find((l) => l.worker === slot)?.pid));

    // The key file and the first keys were made once, by the primary, before any worker.
    const created = primary.find((l) => l.event === 'kms.master_key_created' || l.event === 'keys.created');
    expect(created.map((l) => [l.event, l.pid])).toEqual([
      ['kms.master_key_created', primary.pid],
      ['keys.created', primary.pid],
    ]);
    expect(primary.stderr.split('Portcullis is running').length - 1).toBe(1);
    expect(primary.stderr).toContain('Portcullis is running: 2 worker processes');
    expect(primary.stderr).toContain(`gateway   ${String(started[0]?.gateway)}`);
  });

  it('serves requests through the shared port from both workers', async () => {
    const before = upstream.received.length;
    const pids = await spread(12, '/v1/items');
    expect(pids).toEqual(new Set(current));
    expect(upstream.received.length - before).toBe(12);
  });

  it("answers /metrics on the shared admin listener with every worker's counts", async () => {
    const admin = String(primary.find((l) => l.event === 'cluster-started')[0]?.admin);
    const scrape = async () => {
      const res = await request(`${admin}/metrics`, { dispatcher: agent, reset: true });
      const text = await res.body.text();
      expect(res.statusCode).toBe(200);
      const line = text
        .split('\n')
        .find((l) => l.startsWith('portcullis_http_requests_total{') && l.includes('items/search"'));
      return Number(line?.split(' ').at(-1) ?? 0);
    };
    expect(await scrape()).toBe(0);
    const pids = await spread(10, '/v1/items/search');
    expect(pids.size).toBe(2); // both workers counted some
    // Whichever worker answers the scrape, it reports the sum over both.
    for (let i = 0; i < 4; i++) expect(await scrape()).toBe(10);
  });

  it('restarts a worker killed with SIGKILL, and requests keep succeeding meanwhile', async () => {
    const [victim, survivor] = current as [number, number];
    const from = primary.lines.length;
    process.kill(victim, 'SIGKILL');
    const [exited] = await primary.waitFor((l) => l.event === 'worker-exited' && l.workerPid === victim, {
      from,
    });
    expect(exited).toMatchObject({ worker: 1, code: null, signal: 'SIGKILL', level: 'warn' });
    // The other worker serves while this one comes back (or its replacement, if already up).
    const during = await spread(4, '/v1/items');
    expect(during.has(victim)).toBe(false);
    expect(during.has(survivor) || during.size === 1).toBe(true);

    const [restarted] = await primary.waitFor(
      (l) => l.event === 'worker-restarted' && l.previousPid === victim,
      { from },
    );
    const replacement = Number(restarted?.workerPid);
    workerPids.add(replacement);
    expect(replacement).not.toBe(victim);
    expect(alive(victim)).toBe(false);
    // Port 0 still: the replacement shares the listener the survivor kept open.
    expect(restarted).toMatchObject({ worker: 1, gateway: gateway() });
    expect(primary.find((l) => l.event === 'started' && l.pid === replacement, from)).toHaveLength(1);
    current = [replacement, survivor];
    expect(await spread(12, '/v1/items')).toEqual(new Set(current));
  });

  it('SIGHUP to the primary reloads every worker', async () => {
    const from = primary.lines.length;
    await writeFile(
      target(),
      configText([
        { name: 'items', basePath: '/v1' },
        { name: 'items-v2', basePath: '/v2' },
      ]),
    );
    primary.child.kill('SIGHUP');
    await primary.waitFor((l) => l.event === 'cluster-reload' && l.workers === 2, { from });
    const reloaded = await primary.waitFor(
      (l) => l.event === 'config-reloaded' && String(l.apis).includes('items-v2@/v2'),
      { from, count: 2 },
    );
    expect(new Set(reloaded.map((l) => l.pid))).toEqual(new Set(current));
    // The primary's message reached the workers (nothing signalled them directly). A worker may
    // also have applied the change first from another one's Redis signal.
    expect(reloaded.some((l) => l.trigger === 'SIGHUP')).toBe(true);
    for (const l of reloaded) expect(['SIGHUP', 'cluster-signal']).toContain(l.trigger);
    expect(await spread(12, '/v2/items')).toEqual(new Set(current));
  });

  it('SIGTERM drains every worker; the primary exits 0 and leaves no worker behind', async () => {
    const from = primary.lines.length;
    primary.child.kill('SIGTERM');
    const { code } = await primary.exited;
    expect(code).toBe(0);
    const exits = primary.find((l) => l.event === 'worker-exited', from);
    expect(exits.map((l) => [l.workerPid, l.code]).sort()).toEqual(current.map((pid) => [pid, 0]).sort());
    expect(
      primary
        .find((l) => l.event === 'stopped', from)
        .map((l) => l.pid)
        .sort(),
    ).toEqual([...current].sort());
    expect(primary.find((l) => l.event === 'cluster-stopped', from)).toMatchObject([{ code: 0 }]);
    expect(await waitUntilGone([...workerPids])).toEqual([]);
    expect(primary.find((l) => l.event === 'worker-restarted', from)).toEqual([]);

    // The master key never reaches a log, in any encoding.
    const key = await readFile(join(dataDir(), 'master.key'));
    expect(key).toHaveLength(32);
    const output = primary.stdout + primary.stderr;
    for (const encoding of ['base64url', 'base64', 'hex'] as const) {
      expect(output.includes(key.toString(encoding)), encoding).toBe(false);
    }
  });
});

describe('refused starts', () => {
  it('more workers than cluster.nodes: names the key and its line; --workers out of range', async () => {
    // The file sets cluster.nodes (2); another one leaves it at its default (1).
    const text = await readFile(target(), 'utf8');
    const line = text.split('\n').findIndex((l) => l.startsWith('  nodes: 2')) + 1;
    expect(line).toBeGreaterThan(0);
    const unset = join(dir, 'no-cluster.yaml');
    await writeFile(
      unset,
      stringify({
        apis: [{ name: 'items', openapi: 'api.yaml', basePath: '/v1', upstream: { url: upstream.url } }],
      }),
    );
    const [over, overDefault, zero, many, word] = await Promise.all([
      runPortcullis(['start', '--workers', '3', '--config', configFile(), '--data-dir', dataDir()]),
      runPortcullis(['start', '--workers', '2', '--config', unset, '--data-dir', join(dir, 'unset')]),
      runPortcullis(['start', '--workers', '0', '--config', configFile()]),
      runPortcullis(['start', '--workers', '65', '--config', configFile()]),
      runPortcullis(['start', '--workers', 'two', '--config', configFile()]),
    ]);
    expect(over.code).toBe(1);
    expect(over.stderr).toContain(
      `${configFile()}:${String(line)}:3: cluster.nodes: --workers 3 but cluster.nodes is 2: `,
    );
    expect(over.stderr).toContain('set cluster.nodes to the total number of gateway processes on all hosts');
    expect(overDefault.code).toBe(1);
    expect(overDefault.stderr).toContain(
      `${unset}: cluster.nodes: --workers 2 but cluster.nodes is 1 (the default; this file does not set it)`,
    );
    for (const r of [zero, many, word]) {
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain("option '--workers <n>' argument");
      expect(r.stderr).toContain('expected an integer from 1 to 64');
    }
    for (const r of [over, overDefault, zero, many, word])
      expect(r.stderr).not.toContain('Portcullis is running');
  });

  it('a worker that cannot listen ends the start with exit code 1 and the reason, not a restart loop', async () => {
    const blocker = createServer();
    await new Promise<void>((ok) => blocker.listen(0, '127.0.0.1', ok));
    const port = (blocker.address() as AddressInfo).port;
    const busy = join(dir, 'busy.yaml');
    await writeFile(busy, configText([{ name: 'items', basePath: '/v1' }], port));
    try {
      const run = new Running(['start', '--workers', '2', '--config', busy, '--data-dir', dataDir()]);
      spawned.push(run);
      const { code } = await run.exited;
      expect(code).toBe(1);
      expect(run.stderr).toMatch(/portcullis: worker [12] could not start: .*EADDRINUSE/);
      expect(run.stderr).not.toContain('Portcullis is running');
      const failed = run.find((l) => l.event === 'start-failed');
      expect(failed.length).toBeGreaterThan(0);
      expect(run.find((l) => l.event === 'worker-restarted')).toEqual([]);
      expect(run.find((l) => l.event === 'worker-start-failed')).toHaveLength(1);
      const pids = run.find((l) => l.event === 'worker-exited').map((l) => Number(l.workerPid));
      expect(pids).toHaveLength(2);
      for (const pid of pids) workerPids.add(pid);
      expect(await waitUntilGone(pids)).toEqual([]);
    } finally {
      await new Promise<void>((ok) => blocker.close(() => ok()));
    }
  });
});

describe('restart policy', () => {
  it('backs off per worker, resets after a stable run, and gives up on a crash loop', () => {
    const p = createRestartPolicy({ ...DEFAULT_RESTART_POLICY, windowMs: 1_000_000 });
    expect([0, 1, 2, 3].map((i) => p.exited(1, i, 10))).toEqual(
      [250, 500, 1000, 2000].map((delayMs) => ({ action: 'restart', delayMs })),
    );
    expect(p.exited(2, 5, undefined)).toEqual({ action: 'give-up', exits: 5 });

    const q = createRestartPolicy();
    // Doubling, capped at 10 s; another slot has its own backoff.
    let t = 0;
    const seen: number[] = [];
    for (let i = 0; i < 8; i++) {
      t += 40_000; // exits spread out: never a crash loop
      const d = q.exited(1, t, 1_000);
      if (d.action === 'restart') seen.push(d.delayMs);
    }
    expect(seen).toEqual([250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
    expect(q.exited(2, t + 1, undefined)).toEqual({ action: 'restart', delayMs: 250 });
    // A worker that ran 30 s or more starts again from the first delay.
    expect(q.exited(1, t + 40_000, 30_000)).toEqual({ action: 'restart', delayMs: 250 });

    // Five unexpected exits within 30 s, whichever workers: a crash loop.
    const r = createRestartPolicy();
    const decisions = [0, 1, 2, 3, 4].map((i) => r.exited(i % 2, 1000 * i, undefined).action);
    expect(decisions).toEqual(['restart', 'restart', 'restart', 'restart', 'give-up']);
    // Exits older than the window do not count.
    const s = createRestartPolicy();
    for (let i = 0; i < 4; i++) s.exited(1, i, undefined);
    expect(s.exited(1, 31_000, undefined).action).toBe('restart');
  });
});
