/**
 * The floor a Node gateway can reach, for `npm run bench`: a bare Node 24 `node:https` server
 * that proxies every request to the upstream through one undici `Pool` with `stream()`, piping
 * the upstream's body into the response. No security, no parsing beyond Node's own: it strips
 * the `/v1` base path (as the gateway maps `/v1/…` to the upstream's `/…`) and forwards `accept`.
 * With `--fastify`, the same handler behind Fastify 5 (one catch-all route, the reply hijacked):
 * what Fastify's routing and request objects add to the floor.
 *
 *   node bench/bare-proxy.ts CERT_FILE KEY_FILE UPSTREAM_URL [--fastify]
 *
 * Listens on a free loopback port and prints `{"url": …, "pid": …}` once listening; exits on
 * SIGTERM/SIGINT or when its stdin closes (the benchmark went away).
 */
import { readFileSync } from 'node:fs';
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import Fastify from 'fastify';
import { Pool } from 'undici';

const [certFile, keyFile, upstream, flag] = process.argv.slice(2);
if (certFile === undefined || keyFile === undefined || upstream === undefined) {
  process.stderr.write('usage: node bench/bare-proxy.ts CERT_FILE KEY_FILE UPSTREAM_URL [--fastify]\n');
  process.exit(2);
}
const pool = new Pool(upstream, { connections: 64, pipelining: 1 });
const tls = { cert: readFileSync(certFile), key: readFileSync(keyFile), keepAliveTimeout: 60_000 };

function proxy(req: IncomingMessage, res: ServerResponse): void {
  const url = req.url ?? '/';
  const path = url.startsWith('/v1/') ? url.slice(3) : url;
  const accept = req.headers.accept;
  pool
    .stream(
      { path, method: 'GET', headers: accept === undefined ? {} : { accept } },
      ({ statusCode, headers }) => {
        const out: OutgoingHttpHeaders = {};
        const type = headers['content-type'];
        const length = headers['content-length'];
        if (typeof type === 'string') out['content-type'] = type;
        if (typeof length === 'string') out['content-length'] = length;
        res.writeHead(statusCode, out);
        return res;
      },
    )
    .catch(() => {
      if (!res.headersSent) res.writeHead(502);
      res.end();
    });
}

let close: () => Promise<unknown>;
let port: number;
if (flag === '--fastify') {
  const app = Fastify({ https: tls, logger: false });
  app.get('/*', (req, reply) => {
    reply.hijack();
    proxy(req.raw, reply.raw);
  });
  await app.listen({ port: 0, host: '127.0.0.1' });
  port = (app.server.address() as AddressInfo).port;
  close = () => {
    const closing = app.close();
    app.server.closeAllConnections();
    return closing;
  };
} else {
  const server = createServer(tls, proxy);
  server.listen(0, '127.0.0.1');
  await new Promise((ok) => server.once('listening', ok));
  port = (server.address() as AddressInfo).port;
  close = () =>
    new Promise((ok) => {
      server.close(ok);
      server.closeAllConnections();
    });
}
process.stdout.write(JSON.stringify({ url: `https://127.0.0.1:${String(port)}`, pid: process.pid }) + '\n');

let stopping = false;
const stop = () => {
  if (stopping) return;
  stopping = true;
  void Promise.all([close(), pool.close()]).finally(() => process.exit(0));
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.on('error', stop);
process.stdin.resume();
