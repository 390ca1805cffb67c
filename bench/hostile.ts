/**
 * Hostile input against a real Portcullis process: does it stay up, refuse everything with a 4xx
 * and keep its memory bounded? Not part of `npm test`.
 *
 *   npm run bench:hostile
 *   sh scripts/node24.sh bench/hostile.ts [--duration 3] [--connections 16] [--rounds 2]
 *                                         [--rate-limits high|default]
 *
 * One gateway (`portcullis start` as a child process, quickstart-like config on free loopback
 * ports, `logging.level: warn`, no access log) in front of the demo upstream in its own process.
 * The API is the demo document with `POST /v1/patients` public and validated (bench/apis.ts), so
 * the bodies reach the validator instead of stopping at authentication. With `--rate-limits high`
 * (the default) the memory limiter counts every request but refuses none; with `default` the
 * shipped limits apply, so most requests become 429 (still 4xx) and the run shows the refusal
 * path instead.
 *
 * Each input is loaded with autocannon (fixed connections, pipelining 1) for `--duration`
 * seconds, every input in turn, `--rounds` times; the same bytes are sent with every request.
 * Before the load, each input is sent once with a client that verifies the certificate and must
 * get its expected status. The table gives, per input, the median req/s and p99 over the rounds,
 * every response counted by status class, connection errors, and the gateway's resident set
 * after each round (if hostile input leaked, the second round would end higher than the first).
 * The verdict fails (exit code 1) if the process exits, a hostile input gets anything but a 4xx,
 * any response is a 5xx, or the gateway cannot serve `GET /v1/status` at the end.
 */
import { request } from 'node:https';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { apisFor, HIGH_RATE_LIMITS, VALID_PATIENT, writeBenchDocs } from './apis.ts';
import { measure } from './load.ts';
import type { LoadTarget, Measurement } from './load.ts';
import { httpsGet, makeTempDir, procExe, procStatusKiB, startGateway, startUpstream } from './processes.ts';
import type { GatewayProcess } from './processes.ts';
import { intOption, median, progress, runBench, table } from './cli.ts';

const USAGE = `usage: sh scripts/node24.sh bench/hostile.ts [options]

Hostile requests against a real Portcullis process: status classes, throughput and memory.

options:
  --duration <s>          seconds per input and round (default 3)
  --connections <n>       concurrent connections, pipelining 1 (default 16)
  --rounds <n>            rounds over the inputs (default 2)
  --rate-limits <which>   high: counted, never refusing (default); default: the shipped limits
  -h, --help              this help
`;

const KiB = 1024;
const MiB = 1024 * KiB;
/** `gateway.limits.bodyBytes` default: the configured body limit. */
const BODY_LIMIT = MiB;

interface Input {
  name: string;
  method: 'GET' | 'POST';
  /** Sent as is (autocannon and the probe do not normalise dot segments). */
  path: string;
  headers?: Record<string, string>;
  body?: string | Buffer;
  /** The status every response must have (with the shipped rate limits, 429 also counts). */
  expect: number;
  /** The baseline: must succeed; every other input must be refused. */
  baseline?: boolean;
}

const JSON_TYPE = { 'content-type': 'application/json' };
const valid = JSON.stringify(VALID_PATIENT);
const validRest = valid.slice(1); // `"givenName":…}`, to append after a hostile first member

/** `{"k0000000":0,…}` filling `bytes`. */
function manyKeys(bytes: number): string {
  const parts: string[] = [];
  let size = 2;
  for (let i = 0; ; i++) {
    const entry = `"k${String(i).padStart(7, '0')}":0`;
    if (size + entry.length + 1 > bytes) break;
    parts.push(entry);
    size += entry.length + 1;
  }
  return `{${parts.join(',')}}`;
}

