/**
 * The public listener: HTTPS with HTTP/2 and HTTP/1.1 (ALPN) on Fastify, one catch-all route
 * that hands each request to the route table and stage chain of the current runtime, and the
 * single denial path that turns every refusal or failure into an RFC 9457 problem response.
 *
 * Per request, in order (each step may end the request with a problem):
 *   header-size check → target normalisation → route match (404 / 405) → CORS preflight →
 *   body read within the limit → the operation's chain (cors → authenticate → proxy) →
 *   security headers on whatever is sent → one access-log line.
 */
import { UNAVAILABLE_RETRY_AFTER_SECONDS, isDependencyUnavailable } from '../store/unavailable.ts';
import { randomUUID } from 'node:crypto';
import { STATUS_CODES } from 'node:http';
import type { Http2SecureServer, Http2ServerRequest, Http2ServerResponse } from 'node:http2';
import type { Socket } from 'node:net';
import type { DetailedPeerCertificate, TLSSocket } from 'node:tls';
import type { Readable } from 'node:stream';
import { fastify } from 'fastify';
import type {
  FastifyError,
  FastifyInstance,
  FastifyReply,
  FastifyRequest,
  RouteGenericInterface,
} from 'fastify';
import type { GatewayRequest } from '../gateway/chain.ts';
import { runChain } from '../gateway/chain.ts';
import type { Runtime } from '../gateway/compile.ts';
import { acceptCorrelationId, canonicalIp, deriveClientIp } from '../gateway/forwarded.ts';
import { normalizeTarget } from '../gateway/path.ts';
import { Denial, isDenial, problemBody } from '../gateway/problems.ts';
import { applySecurityHeaders, securityHeaderObject } from '../gateway/stages/headers/index.ts';
import type { AuthorizationServer } from '../oauth/provider.ts';
import type { Logger } from './logging.ts';
import type { Observer } from './observe.ts';
import { describeError } from './logging.ts';
import { hardenTlsServer, secureContextOptions } from './tls.ts';
import { createPressureMonitor } from '../gateway/resilience/load-shedding.ts';
import { createWebSocketProxy } from '../gateway/websocket.ts';
import { allowedHosts, checkRequest } from './strict-http.ts';
import type { WebSocketProxy } from '../gateway/websocket.ts';

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
  readonly authorizationServer?: AuthorizationServer;
  /** `authorization-server`: serve only the authorization server's paths. Default `all`. */
  readonly role?: 'all' | 'gateway' | 'authorization-server';
  /** Issue 12: TLS handshake deadline from accept (`gateway.connections.handshakeTimeoutMs`). */
  readonly handshakeTimeoutMs?: number;
}

/** What the gateway knows about a request; set in onRequest, read by later hooks. */
interface RequestState {
  correlationId: string;
  clientIp: string;
  started: bigint;
  runtime: Runtime;
  gw: GatewayRequest | undefined;
  denial: Denial | undefined;
  /** Served by the authorization server (it logs and observes its own responses). */
  hijacked?: boolean;
}

declare module 'fastify' {
  interface FastifyRequest {
    portcullis: RequestState | null;
  }
}

export type GatewayApp = FastifyInstance<Http2SecureServer, Http2ServerRequest, Http2ServerResponse>;
type GwRequest = FastifyRequest<RouteGenericInterface, Http2SecureServer, Http2ServerRequest>;
type GwReply = FastifyReply<
  RouteGenericInterface,
  Http2SecureServer,
  Http2ServerRequest,
  Http2ServerResponse
>;

const ROUTED_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'TRACE'];
/** Headers the node parser counts beyond names and values (": " and CRLF). */
const HEADER_OVERHEAD = 4;

function headerBytes(raw: readonly string[]): number {
  let total = 0;
  for (const part of raw) total += Buffer.byteLength(part) + HEADER_OVERHEAD / 2;
  return total;
}

