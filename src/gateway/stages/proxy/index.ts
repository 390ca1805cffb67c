/**
 * The terminal stage: forwards the request to the API's upstream over a keep-alive undici pool
 * and answers with the upstream response.
 *
 * Requests go upstream only on the canonical path rebuilt from the decoded segments (see
 * path.ts), with hop-by-hop, forwarding and credential headers removed and the gateway's own
 * forwarding headers and correlation id added. Cookies cross only as the operation's contract
 * allows (cookies.ts); upstream `Access-Control-*` headers never reach the client. Upstream 5xx bodies and connection failures never
 * reach the client: they become a generic 502/504 with the cause kept server-side.
 */
import { readFileSync } from 'node:fs';
import type { IncomingHttpHeaders } from 'node:http';
import { Readable } from 'node:stream';
import { Pool, errors as undiciErrors } from 'undici';
import type { Dispatcher } from 'undici';
import { Denial } from '../../problems.ts';
import type { Stage, StageResponse } from '../../chain.ts';
import { HOP_BY_HOP, connectionTokens } from './hop-by-hop.ts';
import type { IdentitySigner } from '../../../tokens/identity.ts';
import type { OperationInfo } from '../../context.ts';
import type { OpenApiDocument } from '../../openapi.ts';
import { cookiePolicies, forwardedCookies, returnedSetCookies } from './cookies.ts';
import type { CookiePolicy } from './cookies.ts';
import { UpstreamGuard } from '../../resilience/guard.ts';
import type { GuardOptions } from '../../resilience/guard.ts';

export interface UpstreamOptions {
  readonly url: string;
  readonly connectMs: number;
  readonly headersMs: number;
  readonly bodyMs: number;
  readonly connections: number;
  /** CA bundle file for an https upstream (else the system roots). */
  readonly caFile?: string | undefined;
  /** Circuit breaker, retries and state-change hook (see resilience/guard.ts); defaults apply. */
  readonly resilience?: Omit<GuardOptions, 'upstream'> | undefined;
}

export interface ProxyOptions {
  /** The API's base path on the gateway, stripped before the upstream's own prefix is added. */
  readonly basePath: string;
  readonly correlationHeader: string;
  /** Host the client used (from the configured public URL, never from the request). */
  readonly publicHost: string;
  /**
   * The signed caller assertion sent upstream for authenticated requests, in `header`; a header
   * of that name from the client is always dropped, and one from the upstream never returned.
   */
  readonly identity?: { readonly header: string; readonly audience: string; readonly sign: IdentitySigner };
  /** Lower-case request headers that carry this API's credentials (API-key headers): never forwarded. */
  readonly credentialHeaders?: ReadonlySet<string>;
  /**
   * The API's contract: which cookies each operation declares (request parameters, `Set-Cookie`
   * response headers). Without it no cookie crosses the proxy either way.
   */
  readonly contract?: OpenApiDocument;
}

/** Upstream bodies up to this size (with a declared length) are read whole before answering. */
export const BUFFER_LIMIT = 64 * 1024;

/** Request headers never sent upstream, beyond hop-by-hop ones. */
const STRIPPED_REQUEST = new Set([
  'host',
  'authorization', // the client's credential stays at the gateway
  'dpop', // its proof of possession too
  'forwarded',
  'x-forwarded-for',
  'x-forwarded-host',
  'x-forwarded-proto',
  'x-forwarded-port',
  'x-forwarded-prefix',
  'x-real-ip',
  'x-client-ip',
  'true-client-ip',
  'cf-connecting-ip',
  'x-original-url',
  'x-rewrite-url',
  'x-http-method-override',
  'x-http-method',
  'x-method-override',
  'content-length', // recomputed from the body actually read
  'cookie', // only the cookies the operation declares, added back by upstreamHeaders
]);

export class Upstream {
  readonly origin: string;
  readonly prefix: string;
  readonly pool: Pool;
  readonly options: UpstreamOptions;
  /** The CA bundle text for an https upstream (also used by WebSocket proxying). */
  readonly ca: string | undefined;
  /** Circuit breaker and retries for every request to this upstream. */
  readonly guard: UpstreamGuard;

