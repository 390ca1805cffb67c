/**
 * The browser-facing and lifecycle policies of an API, compiled once per configuration version
 * beside its stage chains (compile.ts calls these; the logic lives in the stages' own modules):
 *
 * - deprecation (stages/deprecation): a first stage answering 410 after the sunset, and a
 *   response stage adding `Deprecation` / `Sunset` / `Link`;
 * - CSRF (stages/csrf): a stage right after CORS for cookie-authenticated operations;
 * - WebSocket (websocket.ts): whether a GET operation may be upgraded (`x-portcullis-websocket`);
 * - resilience (resilience/guard.ts): the upstream's circuit breaker and retry settings.
 */
import type { ApiConfig } from '../config/schema.ts';
import type { ResponseStage, Stage } from './context.ts';
import type { OpenApiDocument, OpenApiOperation } from './openapi.ts';
import type { CircuitStateChange, GuardOptions } from './resilience/guard.ts';
import { compileCsrf } from './stages/csrf/index.ts';
import { compileDeprecation, DeprecationError } from './stages/deprecation/index.ts';
import type { CompiledDeprecation } from './stages/deprecation/index.ts';

export const WEBSOCKET_EXTENSION = 'x-portcullis-websocket';

/** A policy that cannot be compiled; `key` is the configuration key to name. */
export class PolicyError extends Error {
  readonly key: 'deprecation' | 'openapi';
  constructor(key: 'deprecation' | 'openapi', message: string) {
    super(message);
    this.name = 'PolicyError';
    this.key = key;
  }
}

export interface ApiPolicies {
  readonly deprecation: CompiledDeprecation | null;
  /** Origins whose pages may send unsafe requests (CSRF) or open WebSockets. */
  readonly trustedOrigins: readonly string[];
}

export interface OperationPolicies {
  /** Stages before everything else (the sunset check). */
  readonly first: readonly Stage[];
  /** Stages right after CORS (CSRF). */
  readonly afterCors: readonly Stage[];
  /** Response stages after the others (deprecation headers). */
  readonly responseStages: readonly ResponseStage[];
  /** The operation accepts a WebSocket upgrade. */
  readonly websocket: boolean;
}

export function compileApiPolicies(api: ApiConfig, publicUrl: string, now?: () => number): ApiPolicies {
  let deprecation: CompiledDeprecation | null = null;
  if (api.deprecation !== undefined) {
    try {
      deprecation = compileDeprecation(api.deprecation, now);
    } catch (err) {
      if (err instanceof DeprecationError) throw new PolicyError('deprecation', err.message);
      throw err;
    }
  }
  return { deprecation, trustedOrigins: [new URL(publicUrl).origin, ...(api.cors?.allowOrigins ?? [])] };
}

export function compileOperationPolicies(
  op: OpenApiOperation,
  document: OpenApiDocument,
  api: ApiPolicies,
): OperationPolicies {
  const flag = op.definition[WEBSOCKET_EXTENSION];
  if (flag !== undefined && typeof flag !== 'boolean') {
    throw new PolicyError('openapi', `${op.method} ${op.path}: ${WEBSOCKET_EXTENSION} must be a boolean`);
  }
  if (flag === true && op.method !== 'GET') {
    throw new PolicyError('openapi', `${op.method} ${op.path}: ${WEBSOCKET_EXTENSION} is only for GET`);
  }
  const csrf = compileCsrf(op, document, { trustedOrigins: api.trustedOrigins });
  return {
    first: api.deprecation === null ? [] : [api.deprecation.stage],
    afterCors: csrf === null ? [] : [csrf],
    responseStages: api.deprecation === null ? [] : [api.deprecation.responseStage],
    websocket: flag === true,
  };
}

/** The upstream's resilience settings from its configuration. */
export function resilienceOptions(
  api: ApiConfig,
  onStateChange: ((change: CircuitStateChange) => void) | undefined,
): Omit<GuardOptions, 'upstream'> {
  return {
    api: api.name,
    circuitBreaker: api.upstream.circuitBreaker,
    retries: api.upstream.retries,
    ...(onStateChange === undefined ? {} : { onStateChange }),
  };
}