function toDenial(err: unknown): Denial {
  if (isDenial(err)) return err;
  const fe = err as Partial<FastifyError>;
  switch (fe.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new Denial('payload-too-large', 'body-too-large', { cause: err });
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
    case 'FST_ERR_CTP_EMPTY_TYPE':
      return new Denial('bad-request', 'bad-body-framing', { cause: err });
    case 'FST_ERR_BAD_URL':
    case 'FST_ERR_ASYNC_CONSTRAINT':
      return new Denial('invalid-path', 'bad-url', { cause: err });
    default:
      break;
  }
  if (fe.statusCode === 408 || (err as { code?: string }).code === 'ERR_HTTP_REQUEST_TIMEOUT') {
    return new Denial('request-timeout', 'request-timeout', { cause: err });
  }
  if (fe.statusCode === 400) return new Denial('bad-request', 'malformed-request', { cause: err });
  if (isDependencyUnavailable(err)) {
    // The store or Redis is unreachable: fail closed, and say when to try again.
    return new Denial('unavailable', 'dependency-unavailable', {
      cause: err,
      headers: { 'retry-after': String(UNAVAILABLE_RETRY_AFTER_SECONDS) },
    });
  }
  return new Denial('internal', 'unexpected-error', { cause: err });
}

/** The client certificate of the request's TLS connection (HTTP/1.1 or HTTP/2), if any. */
function peerCertificateOf(raw: Http2ServerRequest): DetailedPeerCertificate | undefined {
  const socket = (raw.httpVersionMajor === 2 ? raw.stream.session?.socket : raw.socket) as
    TLSSocket | undefined;
  const cert = socket?.getPeerCertificate(true);
  return cert === undefined || Object.keys(cert).length === 0 ? undefined : cert;
}

/** Reads the body up to `limit` bytes; more is a 413 before it is all in memory. */
function readBody(payload: Readable, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        cleanup();
        payload.resume(); // discard the rest without buffering it
        reject(new Denial('payload-too-large', 'body-too-large'));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => {
      cleanup();
      resolve(Buffer.concat(chunks, size));
    };
    const onError = (err: Error) => {
      cleanup();
      reject(new Denial('bad-request', 'body-aborted', { cause: err }));
    };
    const cleanup = () => {
      payload.off('data', onData);
      payload.off('end', onEnd);
      payload.off('error', onError);
    };
    payload.on('data', onData);
    payload.on('end', onEnd);
    payload.on('error', onError);
  });
}

