/**
 * Versioning and deprecation (seed 000 §15.8). Versions live in the base path (`/v1`, enforced by
 * the configuration schema); a deprecated API version announces it on every answer:
 *
 * - `Deprecation: @<epoch seconds>` (RFC 9745, a structured-field date; a future date announces
 *   the deprecation ahead of time),
 * - `Sunset: <HTTP-date>` (RFC 8594) when a sunset is set,
 * - `Link: <url>; rel="deprecation"` (and `rel="sunset"`) to the migration notes.
 *
 * From the sunset on, every operation of the API answers 410 `gone` before anything else runs:
 * the upstream is not called.
 */
import { Denial } from '../../problems.ts';
import type { ResponseStage, Stage } from '../../context.ts';

export interface DeprecationSettings {
  /** When the API is (or will be) deprecated: `YYYY-MM-DD` or an RFC 3339 date-time. */
  readonly deprecatedAt: string;
  /** When it stops answering; optional. */
  readonly sunsetAt?: string | undefined;
  /** Migration notes (https). */
  readonly link: string;
}

export interface CompiledDeprecation {
  /** First stage of every operation: 410 after the sunset. */
  readonly stage: Stage;
  /** Adds the headers to whatever the API answers. */
  readonly responseStage: ResponseStage;
  readonly headers: Readonly<Record<string, string>>;
}

/** Why settings cannot be compiled (the caller names the configuration key). */
export class DeprecationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DeprecationError';
  }
}

function parseDate(value: string, key: string): number {
  const ms = Date.parse(/^\d{4}-\d{2}-\d{2}$/.test(value) ? `${value}T00:00:00Z` : value);
  if (!Number.isFinite(ms)) throw new DeprecationError(`${key} is not a valid date`);
  return ms;
}

function mergeLink(existing: string | readonly string[] | undefined, ours: string): string | string[] {
  if (existing === undefined) return ours;
  return typeof existing === 'string' ? [existing, ours] : [...existing, ours];
}

export function compileDeprecation(
  settings: DeprecationSettings,
  now: () => number = () => Date.now(),
): CompiledDeprecation {
  const deprecated = parseDate(settings.deprecatedAt, 'deprecatedAt');
  const sunset = settings.sunsetAt === undefined ? undefined : parseDate(settings.sunsetAt, 'sunsetAt');
  if (sunset !== undefined && sunset < deprecated) {
    throw new DeprecationError('sunsetAt must not be before deprecatedAt');
  }
  const link = new URL(settings.link).href;
  const headers: Record<string, string> = {
    deprecation: `@${String(Math.floor(deprecated / 1000))}`,
  };
  let links = `<${link}>; rel="deprecation"`;
  if (sunset !== undefined) {
    headers.sunset = new Date(sunset).toUTCString();
    links += `, <${link}>; rel="sunset"`;
  }
  const ours = { ...headers, link: links };
  return {
    headers: ours,
    stage:
      sunset === undefined
        ? () => undefined
        : () => {
            if (now() >= sunset) throw new Denial('gone', 'api-sunset', { headers: ours });
            return undefined;
          },
    responseStage: (_req, res) => {
      const merged: Record<string, string | readonly string[]> = { ...res.headers, ...headers };
      merged.link = mergeLink(res.headers.link, links);
      return { ...res, headers: merged };
    },
  };
}
