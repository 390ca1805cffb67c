/**
 * The one registry of problem types (RFC 9457). Every refusal the gateway sends is one of
 * these: a stable `type`, its status and a generic title. Titles never carry request data.
 * `docs/problems.md` lists exactly these codes (a test checks it).
 */
export const PROBLEM_TYPE_BASE = 'urn:portcullis:problem:';

export const PROBLEMS = {
  'bad-request': { status: 400, title: 'Bad Request' },
  'invalid-request': { status: 400, title: 'Bad Request' },
  'invalid-path': { status: 400, title: 'Bad Request' },
  unauthenticated: { status: 401, title: 'Unauthorized' },
  forbidden: { status: 403, title: 'Forbidden' },
  'origin-not-allowed': { status: 403, title: 'Forbidden' },
  'not-found': { status: 404, title: 'Not Found' },
  'method-not-allowed': { status: 405, title: 'Method Not Allowed' },
  'request-timeout': { status: 408, title: 'Request Timeout' },
  conflict: { status: 409, title: 'Conflict' },
  gone: { status: 410, title: 'Gone' },
  'payload-too-large': { status: 413, title: 'Content Too Large' },
  'uri-too-long': { status: 414, title: 'URI Too Long' },
  'unsupported-media-type': { status: 415, title: 'Unsupported Media Type' },
  'misdirected-request': { status: 421, title: 'Misdirected Request' },
  unprocessable: { status: 422, title: 'Unprocessable Content' },
  'upload-rejected': { status: 422, title: 'Unprocessable Content' },
  // Privacy (issue 16, src/gateway/stages/privacy): refusals that name the subject's choice.
  'consent-required': { status: 403, title: 'Consent Required' },
  'sale-sharing-opted-out': { status: 403, title: 'Opted Out of Sale and Sharing' },
  'sensitive-data-limited': { status: 403, title: 'Use of Sensitive Data Limited' },
  'automation-opted-out': { status: 403, title: 'Opted Out of Automated Decisions' },
  'too-many-requests': { status: 429, title: 'Too Many Requests' },
  'headers-too-large': { status: 431, title: 'Request Header Fields Too Large' },
  internal: { status: 500, title: 'Internal Server Error' },
  'bad-gateway': { status: 502, title: 'Bad Gateway' },
  unavailable: { status: 503, title: 'Service Unavailable' },
  'gateway-timeout': { status: 504, title: 'Gateway Timeout' },
} as const satisfies Record<string, { status: number; title: string }>;

export type ProblemCode = keyof typeof PROBLEMS;

/**
 * Where a request failed validation: a JSON pointer into the part of the request named by `in`,
 * and the rule it broke. Never the submitted value.
 */
export interface InvalidParam {
  readonly in: 'body' | 'query' | 'path' | 'header' | 'cookie';
  readonly pointer: string;
  readonly rule: string;
}

/** The JSON body of every refusal. */
export interface ProblemBody {
  type: string;
  title: string;
  status: number;
  /** The request's correlation id, also sent in the correlation header. */
  correlationId: string;
  instance: string;
  /** For `invalid-request`: which fields failed, by JSON pointer, without their values. */
  errors?: readonly InvalidParam[];
}

/**
 * A typed refusal. Stages throw it; the one denial path renders it. `reason` is a short,
 * stable machine word for logs, metrics and audit (never sent to the client); `cause` keeps
 * server-side detail (never sent to the client either).
 */
export class Denial extends Error {
  readonly code: ProblemCode;
  readonly status: number;
  readonly reason: string;
  /** Extra response headers that belong to this refusal, e.g. `Allow` or `WWW-Authenticate`. */
  readonly headers: Readonly<Record<string, string>>;
  /** For `invalid-request`: the failing fields (pointers and rules, never values). */
  readonly errors: readonly InvalidParam[] | undefined;
  /** A 429 of a rate limit: which counter refused (for the audit event only; hashed there). */
  readonly rateLimit: RateLimitRefusal | undefined;
  /** Issue 13: the id (never the key) of a known API key this refusal refused. */
  readonly apiKeyId: string | undefined;

  constructor(
    code: ProblemCode,
    reason: string,
    options: {
      headers?: Record<string, string>;
      cause?: unknown;
      errors?: readonly InvalidParam[];
      rateLimit?: RateLimitRefusal;
      apiKeyId?: string | undefined;
    } = {},
  ) {
    // A refusal is an answer, not a fault: no stack trace is captured for it (the costliest part
    // of an Error, and never logged: describeError keeps name, message, code and cause).
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(`${code}: ${reason}`, options.cause === undefined ? undefined : { cause: options.cause });
    Error.stackTraceLimit = limit;
    this.name = 'Denial';
    this.code = code;
    this.status = PROBLEMS[code].status;
    this.reason = reason;
    this.headers = options.headers ?? {};
    this.errors = options.errors;
    this.rateLimit = options.rateLimit;
    this.apiKeyId = options.apiKeyId;
  }
}

/**
 * Issue 13: the counter a rate-limit refusal came from. `key` is the raw counter key (an address
 * prefix, a client or key id, a token hash): it never leaves the process as is; the audit event
 * carries a keyed hash of it (`src/audit/request-fields.ts`).
 */
export interface RateLimitRefusal {
  readonly dimension: string;
  readonly key: string;
  readonly retryAfterSeconds: number;
}

export function isDenial(value: unknown): value is Denial {
  return value instanceof Denial;
}

export function problemBody(
  code: ProblemCode,
  correlationId: string,
  errors?: readonly InvalidParam[],
): ProblemBody {
  const p = PROBLEMS[code];
  const body: ProblemBody = {
    type: PROBLEM_TYPE_BASE + code,
    title: p.title,
    status: p.status,
    correlationId,
    instance: `urn:uuid:${correlationId}`,
  };
  if (errors !== undefined && errors.length > 0) body.errors = errors;
  return body;
}
