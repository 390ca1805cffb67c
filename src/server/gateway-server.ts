/**
 * The public listener: HTTPS on `node:http2` with HTTP/1.1 fallback (ALPN h2 + http/1.1), the
 * hardened TLS settings of tls.ts, the timeouts of `gateway.timeouts`, and one front door
 * (front-door.ts) in front of one pipeline (src/gateway/pipeline.ts). No framework sits on this
 * path: the route table is precompiled per configuration version and a request is one object
 * passed down the steps.
 */
import { createSecureServer } from 'node:http2';
import type { Http2SecureServer } from 'node:http2';
import type { Runtime } from '../gateway/compile.ts';
import { createPipeline } from '../gateway/pipeline.ts';
import type { AuthorizationServerDoor } from '../gateway/pipeline.ts';
import { createPressureMonitor } from '../gateway/resilience/load-shedding.ts';
import { isWebSocketUpgrade, Tunnels } from '../gateway/websocket.ts';
import type { Logger } from '../log/index.ts';
import { createFrontDoor } from './front-door.ts';
import type { Observer } from './observe.ts';
import { hardenTlsServer, secureContextOptions } from './tls.ts';

/** Holds the runtime in force; a reload swaps `current` in one assignment. */
export interface RuntimeHolder {
  current: Runtime;
  /** Set when shutdown began: responses then close their HTTP/1.1 connection. */
  closing?: boolean;
}

export interface GatewayServerOptions {
  readonly holder: RuntimeHolder;
  readonly logger: Logger;
  readonly tls: { certPem: string; keyPem: string };
  readonly http2: boolean;
  readonly timeouts: { headersMs: number; requestMs: number; keepAliveMs: number };
  readonly accessLog: boolean;
  /** Audit events and metrics for every request (src/server/observe.ts). */
  readonly observer?: Observer | undefined;
  /**
   * CA certificates (PEM) to request client certificates for. The handshake never requires
   * one: operations that need mTLS refuse without it, with a problem response.
   */
  readonly clientCertificateCas?: readonly string[];
  /** The embedded authorization server: its paths are served before the API route table. */
  readonly authorizationServer?: AuthorizationServerDoor | undefined;
  /** `authorization-server`: serve only the authorization server's paths. Default `all`. */
  readonly role?: 'all' | 'gateway' | 'authorization-server';
  /** TLS handshake deadline from accept (`gateway.connections.handshakeTimeoutMs`). */
  readonly handshakeTimeoutMs?: number;
}

export interface GatewayServer {
  readonly server: Http2SecureServer;
  /** Open WebSocket tunnels. */
  readonly tunnels: Tunnels;
  /**
   * Stops accepting connections; requests still arriving on open connections get a 503,
   * WebSocket tunnels are closed, and the promise resolves once every connection has ended.
   */
  close(): Promise<void>;
}

/** The parser's bound sits at the schema's maximum; the configured limit is checked exactly. */
const PARSER_HEADER_BOUND = 64 * 1024;

export function createGatewayServer(options: GatewayServerOptions): GatewayServer {
  const { holder, logger } = options;
  const tls = secureContextOptions(options.tls, { alpn: options.http2 ? 'h2+http/1.1' : 'http/1.1' });
  const server = createSecureServer({
    ...tls,
    allowHTTP1: true,
    handshakeTimeout: options.handshakeTimeoutMs ?? 10_000,
    ...(options.clientCertificateCas === undefined
      ? {}
      : { requestCert: true, rejectUnauthorized: false, ca: [...options.clientCertificateCas] }),
    settings: { maxHeaderListSize: PARSER_HEADER_BOUND },
    maxSessionMemory: 10,
  });
  hardenTlsServer(server);
  // Connection caps, fd pressure and HTTP/2 stream limits attach to this server before it listens
  // (lifecycle.ts calls protectGateway, src/server/protect-listeners.ts).

  // Timeouts: idle HTTP/2 sessions, idle sockets, and slow HTTP/1.1 clients.
  const sessionIdleMs = options.timeouts.keepAliveMs * 12;
  server.on('session', (session) => {
    session.setTimeout(sessionIdleMs, () => {
      session.close();
    });
  });
  server.setTimeout(options.timeouts.requestMs * 2);
  const http1 = server as unknown as {
    headersTimeout: number;
    requestTimeout: number;
    maxHeaderSize: number;
  };
  http1.headersTimeout = options.timeouts.headersMs;
  http1.requestTimeout = options.timeouts.requestMs;
  http1.maxHeaderSize = PARSER_HEADER_BOUND;

  const pressure = createPressureMonitor();
  const tunnels = new Tunnels();
  let closed = false;
  const observer = options.observer;
  const pipeline = createPipeline({
    logger,
    accessLog: options.accessLog,
    observe:
      observer === undefined
        ? undefined
        : (record) => {
            observer.request(record);
          },
    shed: () => {
      pressure.check(holder.current.loaded.config.gateway.loadShedding);
    },
    closing: () => holder.closing === true,
    closed: () => closed,
    authorizationServer: options.authorizationServer,
    role: options.role ?? 'all',
    tunnels,
  });
  const door = createFrontDoor({ runtime: () => holder.current, pipeline, logger });
  server.on('request', door.request);
  // Only WebSocket upgrades leave the request event (Node 24 `shouldUpgradeCallback`).
  (server as unknown as { shouldUpgradeCallback: typeof isWebSocketUpgrade }).shouldUpgradeCallback =
    isWebSocketUpgrade;
  server.on('upgrade', door.upgrade);
  server.on('clientError', door.clientError);

  return {
    server,
    tunnels,
    close: () =>
      new Promise<void>((resolve) => {
        closed = true;
        tunnels.closeAll();
        pressure.stop();
        if (!server.listening) {
          resolve();
          return;
        }
        server.close(() => {
          resolve();
        });
      }),
  };
}
