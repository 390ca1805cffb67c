/**
 * WebSocket proxying (seed 001 B.12.7), for GET operations that declare
 * `x-portcullis-websocket: true`. The gateway listens only on TLS, so every WebSocket is `wss://`.
 *
 * An HTTP/1.1 upgrade request enters through the same front door and pipeline as every other
 * request (src/gateway/pipeline.ts `serveUpgrade`): load shedding → header size → a well-formed
 * WebSocket handshake ({@link checkHandshake}) → route match (an undeclared path, or an operation
 * that does not declare WebSockets, is 404) → an `Origin` header is required → the operation's
 * request stages: CORS (the Origin must be in the API's `cors.allowOrigins`; an API without CORS
 * refuses every Origin), CSRF, the same authentication and authorization as HTTP, validation,
 * limits → the circuit must not be open → the upstream handshake ({@link openUpstream}: `ws://`
 * to a loopback upstream, `wss://` otherwise, the same header rules as the proxy: credentials and
 * forwarding headers dropped, the gateway's own added) → `101` to the client, then the two
 * sockets are piped to each other ({@link Tunnels}). Any refusal before the upgrade is a plain
 * HTTP problem response (RFC 9457) from the one denial path, with its audit event and metric,
 * and the connection is closed.
 *
 * Out of scope: WebSockets over HTTP/2 (RFC 8441 extended CONNECT); the listener does not offer
 * it, so browsers open an HTTP/1.1 connection for WebSockets.
 */
import { STATUS_CODES, request as httpRequest } from 'node:http';
import type { ClientRequest, IncomingMessage, OutgoingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { GatewayRequest } from './context.ts';
import type { CompiledOperation, Runtime } from './compile.ts';
import { Denial } from './problems.ts';
import { upstreamHeaders } from './stages/proxy/index.ts';

const KEY_SHAPE = /^[A-Za-z0-9+/]{22}==$/;
/** Response headers of the upstream's 101 passed to the client. */
const PASSED_101 = ['sec-websocket-accept', 'sec-websocket-protocol', 'sec-websocket-extensions'];
function single(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? undefined : value;
}

/** An HTTP/1.1 response head written straight to a socket (101, or a refusal before the upgrade). */
export function rawHead(status: number, headers: OutgoingHttpHeaders): string {
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

export interface Handshake {
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

/** Which upgrade requests are WebSocket handshakes (others are plain requests). */
export function isWebSocketUpgrade(req: IncomingMessage): boolean {
  return single(req.headers.upgrade)?.toLowerCase() === 'websocket';
}

/** Refuses anything but a well-formed RFC 6455 opening handshake. */
export function checkHandshake(req: IncomingMessage): void {
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
}

/**
 * The upstream handshake for an accepted request: refused while the upstream's circuit is open;
 * the same header rules as the proxy (credentials and forwarding headers dropped, the gateway's
 * own added, no identity assertion).
 */
export async function openUpstream(
  req: GatewayRequest,
  op: CompiledOperation,
  runtime: Runtime,
): Promise<Handshake> {
  const upstream = op.api.upstream;
  if (upstream.guard.state === 'open') {
    throw new Denial('unavailable', 'circuit-open', {
      headers: { 'retry-after': String(upstream.guard.retryAfterSeconds()) },
    });
  }
  const config = runtime.loaded.config;
  const headers: OutgoingHttpHeaders = upstreamHeaders(
    req.headers,
    req.clientIp,
    req.correlationId,
    {
      basePath: op.api.basePath,
      correlationHeader: runtime.correlationHeader,
      publicHost: new URL(config.gateway.publicUrl).host,
    },
    undefined,
  );
  Reflect.deleteProperty(headers, config.gateway.identity.header);
  headers.connection = 'Upgrade';
  headers.upgrade = 'websocket';
  headers.host = new URL(upstream.origin).host;
  return connectUpstream(
    op,
    upstreamPath(op, req.target.path, req.forwardQuery ?? req.target.query),
    headers,
  );
}

/** The open tunnels of one listener: spliced after a 101, destroyed on shutdown. */
export class Tunnels {
  readonly #open = new Set<Duplex>();

  /** Open tunnels (for tests and metrics). */
  get size(): number {
    return this.#open.size;
  }

  /**
   * Answers `101` to the client with the upstream's accepted subprotocol and extensions, then
   * pipes the two sockets to each other until either closes or stays idle for the upstream's
   * body timeout. Returns false when the client went away during the upstream handshake.
   */
  splice(
    client: Duplex,
    clientHead: Buffer,
    shake: Handshake,
    op: CompiledOperation,
    correlation: { readonly header: string; readonly id: string },
  ): boolean {
    const up = shake.socket;
    if (!client.writable) {
      up.destroy();
      return false;
    }
    const reply: OutgoingHttpHeaders = { upgrade: 'websocket', connection: 'Upgrade' };
    for (const name of PASSED_101) {
      const value = shake.response.headers[name];
      if (value !== undefined) reply[name] = value;
    }
    reply[correlation.header] = correlation.id;
    client.write(rawHead(101, reply));
    if (shake.head.length > 0) client.write(shake.head);
    if (clientHead.length > 0) up.write(clientHead);
    this.#open.add(client);
    const idleMs = op.api.upstream.options.bodyMs;
    const teardown = () => {
      this.#open.delete(client);
      client.destroy();
      up.destroy();
    };
    for (const s of [client, up]) {
      if (s instanceof Socket) s.setTimeout(idleMs, teardown);
      s.on('error', teardown);
      s.on('close', teardown);
    }
    client.pipe(up);
    up.pipe(client);
    return true;
  }

  /** Destroys every open tunnel (shutdown). */
  closeAll(): void {
    for (const s of this.#open) s.destroy();
    this.#open.clear();
  }
}
