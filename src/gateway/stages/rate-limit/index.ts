/**
 * Rate limiting (rate-limiter-flexible): per client IP before authentication, then per OAuth
 * client, API key and end user after it; each dimension with a burst and a sustained window;
 * repeat offenders blocked for a doubling time (tarpit); `RateLimit` / `RateLimit-Policy`
 * headers (draft-ietf-httpapi-ratelimit-headers) on responses and `Retry-After` on the 429.
 *
 * Per-operation limits are configuration, not OpenAPI: `apis[].rateLimits.operations.<operationId>`
 * replaces any dimension's burst or sustained window for that operation, counted separately
 * from the global budget. The platform team owns limits; an API document cannot loosen them.
 *
 * The authorization server has its own strict per-IP limits: `rateLimits.token` for
 * `POST /token` and `rateLimits.login` for `POST /interaction/{uid}/login`.
 *
 * @example
 * ```ts
 * const limits = await compileRateLimits(loaded, backends);
 * const forOp = limits.forApi(0, document, schemeTypes);
 * const { beforeAuth, afterAuth } = forOp(op.operationId);
 * ```
 */
import { ConfigError, pathToString } from '../../../config/load.ts';
import type { ConfigPath, LoadedConfig } from '../../../config/load.ts';
import type { Stage } from '../../chain.ts';
import type { OpenApiDocument } from '../../openapi.ts';
import { UNLIMITED } from './backend.ts';
import type { LimitBackends, RedisTarget } from './backend.ts';
import { OPERATION_DIMENSIONS, resolvePolicy } from './config.ts';
import type { Dimension, DimensionPolicy, OperationDimension } from './config.ts';
import { checkDimension, compileDimension, countDimension, ipKey, principalKeys } from './stage.ts';
import type { CheckContext, CompiledDimension, Tarpit } from './stage.ts';

export { createLimitBackends, localShare, onDegraded, onLimited, onRestored } from './backend.ts';
export type { DegradedEvent, LimitBackends, LimitedEvent } from './backend.ts';
export { ipKey } from './stage.ts';

export interface OperationLimits {
  /** Per client IP; runs before authentication. Null when rate limiting is off. */
  readonly beforeAuth: Stage | null;
  /** Per client, API key and user; runs after authentication. Null for public operations. */
  readonly afterAuth: Stage | null;
}

export interface CompiledRateLimits {
  /**
   * The limits of one API's operations. Checks that every per-operation override names a
   * declared operationId (a ConfigError with the key path otherwise).
   */
  forApi(
    apiIndex: number,
    document: OpenApiDocument,
  ): Promise<(operationId: string | undefined, isProtected: boolean) => OperationLimits>;
  /**
   * The authorization server's limits: throws a 429 Denial for a `POST /token` or login POST
   * over its per-IP limit; returns the RateLimit headers otherwise (empty for other paths).
   */
  authorizationServer(
    method: string | undefined,
    path: string,
    clientIp: string,
    correlationId: string,
  ): Promise<Record<string, string>>;
}

const LOGIN_PATH = /^\/interaction\/[^/]+\/login$/;
const NONE: OperationLimits = { beforeAuth: null, afterAuth: null };

