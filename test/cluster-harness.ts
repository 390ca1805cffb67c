/**
 * Distributed-mode tests: several real `portcullis start` processes on one configuration, as
 * separate hosts behind a load balancer would run them. They share the machine's PostgreSQL (a
 * fresh schema) and Redis (a fresh key prefix), each reached through a {@link FaultProxy} so that a
 * test can cut the network to either without stopping the servers other tests use. Every node
 * presents the same server certificate and holds the same KMS master key (environment), but has
 * a data directory of its own.
 *
 * @example
 * ```ts
 * describe('distributed mode', () => {
 *   const backends = clusterBackends('distributed'); // at collection time: it registers hooks
 *   let nodes: ClusterNode[];
 *   beforeAll(async () => {
 *     nodes = await startNodes({ count: 3, dir: backends.dir, config: { ...backends.config(), apis } });
 *   });
 *   afterAll(() => stopNodes());
 *   it('…', async () => {
 *     backends.redis.cut('blackhole');
 *     const res = await request(nodes[0]!, 'GET', '/v1/items');
 *   });
 * });
 * ```
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes, webcrypto } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { Redis } from 'ioredis';
import pg from 'pg';
import { Agent, request as undiciRequest } from 'undici';
import { afterAll, beforeAll } from 'vitest';
import { stringify } from 'yaml';
import { PG_URL, ROOT, runPortcullis } from './cli-harness.ts';
import type { Run } from './cli-harness.ts';
import { startFaultProxy } from './fault-proxy.ts';
import type { FaultProxy } from './fault-proxy.ts';
import { ca as makeCa, DAY, EC, pkcs8, serial, SIG } from './pki.ts';

export const REDIS_URL = process.env.PORTCULLIS_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

/** How long a node may take from spawn to its `started` log line. */
const START_TIMEOUT_MS = 30_000;
/** How long `stop()` waits after SIGTERM before SIGKILL. */
const STOP_TIMEOUT_MS = 20_000;

export type LogLine = Record<string, unknown>;

