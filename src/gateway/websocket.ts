/**
 * WebSocket proxying (seed 001 B.12.7), for GET operations that declare
 * `x-portcullis-websocket: true`. The gateway listens only on TLS, so every WebSocket is `wss://`.
 *
 * An HTTP/1.1 upgrade request is handled here (the listener's 'upgrade' event), in order:
 * load shedding → header size → a well-formed WebSocket handshake → route match (an undeclared
 * path, or an operation that does not declare WebSockets, is 404) → an `Origin` header is required
 * → the operation's chain up to, not including, the proxy: CORS (the Origin must be in the API's
 * `cors.allowOrigins`; an API without CORS refuses every Origin), CSRF, the same authentication
 * and authorization as HTTP, validation, limits → the circuit must not be open → the upstream
 * handshake (`ws://` to a loopback upstream, `wss://` otherwise, the same header rules as the
 * proxy: credentials and forwarding headers dropped, the gateway's own added) → `101` to the
 * client, then the two sockets are piped to each other. Any refusal before the upgrade is a plain
 * HTTP problem response (RFC 9457) and the connection is closed.
 *
 * Out of scope: WebSockets over HTTP/2 (RFC 8441 extended CONNECT); the listener does not offer
 * it, so browsers open an HTTP/1.1 connection for WebSockets.
 */
import { randomUUID } from 'node:crypto';
import { STATUS_CODES, request as httpRequest } from 'node:http';
import type { ClientRequest, IncomingMessage, OutgoingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { TLSSocket } from 'node:tls';
import type { DetailedPeerCertificate } from 'node:tls';
import type { GatewayRequest } from './chain.ts';
import type { CompiledOperation, Runtime } from './compile.ts';
import { acceptCorrelationId, canonicalIp, deriveClientIp } from './forwarded.ts';
import { normalizeTarget } from './path.ts';
import { Denial, isDenial, problemBody } from './problems.ts';
import { securityHeaderObject } from './stages/headers/index.ts';
import { upstreamHeaders } from './stages/proxy/index.ts';
import type { Logger } from '../server/logging.ts';
import { describeError } from '../server/logging.ts';

export interface WebSocketProxyOptions {
  /** The runtime in force (read per upgrade, like the HTTP path). */
  readonly runtime: () => Runtime;
  readonly logger: Logger;
  readonly accessLog: boolean;
  /** Whether the process is shutting down (upgrades are then refused). */
  readonly closing?: () => boolean;
  /** Load shedding: throws a 503 Denial when the process is saturated. */
  readonly pressure?: () => void;
}

export interface WebSocketProxy {
  /** The listener's 'upgrade' event handler. */
  readonly handleUpgrade: (req: IncomingMessage, socket: Duplex, head: Buffer) => void;
  /** Which upgrade requests come here: WebSocket ones only (others are plain requests). */
  readonly isWebSocketUpgrade: (req: IncomingMessage) => boolean;
  /** Open tunnels (for tests and metrics). */
  readonly open: () => number;
  /** Destroys every open tunnel (shutdown). */
  readonly closeAll: () => void;
}

const KEY_SHAPE = /^[A-Za-z0-9+/]{22}==$/;
/** Response headers of the upstream's 101 passed to the client. */
const PASSED_101 = ['sec-websocket-accept', 'sec-websocket-protocol', 'sec-websocket-extensions'];
const HEADER_OVERHEAD = 4;

function headerBytes(raw: readonly string[]): number {
  let total = 0;
  for (const part of raw) total += Buffer.byteLength(part) + HEADER_OVERHEAD / 2;
  return total;
}

function single(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? undefined : value;
}

function head(status: number, headers: OutgoingHttpHeaders): string {
  const lines = [`HTTP/1.1 ${String(status)} ${STATUS_CODES[status] ?? ''}`];
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    for (const v of Array.isArray(value) ? value : [value]) lines.push(`${name}: ${String(v)}`);
  }
  return `${lines.join('\r\n')}\r\n\r\n`;
}

/** The upstream URL path for a gateway target (as the proxy stage builds it). */
function upstreamPath(op: CompiledOperation, path: string, query: string): string {
  const upstream = op.api.upstream;
  const rest = path.slice(op.api.basePath.length);
  return upstream.prefix + (rest === '' ? '/' : rest) + (query === '' ? '' : `?${query}`);
}

interface Handshake {
  readonly response: IncomingMessage;
  readonly socket: Duplex;
  readonly head: Buffer;
}