export async function compileRateLimits(
  loaded: LoadedConfig,
  backends: LimitBackends,
): Promise<CompiledRateLimits> {
  const config = loaded.config.rateLimits;
  if (config.mode === 'off') {
    return {
      forApi: () => Promise.resolve(() => NONE),
      authorizationServer: () => Promise.resolve({}),
    };
  }
  const enforce = config.mode === 'enforce';
  let target: RedisTarget | undefined;
  if (config.backend === 'redis') {
    const redis = loaded.config.redis;
    if (redis === undefined)
      throw configError(loaded, ['redis'], 'a redis backend is configured: set redis.url');
    target = { url: redis.url, keyPrefix: redis.keyPrefix };
  }
  const tarpits = new Map<Dimension, Tarpit | null>();
  const tarpitFor = async (dimension: Dimension): Promise<Tarpit | null> => {
    if (!config.tarpit.enabled) return null;
    let t = tarpits.get(dimension);
    if (t === undefined) {
      t = {
        violations: await backends.limiter(
          `violations:${dimension}`,
          { points: UNLIMITED, seconds: config.tarpit.windowSeconds },
          target,
        ),
        baseSeconds: config.tarpit.baseSeconds,
        maxSeconds: config.tarpit.maxSeconds,
      };
      tarpits.set(dimension, t);
    }
    return t;
  };
  const build = async (dimension: Dimension, name: string, policy: DimensionPolicy) =>
    compileDimension(
      dimension,
      policy,
      await backends.limiter(`${name}:burst`, policy.burst, target),
      await backends.limiter(`${name}:sustained`, policy.sustained, target),
      await tarpitFor(dimension),
    );
  const globals = {} as Record<OperationDimension, CompiledDimension>;
  for (const d of OPERATION_DIMENSIONS) globals[d] = await build(d, d, config[d]);
  const token = await build('token', 'token', config.token);
  const login = await build('login', 'login', config.login);
  const context = (correlationId: string): CheckContext => ({
    enforce,
    logger: backends.logger,
    correlationId,
  });

  return {
    async forApi(apiIndex, document) {
      const api = loaded.config.apis[apiIndex];
      if (api === undefined) throw new TypeError(`no API at index ${String(apiIndex)}`);
      const overrides = api.rateLimits?.operations ?? {};
      const declared = new Set(document.operations.map((o) => o.operationId));
      for (const id of Object.keys(overrides)) {
        if (!declared.has(id)) {
          throw configError(
            loaded,
            ['apis', apiIndex, 'rateLimits', 'operations', id],
            `no operation with operationId "${id}" in the OpenAPI document`,
          );
        }
      }
      const apiKeySchemes = new Set(
        Object.entries(document.securitySchemes)
          .filter(([, s]) => s.type === 'apiKey')
          .map(([name]) => name),
      );
      const compiled = new Map<string, Record<OperationDimension, CompiledDimension>>();
      for (const [id, override] of Object.entries(overrides)) {
        const dims = { ...globals };
        for (const d of OPERATION_DIMENSIONS) {
          const { policy, overridden } = resolvePolicy(config, d, override);
          if (overridden) dims[d] = await build(d, `op:${api.name}:${id}:${d}`, policy);
        }
        compiled.set(id, dims);
      }
      return (operationId, isProtected) => {
        const dims = (operationId === undefined ? undefined : compiled.get(operationId)) ?? globals;
        const ip = dims.ip;
        const beforeAuth: Stage = (req) =>
          countDimension(ip, ipKey(req.clientIp), req.responseHeaders, context(req.correlationId));
        if (!isProtected) return { beforeAuth, afterAuth: null };
        const afterAuth: Stage = (req) => {
          const keys = principalKeys(req, apiKeySchemes);
          const ctx = context(req.correlationId);
          const out = req.responseHeaders;
          // Counted in order; the first dimension that must wait (a store, a refusal) finishes
          // the rest asynchronously, in the same order.
          const steps: [CompiledDimension, string][] = [];
          if (keys.apiKey !== undefined) steps.push([dims.apiKey, keys.apiKey]);
          if (keys.client !== undefined) steps.push([dims.client, keys.client]);
          if (keys.user !== undefined) steps.push([dims.user, keys.user]);
          for (let i = 0; i < steps.length; i++) {
            const [dim, key] = steps[i] as [CompiledDimension, string];
            const pending = countDimension(dim, key, out, ctx);
            if (pending !== undefined) return finishSteps(pending, steps.slice(i + 1), out, ctx);
          }
          return undefined;
        };
        return { beforeAuth, afterAuth };
      };
    },
    async authorizationServer(method, path, clientIp, correlationId) {
      if (method !== 'POST') return {};
      const dim = path === '/token' ? token : LOGIN_PATH.test(path) ? login : undefined;
      if (dim === undefined) return {};
      const headers: Record<string, string> = {};
      await checkDimension(dim, ipKey(clientIp), headers, context(correlationId));
      return headers;
    },
  };
}

async function finishSteps(
  pending: Promise<void>,
  rest: readonly [CompiledDimension, string][],
  out: Record<string, string>,
  ctx: CheckContext,
): Promise<undefined> {
  await pending;
  for (const [dim, key] of rest) await countDimension(dim, key, out, ctx);
  return undefined;
}

function configError(loaded: LoadedConfig, path: ConfigPath, message: string): ConfigError {
  const at = loaded.locate(path);
  return new ConfigError(loaded.file, [
    { path: pathToString(path), message, ...(at ? { line: at.line, column: at.column } : {}) },
  ]);
}
