/**
 * The response-enforcement stage: what the upstream answers is held to the operation's declared
 * responses before the client sees it (seed 000 §15.4, seed 004 V-274615, OWASP API3).
 *
 * Decisions, per response:
 * - **Status**: the declared status, else its range (`2XX`), else `default`. A status the
 *   operation does not declare, with no `default`, is a **502** `bad-gateway` (reason
 *   `response-status`): an undeclared answer is not passed on.
 * - **No content declared** for that status: the response passes unchanged.
 * - **Media type**: a body whose Content-Type is not declared for the status is a 502 (reason
 *   `response-content-type`). Declared without a schema, or not JSON: passes unchanged
 *   (streamed bodies keep streaming).
 * - **JSON with a schema**: the body is read (up to {@link RESPONSE_BUFFER_LIMIT}, decoded from
 *   gzip/deflate/br), parsed with bounds, then minimised: undeclared members of closed objects
 *   and `writeOnly` members are removed, arrays are cut to `maxItems`. It is then validated; what
 *   removal cannot repair (a wrong type, a missing required member, a broken format) is a 502
 *   (reason `response-schema`, with the failing pointers and rules kept server-side as the cause,
 *   never values). A body that changed is re-serialised with the declared Content-Type and a
 *   recomputed Content-Length; ETag and digests of the old body are dropped. A body that did not
 *   change leaves as it came, byte for byte.
 * - **Cost**: a schema without `writeOnly` members is validated first: a closed object with an
 *   undeclared member or an over-long array fails validation, so a body that passes has nothing
 *   to remove and is never walked by the pruner nor re-serialised (the common case); only a
 *   failing body is pruned and validated again. Bodies above the proxy's buffer limit, or that no
 *   schema needs, stream through unread.
 * - Empty bodies, HEAD, 204 and 304 pass unchanged: there is nothing to minimise.
 */
import type { Readable } from 'node:stream';
import { brotliDecompressSync, gunzipSync, inflateSync } from 'node:zlib';
import type { ValidateFunction } from 'ajv';
import type { ResponseStage, StageResponse } from '../../chain.ts';
import { parseJson } from '../../json.ts';
import type { JsonLimits } from '../../json.ts';
import type { OpenApiDocument, OpenApiOperation } from '../../openapi.ts';
import { Denial } from '../../problems.ts';
import type { InvalidParam } from '../../problems.ts';
import { isJsonMediaType, matchMediaType, parseMediaType } from '../validate/params.ts';
import { ajvFor, compileSchema, isRecord, prepareSchema, toInvalidParams } from '../validate/schema.ts';
import type { Schema } from '../validate/schema.ts';
import { prune } from './prune.ts';

/** Largest response body read for enforcement (decoded); larger is a 502. */
export const RESPONSE_BUFFER_LIMIT = 10 * 1024 * 1024;

/** Bounds for parsing upstream JSON: generous, but the parser stays iterative and bounded. */
const RESPONSE_JSON_LIMITS: JsonLimits = {
  maxDepth: 128,
  maxStringLength: RESPONSE_BUFFER_LIMIT,
  maxArrayItems: 1_000_000,
  maxObjectKeys: 100_000,
};

interface ContentEntry {
  /** The declared media type, served as the Content-Type of a re-serialised body. */
  readonly mediaType: string;
  readonly json: boolean;
  readonly schema: Schema | undefined;
  readonly validate: ValidateFunction | undefined;
  /** The schema declares a `writeOnly` member somewhere: every body must be pruned. */
  readonly writeOnly: boolean;
}

/** Whether a (raw, dereferenced) schema declares a `writeOnly: true` member anywhere. */
function declaresWriteOnly(schema: unknown, seen = new Set<object>()): boolean {
  if (typeof schema !== 'object' || schema === null || seen.has(schema)) return false;
  seen.add(schema);
  if (!Array.isArray(schema) && (schema as Record<string, unknown>).writeOnly === true) return true;
  for (const value of Object.values(schema)) if (declaresWriteOnly(value, seen)) return true;
  return false;
}