/** Opens the upstream WebSocket handshake; resolves on its 101, rejects with a Denial otherwise. */
function connectUpstream(
  op: CompiledOperation,
  path: string,
  headers: OutgoingHttpHeaders,
): Promise<Handshake> {
  const upstream = op.api.upstream;
  const url = new URL(upstream.origin);
  const secure = url.protocol === 'https:';
  return new Promise((resolve, reject) => {
    let settled = false;
    const fail = (denial: Denial) => {
      if (settled) return;
      settled = true;
      reject(denial);
    };
    const options = {
      host: url.hostname.replace(/^\[|\]$/g, ''),
      port: url.port === '' ? (secure ? 443 : 80) : Number(url.port),
      method: 'GET',
      path,
      headers,
      agent: false as const,
      timeout: upstream.options.connectMs + upstream.options.headersMs,
    };
    const request: ClientRequest = secure
      ? httpsRequest({
          ...options,
          servername: url.hostname,
          minVersion: 'TLSv1.2',
          ...(upstream.ca === undefined ? {} : { ca: upstream.ca }),
        })
      : httpRequest(options);
    request.on('upgrade', (response: IncomingMessage, socket: Duplex, upgradeHead: Buffer) => {
      if (settled) {
        socket.destroy();
        return;
      }
      settled = true;
      resolve({ response, socket, head: upgradeHead });
    });
    request.on('response', (response: IncomingMessage) => {
      response.resume();
      fail(new Denial('bad-gateway', `websocket-upstream-status-${String(response.statusCode ?? 0)}`));
    });
    request.on('timeout', () => {
      request.destroy();
      fail(new Denial('gateway-timeout', 'websocket-upstream-timeout'));
    });
    request.on('error', (err) => {
      fail(new Denial('bad-gateway', 'websocket-upstream-unreachable', { cause: err }));
    });
    request.end();
  });
}

