/**
 * A CPU profile of Portcullis (defaults, as `bench/run.ts` starts it) under wrk load: starts the
 * fixed upstream, the bench issuer and one gateway under `node --cpu-prof`, loads one target,
 * stops the gateway (SIGTERM: the profile is written on exit) and prints the top self-time
 * functions and the request count, so the CPU time per request can be split by function.
 *
 *   sh scripts/node24.sh bench/profile.ts [--target protected|public|401|404] [--duration 8] [--out dir]
 *
 * Never part of `npm test`; needs wrk.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { ensureDevCertificates } from '../src/server/devca.ts';
import { HIGH_RATE_LIMITS } from './apis.ts';
import { progress, runBench } from './cli.ts';
import { FIXED_PATIENT_ID } from './fixed-upstream.ts';
import { BENCH_AUDIENCE, BENCH_ISSUER, startIssuer } from './issuer.ts';
import { cpuSeconds, makeTempDir, ROOT, startGateway, startUpstream } from './processes.ts';
import { measureWrk, requireWrk } from './wrk.ts';

function isRunning(pid: number): boolean {
  return (
    existsSync(`/proc/${String(pid)}`) && !readFileSync(`/proc/${String(pid)}/stat`, 'utf8').includes(') Z ')
  );
}

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

const USAGE =
  'usage: sh scripts/node24.sh bench/profile.ts [--target protected|public|401|404] [--duration 8] [--out dir] [--top 45]';

await runBench(
  USAGE,
  (argv) =>
    parseArgs({
      args: argv,
      options: {
        target: { type: 'string', default: 'protected' },
        duration: { type: 'string', default: '8' },
        out: { type: 'string' },
        top: { type: 'string', default: '45' },
      },
    }).values,
  async (values) => {
    requireWrk();
    const root = await makeTempDir();
    const outDir = resolve(values.out ?? join(root, 'prof'));
    const certs = await ensureDevCertificates(join(root, 'tls'));
    const issuer = await startIssuer(certs);
    const token = await issuer.token({ sub: FIXED_PATIENT_ID, scope: 'patients:read', lifetimeS: 3600 });
    const forged = await issuer.forgedToken({
      sub: FIXED_PATIENT_ID,
      scope: 'patients:read',
      lifetimeS: 3600,
    });
    const upstream = await startUpstream('fixed');
    const before = process.env.NODE_OPTIONS;
    process.env.NODE_OPTIONS = `--cpu-prof --cpu-prof-dir=${outDir}`;
    const gw = await startGateway(root, {
      name: 'portcullis',
      upstreamUrl: upstream.url,
      logLevel: 'info',
      accessLog: true,
      extraConfig: {
        apis: [
          {
            name: 'patients',
            openapi: join(ROOT, 'examples/demo-upstream/openapi.yaml'),
            basePath: '/v1',
            audience: BENCH_AUDIENCE,
            upstream: { url: upstream.url },
          },
        ],
        tokens: { issuers: [{ issuer: BENCH_ISSUER, jwksUri: issuer.jwksUri, caFile: certs.caCertFile }] },
        rateLimits: HIGH_RATE_LIMITS,
      },
    });
    if (before === undefined) delete process.env.NODE_OPTIONS;
    else process.env.NODE_OPTIONS = before;
    const target = values.target;
    const path =
      target === 'public'
        ? '/v1/status'
        : target === '404'
          ? '/v1/nowhere'
          : `/v1/patients/${FIXED_PATIENT_ID}`;
    const headers =
      target === 'public' || target === '404'
        ? undefined
        : { authorization: `Bearer ${target === '401' ? forged : token}` };
    const expectStatus = target === '401' ? 401 : target === '404' ? 404 : 200;
    const load = {
      name: target,
      url: `${gw.url}${path}`,
      expectStatus,
      ca: gw.ca,
      servername: gw.servername,
      ...(headers === undefined ? {} : { headers }),
    };
    await measureWrk(load, { durationS: 2, connections: 32 });
    const cpu0 = cpuSeconds(gw.pid);
    const m = await measureWrk(load, { durationS: Number(values.duration), connections: 32 });
    const cpu = cpuSeconds(gw.pid) - cpu0;
    progress(
      `${target}: ${String(Math.round(m.rps))} req/s p50 ${m.p50.toFixed(2)} p99 ${m.p99.toFixed(2)} ms; ` +
        `gateway CPU ${cpu.toFixed(2)} s for ${String(m.responses)} responses = ${((cpu * 1e6) / m.responses).toFixed(0)} µs/request`,
    );
    process.kill(gw.pid, 'SIGTERM');
    for (let i = 0; i < 100; i++) {
      if (!isRunning(gw.pid)) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    await new Promise((r) => setTimeout(r, 1000));
    const files = readdirSync(outDir).filter((f) => f.endsWith('.cpuprofile'));
    for (const file of files) {
      const p = JSON.parse(readFileSync(join(outDir, file), 'utf8')) as Profile;
      const self = new Map<number, number>();
      for (let i = 0; i < p.samples.length; i++) {
        const id = p.samples[i] as number;
        self.set(id, (self.get(id) ?? 0) + (p.timeDeltas[i] ?? 0));
      }
      const byFn = new Map<string, number>();
      let total = 0;
      for (const n of p.nodes) {
        const t = self.get(n.id) ?? 0;
        total += t;
        const url = n.callFrame.url.replace(/^file:\/\/.*?\/(src|node_modules)\//, '$1/');
        const key = `${n.callFrame.functionName || '(anon)'} ${url}:${String(n.callFrame.lineNumber + 1)}`;
        byFn.set(key, (byFn.get(key) ?? 0) + t);
      }
      const idle = [...byFn].filter(([k]) => k.startsWith('(idle)')).reduce((a, [, v]) => a + v, 0);
      console.log(
        `\n${file}: ${(total / 1e6).toFixed(2)} s sampled, idle ${((100 * idle) / total).toFixed(1)} %`,
      );
      const busy = total - idle;
      for (const [k, v] of [...byFn].sort((a, b) => b[1] - a[1]).slice(0, Number(values.top))) {
        console.log(`${((100 * v) / busy).toFixed(1).padStart(5)} %  ${k}`);
      }
    }
    console.log(`profiles in ${outDir}`);
  },
);
