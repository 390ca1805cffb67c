import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger } from './index.ts';

function capture(level = 'info') {
  let text = '';
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      text += chunk.toString('utf8');
      cb();
    },
  });
  const logger = createLogger(level, sink);
  const lines = () =>
    text
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  return { logger, lines, text: () => text };
}

const ACCESS = {
  event: 'access',
  correlationId: 'c-1',
  method: 'GET',
  api: 'patients',
  route: '/v1/patients/{id}',
  status: 200,
  durationMs: 1.5,
  clientIp: '127.0.0.1',
  httpVersion: '1.1',
};

describe('logging', () => {
  it('writes access lines in the common format, with child bindings, at enabled levels only', () => {
    const { logger, lines } = capture();
    logger.info(ACCESS, 'request');
    logger.child({ pid: 42 }).info({ ...ACCESS, api: null, reason: 'unrouted' }, 'request');
    logger.debug(ACCESS, 'request');
    const [first, second, ...rest] = lines();
    expect(rest).toEqual([]);
    expect(first).toMatchObject({ ...ACCESS, level: 'info', service: 'portcullis', msg: 'request' });
    expect(typeof first?.time).toBe('string');
    expect(second).toMatchObject({
      pid: 42,
      api: null,
      reason: 'unrouted',
      level: 'info',
      service: 'portcullis',
    });
  });

  it('still redacts every other line, and an access line that carries anything else', () => {
    const { logger, text } = capture();
    logger.info({ event: 'x', password: 'pw-secret-1', nested: { token: 'tok-secret-2' } }, 'free');
    logger.warn({ headers: { authorization: 'Bearer hdr-secret-3', cookie: 'ck-secret-4' } }, 'free');
    logger.info({ ...ACCESS, headers: { authorization: 'Bearer acc-secret-5' } }, 'request');
    logger.info({ ...ACCESS, token: 'acc-secret-6' }, 'request');
    logger.child({ secret: 'child-secret-7' }).info(ACCESS, 'request');
    for (const secret of [
      'pw-secret-1',
      'tok-secret-2',
      'hdr-secret-3',
      'ck-secret-4',
      'acc-secret-5',
      'acc-secret-6',
      'child-secret-7',
    ]) {
      expect(text()).not.toContain(secret);
    }
    expect(text()).toContain('[redacted]');
  });
});
