/**
 * Client-credentials tokens issued per second (and per core) by the built-in authorization
 * server, measured on a real `portcullis start` process, with two baselines served by the same
 * process in the same run: `GET /jwks` and `GET /.well-known/openid-configuration` (the same
 * listener, TLS, rate-limit and oidc-provider stack, without client authentication or signing).
 *
 *   sh scripts/node24.sh bench/tokens.ts [--duration 5] [--connections 16] [--rounds 3] [--json]
 *
 * Not part of `npm test`. The gateway runs with `logging.level: warn`, no access log, SQLite in a
 * temp data directory, ES256 signing keys, and `rateLimits.token` raised so that the limiter is
 * counted but never refuses (with the defaults, 10/s per IP, this would measure 429s). The
 * client is created with the real CLI (`portcullis clients create --json`); every request is
 * `POST /token` with `grant_type=client_credentials&scope=patients:read` and HTTP Basic client
 * authentication (the secret compared through the key manager's HMAC), and every answer is a
 * freshly signed RFC 9068 JWT. "per core" divides the rate by the CPU the gateway process used
 * during the run (utime + stime from /proc/<pid>/stat over wall time), so it does not depend on
 * how busy the load generator kept the other core.
 *
 * Measured 2026-11-21, `sh scripts/node24.sh bench/tokens.ts` (3 rounds x 5 s, 16 connections,
 * 2 s warm-up), 2 vCPUs (Intel Xeon, 2.6 GHz) shared with four other engineers' test runs (load
 * average 3.9 at the start, 7.5 at the end), Node v24.21.0; autocannon runs in this process on
 * the same two cores, so the gateway never had a core to itself:
 *
 *   target                                   req/s  p50 ms  p99 ms  gw cores  req per core-s     req/s per round  bad
 *   jwks (GET /jwks)                          7082    1.33   21.47      0.52           13824  6143 / 7821 / 7082    0
 *   discovery (GET /.well-known/…)            4194    1.87   51.55      0.44            9592  2551 / 4194 / 5676    0
 *   token (POST /token, client_credentials)    998   10.74   85.22      0.66            1410    885 / 1080 / 998    0
 *
 * About 1000 client-credentials tokens per second from one process, 1400 per CPU-second of it:
 * 0.14 of the JWKS baseline (each token costs a client lookup in SQLite, the HMAC comparison of
 * the secret, an ES256 signature and oidc-provider's grant pipeline). A 1-round x 2 s run minutes
 * earlier gave 1247 tokens/s, 1321 per core-second. Figures move by up to 2x with the load.
 */
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import { availableParallelism, cpus, loadavg } from 'node:os';
import { measure } from './load.ts';
import type { LoadOptions, LoadTarget, Measurement } from './load.ts';
import { makeTempDir, ROOT, startGateway } from './processes.ts';
import { BENCH_OPTIONS_USAGE, median, parseBenchOptions, progress, runBench, table } from './cli.ts';
import type { BenchOptions } from './cli.ts';

type Options = BenchOptions;

const USAGE = `usage: sh scripts/node24.sh bench/tokens.ts [options]

Client-credentials tokens per second from a real Portcullis process, beside GET /jwks and the
discovery document served by the same process.

${BENCH_OPTIONS_USAGE}`;

function clockTicks(): number {
  try {
    const n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return Number.isInteger(n) && n > 0 ? n : 100;
  } catch {
    return 100;
  }
}

/** CPU seconds (user + system) a process has used, from /proc/<pid>/stat. */
function cpuSeconds(pid: number, ticks: number): number {
  const stat = readFileSync(`/proc/${String(pid)}/stat`, 'utf8');
  // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / ticks;
}

/** One HTTPS POST that verifies the certificate (autocannon does not; see load.ts). */
function httpsPost(
  url: string,
  ca: string,
  servername: string,
  headers: Record<string, string>,
  body: string,
): Promise<{ status: number; body: string }> {
  return new Promise((ok, fail) => {
    const req = request(url, { method: 'POST', ca, servername, agent: false, headers }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => ok({ status: res.statusCode ?? 0, body: text }));
      res.on('error', fail);
    });
    req.on('error', fail);
    req.end(body);
  });
}

async function createClient(configFile: string, dataDir: string): Promise<{ id: string; secret: string }> {
  const child = spawn(
    'sh',
    [
      'scripts/node24.sh',
      'src/cli/main.ts',
      'clients',
      'create',
      '--name',
      'bench',
      '--grant',
      'client_credentials',
      '--scope',
      'patients:read',
      '--json',
      '--config',
      configFile,
      '--data-dir',
      dataDir,
    ],
    { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString('utf8')));
  child.stderr.on('data', (c: Buffer) => (err += c.toString('utf8')));
  const [code] = (await once(child, 'close')) as [number];
  if (code !== 0) throw new Error(`clients create failed: ${err}`);
  const parsed = JSON.parse(out) as { client_id: string; client_secret: string };
  return { id: parsed.client_id, secret: parsed.client_secret };
}

interface Row {
  target: string;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  /** CPU seconds the gateway used per wall second during the runs (median). */
  gatewayCores: number;
  /** Requests per CPU-second of the gateway process. */
  perCoreSecond: number;
  rpsPerRound: number[];
  bad: number;
}

