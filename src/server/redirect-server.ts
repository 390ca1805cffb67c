/**
 * The optional plain-HTTP listener. It serves nothing: every request is redirected (308) to the
 * same path on the configured public HTTPS origin. The Host header is ignored, so the redirect
 * cannot be pointed elsewhere.
 */
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import { securityHeaderObject } from '../gateway/stages/headers/index.ts';

const SAFE_TARGET = /^\/[\x21-\x7e]*$/;

export function createRedirectServer(publicUrl: string, maxUrlBytes: number): Server {
  const origin = new URL(publicUrl).origin;
  const server = createServer(
    { requestTimeout: 10_000, headersTimeout: 5_000, keepAliveTimeout: 1_000 },
    (req, res) => {
      const target = req.url ?? '/';
      const headers = {
        ...securityHeaderObject({ authenticated: false, error: false }),
        connection: 'close',
      };
      delete headers['strict-transport-security']; // meaningless over plain HTTP
      req.resume();
      if (target.length > maxUrlBytes || !SAFE_TARGET.test(target) || target.startsWith('//')) {
        res.writeHead(400, { ...headers, 'content-type': 'text/plain' }).end('Bad Request\n');
        return;
      }
      res.writeHead(308, { ...headers, location: origin + target }).end();
    },
  );
  return server;
}
