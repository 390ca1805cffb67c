/**
 * The per-request work of rate limiting: consume one point from the burst and the sustained
 * window of a dimension, and on the request that first crosses a limit count a violation and
 * block the key for a time that doubles with each violation in the tarpit window (capped).
 * Requests while blocked are refused without counting further violations.
 */
import { createHash } from 'node:crypto';
import { isIP } from 'node:net';
import { RateLimiterMemory, RateLimiterRes } from 'rate-limiter-flexible';
import { Denial } from '../../problems.ts';
import type { GatewayRequest } from '../../chain.ts';
import type { Logger } from '../../../log/index.ts';
import { emitLimited } from './backend.ts';
import type { Limiter } from './backend.ts';
import type { Dimension, DimensionPolicy } from './config.ts';
import { policyItems } from './config.ts';

export interface Tarpit {
  readonly violations: Limiter;
  readonly baseSeconds: number;
  readonly maxSeconds: number;
}

export interface CompiledDimension {
  /**
   * Both windows counted in process memory: a request that stays within them is counted
   * synchronously (no promise), through the limiters' own storage.
   */
  readonly sync: { readonly burst: MemoryCounter; readonly sustained: MemoryCounter } | null;
  readonly dimension: Dimension;
  readonly policy: DimensionPolicy;
  readonly burst: Limiter;
  readonly sustained: Limiter;
  /** The `RateLimit-Policy` items of this dimension, precomputed. */
  readonly policyHeader: string;
  readonly tarpit: Tarpit | null;
}

export interface CheckContext {
  readonly enforce: boolean;
  readonly logger: Logger | undefined;
  readonly correlationId: string;
}

export function compileDimension(
  dimension: Dimension,
  policy: DimensionPolicy,
  burst: Limiter,
  sustained: Limiter,
  tarpit: Tarpit | null,
): CompiledDimension {
  const b = memoryCounter(burst);
  const s = memoryCounter(sustained);
  return {
    dimension,
    policy,
    burst,
    sustained,
    tarpit,
    policyHeader: policyItems(dimension, policy),
    sync: b === undefined || s === undefined ? null : { burst: b, sustained: s },
  };
}

/**
 * What `RateLimiterMemory.consume()` does inside its promise (rate-limiter-flexible 5–7): one
 * `incrby` on its fixed-window storage. Reached through the limiter's own storage, so counts,
 * windows, expiry and `block()` stay exactly the library's.
 */
interface MemoryInternals {
  readonly points: number;
  readonly duration: number;
  readonly blockDuration: number;
  readonly execEvenly: boolean;
  getKey(key: string): string;
  readonly _memoryStorage: { incrby(key: string, value: number, durationSec: number): RateLimiterRes };
}

/** One synchronous count: the library's result and whether it went over the window. */
export interface MemoryCounter {
  count(key: string): RateLimiterRes;
  readonly points: number;
}

function memoryCounter(limiter: Limiter): MemoryCounter | undefined {
  if (!(limiter instanceof RateLimiterMemory)) return undefined;
  const m = limiter as unknown as Partial<MemoryInternals>;
  const storage = m._memoryStorage;
  // Only the plain configuration we create (no block duration, no even spreading).
  if (
    storage === undefined ||
    typeof storage.incrby !== 'function' ||
    typeof m.getKey !== 'function' ||
    m.blockDuration !== 0 ||
    m.execEvenly !== false ||
    typeof m.points !== 'number' ||
    typeof m.duration !== 'number'
  ) {
    return undefined;
  }
  const points = m.points;
  const duration = m.duration;
  const getKey = m.getKey.bind(limiter);
  return {
    points,
    count(key) {
      const res = storage.incrby(getKey(key), 1, duration);
      (res as { remainingPoints: number }).remainingPoints = Math.max(points - res.consumedPoints, 0);
      return res;
    },
  };
}

/**
 * The key an address is counted under: IPv4 as is, IPv6 by its /64 (one subscriber's prefix),
 * so that rotating through a prefix's addresses does not multiply the budget.
 */