export function createWebSocketProxy(options: WebSocketProxyOptions): WebSocketProxy {
  const { logger } = options;
  const tunnels = new Set<Duplex>();

  const accessLine = (
    req: IncomingMessage,
    correlationId: string,
    clientIp: string,
    op: CompiledOperation | undefined,
    status: number,
    started: bigint,
    reason?: string,
  ) => {
    if (!options.accessLog) return;
    logger.info(
      {
        event: 'access',
        correlationId,
        method: req.method,
        api: op?.api.name ?? null,
        route: op?.template ?? null,
        status,
        durationMs: Number(process.hrtime.bigint() - started) / 1e6,
        clientIp,
        httpVersion: req.httpVersion,
        websocket: true,
        ...(reason === undefined ? {} : { reason }),
      },
      'request',
    );
  };

  const refuse = (socket: Duplex, denial: Denial, correlationId: string, correlationHeader: string) => {
    if (!socket.writable) {
      socket.destroy();
      return;
    }
    const body = JSON.stringify(problemBody(denial.code, correlationId, denial.errors));
    socket.end(
      head(denial.status, {
        ...securityHeaderObject({ authenticated: true, error: true }),
        ...denial.headers,
        'content-type': 'application/problem+json',
        'content-length': String(Buffer.byteLength(body)),
        [correlationHeader]: correlationId,
        connection: 'close',
      }) + body,
    );
  };

  const upgrade = async (
    req: IncomingMessage,
    socket: Duplex,
    clientHead: Buffer,
    runtime: Runtime,
    gw: Pick<GatewayRequest, 'correlationId' | 'clientIp' | 'peerIp'>,
    setOp: (op: CompiledOperation) => void,
  ): Promise<void> => {
    if (options.closing?.() === true) throw new Denial('unavailable', 'shutting-down');
    options.pressure?.();
    if (headerBytes(req.rawHeaders) > runtime.limits.headerBytes) {
      throw new Denial('headers-too-large', 'header-block-too-large');
    }
    const key = single(req.headers['sec-websocket-key']);
    if (
      req.method !== 'GET' ||
      single(req.headers.upgrade)?.toLowerCase() !== 'websocket' ||
      single(req.headers['sec-websocket-version']) !== '13' ||
      key === undefined ||
      !KEY_SHAPE.test(key)
    ) {
      throw new Denial('bad-request', 'websocket-handshake-malformed');
    }
    const target = normalizeTarget(req.url ?? '/', runtime.limits.urlBytes);
    const match = runtime.routes.match('GET', target.segments);
    if (match.kind !== 'found' || !match.data.websocket) {
      throw new Denial('not-found', 'websocket-not-declared');
    }
    const op = match.data;
    setOp(op);
    // Browsers always send Origin on a WebSocket handshake; it must be authorised server-side.
    if (req.headers.origin === undefined) throw new Denial('origin-not-allowed', 'websocket-origin-missing');
    const request: GatewayRequest = {
      correlationId: gw.correlationId,
      method: 'GET',
      target,
      headers: req.headers,
      peerIp: gw.peerIp,
      clientIp: gw.clientIp,
      operation: op,
      params: match.params,
      body: undefined,
      credentialPresented: req.headers.authorization !== undefined || req.headers.cookie !== undefined,
      peerCertificate: (): DetailedPeerCertificate | undefined => {
        const cert = socket instanceof TLSSocket ? socket.getPeerCertificate(true) : undefined;
        return cert === undefined || Object.keys(cert).length === 0 ? undefined : cert;
      },
      responseHeaders: {},
    };
    // The same stages as HTTP, up to (not including) the proxy, which is always last.
    const stages = op.chain === null ? [] : op.chain.slice(0, -1);
    for (const stage of stages) {
      const answered = await stage(request);
      if (answered !== undefined) throw new Denial('bad-request', 'websocket-stage-answered');
    }
    const upstream = op.api.upstream;
    if (upstream.guard.state === 'open') {
      throw new Denial('unavailable', 'circuit-open', {
        headers: { 'retry-after': String(upstream.guard.retryAfterSeconds()) },
      });
    }
    const config = runtime.loaded.config;
    const headers: OutgoingHttpHeaders = upstreamHeaders(
      req.headers,
      gw.clientIp,
      gw.correlationId,
      {
        basePath: op.api.basePath,
        correlationHeader: runtime.correlationHeader,
        publicHost: new URL(config.gateway.publicUrl).host,
      },
      undefined,
    );
    const identityHeader = (config.gateway as { identity?: { header?: string } }).identity?.header;
    if (identityHeader !== undefined) Reflect.deleteProperty(headers, identityHeader);
    headers.connection = 'Upgrade';
    headers.upgrade = 'websocket';
    headers.host = new URL(upstream.origin).host;
    const shake = await connectUpstream(
      op,
      upstreamPath(op, target.path, request.forwardQuery ?? target.query),
      headers,
    );
    const up = shake.socket;
    if (!socket.writable) {
      up.destroy();
      return;
    }
    const reply: OutgoingHttpHeaders = { upgrade: 'websocket', connection: 'Upgrade' };
    for (const name of PASSED_101) {
      const value = shake.response.headers[name];
      if (value !== undefined) reply[name] = value;
    }
    reply[runtime.correlationHeader] = gw.correlationId;
    socket.write(head(101, reply));
    if (shake.head.length > 0) socket.write(shake.head);
    if (clientHead.length > 0) up.write(clientHead);
    tunnels.add(socket);
    const idleMs = upstream.options.bodyMs;
    const teardown = () => {
      tunnels.delete(socket);
      socket.destroy();
      up.destroy();
    };
    for (const s of [socket, up]) {
      if (s instanceof Socket) s.setTimeout(idleMs, teardown);
      s.on('error', teardown);
      s.on('close', teardown);
    }
    socket.pipe(up);
    up.pipe(socket);
  };

  return {
    isWebSocketUpgrade: (req) => single(req.headers.upgrade)?.toLowerCase() === 'websocket',
    open: () => tunnels.size,
    closeAll: () => {
      for (const s of tunnels) s.destroy();
      tunnels.clear();
    },
    handleUpgrade: (req, socket, clientHead) => {
      const started = process.hrtime.bigint();
      const runtime = options.runtime();
      const peerIp = canonicalIp(req.socket.remoteAddress ?? '');
      const correlationId =
        acceptCorrelationId(peerIp, req.headers[runtime.correlationHeader], runtime.trusted) ?? randomUUID();
      const clientIp = deriveClientIp(peerIp, req.headers, runtime.trusted);
      let op: CompiledOperation | undefined;
      socket.on('error', (err) => {
        logger.debug({ event: 'client-error', correlationId, error: describeError(err) }, 'websocket error');
      });
      upgrade(req, socket, clientHead, runtime, { correlationId, clientIp, peerIp }, (o) => {
        op = o;
      }).then(
        () => {
          accessLine(req, correlationId, clientIp, op, 101, started);
        },
        (err: unknown) => {
          const denial = isDenial(err) ? err : new Denial('internal', 'unexpected-error', { cause: err });
          if (denial.status >= 500) {
            logger.warn(
              {
                event: 'request-failed',
                correlationId,
                reason: denial.reason,
                error: describeError(denial.cause ?? err),
              },
              'request failed',
            );
          }
          refuse(socket, denial, correlationId, runtime.correlationHeader);
          accessLine(req, correlationId, clientIp, op, denial.status, started, denial.reason);
        },
      );
    },
  };
}