export interface ClusterNode {
  readonly index: number;
  readonly gatewayUrl: string;
  /** Undefined when the configuration disables the admin listener. */
  readonly adminUrl: string | undefined;
  readonly pid: number;
  readonly dataDir: string;
  /** The CA (PEM) that issued the certificate every node presents. */
  readonly caPem: string;
  /** Everything the process wrote, stdout and stderr, in arrival order. */
  logs(): string;
  /** The JSON log lines from stdout. */
  logLines(): LogLine[];
  /** The first log line (already written or still to come) that matches; rejects after the timeout. */
  waitForLog(pred: (line: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /**
   * Labels of the secrets found in this node's output: the master key (`master key`) and any of
   * `named` ({label: secret}). The labels only, so that a failing assertion prints no secret.
   */
  leakedSecrets(named?: Readonly<Record<string, string>>): string[];
  readonly alive: boolean;
  /** Settles when the process has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Sends `signal` (default SIGKILL: a crash) and waits for the exit. */
  kill(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM, then waits for the exit (SIGKILL after 20 s). */
  stop(): Promise<void>;
}

export interface StartNodesOptions {
  readonly count: number;
  /**
   * The configuration. The harness sets `gateway.port` and `admin.port` to 0 and
   * `gateway.tls.certFile/keyFile` to the shared certificate; everything else is as given.
   */
  readonly config: Record<string, unknown>;
  /** Holds the configuration, the certificate and `node-<index>` data directories. */
  readonly dir: string;
  /** Files written beside the configuration first (objects as YAML), e.g. `{'api.yaml': doc}`. */
  readonly files?: Readonly<Record<string, unknown>>;
  /** Added to each node's environment (after the master key, so a test can override it). */
  readonly env?: Readonly<Record<string, string>>;
  /** Index of the first node (default 0); e.g. to restart node 1 with its data directory. */
  readonly first?: number;
}

interface Pki {
  readonly caPem: string;
  readonly certFile: string;
  readonly keyFile: string;
}

const live = new Set<ClusterNode>();
const masterKeys = new Map<string, string>();
const pkis = new Map<string, Promise<Pki>>();

/** The master key of the nodes started in `dir`: base64url of 32 random bytes, made once per dir. */
function masterKeyFor(dir: string): string {
  let key = masterKeys.get(dir);
  if (key === undefined) {
    key = randomBytes(32).toString('base64url');
    masterKeys.set(dir, key);
  }
  return key;
}

/** A CA and one server certificate for localhost, 127.0.0.1 and ::1, written into `dir` once. */
function pkiFor(dir: string): Promise<Pki> {
  let p = pkis.get(dir);
  if (p === undefined) {
    p = (async () => {
      const certFile = join(dir, 'server.pem');
      const keyFile = join(dir, 'server-key.pem');
      const caFile = join(dir, 'ca.pem');
      if (existsSync(certFile) && existsSync(keyFile) && existsSync(caFile)) {
        return { caPem: await readFile(caFile, 'utf8'), certFile, keyFile };
      }
      const root = await makeCa('CN=Portcullis cluster test CA');
      const keys = await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify']);
      const cert = await x509.X509CertificateGenerator.create({
        serialNumber: serial(),
        subject: 'CN=localhost',
        issuer: root.cert.subject,
        notBefore: new Date(Date.now() - DAY),
        notAfter: new Date(Date.now() + 30 * DAY),
        publicKey: keys.publicKey,
        signingKey: root.keys.privateKey,
        signingAlgorithm: SIG,
        extensions: [
          new x509.BasicConstraintsExtension(false, undefined, true),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
          new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
          new x509.SubjectAlternativeNameExtension([
            { type: 'dns', value: 'localhost' },
            { type: 'ip', value: '127.0.0.1' },
            { type: 'ip', value: '::1' },
          ]),
        ],
      });
      await writeFile(caFile, root.pem);
      await writeFile(certFile, cert.toString('pem'));
      await writeFile(keyFile, await pkcs8(keys.privateKey), { mode: 0o600 });
      return { caPem: root.pem, certFile, keyFile };
    })();
    pkis.set(dir, p);
  }
  return p;
}

/** Writes `text` unless the file already holds it (running nodes watch their configuration). */
async function writeIfChanged(file: string, text: string): Promise<void> {
  const current = existsSync(file) ? await readFile(file, 'utf8') : undefined;
  if (current !== text) await writeFile(file, text);
}

function redact(text: string, secret: string): string {
  return text.replaceAll(secret, '[master key]');
}

function spawnNode(
  index: number,
  configFile: string,
  dir: string,
  pki: Pki,
  env: Readonly<Record<string, string>>,
): Promise<ClusterNode> {
  const dataDir = join(dir, `node-${String(index)}`);
  const masterKey = masterKeyFor(dir);
  const child: ChildProcess = spawn(
    'sh',
    ['scripts/node24.sh', 'src/cli/main.ts', 'start', '--config', configFile, '--data-dir', dataDir],
    {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, PORTCULLIS_MASTER_KEY: masterKey, ...env },
    },
  );
  let output = '';
  let partial = '';
  const lines: LogLine[] = [];
  const watchers = new Set<(line: LogLine) => void>();
  let alive = true;
  child.stdout?.on('data', (chunk: Buffer) => {
    const text = chunk.toString('utf8');
    output += text;
    partial += text;
    const parts = partial.split('\n');
    partial = parts.pop() ?? '';
    for (const raw of parts) {
      if (!raw.startsWith('{')) continue;
      let line: LogLine;
      try {
        line = JSON.parse(raw) as LogLine;
      } catch {
        continue;
      }
      lines.push(line);
      for (const w of [...watchers]) w(line);
    }
  });
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((ok) => {
    child.on('close', (code, signal) => {
      alive = false;
      ok({ code, signal });
    });
  });
  const describeExit = (e: { code: number | null; signal: NodeJS.Signals | null }) =>
    e.signal === null ? `exit code ${String(e.code)}` : `signal ${e.signal}`;

  const waitForLog = (pred: (line: LogLine) => boolean, timeoutMs = 10_000): Promise<LogLine> => {
    const found = lines.find(pred);
    if (found !== undefined) return Promise.resolve(found);
    return new Promise((ok, fail) => {
      const done = () => {
        clearTimeout(timer);
        watchers.delete(watch);
      };
      const watch = (line: LogLine) => {
        if (!pred(line)) return;
        done();
        ok(line);
      };
      const timer = setTimeout(() => {
        done();
        fail(new Error(`node ${String(index)}: no matching log line within ${String(timeoutMs)} ms`));
      }, timeoutMs);
      watchers.add(watch);
      void exited.then((e) => {
        if (!watchers.has(watch)) return;
        // The last lines may arrive with the exit: look once more.
        const late = lines.find(pred);
        done();
        if (late !== undefined) ok(late);
        else fail(new Error(`node ${String(index)}: exited (${describeExit(e)}) before a matching log line`));
      });
    });
  };

  const kill = async (signal: NodeJS.Signals = 'SIGKILL') => {
    if (alive) child.kill(signal);
    return exited;
  };

  return new Promise<ClusterNode>((ok, fail) => {
    const startTimer = setTimeout(() => {
      child.kill('SIGKILL');
      fail(
        new Error(
          `node ${String(index)} did not start within ${String(START_TIMEOUT_MS)} ms; its output:\n` +
            redact(output, masterKey),
        ),
      );
    }, START_TIMEOUT_MS);
    child.on('error', (err) => {
      clearTimeout(startTimer);
      fail(err);
    });
    void exited.then((e) => {
      clearTimeout(startTimer);
      fail(
        new Error(
          `node ${String(index)} exited (${describeExit(e)}) before it started; its output:\n` +
            redact(output, masterKey),
        ),
      );
    });
    waitForLog((l) => l.event === 'started' && typeof l.gateway === 'string', START_TIMEOUT_MS + 1_000).then(
      (started) => {
        clearTimeout(startTimer);
        const node: ClusterNode = {
          index,
          gatewayUrl: started.gateway as string,
          adminUrl: typeof started.admin === 'string' ? started.admin : undefined,
          pid: child.pid ?? -1,
          dataDir,
          caPem: pki.caPem,
          logs: () => output,
          logLines: () => [...lines],
          waitForLog,
          leakedSecrets: (named = {}) =>
            Object.entries({ 'master key': masterKey, ...named })
              .filter(([, secret]) => secret !== '' && output.includes(secret))
              .map(([label]) => label),
          get alive() {
            return alive;
          },
          exited,
          kill,
          stop: async () => {
            if (!alive) return;
            child.kill('SIGTERM');
            const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
            await exited;
            clearTimeout(timer);
          },
        };
        live.add(node);
        void exited.then(() => live.delete(node));
        ok(node);
      },
      () => undefined, // the exit or the start timer has already failed the start
    );
  });
}

/**
 * Writes the configuration (and `files`) into `dir` and starts `count` nodes on it in parallel.
 * Rejects, with the output of the node that failed, when a node exits or does not log `started`
 * within 30 s; the nodes that did start are stopped then.
 */
export async function startNodes(options: StartNodesOptions): Promise<ClusterNode[]> {
  const { dir, config, count } = options;
  await mkdir(dir, { recursive: true });
  const pki = await pkiFor(dir);
  const creds = await adminCreds();
  await writeIfChanged(join(dir, 'admin-ca.pem'), creds.caPem);
  for (const [name, content] of Object.entries(options.files ?? {})) {
    await writeIfChanged(join(dir, name), typeof content === 'string' ? content : stringify(content));
  }
  const gateway = (config.gateway ?? {}) as Record<string, unknown>;
  const admin = (config.admin ?? {}) as Record<string, unknown>;
  const full = {
    ...config,
    gateway: {
      ...gateway,
      port: 0,
      tls: { ...(gateway.tls as object | undefined), certFile: pki.certFile, keyFile: pki.keyFile },
    },
    admin: {
      clientCertificates: {
        caFiles: ['admin-ca.pem'],
        principals: [{ name: 'test-automation', subject: 'admin-test-client', roles: ['auditor'] }],
      },
      ...admin,
      port: 0,
    },
  };
  const configFile = join(dir, 'portcullis.yaml');
  await writeIfChanged(configFile, stringify(full));
  const first = options.first ?? 0;
  const started = await Promise.allSettled(
    Array.from({ length: count }, (_, i) => spawnNode(first + i, configFile, dir, pki, options.env ?? {})),
  );
  const failed = started.find((s) => s.status === 'rejected');
  if (failed !== undefined) {
    await Promise.all(started.flatMap((s) => (s.status === 'fulfilled' ? [s.value.stop()] : [])));
    throw failed.reason;
  }
  return started.map((s) => (s as PromiseFulfilledResult<ClusterNode>).value);
}

/**
 * Runs `portcullis ARGS` as an operator on another host would: the configuration of the nodes
 * started in `dir`, a data directory of its own (`dir/cli`) and the same master key. Output
 * has the master key redacted.
 */
export async function runCli(dir: string, args: readonly string[], stdin?: string): Promise<Run> {
  const masterKey = masterKeyFor(dir);
  const full = [...args, '--config', join(dir, 'portcullis.yaml'), '--data-dir', join(dir, 'cli')];
  const run = await runPortcullis(full, stdin, { PORTCULLIS_MASTER_KEY: masterKey });
  return { ...run, stdout: redact(run.stdout, masterKey), stderr: redact(run.stderr, masterKey) };
}

/** Stops `nodes` (default: every node still running) with SIGTERM and waits for them. */
export async function stopNodes(nodes?: readonly ClusterNode[]): Promise<void> {
  if (nodes === undefined) {
    // Idle keep-alive connections first, so that draining has nothing to wait for.
    await Promise.all([...agents.values()].map((a) => a.close()));
    agents.clear();
  }
  await Promise.all((nodes ?? [...live]).map((n) => n.stop()));
}

export interface Answer {
  status: number;
  headers: Record<string, string>;
  body: string;
}

export interface RequestInit {
  headers?: Record<string, string>;
  body?: string;
  /** The loopback address to send from (default 127.0.0.1), e.g. for a rate-limit key of its own. */
  from?: string;
}

const agents = new Map<string, Agent>();

function agentFor(caPem: string, from: string | undefined): Agent {
  const id = `${from ?? ''}\n${caPem}`;
  let agent = agents.get(id);
  if (agent === undefined) {
    agent = new Agent({
      connect: { ca: caPem, servername: 'localhost' },
      ...(from === undefined ? {} : { localAddress: from }),
    });
    agents.set(id, agent);
  }
  return agent;
}

async function send(caPem: string, url: string, method: string, init: RequestInit): Promise<Answer> {
  const res = await undiciRequest(url, {
    method: method as 'GET',
    headers: init.headers ?? {},
    body: init.body ?? null,
    dispatcher: agentFor(caPem, init.from),
  });
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(res.headers)) {
    if (v !== undefined) headers[k] = Array.isArray(v) ? v.join(', ') : v;
  }
  return { status: res.statusCode, headers, body: await res.body.text() };
}

/** A request to the node's gateway listener over HTTPS (HTTP/1.1), trusting the test CA. */
export function request(node: ClusterNode, method: string, path: string, init: RequestInit = {}) {
  return send(node.caPem, node.gatewayUrl + path, method, init);
}

/** A request to the node's admin listener (HTTPS on loopback, the same certificate). */
export async function adminRequest(
  node: ClusterNode,
  method: string,
  path: string,
  init: RequestInit = {},
): Promise<Answer> {
  if (node.adminUrl === undefined) throw new Error(`node ${String(node.index)} has no admin listener`);
  // The admin listener answers /metrics only to an administrator: a mapped client certificate.
  const creds = await adminCreds();
  const agent = new Agent({
    connect: { ca: node.caPem, servername: 'localhost', cert: creds.cert, key: creds.key },
  });
  try {
    const res = await undiciRequest(node.adminUrl + path, {
      method: method as 'GET',
      headers: init.headers ?? {},
      body: init.body ?? null,
      dispatcher: agent,
    });
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(res.headers)) {
      if (v !== undefined) headers[k] = Array.isArray(v) ? v.join(', ') : v;
    }
    return { status: res.statusCode, headers, body: await res.body.text() };
  } finally {
    await agent.close();
  }
}

