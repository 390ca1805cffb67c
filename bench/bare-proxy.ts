/**
 * The floor a Node gateway can reach, for `npm run bench`: a bare Node 24 `node:https` server
 * that proxies every request to the upstream through one undici `Pool` with `stream()`, piping
 * the upstream's body into the response. No security, no parsing beyond Node's own: it strips
 * the `/v1` base path (as the gateway maps `/v1/…` to the upstream's `/…`) and forwards `accept`.
 *
 *   node bench/bare-proxy.ts CERT_FILE KEY_FILE UPSTREAM_URL
 *
 * Listens on a free loopback port and prints `{"url": …, "pid": …}` once listening; exits on
 * SIGTERM/SIGINT or when its stdin closes (the benchmark went away).
 */
import { readFileSync } from 'node:fs';
import type { OutgoingHttpHeaders } from 'node:http';
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { Pool } from 'undici';

const [certFile, keyFile, upstream] = process.argv.slice(2);
if (certFile === undefined || keyFile === undefined || upstream === undefined) {
  process.stderr.write('usage: node bench/bare-proxy.ts CERT_FILE KEY_FILE UPSTREAM_URL\n');
  process.exit(2);
}
const pool = new Pool(upstream, { connections: 64, pipelining: 1 });
const server = createServer(
  { cert: readFileSync(certFile), key: readFileSync(keyFile), keepAliveTimeout: 60_000 },
  (req, res) => {
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
  },
);
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address() as AddressInfo;
  process.stdout.write(JSON.stringify({ url: `https://127.0.0.1:${String(port)}`, pid: process.pid }) + '\n');
});

let stopping = false;
const stop = () => {
  if (stopping) return;
  stopping = true;
  server.close();
  server.closeAllConnections();
  void pool.close().finally(() => process.exit(0));
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.on('error', stop);
process.stdin.resume();