export function ipKey(ip: string): string {
  if (isIP(ip) !== 6) return ip;
  const [head = '', tail = ''] = ip.split('::', 2);
  const left = head === '' ? [] : head.split(':');
  const right = tail === '' ? [] : tail.split(':');
  const groups = ip.includes('::')
    ? [...left, ...Array<string>(Math.max(0, 8 - left.length - right.length)).fill('0'), ...right]
    : left;
  return `${groups
    .slice(0, 4)
    .map((g) => (g.replace(/^0+/, '') || '0').toLowerCase())
    .join(':')}::/64`;
}

/** Keys from credentials are bounded: long ones are hashed. */
export function boundedKey(value: string): string {
  return value.length <= 128 ? value : createHash('sha256').update(value).digest('base64url');
}

interface WindowState {
  readonly remaining: number;
  readonly resetMs: number;
}

const windowState = (res: RateLimiterRes): WindowState => ({
  remaining: res.remainingPoints,
  resetMs: res.msBeforeNext,
});

/** Header items describing where the key stands after this request. */
function stateItems(name: Dimension, burst: WindowState, sustained: WindowState, policy: DimensionPolicy) {
  const item = (suffix: string, w: WindowState, points: number) =>
    `"${name}-${suffix}";r=${String(Math.max(0, Math.min(points, w.remaining)))};t=${String(Math.max(0, Math.ceil(w.resetMs / 1000)))}`;
  return `${item('burst', burst, policy.burst.points)}, ${item('sustained', sustained, policy.sustained.points)}`;
}

function settle(result: PromiseSettledResult<RateLimiterRes>): { res: RateLimiterRes; over: boolean } {
  if (result.status === 'fulfilled') return { res: result.value, over: false };
  const reason: unknown = result.reason;
  if (reason instanceof RateLimiterRes) return { res: reason, over: true };
  // Only a store limiter without insurance rejects with an error; ours all have insurance.
  throw reason instanceof Error ? reason : new Error('rate limiter failed');
}

/** Adds one dimension's headers to what a response (or refusal) will carry. */
function appendHeaders(headers: Record<string, string>, policy: string, state: string): void {
  headers['ratelimit-policy'] =
    headers['ratelimit-policy'] === undefined ? policy : `${headers['ratelimit-policy']}, ${policy}`;
  headers.ratelimit = headers.ratelimit === undefined ? state : `${headers.ratelimit}, ${state}`;
}

/**
 * Counts one request of `key` against `dim`. Adds the RateLimit headers to `out`; throws a 429
 * {@link Denial} (with `Retry-After` and the headers gathered so far) when over a limit and
 * enforcing.
 */
export async function checkDimension(
  dim: CompiledDimension,
  key: string,
  out: Record<string, string>,
  ctx: CheckContext,
): Promise<void> {
  await countDimension(dim, key, out, ctx);
}

/**
 * {@link checkDimension} for the request path: `undefined` (no promise) when the request was
 * counted in memory within both windows; otherwise a promise that settles as checkDimension's.
 */
export function countDimension(
  dim: CompiledDimension,
  key: string,
  out: Record<string, string>,
  ctx: CheckContext,
): Promise<undefined> | undefined {
  const sync = dim.sync;
  if (sync !== null) {
    const b = sync.burst.count(key);
    const s = sync.sustained.count(key);
    const burst = { res: b, over: b.consumedPoints > sync.burst.points };
    const sustained = { res: s, over: s.consumedPoints > sync.sustained.points };
    if (!burst.over && !sustained.over) {
      appendHeaders(
        out,
        dim.policyHeader,
        stateItems(dim.dimension, windowState(b), windowState(s), dim.policy),
      );
      return undefined;
    }
    return overLimit(dim, key, out, ctx, burst, sustained);
  }
  return checkAsync(dim, key, out, ctx);
}

