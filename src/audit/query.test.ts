import { describe, expect, it } from 'vitest';
import { AuditQueryError, parseAuditQuery, parseQueryDate } from './query.ts';

describe('audit query times', () => {
  const now = () => Date.parse('2026-12-07T12:00:00.000Z');

  it('takes ISO-8601 dates and times ago (s, m, h, d, w)', () => {
    expect(parseQueryDate('since', '2026-12-01')).toBe('2026-12-01T00:00:00.000Z');
    expect(parseQueryDate('since', '90s', now)).toBe('2026-12-07T11:58:30.000Z');
    expect(parseQueryDate('since', '15m', now)).toBe('2026-12-07T11:45:00.000Z');
    expect(parseQueryDate('since', '1h', now)).toBe('2026-12-07T11:00:00.000Z');
    expect(parseQueryDate('since', '7d', now)).toBe('2026-11-30T12:00:00.000Z');
    expect(parseQueryDate('since', '2w', now)).toBe('2026-11-23T12:00:00.000Z');
  });

  it('refuses anything else, naming the field and the accepted forms', () => {
    for (const bad of ['1y', '-1h', '1.5h', 'h', '1 h', '9999999h', 'yesterday', 'x'.repeat(65)]) {
      expect(() => parseQueryDate('since', bad, now), bad).toThrow(AuditQueryError);
    }
    expect(() => parseQueryDate('until', 'soon')).toThrow(/ISO-8601 date or date-time, or a time ago/);
  });

  it('the admin query string takes the same forms', () => {
    const q = parseAuditQuery({ since: '1h' });
    expect(Date.now() - Date.parse(q.since ?? '')).toBeGreaterThanOrEqual(3_600_000);
    expect(Date.now() - Date.parse(q.since ?? '')).toBeLessThan(3_660_000);
  });
});
