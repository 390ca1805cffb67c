import { describe, expect, it } from 'vitest';
import { Denial } from '../problems.ts';
import { backoffMs, isRetryableFailure, UpstreamGuard } from './guard.ts';
import type { AttemptResult, CircuitStateChange } from './guard.ts';

const ok = (status = 200): AttemptResult => ({ statusCode: status, body: { resume: () => undefined } });
const reset = () => Object.assign(new Error('other side closed'), { code: 'UND_ERR_SOCKET' });

function guard(changes: CircuitStateChange[] = [], retries = 2, volumeThreshold = 1000) {
  return new UpstreamGuard({
    api: 'items',
    upstream: 'http://127.0.0.1:1',
    circuitBreaker: { errorThresholdPercentage: 50, volumeThreshold, windowMs: 10_000, resetMs: 60_000 },
    retries: { max: retries, baseDelayMs: 1, maxDelayMs: 2 },
    onStateChange: (c) => changes.push(c),
    sleep: async () => undefined,
  });
}

describe('retries', () => {
  it('retries idempotent methods after a reset, never POST or PATCH', async () => {
    for (const method of ['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE']) {
      const g = guard([], 2);
      let calls = 0;
      const res = await g.send(method, async () => {
        calls++;
        if (calls < 3) throw reset();
        return ok();
      });
      expect([method, res.statusCode, calls]).toEqual([method, 200, 3]);
      g.shutdown();
    }
    for (const method of ['POST', 'PATCH']) {
      const g = guard([], 2);
      let calls = 0;
      await expect(
        g.send(method, async () => {
          calls++;
          throw reset();
        }),
      ).rejects.toThrow('other side closed');
      expect(calls).toBe(1);
      g.shutdown();
    }
  });

  it('never more than two retries, whatever the configuration says', async () => {
    const g = guard([], 5);
    let calls = 0;
    await expect(
      g.send('GET', async () => {
        calls++;
        return ok(503);
      }),
    ).rejects.toMatchObject({ code: 'bad-gateway', reason: 'upstream-status-503' });
    expect(calls).toBe(3);
    g.shutdown();
  });

  it('classifies failures: connection errors and 502/503/504 retry; time-outs and 500 do not', () => {
    expect(isRetryableFailure(reset())).toBe(true);
    expect(isRetryableFailure(Object.assign(new Error('x'), { code: 'ECONNREFUSED' }))).toBe(true);
    expect(isRetryableFailure(Object.assign(new Error('x'), { code: 'UND_ERR_HEADERS_TIMEOUT' }))).toBe(
      false,
    );
    expect(isRetryableFailure(new Error('x'))).toBe(false);
  });

  it('backs off with jitter below a capped exponential ceiling', () => {
    const settings = { max: 2, baseDelayMs: 100, maxDelayMs: 250 };
    expect(backoffMs(0, settings, () => 0.999)).toBe(99);
    expect(backoffMs(1, settings, () => 0.999)).toBe(199);
    expect(backoffMs(5, settings, () => 0.999)).toBe(249);
    expect(backoffMs(1, settings, () => 0)).toBe(0);
  });
});

describe('circuit breaker', () => {
  it('opens on failures, fails fast with 503 + Retry-After without calling, and reports the change', async () => {
    const changes: CircuitStateChange[] = [];
    const g = guard(changes, 0, 2);
    for (let i = 0; i < 2; i++)
      await expect(g.send('POST', async () => ok(502))).rejects.toBeInstanceOf(Denial);
    expect(g.state).toBe('open');
    let called = false;
    const err = await g
      .send('GET', async () => {
        called = true;
        return ok();
      })
      .catch((e: unknown) => e);
    expect(called).toBe(false);
    expect(err).toMatchObject({
      code: 'unavailable',
      reason: 'circuit-open',
      headers: { 'retry-after': '60' },
    });
    expect(changes.map((c) => [c.from, c.to])).toEqual([['closed', 'open']]);
    g.shutdown();
  });

  it('4xx answers are not failures', async () => {
    const g = guard([], 0, 2);
    for (let i = 0; i < 5; i++) expect((await g.send('GET', async () => ok(404))).statusCode).toBe(404);
    expect(g.state).toBe('closed');
    g.shutdown();
  });
});