/** One admin client certificate (and its CA) for every node of the file. */
let adminCredsPromise: Promise<{ caPem: string; cert: string; key: string }> | undefined;
function adminCreds() {
  adminCredsPromise ??= (async () => {
    const { ca, leaf } = await import('./pki.ts');
    const root = await ca('Admin Test CA');
    const client = await leaf(root, 'admin-test-client');
    return { caPem: root.pem, cert: client.pem, key: client.keyPem };
  })();
  return adminCredsPromise;
}

/**
 * A fresh PostgreSQL schema name; the schema is dropped after the file (running nodes are
 * stopped first). Call at collection time (it registers an `afterAll`).
 */
export function pgSchema(name: string): string {
  const schema = `portcullis_${name
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '_')
    .slice(0, 30)}_${randomBytes(6).toString('hex')}`;
  afterAll(async () => {
    await stopNodes();
    const client = new pg.Client({ connectionString: PG_URL });
    await client.connect();
    try {
      await client.query(`drop schema if exists "${schema}" cascade`);
    } finally {
      await client.end();
    }
  });
  return schema;
}

/** Every Redis key under `prefix` (SCAN, never KEYS). */
export async function scanKeys(redis: Redis, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  let cursor = '0';
  do {
    const [next, batch] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    cursor = next;
    keys.push(...batch);
  } while (cursor !== '0');
  return keys;
}

