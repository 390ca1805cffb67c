/**
 * JSON logs (pino). Redaction is defence in depth: the gateway never puts credentials into a log
 * line on purpose, and these paths censor them should one ever reach a logged object.
 *
 * The access line (one per request, `event: 'access'`) is built from typed fields that cannot
 * hold a credential: it skips the redaction scan (a `logMethod` hook hands it to a logger without
 * `redact` on the same destination), which otherwise costs more than the rest of the line. Every
 * other line, and an access line with any other field, is redacted as before. Lines go to stdout
 * asynchronously (writes coalesce under load; flushed on exit) instead of one blocking write each.
 */
import { pino } from 'pino';
import type { DestinationStream, Logger, LoggerOptions } from 'pino';

export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["proxy-authorization"]',
  'req.headers["x-api-key"]',
  'req.headers.dpop',
  'res.headers["set-cookie"]',
  'headers.authorization',
  'headers.cookie',
  'headers["x-api-key"]',
  '*.password',
  '*.secret',
  '*.client_secret',
  '*.token',
  '*.access_token',
  '*.refresh_token',
  '*.id_token',
  '*.apiKey',
  '*.privateKey',
  'password',
  'secret',
  'token',
];

export type { Logger };

/** The fields of an access line: none can carry a credential, and each is a primitive. */
const ACCESS_FIELDS = new Set([
  'event',
  'correlationId',
  'method',
  'api',
  'route',
  'status',
  'durationMs',
  'clientIp',
  'httpVersion',
  'reason',
]);

/** True for an access line made only of its typed, primitive fields. */
function isAccessLine(value: unknown): boolean {
  if (typeof value !== 'object' || value === null || (value as { event?: unknown }).event !== 'access') {
    return false;
  }
  for (const key in value) {
    if (!ACCESS_FIELDS.has(key)) return false;
    const v = (value as Record<string, unknown>)[key];
    if (typeof v === 'object' && v !== null) return false;
  }
  return true;
}

export function createLogger(level: string, destination?: DestinationStream): Logger {
  const stream = destination ?? pino.destination({ dest: 1, sync: false });
  const common: LoggerOptions = {
    level,
    base: { service: 'portcullis' },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }) },
  };
  // Same format, no redaction: only ever given access lines (isAccessLine). Its level is the
  // lowest: the calling logger has already decided the line is enabled.
  const plain = pino({ ...common, level: 'trace' }, stream);
  const plainFor = new WeakMap<Logger, Logger>();
  const unredacted = (from: Logger): Logger => {
    let out = plainFor.get(from);
    if (out === undefined) {
      // The caller's bindings as written (already redacted), base fields aside: `bindings()`
      // would leave out `pid`.
      const chindings = (from as unknown as Record<symbol, unknown>)[pino.symbols.chindingsSym];
      const bindings =
        typeof chindings === 'string' && chindings.length > 1
          ? (JSON.parse(`{${chindings.slice(1)}}`) as Record<string, unknown>)
          : {};
      delete bindings.service;
      out = Object.keys(bindings).length === 0 ? plain : plain.child(bindings);
      plainFor.set(from, out);
    }
    return out;
  };
  return pino(
    {
      ...common,
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      hooks: {
        logMethod(args, method, levelNumber) {
          if (args.length <= 2 && isAccessLine(args[0])) {
            const target = unredacted(this);
            const label = target.levels.labels[levelNumber] ?? 'info';
            target[label as 'info'](...(args as [object, string?]));
            return;
          }
          method.apply(this, args);
        },
      },
    },
    stream,
  );
}

/** Server-side description of an error: message and code, never a stack in production logs. */
export function describeError(err: unknown): Record<string, unknown> {
  if (err instanceof Error) {
    const out: Record<string, unknown> = { type: err.name, message: err.message };
    const code = (err as { code?: unknown }).code;
    if (typeof code === 'string') out.code = code;
    if (err.cause !== undefined) out.cause = describeError(err.cause);
    return out;
  }
  return { message: String(err) };
}
