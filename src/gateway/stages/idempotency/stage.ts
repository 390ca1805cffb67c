/**
 * The per-request work of idempotency (draft-ietf-httpapi-idempotency-key-header). Wraps the
 * stage that reaches the upstream, so that a request whose key is taken never reaches it:
 *
 * - no `Idempotency-Key`: 400 when the operation requires one, else passed through untouched;
 * - a key seen before with the same request: the stored response, with `Idempotent-Replayed: true`;
 * - a key seen before with a different request: 422;
 * - a key whose first request is still in flight: 409 with `Retry-After`;
 * - otherwise the request goes upstream and its response is stored, unless it is a 5xx or
 *   larger than the cap (then the key is given up and a retry goes upstream again).
 *
 * Keys are scoped by API, operation and caller (the principal, or the client IP for public
 * operations): one caller cannot replay or block another's key.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { Denial } from '../../problems.ts';
import type { GatewayRequest, Stage, StageResponse } from '../../context.ts';
import type { Logger } from '../../../log/index.ts';
import type { IdempotencyDeclaration } from './config.ts';
import type { IdempotencyStore, StoredResponse } from './store.ts';

/** An sf-string of visible ASCII (quotes optional, as many clients send bare UUIDs), 1–255 long. */
const KEY_SYNTAX = /^(?:"([\x21\x23-\x5b\x5d-\x7e]{1,255})"|([\x21\x23-\x5b\x5d-\x7e]{1,255}))$/;

export interface IdempotencyStageOptions {
  readonly declaration: IdempotencyDeclaration;
  /** Names the operation in the key scope: API name and operationId (or method and template). */
  readonly scope: string;
  readonly store: IdempotencyStore;
  readonly lockMs: number;
  readonly maxResponseBytes: number;
  readonly logger: Logger | undefined;
}

/** The key a client sent, validated; undefined when absent. */
export function parseIdempotencyKey(value: string | string[] | undefined): string | undefined {
  if (value === undefined) return undefined;
  if (Array.isArray(value)) throw new Denial('bad-request', 'idempotency-key-repeated');
  const m = KEY_SYNTAX.exec(value);
  const key = m?.[1] ?? m?.[2];
  if (key === undefined) throw new Denial('bad-request', 'idempotency-key-malformed');
  return key;
}

function sha256(...parts: (string | Buffer)[]): string {
  const h = createHash('sha256');
  for (const p of parts) {
    h.update(p);
    h.update('\0');
  }
  return h.digest('base64url');
}

/** Who the key belongs to: the verified caller, or the client address for public operations. */
function owner(req: GatewayRequest): string {
  const p = req.principal;
  return p === undefined ? `ip:${req.clientIp}` : `principal:${p.scheme}:${p.clientId}:${p.subject}`;
}

function single(v: string | string[] | undefined): string {
  return Array.isArray(v) ? v.join(',') : (v ?? '');
}

/** What identifies the request a key was first used for: target, content type and body. */
function fingerprint(req: GatewayRequest): string {
  return sha256(
    req.method,
    req.target.path,
    req.target.query,
    single(req.headers['content-type']),
    req.body ?? Buffer.alloc(0),
  );
}

/** Reads a body up to `cap` bytes. `rest` continues the body when it was longer. */
async function readUpTo(
  body: StageResponse['body'],
  cap: number,
): Promise<{ whole: Buffer } | { prefix: Buffer[]; rest: Readable }> {
  if (body === undefined) return { whole: Buffer.alloc(0) };
  if (typeof body === 'string') return { whole: Buffer.from(body) };
  if (Buffer.isBuffer(body)) return { whole: body };
  const stream = body;
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const cleanup = () => {
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.off('error', onError);
    };
    const onData = (chunk: Buffer | string) => {
      const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      chunks.push(buf);
      size += buf.length;
      if (size > cap) {
        stream.pause();
        cleanup();
        resolve({ prefix: chunks, rest: stream });
      }
    };
    const onEnd = () => {
      cleanup();
      resolve({ whole: Buffer.concat(chunks, size) });
    };
    const onError = (err: Error) => {
      cleanup();
      reject(err);
    };
    stream.on('data', onData);
    stream.on('end', onEnd);
    stream.on('error', onError);
  });
}

function replay(stored: StoredResponse): StageResponse {
  return {
    status: stored.status,
    headers: { ...stored.headers, 'idempotent-replayed': 'true' },
    body: Buffer.from(stored.body, 'base64'),
  };
}

/** Wraps `next` (the upstream stage) with idempotency for one operation. */
export function idempotencyStage(options: IdempotencyStageOptions, next: Stage): Stage {
  const { declaration, scope, store, lockMs, maxResponseBytes, logger } = options;
  const ttlMs = declaration.ttlSeconds * 1000;
  const unavailable = (err: unknown) =>
    new Denial('unavailable', 'idempotency-store-unavailable', {
      headers: { 'retry-after': '5' },
      cause: err,
    });

  return async (req) => {
    const key = parseIdempotencyKey(req.headers['idempotency-key']);
    if (key === undefined) {
      if (declaration.required) throw new Denial('bad-request', 'idempotency-key-missing');
      return next(req);
    }
    const recordKey = sha256(scope, owner(req), key);
    const print = fingerprint(req);
    let begun;
    try {
      begun = await store.begin(recordKey, print, lockMs);
    } catch (err) {
      throw unavailable(err);
    }
    switch (begun.kind) {
      case 'replay':
        return replay(begun.response);
      case 'mismatch':
        throw new Denial('unprocessable', 'idempotency-key-reused');
      case 'in-flight':
        throw new Denial('conflict', 'idempotency-request-in-flight', { headers: { 'retry-after': '1' } });
      case 'acquired':
        break;
    }
    const release = () =>
      store.release(recordKey, print).catch((err: unknown) => {
        logger?.warn(
          { event: 'idempotency-release-failed', correlationId: req.correlationId, error: String(err) },
          'could not release an idempotency key; it expires with its lock',
        );
      });
    let res: StageResponse;
    try {
      const answered = await next(req);
      if (answered === undefined) throw new Error('the upstream stage did not answer');
      res = answered;
    } catch (err) {
      await release();
      throw err;
    }
    if (res.status >= 500) {
      await release();
      return res;
    }
    let read;
    try {
      read = await readUpTo(res.body, maxResponseBytes);
    } catch (err) {
      await release();
      throw new Denial('bad-gateway', 'upstream-body-failed', { cause: err });
    }
    if (!('whole' in read)) {
      await release();
      logger?.info(
        { event: 'idempotency-not-stored', correlationId: req.correlationId, reason: 'response-too-large' },
        'response larger than idempotency.maxResponseBytes: not stored',
      );
      const { prefix, rest } = read;
      return {
        ...res,
        body: Readable.from(
          (async function* () {
            yield* prefix;
            for await (const chunk of rest) yield chunk as Buffer;
          })(),
        ),
      };
    }
    const body = read.whole;
    try {
      await store.complete(
        recordKey,
        print,
        { status: res.status, headers: res.headers, body: body.toString('base64') },
        ttlMs,
      );
    } catch (err) {
      // The upstream has acted: the client gets its answer; a retry may reach the upstream again.
      logger?.warn(
        { event: 'idempotency-store-failed', correlationId: req.correlationId, error: String(err) },
        'could not store an idempotent response',
      );
    }
    return { ...res, body };
  };
}
