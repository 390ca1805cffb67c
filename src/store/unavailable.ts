/**
 * Whether an error means "a dependency (PostgreSQL, Redis) cannot be reached right now", as
 * opposed to a bug or bad data. Such failures are answered 503 with `Retry-After` (fail closed,
 * try again later) rather than 500, and readiness reports them.
 */

/** Socket-level codes of a connection that could not be made or was lost. */
const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ECONNABORTED',
]);

/** PostgreSQL SQLSTATEs: class 08 (connection exception), shutting down, cannot connect now. */
const PG_UNAVAILABLE = /^(08[0-9A-Z]{3}|57P01|57P02|57P03|53300)$/;

/** Messages of node-postgres, its pool and ioredis for a lost or missing connection. */
const MESSAGES = [
  /connection terminated/i,
  /timeout exceeded when trying to connect/i,
  /connection is closed/i,
  /stream isn't writeable/i,
  /client has encountered a connection error/i,
  /cannot use a pool after calling end/i,
  /reached the max retries per request limit/i,
  /command timed out/i,
  /query read timeout/i,
];

export function isDependencyUnavailable(err: unknown, depth = 0): boolean {
  if (err === null || typeof err !== 'object' || depth > 4) return false;
  const e = err as { code?: unknown; message?: unknown; cause?: unknown; errors?: unknown; name?: unknown };
  if (typeof e.code === 'string' && (NETWORK_CODES.has(e.code) || PG_UNAVAILABLE.test(e.code))) return true;
  if (e.name === 'MaxRetriesPerRequestError' || e.name === 'ReplayCacheUnavailableError') return true;
  if (typeof e.message === 'string' && MESSAGES.some((m) => m.test(e.message as string))) return true;
  if (Array.isArray(e.errors) && e.errors.some((x) => isDependencyUnavailable(x, depth + 1))) return true;
  return isDependencyUnavailable(e.cause, depth + 1);
}

/** Seconds a client is asked to wait before retrying a request refused for an outage. */
export const UNAVAILABLE_RETRY_AFTER_SECONDS = 5;
