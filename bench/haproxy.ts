/**
 * HAProxy from the Debian package as a reference gateway for `npm run bench`: a well-known C
 * proxy doing part of Portcullis's work on the same request, one thread (`nbthread 1`).
 *
 * Its configuration (generated into the run's temp dir) terminates TLS with the benchmark's
 * certificate and, on every request, before proxying to the upstream:
 * - counts the request in a stick-table per source address (`http_req_rate(10s)`), refusing
 *   with 429 above a limit set so high that it never refuses (as Portcullis's limits here);
 * - takes the Bearer token (`http_auth_bearer`), refuses (401) unless its header's `alg` is
 *   ES256 (`jwt_header_query`), its `aud` is the API's audience and its `exp` is in the future
 *   (`jwt_payload_query` against `date()`), and its signature verifies with the issuer's
 *   public key, the algorithm pinned: `jwt_verify("ES256", <pubkey.pem>)`;
 * - removes `Authorization` and strips the `/v1` base path.
 * `Authorization` is checked on every request; HAProxy 2.6 has no cache of verified tokens.
 */
import { spawn } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePorts, httpsCall, trackChild } from './processes.ts';

export interface HaproxyOptions {
  /** Temp directory for the configuration, the PEM bundle and the public key. */
  dir: string;
  upstreamUrl: string;
  certPem: string;
  keyPem: string;
  /** The issuer's ES256 public key (SPKI PEM). */
  publicKeyPem: string;
  audience: string;
  /** The CA and name to verify the listener's certificate with (readiness probe). */
  ca: string;
  servername: string;
}

export interface HaproxyProcess {
  url: string;
  pid: number;
  version: string;
}

/** `HAProxy version 2.6.12-…`, or a clear error when the Debian package is missing. */
export function requireHaproxy(): string {
  try {
    return (
      /^HAProxy version \S+/.exec(execFileSync('haproxy', ['-v'], { encoding: 'utf8' }))?.[0] ?? 'HAProxy'
    );
  } catch (err) {
    throw new Error(
      'haproxy is not installed: this benchmark needs the Debian package haproxy (apt-get install haproxy; .ci/run installs it)',
      { cause: err },
    );
  }
}

/** Never reached: the table counts every request, as Portcullis's raised limits do. */
const RATE_LIMIT = 1_000_000_000;

export async function startHaproxy(options: HaproxyOptions): Promise<HaproxyProcess> {
  const version = requireHaproxy();
  const [port] = (await freePorts(1)) as [number];
  const upstream = new URL(options.upstreamUrl);
  const pem = join(options.dir, 'haproxy.pem');
  const pubkey = join(options.dir, 'issuer-pubkey.pem');
  const cfg = join(options.dir, 'haproxy.cfg');
  await writeFile(pem, `${options.certPem.trim()}\n${options.keyPem.trim()}\n`, { mode: 0o600 });
  await writeFile(pubkey, options.publicKeyPem);
  await writeFile(
    cfg,
    `global
  nbthread 1
  maxconn 4096
  tune.ssl.default-dh-param 2048
  ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 60s
  option http-keep-alive

frontend bench
  bind 127.0.0.1:${String(port)} ssl crt ${pem} alpn http/1.1
  stick-table type ip size 100k expire 60s store http_req_rate(10s)
  http-request track-sc0 src
  http-request deny deny_status 429 if { sc_http_req_rate(0) gt ${String(RATE_LIMIT)} }
  http-request set-var(txn.bearer) http_auth_bearer
  http-request deny deny_status 401 unless { var(txn.bearer) -m found }
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
  http-request deny deny_status 401 unless { var(txn.alg) -m str ES256 }
  http-request set-var(txn.aud) var(txn.bearer),jwt_payload_query('$.aud')
  http-request deny deny_status 401 unless { var(txn.aud) -m str ${options.audience} }
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
  http-request set-var(txn.now) date()
  http-request deny deny_status 401 unless { var(txn.exp),sub(txn.now) -m int gt 0 }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify("ES256","${pubkey}") -m int 1 }
  http-request del-header authorization
  http-request replace-path ^/v1(/.*)$ \\1
  default_backend upstream

backend upstream
  server upstream ${upstream.hostname}:${upstream.port} maxconn 64
`,
  );
  // -db: foreground, no daemon; the pid is haproxy's own.
  const child = spawn('haproxy', ['-db', '-f', cfg], { stdio: ['ignore', 'ignore', 'pipe'] });
  trackChild(child);
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (c: string) => (stderr = (stderr + c).slice(-8_192)));
  const url = `https://127.0.0.1:${String(port)}`;
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(
        `haproxy exited during start-up (${String(child.exitCode ?? child.signalCode)}):\n${stderr}`,
      );
    }
    // Without a token HAProxy answers 401: it is up and its certificate verifies.
    const answer = await httpsCall(`${url}/v1/status`, options, 'GET', {}, undefined, 1_000).catch(
      () => undefined,
    );
    if (answer?.status === 401) break;
    if (Date.now() > deadline) throw new Error(`haproxy not ready after 10 s:\n${stderr}`);
    await sleep(100);
  }
  if (child.pid === undefined) throw new Error('haproxy: no pid');
  return { url, pid: child.pid, version };
}