/**
 * A fresh Redis key prefix; its keys are deleted after the file (SCAN + DEL, never FLUSHALL),
 * running nodes stopped first. Call at collection time (it registers an `afterAll`).
 */
export function redisPrefix(name: string): string {
  const prefix = `test:${name.replace(/[^A-Za-z0-9._-]+/g, '-').slice(0, 30)}:${randomBytes(6).toString('hex')}:`;
  afterAll(async () => {
    await stopNodes();
    const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
    try {
      const keys = await scanKeys(redis, prefix);
      for (let i = 0; i < keys.length; i += 500) await redis.del(...keys.slice(i, i + 500));
    } finally {
      await redis.quit();
    }
  });
  return prefix;
}

export interface ClusterBackends {
  /** A temp directory for the configuration and the nodes' data (removed after the file). */
  readonly dir: string;
  readonly schema: string;
  readonly keyPrefix: string;
  /** The proxy in front of PostgreSQL (from `beforeAll` on). */
  readonly pg: FaultProxy;
  /** The proxy in front of Redis (from `beforeAll` on). */
  readonly redis: FaultProxy;
  /** `postgres://…` through the PostgreSQL proxy, with `?schema=`. */
  readonly storeUrl: string;
  /** `redis://…` through the Redis proxy. */
  readonly redisUrl: string;
  /** `store` and `redis` configuration sections on these backends. */
  config(): { store: { url: string }; redis: { url: string; keyPrefix: string } };
}

