/**
 * The cost of credential checks at the gateway: the same upstream operation (the demo upstream's
 * `GET /status`) reached through one real `portcullis start` process three ways, side by side in
 * one run:
 *
 *   public   GET /v1/status   `security: []`: no credential
 *   oauth    GET /v2/status   `oauth2 [bench:read]`: a valid RFC 9068 JWT (ES256) from the
 *                             built-in authorization server, as `Authorization: Bearer`
 *   api key  GET /v3/status   `apiKey` in `x-api-key`: a key issued with `portcullis apikeys issue`
 *
 * Each protected request is authenticated in full on the request path: the Authorization header
 * parsed, the token's verification looked up in the per-audience cache of verified tokens (keyed
 * by its SHA-256; the signature is checked once per token), the revocation list consulted, the
 * scopes compared, and a caller assertion (an ES256 JWT for the upstream) signed; for the API
 * key, the HMAC-SHA-256 lookup, its restrictions and the usage record. The three APIs differ
 * only in their `security`, so the difference between rows is the price of the credential.
 *
 *   sh scripts/node24.sh bench/verify.ts [--duration 5] [--connections 16] [--rounds 3] [--json]
 *
 * Not part of `npm test`. The gateway runs with `logging.level: warn`, no access log, SQLite in a
 * temp data directory, every rate-limit dimension raised so that it is counted but never refuses.
 * The demo upstream runs in its own process (bench/upstream.ts). "per core" divides the rate by
 * the CPU the gateway process used during the run (utime + stime from /proc/<pid>/stat).
 *
 * Measured 2026-11-21, `sh scripts/node24.sh bench/verify.ts` (3 rounds x 5 s, 16 connections,
 * 2 s warm-up), 2 vCPUs (Intel Xeon) shared with three other engineers' test runs (load average
 * 7.4 at the start, 6.2 at the end), Node v24.21.0; autocannon runs in this process on the same
 * two cores, so the gateway never had a core to itself:
 *
 *   target                               req/s  p50 ms  p99 ms  gw cores  req per core-s     req/s per round  bad
 *   public (GET /v1/status)               2063    4.25   58.79      0.54            3664  2359 / 2063 / 1988    0
 *   oauth (GET /v2/status, Bearer JWT)    1304    7.31   76.89      0.63            2089  1699 / 1304 / 1265    0
 *   api key (GET /v3/status, x-api-key)   1151    9.54   69.46      0.63            1719  1162 / 1151 / 1043    0
 *
 * With a token the gateway serves 0.63 of the public rate (0.57 per core-second, p99 77 vs
 * 59 ms); with an API key 0.56 (0.47 per core-second, p99 69 ms). The token's signature is
 * checked once and then cached, so the OAuth row's extra cost per request is the token hash,
 * the revocation lookup, the scope check and the ES256 caller assertion signed for the upstream
 * (not separated here); the API key row has the HMAC lookup, its restrictions, the usage record
 * and the same assertion. A 1-round x 1 s run minutes earlier gave 810 / 617 / 726 req/s.
 * Figures move by up to 2x with the load.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify } from 'yaml';
import type { LoadTarget } from './load.ts';
import { httpsCall, makeTempDir, runCliJson, startGateway, startUpstream } from './processes.ts';
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
import type { CpuRow } from './cli.ts';
import type { BenchOptions } from './cli.ts';

type Options = BenchOptions;

const USAGE = `usage: sh scripts/node24.sh bench/verify.ts [options]

Requests per second and p99 through a real Portcullis process on a public operation, the same
operation with an OAuth access token, and with an API key.

${BENCH_OPTIONS_USAGE}`;

/** The demo upstream's GET /status, under one `security` requirement. */
function statusDocument(security: Record<string, string[]>[]): Record<string, unknown> {
  return {
    openapi: '3.1.0',
    info: { title: 'verify bench', version: '1' },
    components: {
      securitySchemes: {
        oauth2: {
          type: 'oauth2',
          flows: {
            clientCredentials: { tokenUrl: 'https://localhost/token', scopes: { 'bench:read': 'read' } },
          },
        },
        apiKey: { type: 'apiKey', in: 'header', name: 'x-api-key' },
      },
    },
    paths: {
      '/status': {
        get: {
          operationId: 'getStatus',
          security,
          responses: {
            '200': {
              description: 'ok',
              content: {
                'application/json': {
                  schema: {
                    type: 'object',
                    additionalProperties: false,
                    required: ['status', 'patients'],
                    properties: {
                      status: { type: 'string', maxLength: 16 },
                      patients: { type: 'integer', minimum: 0, maximum: 1_000_000_000 },
                    },
                  },
                },
              },
            },
          },
        },
      },
    },
  };
}