  constructor(options: UpstreamOptions) {
    const url = new URL(options.url);
    this.options = options;
    this.origin = url.origin;
    this.prefix = url.pathname.replace(/\/+$/, '');
    const ca = options.caFile === undefined ? undefined : readFileSync(options.caFile, 'utf8');
    this.ca = ca;
    this.guard = new UpstreamGuard({ api: '', ...options.resilience, upstream: this.origin });
    this.pool = new Pool(this.origin, {
      connections: options.connections,
      connectTimeout: options.connectMs,
      headersTimeout: options.headersMs,
      bodyTimeout: options.bodyMs,
      keepAliveTimeout: 4_000,
      connect: ca === undefined ? {} : { ca, minVersion: 'TLSv1.2' },
    });
  }

  async close(): Promise<void> {
    this.guard.shutdown();
    await this.pool.close();
  }
}

export function upstreamHeaders(
  incoming: IncomingHttpHeaders,
  clientIp: string,
  correlationId: string,
  options: ProxyOptions,
  bodyLength: number | undefined,
  cookies: ReadonlySet<string> | null = null,
): Record<string, string | string[]> {
  const dropped = connectionTokens(incoming.connection);
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(incoming)) {
    if (value === undefined || name.startsWith(':')) continue;
    if (HOP_BY_HOP.has(name) || STRIPPED_REQUEST.has(name) || dropped.has(name)) continue;
    if (name === options.correlationHeader || name === options.identity?.header) continue;
    if (options.credentialHeaders?.has(name) === true) continue;
    out[name] = value;
  }
  out['x-forwarded-for'] = clientIp;
  out['x-forwarded-proto'] = 'https';
  out['x-forwarded-host'] = options.publicHost;
  out[options.correlationHeader] = correlationId;
  const cookie = forwardedCookies(incoming.cookie, cookies);
  if (cookie !== undefined) out.cookie = cookie;
  if (bodyLength !== undefined) out['content-length'] = String(bodyLength);
  return out;
}

function responseHeaders(
  headers: IncomingHttpHeaders,
  identityHeader: string | undefined,
  cookies: CookiePolicy,
): Record<string, string | string[]> {
  const dropped = connectionTokens(headers.connection);
  if (identityHeader !== undefined) dropped.add(identityHeader);
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || HOP_BY_HOP.has(name) || dropped.has(name)) continue;
    // The gateway's CORS policy alone answers cross-origin questions.
    if (name.startsWith('access-control-')) continue;
    if (name === 'set-cookie') {
      const kept = returnedSetCookies(value, cookies);
      if (kept !== undefined) out[name] = kept;
      continue;
    }
    out[name] = value;
  }
  return out;
}

const NO_COOKIES: CookiePolicy = { forward: null, setCookie: false };

const IGNORE = (): void => undefined;

/** An upstream answer: a small sized body read whole, or the body streaming in. */
interface UpstreamAnswer {
  readonly statusCode: number;
  readonly headers: IncomingHttpHeaders;
  /** A Buffer (sized and at most {@link BUFFER_LIMIT}) or a stream. */
  readonly body: Buffer | Readable;
  /** Discards an unread body (the breaker does it for a 5xx). */
  resume(): void;
}

/**
 * One upstream call through `dispatch()`, the way the bare proxy's `stream()` does it: no
 * response stream and no body-consumption promise for the common small answer. A body with a
 * declared length up to {@link BUFFER_LIMIT} is collected into one Buffer and the promise
 * resolves once it is complete; anything else resolves at the headers with a Readable fed
 * with backpressure (the upstream connection pauses while the client is slower). Time-outs are
 * the pool's (connect, headers, body); errors are undici's own, as `request()` rejects with.
 */
