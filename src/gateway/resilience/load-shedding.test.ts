import { describe, expect, it } from 'vitest';
import { createPressureMonitor, overThreshold } from './load-shedding.ts';
import type { PressureSample } from './load-shedding.ts';

const settings = { maxEventLoopDelayMs: 1000, maxHeapUsedPercent: 90, maxRssBytes: 0, retryAfterSeconds: 5 };
const calm: PressureSample = { eventLoopDelayMs: 3, heapUsedPercent: 20, rssBytes: 200e6 };

describe('load shedding', () => {
  it('names the exceeded threshold, or none', () => {
    expect(overThreshold(calm, settings)).toBeUndefined();
    expect(overThreshold({ ...calm, eventLoopDelayMs: 1500 }, settings)).toBe('overloaded-event-loop');
    expect(overThreshold({ ...calm, heapUsedPercent: 95 }, settings)).toBe('overloaded-heap');
    expect(overThreshold({ ...calm, rssBytes: 1e12 }, settings)).toBeUndefined(); // 0: no RSS bound
    expect(overThreshold(calm, { ...settings, maxRssBytes: 100e6 })).toBe('overloaded-rss');
  });

  it('refuses with 503 + Retry-After while the injected signal says saturated', () => {
    let sample = calm;
    const monitor = createPressureMonitor({ sampler: () => sample, intervalMs: 60_000 });
    try {
      expect(() => {
        monitor.check(settings);
      }).not.toThrow();
      sample = { ...calm, eventLoopDelayMs: 2000 };
      // The check reads the last sample; a new one is taken on the timer.
      expect(() => {
        monitor.check(settings);
      }).not.toThrow();
      const pressured = createPressureMonitor({ sampler: () => sample, intervalMs: 60_000 });
      try {
        let caught: unknown;
        try {
          pressured.check(settings);
        } catch (err) {
          caught = err;
        }
        expect(caught).toMatchObject({
          code: 'unavailable',
          status: 503,
          reason: 'overloaded-event-loop',
          headers: { 'retry-after': '5' },
        });
      } finally {
        pressured.stop();
      }
    } finally {
      monitor.stop();
    }
  });

  it('samples the real process', () => {
    const monitor = createPressureMonitor();
    try {
      const s = monitor.sample();
      expect(s.rssBytes).toBeGreaterThan(0);
      expect(s.heapUsedPercent).toBeGreaterThan(0);
      expect(s.heapUsedPercent).toBeLessThan(100);
      expect(s.eventLoopDelayMs).toBeGreaterThanOrEqual(0);
    } finally {
      monitor.stop();
    }
  });
});
