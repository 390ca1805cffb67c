/**
 * The pipeline: every step of a request, top to bottom, with the exit at each step. The front
 * door (src/server/front-door.ts) builds one {@link Exchange} per request (correlation id,
 * client address, the runtime in force) and calls one of the three entries below; nothing else
 * decides what happens to a request.
 *
 *   serve (HTTP/1.1 and HTTP/2)             serveUpgrade (WebSocket)        serveAuthorizationServer
 *   ─────────────────────────────           ────────────────────────        ────────────────────────
 *   door: shutting down? shed load?         same                            same
 *   door: HTTP version, one Host of ours    same                            same
 *   door: header block within limit        same                            same
 *   authorization-server path? ──────────────────────────────────────────► its rate limit, then
 *                                                                          oidc-provider answers
 *   route: normalise target, match          handshake well-formed,
 *          404 / 405+Allow / CORS preflight  route (GET, declared WS), Origin
 *   limits: declared length, body ≤ limit
 *   request stages (compile.ts order):      same request stages
 *     deprecation, cors, csrf, rate-limit,
 *     authenticate, rate-limit, authorize,
 *     validate — any may answer or refuse
 *   upstream: proxy (or idempotency+proxy)  circuit, upstream handshake, 101, tunnel
 *   response stages: filter, deprecation
 *   send: security headers, correlation id, one write
 *
 * Every refusal, on every entry, leaves through {@link refuse}: one RFC 9457 problem with the
 * correlation id, and {@link finish}: one record for the observer (one audit event, one metric,
 * naming the stage that refused) and one access-log line.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { Http2ServerRequest, Http2ServerResponse } from 'node:http2';
import type { Duplex, Readable } from 'node:stream';
import type { DetailedPeerCertificate, TLSSocket } from 'node:tls';
import type { Logger } from '../log/index.ts';
import { describeError } from '../log/index.ts';
import { UNAVAILABLE_RETRY_AFTER_SECONDS, isDependencyUnavailable } from '../store/unavailable.ts';
import { runStages } from './chain.ts';
import type { CompiledOperation, Runtime } from './compile.ts';
import type {
  DoorKind,
  GatewayRequest,
  OperationInfo,
  Principal,
  PrivacyClaims,
  RequestRecord,
  StageName,
  StageResponse,
} from './context.ts';
import { acceptCorrelationId, canonicalIp, deriveClientIp } from './forwarded.ts';
import { normalizeTarget } from './path.ts';
import { checkRequest } from './strict-http.ts';
import type { NormalizedTarget } from './path.ts';
import { Denial, isDenial, problemBody } from './problems.ts';
import { REVEALING_HEADERS, SECURITY_HEADERS, securityHeaderObject } from './stages/headers/index.ts';
import { checkHandshake, openUpstream, rawHead } from './websocket.ts';
import type { Tunnels } from './websocket.ts';

export type DoorRequest = IncomingMessage | Http2ServerRequest;
export type DoorResponse = ServerResponse | Http2ServerResponse;

/** What the pipeline does with a response, HTTP/1.1 or HTTP/2 alike. */
interface ResponseWriter {
  readonly headersSent: boolean;
  writeHead(status: number, headers: OutgoingHttpHeaders): unknown;
  // Two signatures on purpose: the HTTP/2 response's `end()` overloads match only these.
  end(): unknown;
  // eslint-disable-next-line @typescript-eslint/unified-signatures
  end(body: string | Buffer): unknown;
  destroy(): unknown;
}

/** The embedded authorization server, as the door sees it (src/oauth/provider.ts). */
export interface AuthorizationServerDoor {
  handles(pathname: string): boolean;
  handle(
    req: DoorRequest,
    res: DoorResponse,
    context: { readonly clientIp: string; readonly correlationId: string },
  ): Promise<void>;
}