/** Upstream Content-Type values repeat: each distinct one is parsed once (bounded). */
const MEDIA_TYPE_CACHE_MAX = 256;
const mediaTypes = new Map<string, ReturnType<typeof parseMediaType>>();

function contentType(headers: StageResponse['headers']): ReturnType<typeof parseMediaType> {
  const value = headerValue(headers, 'content-type');
  if (value === undefined) return null;
  let parsed = mediaTypes.get(value);
  if (parsed === undefined) {
    parsed = parseMediaType(value);
    if (mediaTypes.size >= MEDIA_TYPE_CACHE_MAX) mediaTypes.clear();
    mediaTypes.set(value, parsed);
  }
  return parsed;
}

/** `null`: the status is declared without content. */
type DeclaredResponse = ReadonlyMap<string, ContentEntry> | null;

/** Headers that describe the old body and are wrong for a re-serialised one. */
const BODY_HEADERS = ['content-length', 'content-encoding', 'content-type', 'etag', 'digest', 'content-md5'];

function headerValue(headers: StageResponse['headers'], name: string): string | undefined {
  const v = headers[name];
  if (v === undefined) return undefined;
  return typeof v === 'string' ? v : v.join(', ');
}

function responseDenial(reason: string, cause?: unknown): Denial {
  return new Denial('bad-gateway', reason, cause === undefined ? {} : { cause });
}

async function readCapped(body: Buffer | string | Readable, limit: number): Promise<Buffer> {
  if (Buffer.isBuffer(body)) return body;
  if (typeof body === 'string') return Buffer.from(body);
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of body as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > limit) {
        body.destroy();
        throw responseDenial('response-too-large');
      }
      chunks.push(chunk);
    }
  } catch (err) {
    body.destroy();
    if (err instanceof Denial) throw err;
    throw responseDenial('upstream-body-aborted', err);
  }
  return Buffer.concat(chunks, size);
}

function decode(body: Buffer, encoding: string | undefined, limit: number): Buffer {
  const e = (encoding ?? 'identity').trim().toLowerCase();
  try {
    if (e === 'identity' || e === '') return body;
    if (e === 'gzip' || e === 'x-gzip') return gunzipSync(body, { maxOutputLength: limit });
    if (e === 'deflate') return inflateSync(body, { maxOutputLength: limit });
    if (e === 'br') return brotliDecompressSync(body, { maxOutputLength: limit });
  } catch (err) {
    throw responseDenial('response-encoding', err);
  }
  throw responseDenial('response-encoding');
}

/** Why a response failed its schema, for the server-side log: pointers and rules only. */
class ResponseSchemaViolation extends Error {
  readonly errors: readonly InvalidParam[];
  constructor(errors: readonly InvalidParam[]) {
    super(`response violates its schema: ${errors.map((e) => `${e.pointer || '/'} ${e.rule}`).join(', ')}`);
    this.name = 'ResponseSchemaViolation';
    this.errors = errors;
  }
}

/**
 * Builds the response-enforcement stage of one operation; `null` when the operation declares no
 * responses object (nothing to enforce against). Throws a SchemaError at start-up for a schema it
 * cannot compile.
 */
