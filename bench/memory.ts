/**
 * Where the gateway's memory goes under load (`sh scripts/node24.sh bench/memory.ts`): starts the
 * fixed upstream, the bare Node proxy and one Portcullis (`portcullis start`, the bench defaults:
 * logging info, access log on, memory rate limits counting), then loads each with wrk on the public
 * operation `GET /v1/status` for `--runs` runs in a row and prints, after idle and after each run,
 * the RSS and its parts: `process.memoryUsage()`, V8's heap spaces and `/proc/PID/smaps_rollup`
 * (read inside the process by bench/memory-probe.ts, loaded with `--import`).
 *
 *   sh scripts/node24.sh bench/memory.ts [--runs 3] [--duration 8] [--connections 32]
 *     [--node-options "--max-semi-space-size=1"] [--env NAME=VALUE]… [--only portcullis|bare]
 */
import { readFileSync } from 'node:fs';
import { readdirSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { HIGH_RATE_LIMITS } from './apis.ts';
import { ensureDevCertificates } from '../src/server/devca.ts';
import {
  cleanup,
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
    args: { type: 'string', default: '' },
  },
});
const runs = Number(values.runs);
const durationS = Number(values.duration);
const connections = Number(values.connections);
requireWrk();

const root = await makeTempDir();
const probe = join(ROOT, 'bench/memory-probe.ts');
const extraEnv = Object.fromEntries(
  values.env.map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
);

/** Spawns with the probe loaded and the extra options: the env is read at spawn time. */
async function withProbeEnv<T>(file: string, fn: () => Promise<T>): Promise<T> {
  const saved = { ...process.env };
  Object.assign(process.env, extraEnv, {
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

try {
  const certs = await ensureDevCertificates(join(root, 'tls'));
  const upstream = await startUpstream('fixed');
  const targets: { name: string; pid: number; url: string; file: string; ca?: string }[] = [];
  if (values.only !== 'portcullis') {
    const file = join(root, 'bare.json');
    const bare = await withProbeEnv(file, () =>
      startReadyChild('bench/bare-proxy.ts', [certs.certFile, certs.keyFile, upstream.url], 'the bare proxy'),
    );
    targets.push({ name: 'bare proxy', pid: bare.pid, url: `${bare.url}/v1/status`, file });
  }
  if (values.only !== 'bare') {
    const file = join(root, 'portcullis.json');
    const gw = await withProbeEnv(file, () =>
      startGateway(root, {
        name: 'portcullis',
        upstreamUrl: upstream.url,
        logLevel: 'info',
        accessLog: true,
        extraConfig: { rateLimits: HIGH_RATE_LIMITS },
        args: values.args === '' ? [] : values.args.split(' '),
      }),
    );
    targets.push({ name: 'portcullis', pid: gw.pid, url: `${gw.url}/v1/status`, file, ca: gw.ca });
  }
  await sleep(1500);
  for (const t of targets) {
    if (values.modules)
      process.stdout.write(
        `${t.name} loaded modules:\n${readFileSync(`${t.file.replace(/\.json$/, '')}-modules.txt`, 'utf8')}`,
      );
    process.stdout.write(`${t.name} (pid ${String(t.pid)}) idle: ${reading(t.pid, t.file)}\n`);
    for (let i = 1; i <= runs; i++) {
      const m = await measureWrk({ name: t.name, url: t.url, expectStatus: 200 }, { durationS, connections });
      await sleep(600);
      process.stdout.write(
        `${t.name} run ${String(i)}: ${m.rps.toFixed(0)} req/s p99 ${m.p99.toFixed(1)} ms | ${reading(t.pid, t.file)}\n`,
      );
    }
  }
} finally {
  await cleanup();
}