async function main(options: Options): Promise<void> {
  const root = await makeTempDir();
  const generous = {
    burst: { points: 1_000_000_000, seconds: 1 },
    sustained: { points: 1_000_000_000, seconds: 60 },
  };
  progress('starting portcullis (logging.level warn, accessLog false, token rate limit raised)');
  const gw = await startGateway(root, {
    name: 'tokens',
    // The API is only there to define the resource and its scopes; nothing is proxied.
    upstreamUrl: 'http://127.0.0.1:9',
    logLevel: 'warn',
    accessLog: false,
    extraConfig: { rateLimits: { token: generous, ip: generous } },
  });
  progress(`portcullis ${gw.url} (pid ${String(gw.pid)})`);
  const client = await createClient(gw.configFile, gw.dataDir);
  progress(`client ${client.id} created with the CLI`);

  const tokenHeaders = {
    authorization: `Basic ${Buffer.from(`${client.id}:${client.secret}`).toString('base64')}`,
    'content-type': 'application/x-www-form-urlencoded',
  };
  const tokenBody = 'grant_type=client_credentials&scope=patients%3Aread';
  const https = { servername: gw.servername, ca: gw.ca };
  const targets: LoadTarget[] = [
    { name: 'jwks (GET /jwks)', url: `${gw.url}/jwks`, expectStatus: 200, ...https },
    {
      name: 'discovery (GET /.well-known/…)',
      url: `${gw.url}/.well-known/openid-configuration`,
      expectStatus: 200,
      ...https,
    },
    {
      name: 'token (POST /token, client_credentials)',
      url: `${gw.url}/token`,
      expectStatus: 200,
      method: 'POST',
      headers: tokenHeaders,
      body: tokenBody,
      ...https,
    },
  ];

  // One verified request per target: the certificate checks out and a token comes back.
  const check = await httpsPost(`${gw.url}/token`, gw.ca, gw.servername, tokenHeaders, tokenBody);
  const issued = check.status === 200 ? (JSON.parse(check.body) as { access_token?: string }) : {};
  if (typeof issued.access_token !== 'string' || !issued.access_token.startsWith('ey')) {
    throw new Error(`POST /token: expected a token, got HTTP ${String(check.status)}`);
  }
  progress('check passed: POST /token issues a JWT (certificate verified)');

  const ticks = clockTicks();
  const load: LoadOptions = { durationS: options.durationS, connections: options.connections };
  if (options.warmupS > 0) {
    for (const t of targets) {
      progress(`warm-up ${t.name} ${String(options.warmupS)} s`);
      await measure(t, { ...load, durationS: options.warmupS });
    }
  }
  const runs = new Map<LoadTarget, { m: Measurement; cores: number }[]>(targets.map((t) => [t, []]));
  for (let round = 0; round < options.rounds; round++) {
    const order = targets.map((_, i) => targets[(i + round) % targets.length] as LoadTarget);
    for (const t of order) {
      const cpu0 = cpuSeconds(gw.pid, ticks);
      const wall0 = performance.now();
      const m = await measure(t, load);
      const cores = (cpuSeconds(gw.pid, ticks) - cpu0) / ((performance.now() - wall0) / 1000);
      runs.get(t)?.push({ m, cores });
      progress(
        `round ${String(round + 1)}/${String(options.rounds)}  ${t.name.padEnd(40)} ${m.rps.toFixed(0).padStart(6)} req/s` +
          `  p50 ${m.p50.toFixed(2)} ms  p99 ${m.p99.toFixed(2)} ms  gateway ${cores.toFixed(2)} cores` +
          (m.unexpected + m.errors > 0
            ? `  (${String(m.unexpected)} unexpected, ${String(m.errors)} errors)`
            : ''),
      );
    }
  }

  const rows: Row[] = targets.map((t) => {
    const r = runs.get(t) ?? [];
    const rps = median(r.map((x) => x.m.rps));
    const cores = median(r.map((x) => x.cores));
    return {
      target: t.name,
      rps,
      p50Ms: median(r.map((x) => x.m.p50)),
      p99Ms: median(r.map((x) => x.m.p99)),
      gatewayCores: cores,
      perCoreSecond: median(r.map((x) => (x.cores > 0 ? x.m.rps / x.cores : 0))),
      rpsPerRound: r.map((x) => x.m.rps),
      bad: r.reduce((n, x) => n + x.m.unexpected + x.m.errors, 0),
    };
  });
  const machine = {
    cpus: availableParallelism(),
    cpuModel: cpus()[0]?.model ?? 'unknown',
    node: process.version,
    loadAverageAtEnd: loadavg().map((l) => Number(l.toFixed(2))),
  };
  const settings = { ...load, pipelining: 1, rounds: options.rounds, warmupS: options.warmupS };
  if (options.json) {
    process.stdout.write(JSON.stringify({ machine, settings, results: rows }, null, 2) + '\n');
    return;
  }
  const token = rows[2];
  const jwks = rows[0];
  process.stdout.write(
    [
      '',
      `${String(machine.cpus)} CPUs (${machine.cpuModel}), Node ${machine.node}, load average ${machine.loadAverageAtEnd.join(' ')}`,
      `${String(options.rounds)} rounds x ${String(options.durationS)} s, ${String(options.connections)} connections, pipelining 1`,
      '',
      table([
        ['target', 'req/s', 'p50 ms', 'p99 ms', 'gw cores', 'req per core-s', 'req/s per round', 'bad'],
        ...rows.map((r) => [
          r.target,
          r.rps.toFixed(0),
          r.p50Ms.toFixed(2),
          r.p99Ms.toFixed(2),
          r.gatewayCores.toFixed(2),
          r.perCoreSecond.toFixed(0),
          r.rpsPerRound.map((x) => x.toFixed(0)).join(' / '),
          String(r.bad),
        ]),
      ]),
      '',
      token !== undefined && jwks !== undefined
        ? `client-credentials tokens: ${token.rps.toFixed(0)}/s, ${token.perCoreSecond.toFixed(0)} per core-second; ` +
          `${(token.rps / jwks.rps).toFixed(2)} of the JWKS baseline`
        : '',
      '',
    ].join('\n'),
  );
}

await runBench(USAGE, (argv) => parseBenchOptions(argv, USAGE), main);