export interface PipelineOptions {
  readonly logger: Logger;
  readonly accessLog: boolean;
  /** One record per request (src/server/observe.ts): audit event and metrics. */
  readonly observe?: ((record: RequestRecord) => void) | undefined;
  /** Load shedding: throws a 503 Denial when the process is saturated. */
  readonly shed: () => void;
  /** Shutdown began: HTTP/1.1 responses close their connection. */
  readonly closing: () => boolean;
  /** The listener is closing: new requests are refused with 503. */
  readonly closed: () => boolean;
  readonly authorizationServer?: AuthorizationServerDoor | undefined;
  /** `authorization-server`: serve only the authorization server's paths. */
  readonly role: 'all' | 'gateway' | 'authorization-server';
  readonly tunnels: Tunnels;
}

const NO_PARAMS: Readonly<Record<string, string>> = Object.freeze({});
const UNROUTED_TARGET: NormalizedTarget = Object.freeze({ path: '', segments: [], query: '' });
const UNROUTED: OperationInfo = Object.freeze({
  api: Object.freeze({ name: '', basePath: '' }),
  method: '',
  template: '',
  operationId: undefined,
  security: [],
  protected: false,
});
/** Bytes the HTTP/1.1 parser counts per header line beyond name and value (": " and CRLF). */
const HEADER_OVERHEAD = 4;
const REVEALING: ReadonlySet<string> = new Set(REVEALING_HEADERS);
const SECURITY_ENTRIES = Object.entries(SECURITY_HEADERS);
/** The security headers of every refusal (errors are never cacheable). */
const ERROR_HEADERS: Readonly<OutgoingHttpHeaders> = securityHeaderObject({
  authenticated: true,
  error: true,
});
/** What the authorization server's answers carry (they hold credentials: never cacheable). */
const AS_HEADERS = Object.entries(securityHeaderObject({ authenticated: true, error: false }));

/**
 * One request in flight: the typed context every stage receives ({@link GatewayRequest}) and
 * the record the observers get ({@link RequestRecord}). Built once by the front door; every field
 * exists from the start (one hidden class), and no per-request closure is created.
 */
export class Exchange implements GatewayRequest, RequestRecord {
  door: DoorKind;
  readonly correlationId: string;
  readonly method: string;
  target: NormalizedTarget = UNROUTED_TARGET;
  readonly headers: IncomingHttpHeaders;
  readonly peerIp: string;
  readonly clientIp: string;
  operation: OperationInfo = UNROUTED;
  params: Readonly<Record<string, string>> = NO_PARAMS;
  body: Buffer | undefined = undefined;
  forwardQuery: string | undefined = undefined;
  credentialPresented = false;
  principal: Principal | undefined = undefined;
  privacy: PrivacyClaims | undefined = undefined;
  readonly responseHeaders: Record<string, string> = {};
  stage: StageName | undefined = undefined;
  /** The compiled operation, once matched. */
  op: CompiledOperation | undefined = undefined;
  denial: Denial | undefined = undefined;
  status = 0;
  durationMs = 0;
  /** Issue 13: response body bytes, for the audit event (`http.response.body.bytes`). */
  responseBytes: number | undefined = undefined;
  readonly rawPath: string;
  readonly runtime: Runtime;
  readonly raw: DoorRequest;
  /** The response (HTTP) or the socket (WebSocket upgrade). */
  readonly res: DoorResponse | undefined;
  readonly socket: Duplex | undefined;
  readonly started: number;

  constructor(
    door: DoorKind,
    raw: DoorRequest,
    runtime: Runtime,
    res: DoorResponse | undefined,
    socket: Duplex | undefined,
  ) {
    this.started = performance.now();
    this.door = door;
    this.raw = raw;
    this.runtime = runtime;
    this.res = res;
    this.socket = socket;
    this.method = raw.method ?? 'GET';
    this.headers = raw.headers;
    const peerIp = canonicalIp(raw.socket.remoteAddress ?? '');
    this.peerIp = peerIp;
    this.clientIp = deriveClientIp(peerIp, raw.headers, runtime.trusted);
    this.correlationId =
      acceptCorrelationId(peerIp, raw.headers[runtime.correlationHeader], runtime.trusted) ?? randomUUID();
    const url = raw.url ?? '/';
    const q = url.indexOf('?');
    this.rawPath = q < 0 ? url : url.slice(0, q);
  }

