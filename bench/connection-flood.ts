/**
 * A connection flood against a real Portcullis process under a low open-files limit (issue 12):
 * silent TCP connections (never a ClientHello) from up to 7 loopback sources (127.0.0.2–8), each
 * reconnecting 1 s (`--reconnect-ms`) after a connection is closed, while a legitimate client (127.0.0.1) sends one
 * request per 100 ms on a fresh TLS connection. Not part of `npm test`.
 *
 *   sh scripts/node24.sh bench/connection-flood.ts [--seconds 10] [--sources 7] [--per-source 200]
 *                                                  [--nofile 1024] [--reconnect-ms 1000]
 *                                                  [--root <checkout>]
 *
 * `--root` runs another checkout's `src/cli/main.ts` (e.g. an export of main, to compare). The
 * report: whether the process survived, legitimate requests answered 200 (and their latency
 * median / p99), the peak open descriptors and resident set during the flood, and the
 * descriptors 15 s after the flood ended (silent sockets must not stay behind).
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import { Agent, request } from 'undici';
import { stringify } from 'yaml';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '10' },
    sources: { type: 'string', default: '7' },
    'per-source': { type: 'string', default: '200' },
    nofile: { type: 'string', default: '1024' },
    'reconnect-ms': { type: 'string', default: '1000' },
    root: { type: 'string', default: resolve(import.meta.dirname, '..') },
  },
});
const seconds = Math.min(10, Number(values.seconds));
const sourceCount = Math.min(7, Number(values.sources));
const perSource = Number(values['per-source']);
const root = resolve(values.root);
const reconnectMs = Math.max(10, Number(values['reconnect-ms']));

const fds = (pid: number): number | undefined => {
  try {
    return readdirSync(`/proc/${String(pid)}/fd`).length;
  } catch {
    return undefined;
  }
};
const statusKiB = (pid: number, field: string): number | undefined => {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(
      readFileSync(`/proc/${String(pid)}/status`, 'utf8'),
    );
    return m?.[1] === undefined ? undefined : Number(m[1]);
  } catch {
    return undefined;
  }
};

const upstream = createServer((_req, res) => res.end('{}'));
upstream.listen(0, '127.0.0.1');
await once(upstream, 'listening');
const dir = await mkdtemp(join(tmpdir(), 'portcullis-flood-'));
await writeFile(
  join(dir, 'api.yaml'),
  stringify({
    openapi: '3.1.0',
    info: { title: 'flood', version: '1' },
    paths: { '/items': { get: { operationId: 'list', responses: { '200': { description: 'ok' } } } } },
  }),
);
await writeFile(
  join(dir, 'portcullis.yaml'),
  stringify({
    gateway: { port: 0, publicUrl: 'https://localhost:8443' },
    admin: { enabled: false },
    logging: { level: 'info', accessLog: false },
    apis: [
      {
        name: 'items',
        openapi: 'api.yaml',
        basePath: '/v1',
        upstream: { url: `http://127.0.0.1:${String((upstream.address() as AddressInfo).port)}` },
      },
    ],
  }),
);
const child = spawn(
  'prlimit',
  [
    `--nofile=${values.nofile}:${values.nofile}`,
    'sh',
    join(root, 'scripts/node24.sh'),
    join(root, 'src/cli/main.ts'),
    'start',
    '--config',
    join(dir, 'portcullis.yaml'),
    '--data-dir',
    join(dir, 'data'),
  ],
  { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] },
);
let stderr = '';
child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
const gatewayUrl = await new Promise<string>((ok, fail) => {
  let out = '';
  child.stdout.on('data', (c: Buffer) => {
    out += c.toString('utf8');
    const m = /"event":"started","gateway":"([^"]+)"/.exec(out);
    if (m?.[1] !== undefined) ok(m[1]);
  });
  child.once('exit', () => {
    fail(new Error(`portcullis exited before starting:\n${stderr}`));
  });
});
const pid = child.pid ?? -1;
const port = Number(new URL(gatewayUrl).port);
const ca = readFileSync(join(dir, 'data', 'tls', 'ca.crt'), 'utf8');
let exitedAt: number | undefined;
child.once('exit', () => (exitedAt = Date.now()));

const baseline = fds(pid) ?? 0;
let peakFds = baseline;
let peakRssKiB = 0;
const sampler = setInterval(() => {
  peakFds = Math.max(peakFds, fds(pid) ?? 0);
  peakRssKiB = Math.max(peakRssKiB, statusKiB(pid, 'VmHWM') ?? 0);
}, 50);

// The flood, in a worker thread (so that it does not slow the legitimate client's event loop):
// every source keeps `perSource` silent connections open, reconnecting `reconnectMs` after a close.
const flood = new Worker(
  `
  const { connect } = require('node:net');
  const { workerData, parentPort } = require('node:worker_threads');
  let flooding = true;
  let opened = 0;
  const open = new Set();
  const keep = (source) => {
    if (!flooding) return;
    const s = connect({ host: '127.0.0.1', port: workerData.port, localAddress: source });
    opened += 1;
    open.add(s);
    s.on('error', () => undefined);
    s.once('close', () => {
      open.delete(s);
      if (flooding) setTimeout(() => keep(source), workerData.reconnectMs);
    });
  };
  for (let i = 1; i <= workerData.sources; i++)
    for (let j = 0; j < workerData.perSource; j++) keep('127.0.0.' + String(i + 1));
  parentPort.once('message', () => {
    flooding = false;
    for (const s of open) s.destroy();
    parentPort.postMessage(opened);
  });
  `,
  { eval: true, workerData: { port, sources: sourceCount, perSource, reconnectMs } },
);
const started = Date.now();

// The legitimate client: a fresh connection per request, one per 100 ms.
const latencies: number[] = [];
let failed = 0;
const errors = new Map<string, number>();
while (Date.now() - started < seconds * 1000 && exitedAt === undefined) {
  const agent = new Agent({
    connect: { ca, servername: 'localhost', timeout: 5_000, localAddress: '127.0.0.1' },
    headersTimeout: 5_000,
  });
  const t0 = performance.now();
  try {
    const res = await request(`${gatewayUrl}/v1/items`, { dispatcher: agent });
    await res.body.text();
    if (res.statusCode === 200) latencies.push(performance.now() - t0);
    else failed += 1;
  } catch (err) {
    failed += 1;
    errors.set(
      String((err as { code?: string }).code),
      (errors.get(String((err as { code?: string }).code)) ?? 0) + 1,
    );
  }
  await agent.close().catch(() => undefined);
  await sleep(100);
}
flood.postMessage('stop');
const [opened] = (await once(flood, 'message')) as [number];
await flood.terminate();
await sleep(15_000);
clearInterval(sampler);
const after = fds(pid);
latencies.sort((a, b) => a - b);
const q = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] ?? NaN;
process.stdout.write(
  [
    `checkout: ${root}`,
    `flood: ${String(sourceCount)} sources × ${String(perSource)} silent connections for ${String(seconds)} s, reconnecting after ${String(reconnectMs)} ms (${String(opened)} opened), RLIMIT_NOFILE ${values.nofile}`,
    `process: ${exitedAt === undefined ? 'survived' : `EXITED after ${String((exitedAt - started) / 1000)} s`}`,
    `legitimate requests: ${String(latencies.length)} answered 200, ${String(failed)} failed (${[...errors].map(([c, n]) => `${c} ${String(n)}`).join(', ')}); latency median ${q(0.5).toFixed(1)} ms, p99 ${q(0.99).toFixed(1)} ms`,
    `open descriptors: baseline ${String(baseline)}, peak ${String(peakFds)}, 15 s after the flood ${after === undefined ? 'n/a' : String(after)}`,
    `peak RSS (VmHWM): ${String(Math.round(peakRssKiB / 1024))} MiB`,
    '',
  ].join('\n'),
);
child.kill('SIGTERM');
await Promise.race([once(child, 'exit'), sleep(5_000)]);
if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
upstream.close();
await rm(dir, { recursive: true, force: true });
