import { describe, expect, it } from 'vitest';
import type { OpenApiDocument, OpenApiOperation } from '../../openapi.ts';
import { cookiePolicy, forwardedCookies, isReservedCookie, returnedSetCookies } from './cookies.ts';

function op(
  parameters: Record<string, unknown>[],
  responses: Record<string, unknown> = {},
): OpenApiOperation {
  return {
    method: 'GET',
    path: '/x',
    operationId: undefined,
    security: [],
    parameters,
    definition: { responses },
  };
}

const doc = (schemes: Record<string, Record<string, unknown>> = {}): OpenApiDocument => ({
  sha256: '',
  version: '3.1.0',
  title: 't',
  operations: [],
  securitySchemes: schemes,
});

describe('cookie policy', () => {
  it('knows the authorization server and gateway cookie names', () => {
    for (const name of [
      '_session',
      '_session.sig',
      '_session.legacy',
      '_session.legacy.sig',
      '_interaction',
      '_interaction.sig',
      '_interaction_resume',
      '_interaction_resume.sig',
      '_state.client-1',
      '__Host-csrf',
    ]) {
      expect(isReservedCookie(name)).toBe(true);
    }
    for (const name of ['session', 'theme', '_sessions', 'state.x'])
      expect(isReservedCookie(name)).toBe(false);
  });

  it('forwards nothing and returns no Set-Cookie when the operation declares neither', () => {
    const policy = cookiePolicy(op([{ name: 'q', in: 'query' }]), doc());
    expect(policy).toEqual({ forward: null, setCookie: false });
    expect(forwardedCookies('theme=dark', policy.forward)).toBeUndefined();
    expect(returnedSetCookies('theme=light', policy)).toBeUndefined();
  });

  it('never forwards a cookie that carries an API key, even when declared as a parameter', () => {
    const policy = cookiePolicy(
      op([
        { name: 'session', in: 'cookie' },
        { name: 'theme', in: 'cookie' },
      ]),
      doc({ key: { type: 'apiKey', in: 'cookie', name: 'session' } }),
    );
    expect(forwardedCookies('session=key-1; theme=dark; other=1', policy.forward)).toBe('theme=dark');
    expect(forwardedCookies(['session=key-1', 'theme=dark'], policy.forward)).toBe('theme=dark');
    expect(forwardedCookies('session=key-1', policy.forward)).toBeUndefined();
  });

  it('passes declared Set-Cookie lines except reserved names, whatever the header case', () => {
    const policy = cookiePolicy(op([], { '200': { headers: { 'set-cookie': {} } } }), doc());
    expect(policy.setCookie).toBe(true);
    expect(returnedSetCookies(['a=1; Path=/', '_session=x', ' _state.c=1', 'broken'], policy)).toEqual([
      'a=1; Path=/',
    ]);
    expect(returnedSetCookies('_interaction=x', policy)).toBeUndefined();
  });
});