/**
 * The shared backends of one test file: a fresh schema and key prefix, and fault proxies in front
 * of PostgreSQL and Redis. Call at collection time (top of a `describe`): it registers a
 * `beforeAll` that starts the proxies, after checking that PostgreSQL and Redis answer (failing
 * loudly when they do not), and an `afterAll` that stops every node and cleans up.
 */
export function clusterBackends(name: string): ClusterBackends {
  const schema = pgSchema(name);
  const keyPrefix = redisPrefix(name);
  let dir: string | undefined;
  let pgProxy: FaultProxy | undefined;
  let redisProxy: FaultProxy | undefined;
  const ready = <T>(value: T | undefined, what: string): T => {
    if (value === undefined) throw new Error(`${what} is available from beforeAll on`);
    return value;
  };
  const storeUrl = () => {
    const url = new URL(PG_URL);
    url.host = ready(pgProxy, 'the PostgreSQL proxy').address;
    url.searchParams.set('schema', schema);
    return url.href;
  };
  const redisUrl = () => {
    const url = new URL(REDIS_URL);
    url.host = ready(redisProxy, 'the Redis proxy').address;
    return url.href.replace(/\/$/, '');
  };

  beforeAll(async () => {
    // Fail loudly, naming the server, rather than as a node that does not start.
    const client = new pg.Client({ connectionString: PG_URL });
    await client.connect().catch((err: unknown) => {
      throw new Error(`PostgreSQL at ${new URL(PG_URL).host} is required`, { cause: err });
    });
    await client.end();
    const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1, lazyConnect: true });
    try {
      await redis.connect();
      await redis.ping();
    } catch (err) {
      throw new Error(`Redis at ${new URL(REDIS_URL).host} is required`, { cause: err });
    } finally {
      redis.disconnect();
    }
    dir = await mkdtemp(join(tmpdir(), `portcullis-${name}-`));
    await chmod(dir, 0o700);
    const pgTarget = new URL(PG_URL);
    const redisTarget = new URL(REDIS_URL);
    pgProxy = await startFaultProxy({ host: pgTarget.hostname, port: Number(pgTarget.port || 5432) });
    redisProxy = await startFaultProxy({
      host: redisTarget.hostname,
      port: Number(redisTarget.port || 6379),
    });
  });

  afterAll(async () => {
    await stopNodes();
    await pgProxy?.close();
    await redisProxy?.close();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  return {
    get dir() {
      return ready(dir, 'the cluster directory');
    },
    schema,
    keyPrefix,
    get pg() {
      return ready(pgProxy, 'the PostgreSQL proxy');
    },
    get redis() {
      return ready(redisProxy, 'the Redis proxy');
    },
    get storeUrl() {
      return storeUrl();
    },
    get redisUrl() {
      return redisUrl();
    },
    config: () => ({ store: { url: storeUrl() }, redis: { url: redisUrl(), keyPrefix } }),
  };
}
