/**
 * Rate-limit policies resolved from the configuration: the global limit of each dimension and
 * the per-operation overrides (`apis[].rateLimits.operations.<operationId>`), merged once at
 * compile time.
 */
import type { ApiConfig, RateLimitsConfig } from '../../../config/schema.ts';

/** What a limit counts by. `token` and `login` are the authorization server's per-IP limits. */
export type Dimension = 'ip' | 'client' | 'apiKey' | 'user' | 'token' | 'login';

/** The dimensions an API operation is limited by. */
export const OPERATION_DIMENSIONS = ['ip', 'client', 'apiKey', 'user'] as const;
export type OperationDimension = (typeof OPERATION_DIMENSIONS)[number];

export interface Window {
  readonly points: number;
  readonly seconds: number;
}

export interface DimensionPolicy {
  readonly burst: Window;
  readonly sustained: Window;
}

/** The policy of `dimension` for one operation: the override where one is set, else the global one. */
export function resolvePolicy(
  config: RateLimitsConfig,
  dimension: OperationDimension,
  override: NonNullable<ApiConfig['rateLimits']>['operations'][string] | undefined,
): { readonly policy: DimensionPolicy; readonly overridden: boolean } {
  const global = config[dimension];
  const own = override?.[dimension];
  if (own === undefined) return { policy: global, overridden: false };
  return {
    policy: { burst: own.burst ?? global.burst, sustained: own.sustained ?? global.sustained },
    overridden: true,
  };
}

/** The `RateLimit-Policy` items of one dimension (draft-ietf-httpapi-ratelimit-headers). */
export function policyItems(name: string, policy: DimensionPolicy): string {
  return (
    `"${name}-burst";q=${String(policy.burst.points)};w=${String(policy.burst.seconds)}, ` +
    `"${name}-sustained";q=${String(policy.sustained.points)};w=${String(policy.sustained.seconds)}`
  );
}
