import { setTimeout as sleep } from 'node:timers/promises';
import { RateLimiterMemory } from 'rate-limiter-flexible';
import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../../../config/load.ts';
import { Denial } from '../../problems.ts';
import { createLimitBackends, onLimited } from './backend.ts';
import type { LimitedEvent } from './backend.ts';
import { policyItems, resolvePolicy } from './config.ts';
import { checkDimension, compileDimension, ipKey } from './stage.ts';
import type { CheckContext } from './stage.ts';

const ctx: CheckContext = { enforce: true, logger: undefined, correlationId: 'c' };

function dimension(burst: number, sustained: number, tarpit: { base: number; max: number } | null) {
  const policy = { burst: { points: burst, seconds: 1 }, sustained: { points: sustained, seconds: 3600 } };
  return compileDimension(
    'ip',
    policy,
    new RateLimiterMemory({ points: burst, duration: 1 }),
    new RateLimiterMemory({ points: sustained, duration: 3600 }),
    tarpit === null
      ? null
      : {
          violations: new RateLimiterMemory({ points: 1e9, duration: 3600 }),
          baseSeconds: tarpit.base,
          maxSeconds: tarpit.max,
        },
  );
}

/** Sends requests until one is refused; returns the refusal. */
async function flood(dim: ReturnType<typeof dimension>, key: string, c = ctx): Promise<Denial> {
  for (let i = 0; i < 1000; i++) {
    try {
      await checkDimension(dim, key, {}, c);
    } catch (err) {
      if (err instanceof Denial) return err;
      throw err;
    }
  }
  throw new Error('never refused');
}

describe('ipKey', () => {
  it('keeps IPv4 and groups IPv6 by /64', () => {
    expect(ipKey('192.0.2.7')).toBe('192.0.2.7');
    expect(ipKey('2001:db8:1:2:aaaa::1')).toBe('2001:db8:1:2::/64');
    expect(ipKey('2001:0db8:0001:0002:ffff:0:0:9')).toBe('2001:db8:1:2::/64');
    expect(ipKey('2001:db8::1')).toBe('2001:db8:0:0::/64');
    expect(ipKey('::1')).toBe('0:0:0:0::/64');
  });
});