  /** The client certificate of this TLS connection (HTTP/1.1 or HTTP/2), if any. */
  peerCertificate(): DetailedPeerCertificate | undefined {
    const raw = this.raw;
    const socket = (
      raw.httpVersionMajor === 2 ? (raw as Http2ServerRequest).stream.session?.socket : raw.socket
    ) as TLSSocket | undefined;
    const cert = socket?.getPeerCertificate(true);
    return cert === undefined || Object.keys(cert).length === 0 ? undefined : cert;
  }
}

function headerBytes(raw: readonly string[]): number {
  let total = 0;
  for (const part of raw) total += Buffer.byteLength(part) + HEADER_OVERHEAD / 2;
  return total;
}

/** Whether the request carries a body to read (as Fastify decided: never for GET and HEAD). */
function hasBody(raw: DoorRequest): boolean {
  if (raw.method === 'GET' || raw.method === 'HEAD') return false;
  const h = raw.headers;
  const length = h['content-length'];
  return (
    h['transfer-encoding'] !== undefined ||
    (length !== undefined && length !== '0') ||
    (h['content-type'] !== undefined && raw.httpVersionMajor === 2)
  );
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

/** Any failure as a typed refusal: a Denial as it is, everything else generic. */
export function toDenial(err: unknown): Denial {
  if (isDenial(err)) return err;
  if ((err as { code?: unknown } | undefined)?.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
    return new Denial('request-timeout', 'request-timeout', { cause: err });
  }
  if (isDependencyUnavailable(err)) {
    // The store or Redis is unreachable: fail closed, and say when to try again.
    return new Denial('unavailable', 'dependency-unavailable', {
      cause: err,
      headers: { 'retry-after': String(UNAVAILABLE_RETRY_AFTER_SECONDS) },
    });
  }
  return new Denial('internal', 'unexpected-error', { cause: err });
}

export interface Pipeline {
  /** HTTP/1.1 and HTTP/2 requests. */
  serve(ex: Exchange): Promise<void>;
  /** WebSocket upgrade requests (HTTP/1.1). */
  serveUpgrade(ex: Exchange, head: Buffer): Promise<void>;
}

export function createPipeline(options: PipelineOptions): Pipeline {
  const { logger, observe, tunnels } = options;
  const as = options.authorizationServer;
  const asOnly = options.role === 'authorization-server';

  /** The steps every door shares before routing. */
  function door(ex: Exchange): void {
    ex.stage = 'load-shedding';
    if (options.closed()) throw new Denial('unavailable', 'shutting-down');
    options.shed();
    // Strict framing and Host: one version, one Host of ours (strict-http.ts).
    ex.stage = 'framing';
    const framing = checkRequest(ex.raw, ex.runtime.hosts);
    if (framing !== undefined) throw framing;
    ex.stage = 'limits';
    if (headerBytes(ex.raw.rawHeaders) > ex.runtime.limits.headerBytes) {
      throw new Denial('headers-too-large', 'header-block-too-large');
    }
  }

  /** Routing: the target normalised once, the precompiled route table, 404 / 405 / preflight. */
  function route(ex: Exchange, res: DoorResponse): CompiledOperation | undefined {
    ex.stage = 'route';
    const runtime = ex.runtime;
    const target = normalizeTarget(ex.raw.url ?? '/', runtime.limits.urlBytes);
    ex.target = target;
    const match = runtime.routes.match(ex.method, target.segments);
    if (match.kind === 'not-found') throw new Denial('not-found', 'undeclared-path');
    if (match.kind === 'method-not-allowed') {
      const h = ex.headers;
      if (
        ex.method === 'OPTIONS' &&
        h.origin !== undefined &&
        h['access-control-request-method'] !== undefined
      ) {
        // A CORS preflight for a declared path: any operation of the path names the API's policy.
        ex.stage = 'cors';
        const probe = runtime.routes.match(match.allow[0] ?? '', target.segments);
        const cors = probe.kind === 'found' ? probe.data.api.cors : null;
        if (!cors) throw new Denial('origin-not-allowed', 'cors-not-configured');
        send(ex, res, cors.preflight(h, match.allow));
        return undefined;
      }
      throw new Denial('method-not-allowed', 'undeclared-method', {
        headers: { allow: match.allow.join(', ') },
      });
    }
    const op = match.data;
    ex.op = op;
    ex.operation = op;
    ex.params = match.params;
    ex.credentialPresented = ex.headers.authorization !== undefined || ex.headers.cookie !== undefined;
    return op;
  }

  /** HTTP/1.1 and HTTP/2: the whole request, top to bottom. */
  async function serve(ex: Exchange): Promise<void> {
    const res = ex.res as DoorResponse;
    try {
      // 1. The door: shutdown, load shedding, header block size.
      door(ex);
      // 2. The authorization server's paths leave here for their own server.
      if (as !== undefined && as.handles(ex.rawPath)) {
        await serveAuthorizationServer(ex, as, res);
        return;
      }
      if (asOnly) {
        ex.stage = 'route';
        throw new Denial('not-found', 'not-authorization-server-path');
      }
      // 3. Route: 404, 405 with Allow, or the CORS preflight answered here.
      const op = route(ex, res);
      if (op === undefined) return;
      // 4. Body: a declared length over the limit is refused unread; a longer stream at the limit.
      ex.stage = 'limits';
      const limit = ex.runtime.limits.bodyBytes;
      const declared = ex.headers['content-length'];
      if (declared !== undefined && Number(declared) > limit) {
        throw new Denial('payload-too-large', 'declared-length-too-large');
      }
      if (hasBody(ex.raw)) {
        const body = await readBody(ex.raw, limit);
        if (body.length > 0) ex.body = body;
      }
      // 5. Request stages: each passes, answers (the chain stops) or refuses.
      let answer = await runStages(op.requestStages, ex);
      // 6. The upstream call.
      if (answer === undefined) {
        ex.stage = op.upstream.name;
        answer = await op.upstream.run(ex);
        if (answer === undefined) throw new Error('the upstream step did not answer');
      }
      // 7. Response stages, in order.
      ex.stage = 'response';
      for (const stage of op.responseStages) answer = await stage(ex, answer);
      // 8. One write: status, headers, body.
      send(ex, res, answer);
    } catch (err) {
      refuse(ex, err);
    }
  }

  /** Writes an answer: its headers, the stages' headers, security headers, correlation id. */
  function send(ex: Exchange, response: DoorResponse, answer: StageResponse): void {
    const res: ResponseWriter = response;
    const status = answer.status;
    const error = status >= 400;
    const strict = error || ex.credentialPresented || ex.operation.protected;
    const out: OutgoingHttpHeaders = {};
    const given = answer.headers;
    let cacheable = false;
    for (const name in given) {
      if (REVEALING.has(name)) continue;
      if (strict && (name === 'expires' || name === 'etag')) continue;
      if (name === 'cache-control') {
        if (strict) continue;
        cacheable = true;
      }
      out[name] = given[name] as string | string[];
    }
    const added = ex.responseHeaders;
    for (const name in added) out[name] = added[name];
    for (const [name, value] of SECURITY_ENTRIES) out[name] = value;
    if (!cacheable) {
      out['cache-control'] = 'no-store';
      delete out.expires;
    }
    out[ex.runtime.correlationHeader] = ex.correlationId;
    const http1 = ex.raw.httpVersionMajor === 1;
    if (http1 && options.closing()) out.connection = 'close';
    const body = answer.body;
    if (body === undefined || typeof body === 'string' || Buffer.isBuffer(body)) {
      // Lengths as Fastify set them: the actual size, except a HEAD answer's declared one.
      if (body === undefined) {
        if (status >= 200 && status !== 204 && status !== 304 && ex.method !== 'HEAD') {
          out['content-length'] = '0';
        }
      } else {
        const length = typeof body === 'string' ? Buffer.byteLength(body) : body.length;
        if (out['content-type'] === undefined) {
          out['content-type'] =
            typeof body === 'string' ? 'text/plain; charset=utf-8' : 'application/octet-stream';
        }
        if (ex.method !== 'HEAD' || out['content-length'] === undefined)
          out['content-length'] = String(length);
      }
      res.writeHead(status, out);
      ex.responseBytes = body === undefined || ex.method === 'HEAD' ? 0 : Number(out['content-length']);
      if (body === undefined) res.end();
      else res.end(body);
      answer.onDone?.();
      finish(ex, status);
      return;
    }
    // A streamed body (larger than the proxy buffers): observed when the response closes.
    res.writeHead(status, out);
    response.once('close', () => {
      answer.onDone?.();
      finish(ex, status);
    });
    body.once('error', () => {
      // The response cannot be completed: abort it so the client does not take it as whole.
      body.unpipe();
      res.destroy();
    });
    ex.responseBytes = 0;
    body.on('data', (chunk: Buffer) => {
      (ex.responseBytes as number) += chunk.length;
    });
    body.pipe(response as NodeJS.WritableStream);
  }

  /** The one denial path: every refusal and failure leaves as an RFC 9457 problem. */
  function refuse(ex: Exchange, err: unknown): void {
    const status = writeProblem(ex, err);
    finish(ex, status);
  }

  function writeProblem(ex: Exchange, err: unknown): number {
    const denial = toDenial(err);
    ex.denial = denial;
    ex.stage ??= 'route';
    if (denial.status >= 500) {
      logger.warn(
        {
          event: 'request-failed',
          correlationId: ex.correlationId,
          reason: denial.reason,
          stage: ex.stage,
          error: describeError(denial.cause ?? err),
        },
        'request failed',
      );
    }
    const body = JSON.stringify(problemBody(denial.code, ex.correlationId, denial.errors));
    const headers: OutgoingHttpHeaders = { ...ERROR_HEADERS, ...denial.headers };
    headers['content-type'] = 'application/problem+json';
    headers['content-length'] = String(Buffer.byteLength(body));
    headers[ex.runtime.correlationHeader] = ex.correlationId;
    ex.responseBytes = Buffer.byteLength(body);
    const res: ResponseWriter | undefined = ex.res;
    if (res === undefined) {
      // Before a WebSocket upgrade: a plain HTTP/1.1 answer on the socket, then it is closed.
      const socket = ex.socket as Duplex;
      if (!socket.writable) {
        socket.destroy();
        return denial.status;
      }
      headers.connection = 'close';
      socket.end(rawHead(denial.status, headers) + body);
      return denial.status;
    }
    if (res.headersSent) {
      res.destroy();
      return denial.status;
    }
    if (
      ex.raw.httpVersionMajor === 1 &&
      (options.closing() || denial.code === 'payload-too-large' || denial.code === 'headers-too-large')
    ) {
      headers.connection = 'close';
    }
    res.writeHead(denial.status, headers);
    res.end(body);
    return denial.status;
  }

  /** One record per request for the observers, and one access-log line. */
  function finish(ex: Exchange, status: number): void {
    ex.status = status;
    ex.durationMs = performance.now() - ex.started;
    observe?.(ex);
    if (options.accessLog) {
      const op = ex.op;
      logger.info(
        {
          event: 'access',
          correlationId: ex.correlationId,
          method: ex.method,
          api: op?.api.name ?? null,
          route: ex.door === 'authorization-server' ? asRoute(ex.rawPath) : (op?.template ?? null),
          status,
          durationMs: ex.durationMs,
          clientIp: ex.clientIp,
          httpVersion: ex.raw.httpVersion,
          ...(ex.door === 'websocket' ? { websocket: true } : {}),
          ...(ex.denial === undefined ? {} : { reason: ex.denial.reason, stage: ex.stage }),
        },
        'request',
      );
    }
  }

  /**
   * The authorization server's paths: its own per-IP limits (token endpoint, login form), the
   * security headers and correlation id set first, then oidc-provider answers. Observed when
   * the response closes, like every other request.
   */
  async function serveAuthorizationServer(
    ex: Exchange,
    server: AuthorizationServerDoor,
    res: DoorResponse,
  ): Promise<void> {
    ex.stage = 'authorization-server';
    ex.door = 'authorization-server';
    const limited = await ex.runtime.rateLimits.authorizationServer(
      ex.method,
      ex.rawPath,
      ex.clientIp,
      ex.correlationId,
    );
    for (const name in limited) res.setHeader(name, limited[name] as string);
    for (const [name, value] of AS_HEADERS) if (value !== undefined) res.setHeader(name, value);
    res.setHeader(ex.runtime.correlationHeader, ex.correlationId);
    if (ex.raw.httpVersionMajor === 1 && options.closing()) res.setHeader('connection', 'close');
    authorizationServerRequests.set(res, ex);
    res.once('close', onAuthorizationServerClosed);
    try {
      await server.handle(ex.raw, res, { clientIp: ex.clientIp, correlationId: ex.correlationId });
    } catch (err) {
      writeProblem(ex, err);
    }
  }
  const authorizationServerRequests = new WeakMap<object, Exchange>();
  function onAuthorizationServerClosed(this: DoorResponse): void {
    const ex = authorizationServerRequests.get(this);
    if (ex === undefined) return;
    authorizationServerRequests.delete(this);
    // Issue 13: the declared body size of the authorization server's answer (Koa sets it).
    const length = Number(this.getHeader('content-length'));
    if (Number.isSafeInteger(length) && length >= 0) ex.responseBytes = length;
    finish(ex, this.statusCode);
  }

  /** A WebSocket upgrade: the same door and request stages, then the upstream handshake. */
  async function serveUpgrade(ex: Exchange, head: Buffer): Promise<void> {
    const socket = ex.socket as Duplex;
    try {
      door(ex);
      ex.stage = 'websocket';
      checkHandshake(ex.raw as IncomingMessage);
      ex.stage = 'route';
      const runtime = ex.runtime;
      const target = normalizeTarget(ex.raw.url ?? '/', runtime.limits.urlBytes);
      ex.target = target;
      const match = runtime.routes.match('GET', target.segments);
      if (match.kind !== 'found' || !match.data.websocket) {
        throw new Denial('not-found', 'websocket-not-declared');
      }
      const op = match.data;
      ex.op = op;
      ex.operation = op;
      ex.params = match.params;
      ex.credentialPresented = ex.headers.authorization !== undefined || ex.headers.cookie !== undefined;
      // Browsers always send Origin on a WebSocket handshake; it must be authorised server-side.
      ex.stage = 'cors';
      if (ex.headers.origin === undefined) throw new Denial('origin-not-allowed', 'websocket-origin-missing');
      // The same request stages as HTTP; the upstream call is the handshake below.
      const answered = await runStages(op.requestStages, ex);
      if (answered !== undefined) throw new Denial('bad-request', 'websocket-stage-answered');
      ex.stage = 'websocket';
      const shake = await openUpstream(ex, op, runtime);
      const spliced = tunnels.splice(socket, head, shake, op, {
        header: runtime.correlationHeader,
        id: ex.correlationId,
      });
      if (spliced) finish(ex, 101);
    } catch (err) {
      refuse(ex, err);
    }
  }

  return { serve, serveUpgrade };
}

/** The access-log route of an authorization-server path: its templates, never a concrete uid. */
function asRoute(path: string): string {
  return `oauth:${path.startsWith('/interaction/') ? '/interaction/{uid}' : path.startsWith('/auth/') ? '/auth/{uid}' : path}`;
}
