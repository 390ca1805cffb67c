/**
 * Where the gateway's memory goes under load (`sh scripts/node24.sh bench/memory.ts`): starts the
 * fixed upstream, the bare Node proxy and one Portcullis (`portcullis start`, the bench defaults:
 * logging info, access log on, memory rate limits counting), then loads each with wrk on the public
 * operation `GET /v1/status` for `--runs` runs in a row and prints, after idle and after each run,
 * the RSS and its parts: `process.memoryUsage()`, V8's heap spaces and `/proc/PID/smaps_rollup`
 * (read inside the process by bench/memory-probe.ts, loaded with `--import`).
 *
 * Each run also prints the server's CPU time per request (user + system, /proc/PID/stat): on a
 * shared machine a steadier cost figure than requests/s.
 *
 *   sh scripts/node24.sh bench/memory.ts [--runs 3] [--duration 8] [--connections 32]
 *     [--node-options "--max-semi-space-size=1"] [--env NAME=VALUE]… [--only portcullis|bare]
 *     [--variant NAME=V8FLAGS]… [--modules] [--args "--role gateway"]
 *
 * `--variant` starts one gateway per variant with PORTCULLIS_V8_FLAGS (scripts/node24.sh) set to
 * V8FLAGS, e.g. `--variant node=` (Node's defaults) `--variant s8=--max-semi-space-size=8`; the
 * runs rotate over all targets and a summary gives medians and peaks side by side.
 */
import { readFileSync } from 'node:fs';
import { readdirSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { distributedConfig, HIGH_RATE_LIMITS } from './apis.ts';
import { ensureDevCertificates } from '../src/server/devca.ts';
import {
  cleanup,
  cpuSeconds,
  procChildren,
  makeTempDir,
  procStatusKiB,
  ROOT,
  startGateway,
  startReadyChild,
  startUpstream,
} from './processes.ts';
import { measureWrk, requireWrk } from './wrk.ts';

const { values } = parseArgs({
  allowNegative: false,
  options: {
    runs: { type: 'string', default: '3' },
    duration: { type: 'string', default: '8' },
    connections: { type: 'string', default: '32' },
    'node-options': { type: 'string', default: '' },
    env: { type: 'string', multiple: true, default: [] },
    only: { type: 'string' },
    modules: { type: 'boolean', default: false },
    variant: { type: 'string', multiple: true, default: [] },
    smaps: { type: 'boolean', default: false },
    workers: { type: 'string', default: '0' },
    args: { type: 'string', default: '' },
  },
});
const runs = Number(values.runs);
const durationS = Number(values.duration);
const connections = Number(values.connections);
/** `--workers N`: the gateways run `--workers N` in distributed mode (PostgreSQL, Redis limiter). */
const workers = Number(values.workers);
requireWrk();

const root = await makeTempDir();
const probe = join(ROOT, 'bench/memory-probe.ts');
const extraEnv = Object.fromEntries(
  values.env.map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
);

/** Spawns with the probe loaded and the extra options: the env is read at spawn time. */
async function withProbeEnv<T>(file: string, env: Record<string, string>, fn: () => Promise<T>): Promise<T> {
  const saved = { ...process.env };
  Object.assign(process.env, extraEnv, env, {
    PORTCULLIS_MEMORY_PROBE: file,
    PORTCULLIS_MEMORY_PROBE_MODULES: `${file.replace(/\.json$/, '')}-modules.txt`,
    NODE_OPTIONS: `${values['node-options']} --import ${probe}`.trim(),
  });
  try {
    return await fn();
  } finally {
    for (const k of Object.keys(process.env)) if (!(k in saved)) Reflect.deleteProperty(process.env, k);
    Object.assign(process.env, saved);
  }
}

function reading(pid: number, file: string): string {
  const dir = dirname(file);
  const parts: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    if (!name.startsWith(basename(file)) || name.endsWith('.tmp')) continue;
    const thread = name === basename(file) ? 'main' : `thread ${name.slice(basename(file).length + 1)}`;
    try {
      parts.push(`${thread} ${readFileSync(join(dir, name), 'utf8').trim()}`);
    } catch {
      /* replaced meanwhile */
    }
  }
  const kib = (f: 'VmRSS' | 'VmHWM') => ((procStatusKiB(pid, f) ?? 0) / 1024).toFixed(1);
  return `VmRSS ${kib('VmRSS')} VmHWM ${kib('VmHWM')}\n    ${parts.join('\n    ')}`;
}