describe('checkDimension', () => {
  it('passes within the limits and describes them in RateLimit headers', async () => {
    const dim = dimension(5, 100, null);
    const out: Record<string, string> = {};
    await checkDimension(dim, 'a', out, ctx);
    expect(out['ratelimit-policy']).toBe('"ip-burst";q=5;w=1, "ip-sustained";q=100;w=3600');
    expect(out.ratelimit).toMatch(/^"ip-burst";r=4;t=[01], "ip-sustained";r=99;t=\d+$/);
  });

  it('refuses over the burst with 429, Retry-After and the headers; other keys pass', async () => {
    const dim = dimension(3, 100, null);
    const denial = await flood(dim, 'a');
    expect(denial.status).toBe(429);
    expect(denial.code).toBe('too-many-requests');
    expect(denial.reason).toBe('rate-limit-ip');
    expect(Number(denial.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(denial.headers.ratelimit).toMatch(/"ip-burst";r=0;t=\d+/);
    expect(denial.headers['ratelimit-policy']).toContain('"ip-burst";q=3;w=1');
    await expect(checkDimension(dim, 'b', {}, ctx)).resolves.toBeUndefined();
  });

  it('refuses over the sustained window even when the burst has room', async () => {
    const policy = { burst: { points: 100, seconds: 1 }, sustained: { points: 2, seconds: 3600 } };
    const dim = compileDimension(
      'client',
      policy,
      new RateLimiterMemory({ points: 100, duration: 1 }),
      new RateLimiterMemory({ points: 2, duration: 3600 }),
      null,
    );
    await checkDimension(dim, 'k', {}, ctx);
    await checkDimension(dim, 'k', {}, ctx);
    const denial = await flood(dim, 'k');
    expect(denial.reason).toBe('rate-limit-client');
    expect(Number(denial.headers['retry-after'])).toBeGreaterThan(3000);
  });

  it('blocks repeat offenders for a doubling time, capped', async () => {
    const dim = dimension(2, 1000, { base: 1, max: 2 });
    const events: LimitedEvent[] = [];
    const stop = onLimited((e) => events.push(e));
    try {
      const first = await flood(dim, 'x');
      expect(first.headers['retry-after']).toBe('1');
      // While blocked, refusals do not count as new violations.
      await expect(checkDimension(dim, 'x', {}, ctx)).rejects.toBeInstanceOf(Denial);
      await sleep(1100);
      const second = await flood(dim, 'x');
      expect(second.headers['retry-after']).toBe('2');
      await sleep(2100);
      const third = await flood(dim, 'x');
      expect(third.headers['retry-after']).toBe('2'); // capped at maxSeconds
    } finally {
      stop();
    }
    expect(events.filter((e) => e.violations !== undefined).map((e) => e.violations)).toEqual([1, 2, 3]);
  });

  it('in shadow mode, counts and reports but lets the request pass', async () => {
    const dim = dimension(1, 1000, { base: 60, max: 60 });
    const events: LimitedEvent[] = [];
    const stop = onLimited((e) => events.push(e));
    const shadow = { ...ctx, enforce: false };
    try {
      for (let i = 0; i < 5; i++) await checkDimension(dim, 's', {}, shadow);
    } finally {
      stop();
    }
    expect(events.length).toBeGreaterThanOrEqual(4);
    expect(events.every((e) => e.outcome === 'shadow')).toBe(true);
  });
});

describe('configuration', () => {
  const base = 'gateway: {port: 0}\nadmin: {enabled: false}\n';

  it('resolves per-operation overrides per window', () => {
    const { config } = parseConfig(base, '/tmp/p.yaml');
    const { policy, overridden } = resolvePolicy(config.rateLimits, 'ip', {
      ip: { burst: { points: 2, seconds: 10 } },
    });
    expect(overridden).toBe(true);
    expect(policy.burst).toEqual({ points: 2, seconds: 10 });
    expect(policy.sustained).toEqual(config.rateLimits.ip.sustained);
    expect(resolvePolicy(config.rateLimits, 'client', { ip: {} }).overridden).toBe(false);
    expect(policyItems('ip', policy)).toBe('"ip-burst";q=2;w=10, "ip-sustained";q=1000;w=60');
  });

  it('has secure defaults: enforced, in memory, with a tarpit', () => {
    const { config } = parseConfig(base, '/tmp/p.yaml');
    expect(config.rateLimits.mode).toBe('enforce');
    expect(config.rateLimits.backend).toBe('memory');
    expect(config.rateLimits.ip).toEqual({
      burst: { points: 50, seconds: 1 },
      sustained: { points: 1000, seconds: 60 },
    });
    expect(config.rateLimits.tarpit.enabled).toBe(true);
  });

  it('refuses shadow or off without a rate-limits exception, and redis without a URL', () => {
    expect(() => parseConfig(`${base}rateLimits: {mode: 'off'}\n`, '/tmp/p.yaml')).toThrow(ConfigError);
    expect(() => parseConfig(`${base}rateLimits: {mode: shadow}\n`, '/tmp/p.yaml')).toThrow(/rate-limits/);
    expect(() => parseConfig(`${base}rateLimits: {backend: redis}\n`, '/tmp/p.yaml')).toThrow(/redis\.url/);
    const exception = `exceptions:
  - id: lt-1
    control: rate-limits
    scope: load test environment
    rationale: measuring the upstream without limits
    compensatingControls: [isolated network]
    owner: platform
    approver: security
    expires: '2999-01-01'
`;
    expect(
      parseConfig(`${base}rateLimits: {mode: shadow}\n${exception}`, '/tmp/p.yaml').config.rateLimits.mode,
    ).toBe('shadow');
  });
});

describe('backends', () => {
  it('reuses memory limiters across configuration versions (same name and window)', async () => {
    const backends = createLimitBackends();
    try {
      const a = await backends.limiter('ip:burst', { points: 1, seconds: 60 });
      await a.consume('k');
      const b = await backends.limiter('ip:burst', { points: 1, seconds: 60 });
      expect(b).toBe(a);
      await expect(b.consume('k')).rejects.toMatchObject({ remainingPoints: 0 });
      expect(await backends.limiter('ip:burst', { points: 2, seconds: 60 })).not.toBe(a);
    } finally {
      await backends.close();
    }
  });
});