function callUpstream(
  pool: Pool,
  options: { method: string; path: string; headers: Record<string, string | string[]>; body: Buffer | null },
): Promise<UpstreamAnswer> {
  return new Promise<UpstreamAnswer>((resolve, reject) => {
    let settled = false;
    let statusCode = 0;
    let headers: IncomingHttpHeaders = {};
    let chunks: Buffer[] | undefined;
    let size = 0;
    let stream: Readable | undefined;
    const handler: Dispatcher.DispatchHandler = {
      onRequestStart: IGNORE,
      onResponseStart(controller, status, responseHeaders) {
        statusCode = status;
        headers = responseHeaders;
        const declared = Number(responseHeaders['content-length']);
        if (Number.isInteger(declared) && declared <= BUFFER_LIMIT && status < 500) {
          chunks = [];
          return;
        }
        const body = new Readable({
          read() {
            controller.resume();
          },
          destroy(err, callback) {
            if (!controller.aborted) controller.abort(err ?? new Error('upstream body closed'));
            callback(err);
          },
        });
        // Errors reach whoever reads the body (the pipeline pipes it and listens); one that
        // comes before anyone listens must not become an uncaught exception.
        body.on('error', IGNORE);
        stream = body;
        settled = true;
        resolve({
          statusCode: status,
          headers: responseHeaders,
          body,
          resume: () => {
            body.resume();
          },
        });
      },
      onResponseData(controller, chunk) {
        if (chunks !== undefined) {
          chunks.push(chunk);
          size += chunk.length;
        } else if (stream !== undefined && !stream.push(chunk)) {
          controller.pause();
        }
      },
      onResponseEnd() {
        if (stream !== undefined) {
          stream.push(null);
          return;
        }
        if (settled) return;
        settled = true;
        const body = chunks === undefined ? Buffer.alloc(0) : Buffer.concat(chunks, size);
        resolve({ statusCode, headers, body, resume: IGNORE });
      },
      onResponseError(_controller, err) {
        if (stream !== undefined) {
          stream.destroy(err);
          return;
        }
        if (settled) return;
        settled = true;
        reject(err);
      },
    };
    pool.dispatch(
      {
        method: options.method,
        path: options.path,
        headers: options.headers,
        body: options.body,
      },
      handler,
    );
  });
}

function classify(err: unknown): Denial {
  if (err instanceof Denial) return err;
  if (
    err instanceof undiciErrors.ConnectTimeoutError ||
    err instanceof undiciErrors.HeadersTimeoutError ||
    err instanceof undiciErrors.BodyTimeoutError
  ) {
    return new Denial('gateway-timeout', 'upstream-timeout', { cause: err });
  }
  return new Denial('bad-gateway', 'upstream-unreachable', { cause: err });
}

export function compileProxy(upstream: Upstream, options: ProxyOptions): Stage {
  const baseLength = options.basePath.length;
  const policies =
    options.contract === undefined ? undefined : cookiePolicies(options.contract, options.basePath);
  const byOperation = new WeakMap<OperationInfo, CookiePolicy>();
  const policyOf = (op: OperationInfo): CookiePolicy => {
    let policy = byOperation.get(op);
    if (policy === undefined) {
      policy = policies?.get(`${op.method} ${op.template}`) ?? NO_COOKIES;
      byOperation.set(op, policy);
    }
    return policy;
  };
  return async (req): Promise<StageResponse> => {
    const cookies = policyOf(req.operation);
    const rest = req.target.path.slice(baseLength);
    const query = req.forwardQuery ?? req.target.query; // as validated (validate stage)
    const path = upstream.prefix + (rest === '' ? '/' : rest) + (query === '' ? '' : `?${query}`);
    const body = req.body;
    const outgoing = upstreamHeaders(
      req.headers,
      req.clientIp,
      req.correlationId,
      options,
      body?.length,
      cookies.forward,
    );
    const identity = options.identity;
    if (identity !== undefined && req.principal !== undefined) {
      outgoing[identity.header] = identity.sign({
        audience: identity.audience,
        principal: req.principal,
        privacy: req.privacy,
      });
    }
    let res: UpstreamAnswer;
    try {
      // Through the circuit breaker, with bounded retries for idempotent methods (resilience/).
      // Small bodies arrive read whole: headers and body then leave in one TLS write, and later
      // stages can inspect the body. Larger or unsized bodies stream through.
      res = await upstream.guard.send(req.method, () =>
        callUpstream(upstream.pool, { method: req.method, path, headers: outgoing, body: body ?? null }),
      );
    } catch (err) {
      throw classify(err);
    }
    if (res.statusCode >= 500) {
      // Upstream error bodies can carry stack traces and internal hosts: never pass them on.
      res.resume();
      throw new Denial('bad-gateway', `upstream-status-${res.statusCode}`);
    }
    const headers = responseHeaders(res.headers, options.identity?.header, cookies);
    const stream = res.body;
    if (Buffer.isBuffer(stream)) return { status: res.statusCode, headers, body: stream };
    return {
      status: res.statusCode,
      headers,
      body: stream,
      onDone: () => {
        if (!stream.readableEnded) {
          stream.on('error', () => undefined);
          stream.destroy();
        }
      },
    };
  };
}