async function checkAsync(
  dim: CompiledDimension,
  key: string,
  out: Record<string, string>,
  ctx: CheckContext,
): Promise<undefined> {
  const [b, s] = await Promise.allSettled([dim.burst.consume(key), dim.sustained.consume(key)]);
  const burst = settle(b);
  const sustained = settle(s);
  if (!burst.over && !sustained.over) {
    appendHeaders(
      out,
      dim.policyHeader,
      stateItems(dim.dimension, windowState(burst.res), windowState(sustained.res), dim.policy),
    );
    return undefined;
  }
  return overLimit(dim, key, out, ctx, burst, sustained);
}

/** A window is over its limit: count the violation, block (tarpit), refuse or shadow. */
async function overLimit(
  dim: CompiledDimension,
  key: string,
  out: Record<string, string>,
  ctx: CheckContext,
  burst: { res: RateLimiterRes; over: boolean },
  sustained: { res: RateLimiterRes; over: boolean },
): Promise<undefined> {
  // The request that first crosses a window's limit is the violation; later ones in the same
  // window (or while blocked) are refused without counting again.
  const crossed =
    (burst.over && burst.res.consumedPoints === dim.policy.burst.points + 1) ||
    (sustained.over && sustained.res.consumedPoints === dim.policy.sustained.points + 1);
  let waitMs = Math.max(
    burst.over ? burst.res.msBeforeNext : 0,
    sustained.over ? sustained.res.msBeforeNext : 0,
  );
  let blockSeconds: number | undefined;
  let violations: number | undefined;
  if (crossed && dim.tarpit !== null && ctx.enforce) {
    const counted = await dim.tarpit.violations.consume(key);
    violations = counted.consumedPoints;
    blockSeconds = Math.min(
      dim.tarpit.maxSeconds,
      dim.tarpit.baseSeconds * 2 ** Math.min(violations - 1, 30),
    );
    if (blockSeconds * 1000 > waitMs) {
      // Blocking the burst window holds every request of the key until it expires.
      await dim.burst.block(key, blockSeconds);
      waitMs = blockSeconds * 1000;
    }
    ctx.logger?.info(
      {
        event: 'rate-limit-block',
        correlationId: ctx.correlationId,
        dimension: dim.dimension,
        violations,
        blockSeconds,
      },
      'rate limit exceeded; key blocked',
    );
  }
  const retryAfter = Math.max(1, Math.ceil(waitMs / 1000));
  const state = stateItems(
    dim.dimension,
    burst.over ? { remaining: 0, resetMs: waitMs } : windowState(burst.res),
    sustained.over
      ? { remaining: 0, resetMs: Math.max(waitMs, sustained.res.msBeforeNext) }
      : windowState(sustained.res),
    dim.policy,
  );
  emitLimited({
    dimension: dim.dimension,
    outcome: ctx.enforce ? 'enforced' : 'shadow',
    ...(blockSeconds === undefined ? {} : { blockSeconds }),
    ...(violations === undefined ? {} : { violations }),
  });
  if (!ctx.enforce) {
    if (crossed) {
      ctx.logger?.info(
        { event: 'rate-limit-shadow', correlationId: ctx.correlationId, dimension: dim.dimension },
        'rate limit exceeded (shadow mode: not enforced)',
      );
    }
    appendHeaders(out, dim.policyHeader, state);
    return undefined;
  }
  const headers = { ...out };
  appendHeaders(headers, dim.policyHeader, state);
  headers['retry-after'] = String(retryAfter);
  throw new Denial('too-many-requests', `rate-limit-${dim.dimension}`, {
    headers,
    rateLimit: { dimension: dim.dimension, key, retryAfterSeconds: retryAfter },
  });
}

/** The request's principal key for a dimension, or undefined when it does not apply. */
export function principalKeys(
  req: GatewayRequest,
  apiKeySchemes: ReadonlySet<string>,
): { client?: string; apiKey?: string; user?: string } {
  const p = req.principal;
  if (p === undefined) return {};
  if (apiKeySchemes.has(p.scheme)) return { apiKey: boundedKey(p.subject) };
  const out: { client?: string; user?: string } = {};
  if (p.clientId !== '') out.client = boundedKey(p.clientId);
  if (p.subject !== '' && p.subject !== p.clientId) out.user = boundedKey(p.subject);
  return out;
}