function inputs(): Input[] {
  const post = (name: string, body: string | Buffer, expect = 400, headers = JSON_TYPE): Input => ({
    name,
    method: 'POST',
    path: '/v1/patients',
    headers,
    body,
    expect,
  });
  const get = (name: string, path: string, expect: number, headers?: Record<string, string>): Input => ({
    name,
    method: 'GET',
    path,
    expect,
    ...(headers === undefined ? {} : { headers }),
  });
  const depth = 100_000;
  const arrayItems = Math.floor((BODY_LIMIT - 1) / 2); // `[0,0,…,0]`: 2n + 1 bytes
  return [
    { ...post('valid body (baseline)', valid, 201), baseline: true },
    post(`nested arrays, ${String(depth / 1000)}k levels`, '['.repeat(depth) + ']'.repeat(depth)),
    post(`nested objects, ${String(depth / 1000)}k levels`, '{"a":'.repeat(depth) + '0' + '}'.repeat(depth)),
    post(
      `array of ${String(Math.round(arrayItems / 1000))}k zeros (1 MiB)`,
      `[${'0,'.repeat(arrayItems - 1)}0]`,
    ),
    post('object with ~87k keys (1 MiB)', manyKeys(BODY_LIMIT)),
    post('string of 1 MiB', `{"givenName":"${'a'.repeat(BODY_LIMIT - 20)}"}`),
    post('__proto__ key', `{"__proto__":{"isAdmin":true},${validRest}`),
    post('constructor.prototype', `{"constructor":{"prototype":{"isAdmin":true}},${validRest}`),
    post('duplicate key', `{"givenName":"Eve",${validRest}`),
    post('readOnly id (mass assignment)', `{"id":"pat_000000000000",${validRest}`),
    post(
      'invalid UTF-8 (C3 28)',
      Buffer.concat([
        Buffer.from('{"givenName":"'),
        Buffer.from([0xc3, 0x28]),
        Buffer.from(`",${valid.slice(valid.indexOf('"familyName"'))}`),
      ]),
    ),
    post(
      'overlong UTF-8 (C0 AF)',
      Buffer.concat([
        Buffer.from('{"givenName":"a'),
        Buffer.from([0xc0, 0xaf]),
        Buffer.from(`",${valid.slice(valid.indexOf('"familyName"'))}`),
      ]),
    ),
    post('syntax error', valid.slice(0, -1)),
    post('text/plain body', valid, 415, { 'content-type': 'text/plain' }),
    post('body of 2 MiB (413)', `{"givenName":"${'a'.repeat(2 * MiB)}"}`, 413),
    get('header block 20 KiB', '/v1/status', 431, { 'x-pad': 'a'.repeat(20 * KiB) }),
    get('header block 70 KiB', '/v1/status', 431, { 'x-pad': 'a'.repeat(70 * KiB) }),
    get('target of 9 KiB', `/v1/status?${'a'.repeat(9 * KiB)}`, 414),
    get('traversal ../', '/v1/patients/../status', 400),
    get('traversal %2e%2e', '/v1/%2e%2e/%2e%2e/etc/passwd', 400),
    get('traversal ..%2f', '/v1/patients/..%2f..%2fadmin', 400),
    get('traversal %252e (double)', '/v1/patients/%252e%252e%252fadmin', 400),
    get('traversal ..%5c', '/v1/patients/..%5c..%5cstatus', 400),
    get('NUL in path', '/v1/patients/%00', 400),
  ];
}