async function main(options: Options): Promise<void> {
  const root = await makeTempDir();
  const upstream = await startUpstream();
  progress(`demo upstream ${upstream.url} (pid ${String(upstream.pid)})`);
  const docs = {
    public: join(root, 'public.yaml'),
    oauth: join(root, 'oauth.yaml'),
    apikey: join(root, 'apikey.yaml'),
  };
  await writeFile(docs.public, stringify(statusDocument([])));
  await writeFile(docs.oauth, stringify(statusDocument([{ oauth2: ['bench:read'] }])));
  await writeFile(docs.apikey, stringify(statusDocument([{ apiKey: [] }])));
  const generous = {
    burst: { points: 1_000_000_000, seconds: 1 },
    sustained: { points: 1_000_000_000, seconds: 60 },
  };
  const api = (name: string, openapi: string, basePath: string) => ({
    name,
    openapi,
    basePath,
    upstream: { url: upstream.url },
  });
  progress('starting portcullis (logging.level warn, accessLog false, rate limits raised)');
  const gw = await startGateway(root, {
    name: 'verify',
    upstreamUrl: upstream.url,
    logLevel: 'warn',
    accessLog: false,
    extraConfig: {
      apis: [
        api('open', docs.public, '/v1'),
        api('oauth', docs.oauth, '/v2'),
        api('keyed', docs.apikey, '/v3'),
      ],
      rateLimits: Object.fromEntries(
        ['ip', 'client', 'apiKey', 'user', 'token', 'login'].map((d) => [d, generous]),
      ),
    },
  });
  progress(`portcullis ${gw.url} (pid ${String(gw.pid)})`);

  const client = await runCliJson(
    ['clients', 'create', '--name', 'bench', '--grant', 'client_credentials', '--scope', 'bench:read'],
    gw,
  );
  const resource = `https://localhost:${new URL(gw.url).port}/v2`;
  const tokenAnswer = await httpsCall(
    `${gw.url}/token`,
    gw,
    'POST',
    {
      authorization: `Basic ${Buffer.from(`${String(client.client_id)}:${String(client.client_secret)}`).toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    new URLSearchParams({ grant_type: 'client_credentials', scope: 'bench:read', resource }).toString(),
  );
  const accessToken = (JSON.parse(tokenAnswer.body) as { access_token?: unknown }).access_token;
  if (tokenAnswer.status !== 200 || typeof accessToken !== 'string') {
    throw new Error(`POST /token: HTTP ${String(tokenAnswer.status)} ${tokenAnswer.body.slice(0, 200)}`);
  }
  const issued = await runCliJson(['apikeys', 'issue', '--name', 'bench', '--api', 'keyed'], gw);
  const apiKey = issued.key;
  if (typeof apiKey !== 'string') throw new Error('apikeys issue printed no key');
  progress('client, token and API key created');

  const https = { servername: gw.servername, ca: gw.ca };
  const targets: LoadTarget[] = [
    { name: 'public (GET /v1/status)', url: `${gw.url}/v1/status`, expectStatus: 200, ...https },
    {
      name: 'oauth (GET /v2/status, Bearer JWT)',
      url: `${gw.url}/v2/status`,
      expectStatus: 200,
      headers: { authorization: `Bearer ${accessToken}` },
      ...https,
    },
    {
      name: 'api key (GET /v3/status, x-api-key)',
      url: `${gw.url}/v3/status`,
      expectStatus: 200,
      headers: { 'x-api-key': apiKey },
      ...https,
    },
  ];
  // Each target answers 200 with its credential (certificate verified) and 401 without.
  for (const t of targets) {
    const ok = await httpsCall(t.url, gw, 'GET', t.headers ?? {});
    if (ok.status !== 200) throw new Error(`${t.name}: HTTP ${String(ok.status)} ${ok.body.slice(0, 200)}`);
    if (t.headers !== undefined) {
      const refused = await httpsCall(t.url, gw, 'GET', {});
      if (refused.status !== 401)
        throw new Error(`${t.name} without credential: HTTP ${String(refused.status)}`);
    }
  }
  progress('checks passed: 200 with the credential, 401 without (certificate verified)');

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
  const base = rows[0];
  const relative = (r: CpuRow) =>
    base === undefined || base.perCoreSecond === 0
      ? ''
      : `${r.target.split(' (')[0] ?? ''}: ${(r.rps / base.rps).toFixed(2)} of public req/s, ` +
        `${(r.perCoreSecond / base.perCoreSecond).toFixed(2)} per core-second, p99 ${r.p99Ms.toFixed(2)} vs ${base.p99Ms.toFixed(2)} ms`;
  process.stdout.write([...cpuReport(rows, options), ...rows.slice(1).map(relative), ''].join('\n'));
}

await runBench(USAGE, (argv) => parseBenchOptions(argv, USAGE), main);
