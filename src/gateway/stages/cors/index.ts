/**
 * CORS with an explicit origin allowlist. Origins are compared as exact strings; `null` and any
 * origin not listed are refused (seed 001: the origin of cross-domain requests must be
 * authorized on the server side). Credentialed CORS needs a documented exception (config).
 */
import { Denial } from '../../problems.ts';
import type { CorsConfig } from '../../../config/schema.ts';
import type { Stage, StageResponse } from '../../context.ts';

export interface CompiledCors {
  /** Stage for actual requests: refuses a foreign Origin, adds CORS headers for an allowed one. */
  readonly stage: Stage;
  /** Answers a preflight for a path whose declared methods are `allowed`. */
  preflight(
    headers: Readonly<Record<string, string | string[] | undefined>>,
    allowed: readonly string[],
  ): StageResponse;
}

const SAFE_METHODS = new Set(['GET', 'HEAD', 'POST']);

function single(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? undefined : v;
}

/** A stage that refuses any request carrying an Origin, for APIs without CORS configuration. */
export const refuseCrossOrigin: Stage = (req) => {
  if (req.headers.origin !== undefined) throw new Denial('origin-not-allowed', 'cors-not-configured');
  return undefined;
};

export function compileCors(config: CorsConfig): CompiledCors {
  const origins = new Set(config.allowOrigins);
  const exposed = config.exposeHeaders.join(', ');
  const allowHeaders = new Set(config.allowHeaders.map((h) => h.toLowerCase()));
  const allowHeadersValue = [...allowHeaders].join(', ');
  const methods = config.allowMethods ? new Set(config.allowMethods) : undefined;

  const checkOrigin = (value: string | string[] | undefined): string => {
    const origin = single(value);
    if (origin === undefined || origin === 'null' || !origins.has(origin)) {
      throw new Denial('origin-not-allowed', origin === 'null' ? 'null-origin' : 'origin-not-listed');
    }
    return origin;
  };

  return {
    stage: (req) => {
      if (req.headers.origin === undefined) return undefined;
      const origin = checkOrigin(req.headers.origin);
      const h = req.responseHeaders;
      h['access-control-allow-origin'] = origin;
      h.vary = 'Origin';
      if (config.allowCredentials) h['access-control-allow-credentials'] = 'true';
      if (exposed !== '') h['access-control-expose-headers'] = exposed;
      return undefined;
    },
    preflight: (headers, allowed) => {
      const origin = checkOrigin(headers.origin);
      const requested = single(headers['access-control-request-method']) ?? '';
      const permitted = allowed.filter((m) => methods === undefined || methods.has(m) || SAFE_METHODS.has(m));
      if (!permitted.includes(requested)) throw new Denial('forbidden', 'cors-method-not-allowed');
      const reqHeaders = (single(headers['access-control-request-headers']) ?? '')
        .split(',')
        .map((s) => s.trim().toLowerCase())
        .filter((s) => s !== '');
      if (reqHeaders.some((name) => !allowHeaders.has(name))) {
        throw new Denial('forbidden', 'cors-header-not-allowed');
      }
      const out: Record<string, string> = {
        'access-control-allow-origin': origin,
        'access-control-allow-methods': permitted.join(', '),
        'access-control-max-age': String(config.maxAgeSeconds),
        vary: 'Origin, Access-Control-Request-Method, Access-Control-Request-Headers',
      };
      if (allowHeadersValue !== '') out['access-control-allow-headers'] = allowHeadersValue;
      if (config.allowCredentials) out['access-control-allow-credentials'] = 'true';
      return { status: 204, headers: out };
    },
  };
}
