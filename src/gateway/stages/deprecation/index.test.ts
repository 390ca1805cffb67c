import { describe, expect, it } from 'vitest';
import type { GatewayRequest } from '../../context.ts';
import { compileDeprecation, DeprecationError } from './index.ts';

const req = {} as GatewayRequest;
const LINK = 'https://docs.example.com/v2';

describe('deprecation', () => {
  it('formats RFC 9745 and RFC 8594 headers, and answers 410 from the sunset on (injected clock)', () => {
    let now = Date.parse('2030-01-01T00:00:00Z');
    const d = compileDeprecation(
      { deprecatedAt: '2029-06-30T12:00:00Z', sunsetAt: '2030-06-30', link: LINK },
      () => now,
    );
    expect(d.headers).toEqual({
      deprecation: '@1877515200',
      sunset: 'Sun, 30 Jun 2030 00:00:00 GMT',
      link: `<${LINK}>; rel="deprecation", <${LINK}>; rel="sunset"`,
    });
    expect(d.stage(req)).toBeUndefined();
    now = Date.parse('2030-06-30T00:00:00Z');
    expect(() => d.stage(req)).toThrow(expect.objectContaining({ code: 'gone', status: 410 }) as Error);
  });

  it('without a sunset: headers only, never 410', async () => {
    const d = compileDeprecation({ deprecatedAt: '2020-01-01', link: LINK }, () => Date.parse('2999-01-01'));
    expect(d.stage(req)).toBeUndefined();
    const res = await d.responseStage(req, { status: 200, headers: { 'content-type': 'application/json' } });
    expect(res.headers).toEqual({
      'content-type': 'application/json',
      deprecation: '@1577836800',
      link: `<${LINK}>; rel="deprecation"`,
    });
  });

  it('refuses a sunset before the deprecation', () => {
    expect(() =>
      compileDeprecation({ deprecatedAt: '2030-01-02', sunsetAt: '2030-01-01', link: LINK }),
    ).toThrow(DeprecationError);
  });
});
