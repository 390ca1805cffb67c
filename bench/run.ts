/**
 * `npm run bench`: what Portcullis costs in front of an API, beside the floor a Node gateway can
 * reach and a well-known C gateway doing part of its work, in one run, against the same upstream
 * with the same ES256 access token. Never part of `npm test`; see bench/README.md.
 *
 * Every server is its own process on loopback, started here and stopped at the end:
 * - the fixed upstream (bench/fixed-upstream.ts): a 396-byte patient record, or the status;
 * - the bare proxy (bench/bare-proxy.ts): `node:https` + undici `Pool.stream()`, no security;
 * - HAProxy 2.6 (bench/haproxy.ts): TLS, ES256 JWT verification with the algorithm pinned,
 *   `exp` and `aud`, a stick-table rate limit, `nbthread 1`;
 * - Portcullis with its defaults (`portcullis start`, generated config): the token from an
 *   external issuer (`tokens.issuers`, JWKS over TLS from this process), the demo contract with
 *   its owner-bound `GET /v1/patients/{patientId}`, the access log on (to a file), rate limits
 *   raised so that they count and never refuse;
 * - the same with `--workers 2` (distributed mode: PostgreSQL and Redis).
 * The load generator is wrk (1 thread, 32 connections by default; bench/wrk.ts). Ratios are to
 * the bare proxy measured in the same run.
 */
import { availableParallelism, cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ensureDevCertificates } from '../src/server/devca.ts';
import { distributedConfig, HIGH_RATE_LIMITS } from './apis.ts';
import { intOption, measureRounds, median, progress, runBench, table } from './cli.ts';
import { FIXED_PATIENT_ID } from './fixed-upstream.ts';
import { requireHaproxy, startHaproxy } from './haproxy.ts';
import { BENCH_AUDIENCE, BENCH_ISSUER, startIssuer } from './issuer.ts';
import type { LoadTarget, Measurement } from './load.ts';
import {
  httpsCall,
  makeTempDir,
  procStatusKiB,
  procTreeStatusKiB,
  ROOT,
  startGateway,
  startReadyChild,
  startUpstream,
} from './processes.ts';
import type { GatewayProcess } from './processes.ts';
import { measureWrk, requireWrk } from './wrk.ts';

const USAGE = `usage: npm run bench -- [options]

GET /v1/patients/{id} with one ES256 access token: direct to a fixed upstream, through a bare
Node TLS proxy, HAProxy with JWT verification, and Portcullis (defaults; public operation;
refusals; --workers 2), side by side with wrk.

options:
  --duration <s>      seconds per measurement (default 5)
  --connections <n>   wrk connections (default 32)
  --threads <n>       wrk threads (default 1)
  --rounds <n>        rounds over the targets, medians reported (default 3)
  --warmup <s>        warm-up seconds per target before the rounds (default 2)
  --no-workers        skip Portcullis --workers 2 (it needs PostgreSQL and Redis)
  --fastify           add the bare proxy's handler behind Fastify 5 (what Fastify adds)
  --json              print the results as JSON on stdout (progress stays on stderr)
  -h, --help          this help

Needs the Debian packages wrk and haproxy; --workers 2 needs PostgreSQL and Redis
(PORTCULLIS_BENCH_PG_URL, PORTCULLIS_BENCH_REDIS_URL; defaults on 127.0.0.1).
`;