/**
 * The resident mappings of a process by kind, from /proc/PID/smaps: glibc's main heap
 * (`[heap]`), thread stacks, file-backed, and the anonymous rest, largest first (V8's heap pages,
 * glibc's thread arenas (64 MiB reservations) and other mmaps cannot be told apart by name).
 */
function smapsSummary(pid: number): string {
  const text = readFileSync(`/proc/${String(pid)}/smaps`, 'utf8');
  const maps: { name: string; size: number; rss: number }[] = [];
  let current: { name: string; size: number; rss: number } | undefined;
  for (const line of text.split('\n')) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (head !== null) {
      current = {
        name: head[3] ?? '',
        size: (parseInt(head[2]!, 16) - parseInt(head[1]!, 16)) / 1024,
        rss: 0,
      };
      maps.push(current);
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss !== null && current !== undefined) current.rss = Number(rss[1]);
  }
  const byKind = new Map<string, number>();
  for (const m of maps) {
    const kind = m.name === '' ? 'anon' : m.name.startsWith('/') ? 'file' : m.name;
    byKind.set(kind, (byKind.get(kind) ?? 0) + m.rss);
  }
  const kinds = [...byKind].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${(v / 1024).toFixed(1)}`);
  const anon = maps
    .filter((m) => m.name === '' && m.rss > 1024)
    .sort((a, b) => b.rss - a.rss)
    .slice(0, 25)
    .map((m) => `${(m.rss / 1024).toFixed(1)}/${(m.size / 1024).toFixed(1)}`);
  return `smaps MiB: ${kinds.join(', ')}\n  largest anonymous mappings (resident/size MiB): ${anon.join(' ')}\n`;
}

interface Target {
  name: string;
  pid: number;
  url: string;
  file: string;
  rps: number[];
  cpuUs: number[];
}

const median = (xs: number[]) => {
  const v = [...xs].sort((a, b) => a - b);
  return v.length === 0 ? 0 : (v[Math.floor((v.length - 1) / 2)]! + v[Math.ceil((v.length - 1) / 2)]!) / 2;
};

try {
  const certs = await ensureDevCertificates(join(root, 'tls'));
  const upstream = await startUpstream('fixed');
  const targets: Target[] = [];
  const add = (name: string, pid: number, url: string, file: string) =>
    targets.push({ name, pid, url, file, rps: [], cpuUs: [] });
  if (values.only !== 'portcullis') {
    const file = join(root, 'bare.json');
    const bare = await withProbeEnv(file, {}, () =>
      startReadyChild('bench/bare-proxy.ts', [certs.certFile, certs.keyFile, upstream.url], 'the bare proxy'),
    );
    add('bare proxy', bare.pid, `${bare.url}/v1/status`, file);
  }
  if (values.only !== 'bare') {
    // `--variant NAME=FLAGS`: one gateway per variant, started with PORTCULLIS_V8_FLAGS=FLAGS
    // (scripts/node24.sh); none: one gateway with the launcher's defaults.
    const variants = values.variant.length === 0 ? [undefined] : values.variant;
    for (const [i, variant] of variants.entries()) {
      const name = variant === undefined ? 'portcullis' : variant.slice(0, variant.indexOf('='));
      // NAME=FLAGS, or NAME=FLAGS|VAR=VALUE|… for an environment as well (e.g. GLIBC_TUNABLES).
      const [flags, ...vars] =
        variant === undefined ? [] : variant.slice(variant.indexOf('=') + 1).split('|');
      const env: Record<string, string> = Object.fromEntries(
        vars.map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
      );
      if (flags !== undefined) env.PORTCULLIS_V8_FLAGS = flags;
      const file = join(root, `portcullis-${String(i)}.json`);
      const gw = await withProbeEnv(file, env, () =>
        startGateway(root, {
          name: `portcullis-${String(i)}`,
          upstreamUrl: upstream.url,
          logLevel: 'info',
          accessLog: true,
          extraConfig: workers > 0 ? distributedConfig(workers, 'redis') : { rateLimits: HIGH_RATE_LIMITS },
          args: [
            ...(values.args === '' ? [] : values.args.split(' ')),
            ...(workers > 0 ? ['--workers', String(workers)] : []),
          ],
        }),
      );
      add(name, gw.pid, `${gw.url}/v1/status`, file);
    }
  }
  await sleep(1500);
  for (const t of targets) {
    if (values.modules)
      process.stdout.write(
        `${t.name} loaded modules:\n${readFileSync(`${t.file.replace(/\.json$/, '')}-modules.txt`, 'utf8')}`,
      );
    process.stdout.write(`${t.name} (pid ${String(t.pid)}) idle: ${reading(t.pid, t.file)}\n`);
  }
  // Runs rotate over the targets (run i starts at target i), so that the machine's load falls
  // on all of them alike.
  for (let i = 0; i < runs; i++) {
    for (let k = 0; k < targets.length; k++) {
      const t = targets[(i + k) % targets.length]!;
      const tree = [t.pid, ...procChildren(t.pid)];
      const cpus0 = tree.map((p) => cpuSeconds(p));
      const cpu0 = cpus0.reduce((a, b) => a + b, 0);
      const m = await measureWrk({ name: t.name, url: t.url, expectStatus: 200 }, { durationS, connections });
      const cpus = tree.map((p) => cpuSeconds(p));
      const cpuUs = ((cpus.reduce((a, b) => a + b, 0) - cpu0) * 1e6) / Math.max(1, m.responses);
      const perProcess =
        tree.length === 1
          ? ''
          : ` (per process: ${tree
              .map(
                (p, j) =>
                  `${String(p)} ${(((cpus[j]! - cpus0[j]!) * 1e6) / Math.max(1, m.responses)).toFixed(0)} µs, ${((procStatusKiB(p, 'VmHWM') ?? 0) / 1024).toFixed(0)} MiB peak`,
              )
              .join('; ')})`;
      t.rps.push(m.rps);
      t.cpuUs.push(cpuUs);
      await sleep(600);
      process.stdout.write(
        `${t.name} run ${String(i + 1)}: ${m.rps.toFixed(0)} req/s p99 ${m.p99.toFixed(1)} ms, ${cpuUs.toFixed(0)} µs CPU/request${perProcess} | ${reading(t.pid, t.file)}\n`,
      );
    }
  }
  process.stdout.write('\nsummary (medians over the runs; peak = VmHWM, whole life)\n');
  for (const t of targets) {
    const hwm = ((procStatusKiB(t.pid, 'VmHWM') ?? 0) / 1024).toFixed(1);
    const rss = ((procStatusKiB(t.pid, 'VmRSS') ?? 0) / 1024).toFixed(1);
    process.stdout.write(
      `  ${t.name.padEnd(24)} ${median(t.rps).toFixed(0).padStart(6)} req/s ${median(t.cpuUs).toFixed(0).padStart(5)} µs CPU/req  RSS ${rss} MiB  peak ${hwm} MiB\n`,
    );
  }
  if (values.smaps) for (const t of targets) process.stdout.write(`\n${t.name} ${smapsSummary(t.pid)}`);
} catch (err) {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
} finally {
  await cleanup().catch(() => undefined);
}
