/**
 * The front door: the one place where a request enters, whatever the protocol. HTTP/1.1 and
 * HTTP/2 requests (`request`), WebSocket upgrades (`upgrade`) and the authorization server's
 * paths all become one {@link Exchange} (correlation id, client address after trusted proxies,
 * the runtime in force) handed to the one pipeline (src/gateway/pipeline.ts). Errors of the
 * HTTP/1.1 parser never reach the pipeline: they get a minimal problem on an established TLS
 * connection, and the socket is destroyed in every case.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, OutgoingHttpHeaders } from 'node:http';
import type { Duplex } from 'node:stream';
import { TLSSocket } from 'node:tls';
import type { Logger } from '../log/index.ts';
import { describeError } from '../log/index.ts';
import type { Runtime } from '../gateway/compile.ts';
import { Exchange } from '../gateway/pipeline.ts';
import type { DoorRequest, DoorResponse, Pipeline } from '../gateway/pipeline.ts';
import { problemBody } from '../gateway/problems.ts';
import type { ProblemCode } from '../gateway/problems.ts';
import { securityHeaderObject } from '../gateway/stages/headers/index.ts';
import { rawHead } from '../gateway/websocket.ts';

export interface FrontDoor {
  /** The listener's `request` handler (HTTP/1.1 and HTTP/2). */
  readonly request: (req: DoorRequest, res: DoorResponse) => void;
  /** The listener's `upgrade` handler (WebSocket handshakes only, see `shouldUpgradeCallback`). */
  readonly upgrade: (req: IncomingMessage, socket: Duplex, head: Buffer) => void;
  /** The listener's `clientError` handler (HTTP/1.1 parser errors and timeouts). */
  readonly clientError: (err: Error & { code?: string }, socket: Duplex) => void;
}

const ERROR_HEADERS: Readonly<OutgoingHttpHeaders> = securityHeaderObject({
  authenticated: true,
  error: true,
});

export function createFrontDoor(options: {
  readonly runtime: () => Runtime;
  readonly pipeline: Pipeline;
  readonly logger: Logger;
}): FrontDoor {
  const { pipeline, logger, runtime } = options;
  // The pipeline renders every failure itself; this only catches a bug in that rendering.
  const unexpected = (err: unknown) => {
    logger.error({ event: 'pipeline-failed', error: describeError(err) }, 'request handling failed');
  };
  return {
    request(req, res) {
      pipeline.serve(new Exchange('api', req, runtime(), res, undefined)).catch(unexpected);
    },
    upgrade(req, socket, head) {
      socket.on('error', (err) => {
        logger.debug({ event: 'client-error', error: describeError(err) }, 'websocket error');
      });
      pipeline
        .serveUpgrade(new Exchange('websocket', req, runtime(), undefined, socket), head)
        .catch(unexpected);
    },
    clientError(err, socket) {
      logger.debug({ event: 'client-error', error: describeError(err) }, 'client connection error');
      // Only an established TLS connection can carry an answer; anything else is just closed.
      const established = socket instanceof TLSSocket && socket.alpnProtocol !== null;
      if (err.code === 'ECONNRESET' || err.code === 'EPIPE' || !established || !socket.writable) {
        socket.destroy();
        return;
      }
      const status =
        err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
      const code: ProblemCode =
        status === 431 ? 'headers-too-large' : status === 408 ? 'request-timeout' : 'bad-request';
      const id = randomUUID();
      const body = JSON.stringify(problemBody(code, id));
      const head = rawHead(status, {
        ...ERROR_HEADERS,
        'content-type': 'application/problem+json',
        'content-length': String(Buffer.byteLength(body)),
        [runtime().correlationHeader]: id,
        connection: 'close',
      });
      socket.end(head + body, () => socket.destroy());
    },
  };
}