interface Options {
  durationS: number;
  connections: number;
  threads: number;
  rounds: number;
  warmupS: number;
  workers: boolean;
  fastify: boolean;
  json: boolean;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    allowNegative: true,
    options: {
      duration: { type: 'string', default: '5' },
      connections: { type: 'string', default: '32' },
      threads: { type: 'string', default: '1' },
      rounds: { type: 'string', default: '3' },
      warmup: { type: 'string', default: '2' },
      workers: { type: 'boolean', default: true },
      fastify: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  const threads = intOption('threads', values.threads, 1, 64);
  const connections = intOption('connections', values.connections, 1, 10_000);
  if (connections < threads) throw new Error('--connections must be at least --threads');
  return {
    durationS: intOption('duration', values.duration, 1, 600),
    connections,
    threads,
    rounds: intOption('rounds', values.rounds, 1, 50),
    warmupS: intOption('warmup', values.warmup, 0, 60),
    workers: values.workers,
    fastify: values.fastify,
    json: values.json,
  };
}

/** A target and the server process it loads (for the memory table). */
interface Target extends LoadTarget {
  server: string;
}

interface Summary {
  target: string;
  server: string;
  url: string;
  expectStatus: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  /** Over the bare proxy's: throughput (higher is faster) and p99 latency (higher is slower). */
  rpsVsBare: number;
  p99VsBare: number;
  rpsPerRound: number[];
  responses: number;
  unexpected: number;
  errors: number;
}

const mib = (kib: number | undefined) => (kib === undefined ? 'n/a' : (kib / 1024).toFixed(1));

async function expectStatus(what: string, got: Promise<{ status: number; body: string }>, want: number) {
  const answer = await got;
  if (answer.status !== want) {
    throw new Error(
      `${what}: expected HTTP ${String(want)}, got ${String(answer.status)} ${answer.body.slice(0, 300)}`,
    );
  }
}

async function main(options: Options): Promise<number> {
  const wrk = requireWrk();
  const haproxyVersion = requireHaproxy();
  const machine = {
    cpus: availableParallelism(),
    cpuModel: cpus()[0]?.model ?? 'unknown',
    node: process.version,
    loadAverageAtStart: loadavg().map((l) => Number(l.toFixed(2))),
  };
  const root = await makeTempDir();
  progress(`temp dir ${root}; ${wrk}; ${haproxyVersion}`);

  // One development certificate (for `localhost`) for the JWKS endpoint, the bare proxy and
  // HAProxy; each Portcullis makes its own in its data directory.
  const certs = await ensureDevCertificates(join(root, 'tls'));
  const tls = { ca: certs.caCertPem, servername: 'localhost' };
  const issuer = await startIssuer(certs);
  const lifetimeS = 3_600 + options.rounds * 20 * (options.durationS + options.warmupS);
  const token = await issuer.token({ sub: FIXED_PATIENT_ID, scope: 'patients:read', lifetimeS });
  const forged = await issuer.forgedToken({ sub: FIXED_PATIENT_ID, scope: 'patients:read', lifetimeS });
  const stranger = await issuer.token({ sub: 'pat_someoneelse1', scope: 'patients:read', lifetimeS });
  const expired = await issuer.token({ sub: FIXED_PATIENT_ID, scope: 'patients:read', lifetimeS: -600 });
  const elsewhere = await issuer.token({
    sub: FIXED_PATIENT_ID,
    scope: 'patients:read',
    lifetimeS,
    audience: 'https://elsewhere.bench.test/v1',
  });
  const bearer = { authorization: `Bearer ${token}` };

  const upstream = await startUpstream('fixed');
  progress(`fixed upstream ${upstream.url} (pid ${String(upstream.pid)})`);
  const bare = await startReadyChild(
    'bench/bare-proxy.ts',
    [certs.certFile, certs.keyFile, upstream.url],
    'the bare proxy',
  );
  progress(`bare proxy ${bare.url} (pid ${String(bare.pid)})`);
  const fastify = options.fastify
    ? await startReadyChild(
        'bench/bare-proxy.ts',
        [certs.certFile, certs.keyFile, upstream.url, '--fastify'],
        'the Fastify proxy',
      )
    : undefined;
  if (fastify !== undefined) progress(`fastify proxy ${fastify.url} (pid ${String(fastify.pid)})`);
  const haproxy = await startHaproxy({
    dir: root,
    upstreamUrl: upstream.url,
    certPem: certs.certPem,
    keyPem: certs.keyPem,
    publicKeyPem: issuer.publicKeyPem,
    audience: BENCH_AUDIENCE,
    ...tls,
  });
  progress(`haproxy ${haproxy.url} (pid ${String(haproxy.pid)})`);

  const portcullisConfig = (extra: Record<string, unknown>) => ({
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
    // Counted, never refusing: this measures the proxy path, not the 429 path.
    rateLimits: HIGH_RATE_LIMITS,
    ...extra,
  });
  progress('starting portcullis (defaults: logging.level info, access log on, to a file)');
  const gw = await startGateway(root, {
    name: 'portcullis',
    upstreamUrl: upstream.url,
    logLevel: 'info',
    accessLog: true,
    extraConfig: portcullisConfig({}),
  });
  progress(`portcullis ${gw.url} (pid ${String(gw.pid)})`);
  let workers: GatewayProcess | undefined;
  if (options.workers) {
    progress('starting portcullis --workers 2 (PostgreSQL + Redis)');
    workers = await startGateway(root, {
      name: 'portcullis-workers',
      upstreamUrl: upstream.url,
      logLevel: 'info',
      accessLog: true,
      extraConfig: portcullisConfig(distributedConfig(2, 'redis')),
      args: ['--workers', '2'],
    });
    progress(`portcullis --workers 2 ${workers.url} (pid ${String(workers.pid)})`);
  }

  const record = `/patients/${FIXED_PATIENT_ID}`;
  const https = (url: string) => ({ url, ...tls });
  const targets: Target[] = [
    {
      name: 'direct (http)',
      server: 'upstream',
      url: `${upstream.url}${record}`,
      expectStatus: 200,
      headers: bearer,
    },
    {
      name: 'bare node proxy',
      server: 'bare proxy',
      ...https(`${bare.url}/v1${record}`),
      expectStatus: 200,
      headers: bearer,
    },
    ...(fastify === undefined
      ? []
      : [
          {
            name: 'fastify proxy',
            server: 'fastify proxy',
            ...https(`${fastify.url}/v1${record}`),
            expectStatus: 200,
            headers: bearer,
          },
        ]),
    {
      name: 'haproxy + jwt',
      server: 'haproxy',
      ...https(`${haproxy.url}/v1${record}`),
      expectStatus: 200,
      headers: bearer,
    },
    {
      name: 'portcullis',
      server: 'portcullis',
      url: `${gw.url}/v1${record}`,
      ca: gw.ca,
      servername: gw.servername,
      expectStatus: 200,
      headers: bearer,
    },
    {
      name: 'portcullis public',
      server: 'portcullis',
      url: `${gw.url}/v1/status`,
      ca: gw.ca,
      servername: gw.servername,
      expectStatus: 200,
      headers: bearer,
    },
    {
      name: 'portcullis 401 bad token',
      server: 'portcullis',
      url: `${gw.url}/v1${record}`,
      ca: gw.ca,
      servername: gw.servername,
      expectStatus: 401,
      headers: { authorization: `Bearer ${forged}` },
    },
    {
      name: 'portcullis 404 undeclared',
      server: 'portcullis',
      url: `${gw.url}/v1/undeclared`,
      ca: gw.ca,
      servername: gw.servername,
      expectStatus: 404,
      headers: bearer,
    },
    ...(workers === undefined
      ? []
      : [
          {
            name: 'portcullis --workers 2',
            server: 'portcullis --workers 2',
            url: `${workers.url}/v1${record}`,
            ca: workers.ca,
            servername: workers.servername,
            expectStatus: 200,
            headers: bearer,
          },
        ]),
  ];

  // Every target answers as expected, with certificates verified (wrk does not verify), and
  // HAProxy and Portcullis refuse what they must: no token, a forged one, someone else's record.
  const direct = await fetch(targets[0]!.url, { headers: bearer });
  if (direct.status !== 200) throw new Error(`direct: HTTP ${String(direct.status)}`);
  const directBytes = (await direct.arrayBuffer()).byteLength;
  for (const t of targets.slice(1)) {
    await expectStatus(
      t.name,
      httpsCall(t.url, { ca: t.ca!, servername: t.servername! }, 'GET', t.headers),
      t.expectStatus,
    );
  }
  const gwTls = { ca: gw.ca, servername: gw.servername };
  const bad = {
    none: {},
    forged: { authorization: `Bearer ${forged}` },
    expired: { authorization: `Bearer ${expired}` },
    'another audience': { authorization: `Bearer ${elsewhere}` },
  };
  const refusals: [string, string, { ca: string; servername: string }, Record<string, string>, number][] = [
    ...Object.entries(bad).flatMap(([why, headers]): typeof refusals => [
      [`haproxy, token: ${why}`, `${haproxy.url}/v1${record}`, tls, headers, 401],
      [`portcullis, token: ${why}`, `${gw.url}/v1${record}`, gwTls, headers, 401],
    ]),
    [
      'portcullis, another subject',
      `${gw.url}/v1${record}`,
      gwTls,
      { authorization: `Bearer ${stranger}` },
      403,
    ],
  ];
  for (const [what, url, trust, headers, want] of refusals) {
    await expectStatus(what, httpsCall(url, trust, 'GET', headers), want);
  }
  progress(
    `checks passed: every target's status (certificates verified), the upstream's record is ${String(directBytes)} bytes; ` +
      "no token, a forged, an expired and another audience's token refused (401) by HAProxy and Portcullis, another subject 403",
  );

  const servers = [
    { server: 'upstream', pid: upstream.pid, tree: false },
    { server: 'bare proxy', pid: bare.pid, tree: false },
    ...(fastify === undefined ? [] : [{ server: 'fastify proxy', pid: fastify.pid, tree: false }]),
    { server: 'haproxy', pid: haproxy.pid, tree: false },
    { server: 'portcullis', pid: gw.pid, tree: false },
    ...(workers === undefined ? [] : [{ server: 'portcullis --workers 2', pid: workers.pid, tree: true }]),
  ];
  const rssBefore = new Map(
    servers.map((s) => [s.server, (s.tree ? procTreeStatusKiB : procStatusKiB)(s.pid, 'VmRSS')]),
  );

  const measured = await measureRounds(
    targets,
    {
      durationS: options.durationS,
      connections: options.connections,
      rounds: options.rounds,
      warmupS: options.warmupS,
    },
    undefined,
    (t, load) => measureWrk(t, { ...load, threads: options.threads }),
  );
  const runs = new Map<Target, Measurement[]>([...measured].map(([t, r]) => [t, r.map((x) => x.m)]));
  const bareRuns = runs.get(targets[1]!)!;
  const bareRps = median(bareRuns.map((m) => m.rps));
  const bareP99 = median(bareRuns.map((m) => m.p99));
  const summaries: Summary[] = targets.map((t) => {
    const ms = runs.get(t)!;
    const rps = median(ms.map((m) => m.rps));
    const p99 = median(ms.map((m) => m.p99));
    return {
      target: t.name,
      server: t.server,
      url: t.url,
      expectStatus: t.expectStatus,
      rps,
      p50Ms: median(ms.map((m) => m.p50)),
      p99Ms: p99,
      rpsVsBare: rps / bareRps,
      p99VsBare: p99 / bareP99,
      rpsPerRound: ms.map((m) => m.rps),
      responses: ms.reduce((n, m) => n + m.responses, 0),
      unexpected: ms.reduce((n, m) => n + m.unexpected, 0),
      errors: ms.reduce((n, m) => n + m.errors, 0),
    };
  });
  // Peak resident set of each server over the whole run (VmHWM; summed over the primary and
  // its workers for --workers 2).
  const memory = servers.map((s) => ({
    server: s.server,
    pid: s.pid,
    rssBeforeLoadKiB: rssBefore.get(s.server),
    peakRssKiB: (s.tree ? procTreeStatusKiB : procStatusKiB)(s.pid, 'VmHWM'),
  }));

  const settings = {
    operation: `GET /v1/patients/${FIXED_PATIENT_ID} (owner-bound; direct: ${record})`,
    loadGenerator: wrk,
    threads: options.threads,
    connections: options.connections,
    durationS: options.durationS,
    rounds: options.rounds,
    warmupS: options.warmupS,
    upstreamBodyBytes: directBytes,
    haproxy: haproxyVersion,
  };
  if (options.json) {
    process.stdout.write(JSON.stringify({ settings, machine, results: summaries, memory }, null, 2) + '\n');
  } else {
    const peak = new Map(memory.map((m) => [m.server, m.peakRssKiB]));
    const rows = [
      [
        'target',
        'status',
        'req/s',
        'p50 ms',
        'p99 ms',
        'req/s vs bare',
        'p99 vs bare',
        'peak RSS MiB',
        'req/s per round',
        'bad',
      ],
      ...summaries.map((s) => [
        s.target,
        String(s.expectStatus),
        s.rps.toFixed(0),
        s.p50Ms.toFixed(2),
        s.p99Ms.toFixed(2),
        s.rpsVsBare.toFixed(2),
        s.p99VsBare.toFixed(2),
        mib(peak.get(s.server)),
        s.rpsPerRound.map((r) => r.toFixed(0)).join(' / '),
        String(s.unexpected + s.errors),
      ]),
    ];
    process.stdout.write(
      [
        '',
        `Portcullis bench: ${settings.operation}, one ES256 token for every target`,
        `${wrk}, ${String(options.threads)} thread(s), ${String(options.connections)} connections, ` +
          `${String(options.rounds)} round(s) x ${String(options.durationS)} s per target, medians; ratios to the bare node proxy`,
        `machine: ${String(machine.cpus)} CPUs, ${machine.cpuModel}, Node ${machine.node}, load average at start ${machine.loadAverageAtStart.join(' ')}, at end ${loadavg()
          .map((l) => l.toFixed(2))
          .join(' ')}`,
        '',
        table(rows),
        '',
        'peak RSS (VmHWM) per server process, RSS before the load in brackets:',
        ...memory.map(
          (m) =>
            `  ${m.server} (pid ${String(m.pid)}): ${mib(m.peakRssKiB)} MiB (${mib(m.rssBeforeLoadKiB)})`,
        ),
        '',
      ].join('\n'),
    );
  }
  const failed = summaries.filter((s) => s.unexpected + s.errors > 0);
  if (failed.length > 0) {
    progress(
      `unexpected statuses or errors for ${failed.map((s) => s.target).join(', ')}: the figures are not comparable`,
    );
    return 1;
  }
  return 0;
}

await runBench(USAGE, parseOptions, main);