interface Options {
  durationS: number;
  connections: number;
  rounds: number;
  rateLimits: 'high' | 'default';
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      duration: { type: 'string', default: '3' },
      connections: { type: 'string', default: '16' },
      rounds: { type: 'string', default: '2' },
      'rate-limits': { type: 'string', default: 'high' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  const rateLimits = values['rate-limits'];
  if (rateLimits !== 'high' && rateLimits !== 'default')
    throw new Error('--rate-limits must be high or default');
  return {
    durationS: intOption('duration', values.duration, 1, 600),
    connections: intOption('connections', values.connections, 1, 1000),
    rounds: intOption('rounds', values.rounds, 1, 50),
    rateLimits,
  };
}

const mib = (kib: number | undefined): string => (kib === undefined ? '?' : (kib / 1024).toFixed(1));

/** One request that verifies the certificate (autocannon does not; see load.ts). */
function probe(gw: GatewayProcess, input: Input): Promise<number> {
  return new Promise((ok, fail) => {
    const origin = new URL(gw.url);
    const req = request(
      {
        // host, port and path apart: a URL string would be normalised (`..`, `%2e%2e` removed).
        host: origin.hostname,
        port: origin.port,
        path: input.path,
        method: input.method,
        ca: gw.ca,
        servername: gw.servername,
        agent: false,
        timeout: 10_000,
        headers: {
          ...input.headers,
          ...(input.body === undefined ? {} : { 'content-length': String(Buffer.byteLength(input.body)) }),
        },
      },
      (res) => {
        res.resume();
        res.on('end', () => ok(res.statusCode ?? 0));
        res.on('error', fail);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${input.name}: timed out`)));
    // The gateway may answer (413, 431) and close before it has read the whole request.
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EPIPE' && err.code !== 'ECONNRESET') fail(err);
    });
    req.end(input.body);
  });
}

/** Responses by class: `2xx`, `3xx`, `4xx`, `5xx`. */
function classes(ms: Measurement[]): Record<string, number> {
  const out: Record<string, number> = { '2xx': 0, '3xx': 0, '4xx': 0, '5xx': 0, other: 0 };
  for (const m of ms) {
    for (const [status, n] of Object.entries(m.statuses)) {
      const c = `${status.slice(0, 1)}xx`;
      if (c in out) out[c] = (out[c] ?? 0) + n;
      else out.other = (out.other ?? 0) + n;
    }
  }
  return out;
}

function alive(gw: GatewayProcess): boolean {
  return procExe(gw.pid) === gw.exe;
}

async function main(options: Options): Promise<boolean> {
  const root = await makeTempDir();
  const upstream = await startUpstream();
  const docs = await writeBenchDocs(root);
  const gw = await startGateway(root, {
    name: 'hostile',
    upstreamUrl: upstream.url,
    logLevel: 'warn',
    accessLog: false,
    extraConfig: {
      ...apisFor(docs.validated, upstream.url),
      ...(options.rateLimits === 'high' ? { rateLimits: HIGH_RATE_LIMITS } : {}),
    },
  });
  progress(`gateway pid ${String(gw.pid)} at ${gw.url}, rate limits ${options.rateLimits}`);

  const list = inputs();
  const problems: string[] = [];
  const refused = (input: Input, status: number) =>
    status === input.expect || (options.rateLimits === 'default' && status === 429);
  for (const input of list) {
    const status = await probe(gw, input);
    if (!refused(input, status)) {
      problems.push(`${input.name}: probe got ${String(status)}, expected ${String(input.expect)}`);
    }
  }
  if (problems.length > 0) progress(`probe mismatches:\n  ${problems.join('\n  ')}`);

  await sleep(1_000);
  const rssBefore = procStatusKiB(gw.pid, 'VmRSS');
  const hwmBefore = procStatusKiB(gw.pid, 'VmHWM');
  const runs = new Map<string, Measurement[]>(list.map((i) => [i.name, []]));
  const rssAfter = new Map<string, (number | undefined)[]>(list.map((i) => [i.name, []]));
  for (let r = 0; r < options.rounds; r++) {
    for (const input of list) {
      if (!alive(gw)) break;
      const target: LoadTarget = {
        name: input.name,
        url: gw.url + input.path,
        expectStatus: input.expect,
        servername: gw.servername,
        ca: gw.ca,
        method: input.method,
        ...(input.headers === undefined ? {} : { headers: input.headers }),
        ...(input.body === undefined ? {} : { body: input.body }),
      };
      const m = await measure(target, { durationS: options.durationS, connections: options.connections });
      runs.get(input.name)?.push(m);
      rssAfter.get(input.name)?.push(procStatusKiB(gw.pid, 'VmRSS'));
      progress(
        `round ${String(r + 1)} ${input.name}: ${m.rps.toFixed(0)} req/s, p99 ${m.p99.toFixed(2)} ms, ` +
          `statuses ${JSON.stringify(m.statuses)}, errors ${String(m.errors)}`,
      );
    }
  }
  await sleep(2_000);
  const up = alive(gw);
  const rssEnd = procStatusKiB(gw.pid, 'VmRSS');
  const hwm = procStatusKiB(gw.pid, 'VmHWM');
  const status = up
    ? await httpsGet(`${gw.url}/v1/status`, gw.ca, gw.servername).catch(() => undefined)
    : undefined;

  const header = [
    'input',
    'expect',
    'req/s',
    'p99 ms',
    '2xx',
    '3xx',
    '4xx',
    '5xx',
    'other',
    'unexpected',
    'errors',
    'RSS after MiB',
  ];
  const rows = [header];
  for (const input of list) {
    const ms = runs.get(input.name) ?? [];
    const c = classes(ms);
    const unexpected = ms.reduce((n, m) => {
      let bad = 0;
      for (const [s, k] of Object.entries(m.statuses)) if (!refused(input, Number(s))) bad += k;
      return n + bad;
    }, 0);
    rows.push([
      input.name,
      String(input.expect),
      median(ms.map((m) => m.rps)).toFixed(0),
      median(ms.map((m) => m.p99)).toFixed(2),
      String(c['2xx']),
      String(c['3xx']),
      String(c['4xx']),
      String(c['5xx']),
      String(c.other),
      String(unexpected),
      String(ms.reduce((n, m) => n + m.errors, 0)),
      (rssAfter.get(input.name) ?? []).map(mib).join(' / '),
    ]);
    if ((c['5xx'] ?? 0) > 0) problems.push(`${input.name}: ${String(c['5xx'])} responses were 5xx`);
    if (input.baseline !== true && (c['2xx'] ?? 0) + (c['3xx'] ?? 0) + (c.other ?? 0) > 0) {
      problems.push(`${input.name}: responses other than 4xx`);
    }
    if (unexpected > 0)
      problems.push(
        `${input.name}: ${String(unexpected)} responses with another status than ${String(input.expect)}`,
      );
    if (ms.length < options.rounds)
      problems.push(`${input.name}: only ${String(ms.length)} of ${String(options.rounds)} rounds ran`);
  }
  process.stdout.write(table(rows) + '\n\n');
  process.stdout.write(
    `gateway: peak RSS (VmHWM) ${mib(hwm)} MiB (${mib(hwmBefore)} before the load); ` +
      `RSS before load ${mib(rssBefore)} MiB, at end ${mib(rssEnd)} MiB\n`,
  );
  if (!up) problems.push('the gateway process exited');
  else if (status?.status !== 200)
    problems.push(`GET /v1/status at the end: ${String(status?.status ?? 'no answer')}`);
  if (problems.length === 0) {
    process.stdout.write(
      `verdict: gateway stayed up; peak RSS ${mib(hwm)} MiB; every hostile input refused with a 4xx, no 5xx\n`,
    );
    return true;
  }
  process.stdout.write(
    `verdict: FAILED${up ? '' : ' (gateway exited)'}; peak RSS ${mib(hwm)} MiB\n  ${problems.join('\n  ')}\n`,
  );
  return false;
}

await runBench(USAGE, parseOptions, async (options) => ((await main(options)) ? 0 : 1));
