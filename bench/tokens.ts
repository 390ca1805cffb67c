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
import type { LoadTarget } from './load.ts';
import { httpsCall, makeTempDir, runCliJson, startGateway } from './processes.ts';
import {
  BENCH_OPTIONS_USAGE,
  cpuReport,
  cpuRows,
  machineInfo,
  measureRounds,
  parseBenchOptions,
  progress,
  runBench,
} from './cli.ts';
import type { BenchOptions } from './cli.ts';

type Options = BenchOptions;

const USAGE = `usage: sh scripts/node24.sh bench/tokens.ts [options]

Client-credentials tokens per second from a real Portcullis process, beside GET /jwks and the
discovery document served by the same process.

${BENCH_OPTIONS_USAGE}`;

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
  const created = await runCliJson(
    ['clients', 'create', '--name', 'bench', '--grant', 'client_credentials', '--scope', 'patients:read'],
    gw,
  );
  const client = { id: String(created.client_id), secret: String(created.client_secret) };
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
  const check = await httpsCall(`${gw.url}/token`, gw, 'POST', tokenHeaders, tokenBody);
  const issued = check.status === 200 ? (JSON.parse(check.body) as { access_token?: string }) : {};
  if (typeof issued.access_token !== 'string' || !issued.access_token.startsWith('ey')) {
    throw new Error(`POST /token: expected a token, got HTTP ${String(check.status)}`);
  }
  progress('check passed: POST /token issues a JWT (certificate verified)');

  const runs = await measureRounds(targets, options, gw.pid);
  const rows = cpuRows(targets, runs);
  const machine = machineInfo();
  const settings = {
    durationS: options.durationS,
    connections: options.connections,
    pipelining: 1,
    rounds: options.rounds,
    warmupS: options.warmupS,
  };
  if (options.json) {
    process.stdout.write(JSON.stringify({ machine, settings, results: rows }, null, 2) + '\n');
    return;
  }
  const token = rows[2];
  const jwks = rows[0];
  process.stdout.write(
    [
      ...cpuReport(rows, options),
      token !== undefined && jwks !== undefined
        ? `client-credentials tokens: ${token.rps.toFixed(0)}/s, ${token.perCoreSecond.toFixed(0)} per core-second; ` +
          `${(token.rps / jwks.rps).toFixed(2)} of the JWKS baseline`
        : '',
      '',
    ].join('\n'),
  );
}

await runBench(USAGE, (argv) => parseBenchOptions(argv, USAGE), main);