/** A problem response written straight to a socket, for errors before HTTP parsing finished. */
function rawProblem(socket: Socket, status: 400 | 408 | 431, correlationHeader: string): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const id = randomUUID();
  const code = status === 431 ? 'headers-too-large' : status === 408 ? 'request-timeout' : 'bad-request';
  const body = JSON.stringify(problemBody(code, id));
  const headers = {
    ...securityHeaderObject({ authenticated: false, error: true }),
    'content-type': 'application/problem+json',
    'content-length': String(Buffer.byteLength(body)),
    [correlationHeader]: id,
    connection: 'close',
  };
  const head = Object.entries(headers)
    .map(([k, v]) => `${k}: ${String(v)}`)
    .join('\r\n');
  socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\n${head}\r\n\r\n${body}`);
  // Issue 12: a client that never reads the answer must not keep the socket open.
  setTimeout(() => socket.destroy(), 5_000).unref();
}

/** The path of a request target, without the query (as the authorization server routes it). */
function pathOf(url: string | undefined): string {
  const target = url ?? '/';
  const q = target.indexOf('?');
  return q < 0 ? target : target.slice(0, q);
}

export function createGatewayServer(options: GatewayServerOptions): GatewayApp {
  const { holder, logger } = options;
  // Issue 12: the hosts each runtime answers for, computed once per configuration.
  const hostSets = new WeakMap<Runtime, ReadonlySet<string>>();
  const hostsOf = (runtime: Runtime): ReadonlySet<string> => {
    let hosts = hostSets.get(runtime);
    if (hosts === undefined) {
      const gw = runtime.loaded.config.gateway;
      hosts = allowedHosts(gw.publicUrl, gw.hostAliases);
      hostSets.set(runtime, hosts);
    }
    return hosts;
  };

  /**
   * Hands a request to the authorization server (hijacked from Fastify): the security headers
   * and the correlation id are set first, an unexpected failure becomes a generic problem, and
   * the request gets its access-log line like any other.
   */
  async function serveAuthorizationServer(
    as: AuthorizationServer,
    raw: Http2ServerRequest,
    res: Http2ServerResponse,
    state: RequestState,
  ): Promise<void> {
    const correlationHeader = state.runtime.correlationHeader;
    for (const [name, value] of Object.entries(securityHeaderObject({ authenticated: true, error: false }))) {
      if (value !== undefined) res.setHeader(name, value);
    }
    res.setHeader(correlationHeader, state.correlationId);
    if (holder.closing === true && raw.httpVersionMajor === 1) res.setHeader('connection', 'close');
    const observer = options.observer;
    if (observer !== undefined) {
      res.once('close', () => {
        observer.authorizationServerRequest({
          method: raw.method,
          path: pathOf(raw.url),
          status: res.statusCode,
          durationMs: Number(process.hrtime.bigint() - state.started) / 1e6,
        });
      });
    }
    if (options.accessLog) {
      res.once('close', () => {
        logger.info(
          {
            event: 'access',
            correlationId: state.correlationId,
            method: raw.method,
            api: null,
            route: `oauth:${pathOf(raw.url).startsWith('/interaction/') ? '/interaction/{uid}' : pathOf(raw.url).startsWith('/auth/') ? '/auth/{uid}' : pathOf(raw.url)}`,
            status: res.statusCode,
            durationMs: Number(process.hrtime.bigint() - state.started) / 1e6,
            clientIp: state.clientIp,
            httpVersion: raw.httpVersion,
          },
          'request',
        );
      });
    }
    try {
      await as.handle(raw, res, { clientIp: state.clientIp, correlationId: state.correlationId });
    } catch (err) {
      logger.warn(
        {
          event: 'request-failed',
          correlationId: state.correlationId,
          reason: 'authorization-server',
          error: describeError(err),
        },
        'request failed',
      );
      if (res.headersSent) {
        res.destroy();
        return;
      }
      const down = isDependencyUnavailable(err);
      res.statusCode = down ? 503 : 500;
      if (down) res.setHeader('retry-after', String(UNAVAILABLE_RETRY_AFTER_SECONDS));
      res.setHeader('content-type', 'application/problem+json');
      res.end(JSON.stringify(problemBody(down ? 'unavailable' : 'internal', state.correlationId)));
    }
  }

  /** The one denial path: every refusal and failure leaves through here as a problem. */
  function sendProblem(request: GwRequest, reply: GwReply, denial: Denial, original?: unknown) {
    const state = request.portcullis;
    const correlationId = state?.correlationId ?? randomUUID();
    if (state) state.denial = denial;
    if (denial.status >= 500) {
      logger.warn(
        {
          event: 'request-failed',
          correlationId,
          reason: denial.reason,
          error: describeError(denial.cause ?? original),
        },
        'request failed',
      );
    }
    reply.code(denial.status);
    for (const name of Object.keys(reply.getHeaders())) {
      if (!name.startsWith('access-control-') && name !== 'vary') reply.removeHeader(name);
    }
    for (const [name, value] of Object.entries(denial.headers)) reply.header(name, value);
    if (
      (denial.code === 'payload-too-large' || denial.code === 'headers-too-large') &&
      request.raw.httpVersionMajor === 1
    ) {
      reply.header('connection', 'close');
    }
    reply.header('content-type', 'application/problem+json');
    return reply.send(JSON.stringify(problemBody(denial.code, correlationId, denial.errors)));
  }
  const tls = secureContextOptions(options.tls, { alpn: options.http2 ? 'h2+http/1.1' : 'http/1.1' });
  const app: GatewayApp = fastify({
    http2: true,
    https: {
      ...tls,
      allowHTTP1: true,
      handshakeTimeout: options.handshakeTimeoutMs ?? 10_000, // issue 12
      ...(options.clientCertificateCas === undefined
        ? {}
        : { requestCert: true, rejectUnauthorized: false, ca: [...options.clientCertificateCas] }),
      // The configured header limit is enforced exactly in onRequest; these only bound the parser.
      settings: { maxHeaderListSize: 64 * 1024 },
      maxSessionMemory: 10,
    },
    http2SessionTimeout: options.timeouts.keepAliveMs * 12,
    connectionTimeout: options.timeouts.requestMs * 2,
    keepAliveTimeout: options.timeouts.keepAliveMs,
    requestTimeout: options.timeouts.requestMs,
    return503OnClosing: true,
    forceCloseConnections: 'idle',
    exposeHeadRoutes: false,
    bodyLimit: 64 * 1024 * 1024, // the configured limit is enforced per request by readBody
    logger: false,
    requestIdHeader: false,
    genReqId: () => '',
    frameworkErrors: (err, request, reply) => {
      void sendProblem(request, reply, toDenial(err));
    },
    clientErrorHandler: (err: Error & { code?: string }, socket: Socket) => {
      logger.debug({ event: 'client-error', error: describeError(err) }, 'client connection error');
      if (err.code === 'ECONNRESET' || err.code === 'EPIPE') {
        socket.destroy();
        return;
      }
      rawProblem(
        socket,
        err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400,
        holder.current.correlationHeader,
      );
    },
  });
  const server = app.server;
  hardenTlsServer(server);
  // Load shedding (gateway/resilience/load-shedding.ts) and WebSocket upgrades (gateway/websocket.ts).
  const pressure = createPressureMonitor();
  const shed = () => {
    pressure.check(holder.current.loaded.config.gateway.loadShedding);
  };
  const websockets = createWebSocketProxy({
    runtime: () => holder.current,
    logger,
    accessLog: options.accessLog,
    closing: () => holder.closing === true,
    pressure: shed,
  });
  // Only WebSocket upgrades leave the normal request path (Node 24 `shouldUpgradeCallback`).
  const upgradable = server as unknown as { shouldUpgradeCallback: WebSocketProxy['isWebSocketUpgrade'] };
  upgradable.shouldUpgradeCallback = websockets.isWebSocketUpgrade;
  server.on('upgrade', websockets.handleUpgrade);
  // Slow clients: the http/1.1 fallback honours these on the HTTP/2 server object.
  const http1 = server as unknown as {
    headersTimeout: number;
    requestTimeout: number;
    maxHeaderSize: number;
  };
  http1.headersTimeout = options.timeouts.headersMs;
  http1.requestTimeout = options.timeouts.requestMs;
  // The parser's own bound sits at the schema's maximum; the configured limit is checked exactly
  // in onRequest, where the refusal gets a correlation id and an access-log line.
  http1.maxHeaderSize = 64 * 1024;

  app.decorateRequest('portcullis', null);
  app.addHook('preClose', async () => {
    websockets.closeAll();
  });
  app.addHook('onClose', async () => {
    pressure.stop();
  });
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (request: GwRequest, payload: Readable) => {
    const state = request.portcullis;
    return readBody(payload, state?.runtime.limits.bodyBytes ?? 0);
  });

  app.addHook('onRequest', async (request, reply) => {
    const runtime = holder.current;
    const raw = request.raw;
    const peerIp = canonicalIp(raw.socket.remoteAddress ?? '');
    const correlationId =
      acceptCorrelationId(peerIp, raw.headers[runtime.correlationHeader], runtime.trusted) ?? randomUUID();
    const state: RequestState = {
      correlationId,
      clientIp: deriveClientIp(peerIp, raw.headers, runtime.trusted),
      started: process.hrtime.bigint(),
      runtime,
      gw: undefined,
      denial: undefined,
    };
    request.portcullis = state;
    shed();
    // Issue 12: strict framing and Host (src/server/strict-http.ts).
    const framing = checkRequest(raw, hostsOf(runtime));
    if (framing !== undefined) throw framing;

    if (headerBytes(raw.rawHeaders) > runtime.limits.headerBytes) {
      throw new Denial('headers-too-large', 'header-block-too-large');
    }
    const as = options.authorizationServer;
    if (as !== undefined && as.handles(pathOf(raw.url))) {
      // The token endpoint and login form have their own strict per-IP limits (429 is thrown).
      const limited = await runtime.rateLimits.authorizationServer(
        raw.method,
        pathOf(raw.url),
        state.clientIp,
        correlationId,
      );
      reply.hijack();
      state.hijacked = true;
      for (const [name, value] of Object.entries(limited)) reply.raw.setHeader(name, value);
      await serveAuthorizationServer(as, raw, reply.raw, state);
      return reply;
    }
    if (options.role === 'authorization-server')
      throw new Denial('not-found', 'not-authorization-server-path');
    const target = normalizeTarget(raw.url, runtime.limits.urlBytes);
    const method = raw.method;
    const match = runtime.routes.match(method, target.segments);
    if (match.kind === 'not-found') throw new Denial('not-found', 'undeclared-path');
    if (match.kind === 'method-not-allowed') {
      // A CORS preflight for a declared path is answered by the API's CORS policy.
      if (
        method === 'OPTIONS' &&
        raw.headers.origin !== undefined &&
        raw.headers['access-control-request-method'] !== undefined
      ) {
        // Any declared operation of the path tells which API (and so which CORS policy) it is.
        const probe = runtime.routes.match(match.allow[0] ?? '', target.segments);
        const cors = probe.kind === 'found' ? probe.data.api.cors : null;
        if (!cors) throw new Denial('origin-not-allowed', 'cors-not-configured');
        const answer = cors.preflight(raw.headers, match.allow);
        reply.code(answer.status);
        for (const [name, value] of Object.entries(answer.headers)) reply.header(name, value);
        return reply.send();
      }
      throw new Denial('method-not-allowed', 'undeclared-method', {
        headers: { allow: match.allow.join(', ') },
      });
    }
    const declared = raw.headers['content-length'];
    if (declared !== undefined && Number(declared) > runtime.limits.bodyBytes) {
      throw new Denial('payload-too-large', 'declared-length-too-large');
    }
    state.gw = {
      correlationId,
      method,
      target,
      headers: raw.headers,
      peerIp,
      clientIp: state.clientIp,
      operation: match.data,
      params: match.params,
      body: undefined,
      credentialPresented: raw.headers.authorization !== undefined || raw.headers.cookie !== undefined,
      peerCertificate: () => peerCertificateOf(raw),
      responseHeaders: {},
    };
    return undefined;
  });

  const handler = async (request: GwRequest, reply: GwReply) => {
    const state = request.portcullis;
    const gw = state?.gw;
    if (!gw) throw new Denial('internal', 'no-route-state');
    gw.body = Buffer.isBuffer(request.body) && request.body.length > 0 ? request.body : undefined;
    let res = await runChain(gw.operation.chain, gw);
    for (const stage of gw.operation.responseStages) res = await stage(gw, res);
    reply.code(res.status);
    for (const [name, value] of Object.entries(res.headers)) reply.header(name, value);
    for (const [name, value] of Object.entries(gw.responseHeaders)) reply.header(name, value);
    if (res.onDone) {
      const done = res.onDone;
      reply.raw.once('close', done);
    }
    return reply.send(res.body ?? null);
  };
  app.route({ method: ROUTED_METHODS, url: '/', handler });
  app.route({ method: ROUTED_METHODS, url: '/*', handler });

  app.setNotFoundHandler(async () => {
    throw new Denial('not-found', 'unrouted');
  });

  app.setErrorHandler(async (err: unknown, request, reply) =>
    sendProblem(request, reply, toDenial(err), err),
  );

  app.addHook('onSend', async (request, reply, payload) => {
    const state = request.portcullis;
    const gw = state?.gw;
    const correlationHeader = state?.runtime.correlationHeader ?? holder.current.correlationHeader;
    applySecurityHeaders(
      (n, v) => {
        reply.header(n, v);
      },
      (n) => reply.getHeader(n),
      (n) => {
        reply.removeHeader(n);
      },
      {
        authenticated: gw !== undefined && (gw.credentialPresented || gw.operation.protected),
        error: reply.statusCode >= 400,
      },
    );
    if (state) reply.header(correlationHeader, state.correlationId);
    if (holder.closing === true && request.raw.httpVersionMajor === 1) reply.header('connection', 'close');
    return payload;
  });

  const observer = options.observer;
  if (observer !== undefined) {
    app.addHook('onResponse', async (request, reply) => {
      const state = request.portcullis;
      if (!state || state.hijacked === true) return;
      const body = state.gw?.body;
      observer.request({
        correlationId: state.correlationId,
        clientIp: state.clientIp,
        method: request.raw.method,
        status: reply.statusCode,
        durationMs: Number(process.hrtime.bigint() - state.started) / 1e6,
        operation: state.gw?.operation,
        principal: state.gw?.principal,
        denial: state.denial,
        bytesIn: body?.length,
      });
    });
  }
  if (options.accessLog) {
    app.addHook('onResponse', async (request, reply) => {
      const state = request.portcullis;
      if (!state || state.hijacked === true) return;
      const op = state.gw?.operation;
      logger.info(
        {
          event: 'access',
          correlationId: state.correlationId,
          method: request.raw.method,
          api: op?.api.name ?? null,
          route: op?.template ?? null,
          status: reply.statusCode,
          durationMs: Number(process.hrtime.bigint() - state.started) / 1e6,
          clientIp: state.clientIp,
          httpVersion: request.raw.httpVersion,
          ...(state.denial ? { reason: state.denial.reason } : {}),
        },
        'request',
      );
    });
  }
  return app;
}