export function compileResponseEnforcement(op: OpenApiOperation, doc: OpenApiDocument): ResponseStage | null {
  const responses = op.definition.responses;
  if (!isRecord(responses)) return null;
  const ajv = ajvFor(doc);
  const byStatus = new Map<string, DeclaredResponse>();
  for (const [status, response] of Object.entries(responses)) {
    const key = status.toUpperCase() === 'DEFAULT' ? 'default' : status.toUpperCase();
    if (!isRecord(response) || !isRecord(response.content)) {
      byStatus.set(key, null);
      continue;
    }
    const contents = new Map<string, ContentEntry>();
    for (const [mediaType, entry] of Object.entries(response.content)) {
      const essence = parseMediaType(mediaType)?.essence ?? mediaType.toLowerCase();
      const json = isJsonMediaType(essence);
      const raw = isRecord(entry) ? entry.schema : undefined;
      let schema: Schema | undefined;
      let validate: ValidateFunction | undefined;
      if (raw !== undefined && json) {
        schema = prepareSchema(raw, 'response', ajv.openapi30);
        validate = compileSchema(ajv.strict, schema);
      }
      contents.set(essence, {
        mediaType: essence,
        json,
        schema,
        validate,
        writeOnly: declaresWriteOnly(raw),
      });
    }
    byStatus.set(key, contents);
  }

  const lookup = (status: number): DeclaredResponse | undefined => {
    const exact = byStatus.get(String(status));
    if (exact !== undefined) return exact;
    const range = byStatus.get(`${String(Math.floor(status / 100))}XX`);
    if (range !== undefined) return range;
    return byStatus.get('default');
  };

  const drain = (res: StageResponse): void => {
    const body = res.body;
    if (body !== undefined && typeof body !== 'string' && !Buffer.isBuffer(body)) {
      // Destroying an upstream body makes it emit an abort error; nobody else listens any more.
      body.on('error', () => undefined);
      body.destroy();
    }
  };

  return async (req, res) => {
    const declared = lookup(res.status);
    if (declared === undefined) {
      drain(res);
      throw responseDenial('response-status');
    }
    if (declared === null || req.method === 'HEAD' || res.status === 204 || res.status === 304) return res;
    const body = res.body;
    if (body === undefined || (typeof body !== 'object' && body === '')) return res;
    if (Buffer.isBuffer(body) && body.length === 0) return res;
    const media = contentType(res.headers);
    const entry = media === null ? undefined : matchMediaType(declared, media.essence);
    if (entry === undefined) {
      // An unsized body may still be empty: read it (bounded) to tell.
      if (typeof body === 'object' && !Buffer.isBuffer(body)) {
        const raw = await readCapped(body, RESPONSE_BUFFER_LIMIT);
        const { onDone: _consumed, ...rest } = res;
        if (raw.length === 0) return { ...rest, body: raw };
      }
      drain(res);
      throw responseDenial('response-content-type');
    }
    const validate = entry.validate;
    if (validate === undefined) return res;

    const raw = await readCapped(body, RESPONSE_BUFFER_LIMIT);
    if (raw.length === 0) return { ...res, body: raw };
    const encoding = headerValue(res.headers, 'content-encoding');
    const bytes = decode(raw, encoding, RESPONSE_BUFFER_LIMIT);
    let data: unknown;
    try {
      data = parseJson(bytes, RESPONSE_JSON_LIMITS, 'body');
    } catch (err) {
      throw responseDenial('response-schema', err);
    }
    // Without writeOnly members, a body that validates has nothing to remove: skip the pruner.
    let changed = false;
    if (entry.writeOnly || !validate(data)) {
      changed = prune(entry.schema, data);
      if ((!entry.writeOnly && !changed) || !validate(data)) {
        const errors: InvalidParam[] = [];
        toInvalidParams('body', validate.errors, errors);
        throw responseDenial('response-schema', new ResponseSchemaViolation(errors));
      }
    }
    const { onDone: _consumed, body: _old, ...rest } = res;
    if (!changed && bytes === raw) return { ...rest, body: raw };
    const out = Buffer.from(JSON.stringify(data));
    const headers: Record<string, string | readonly string[]> = {};
    for (const [name, value] of Object.entries(res.headers)) {
      if (!BODY_HEADERS.includes(name.toLowerCase())) headers[name] = value;
    }
    headers['content-type'] = entry.mediaType;
    headers['content-length'] = String(out.length);
    return { ...rest, headers, body: out };
  };
}
