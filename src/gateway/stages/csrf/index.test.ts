import { describe, expect, it } from 'vitest';
import type { OpenApiDocument, OpenApiOperation } from '../../openapi.ts';
import { needsCsrf, newCsrfToken, tokensMatch } from './index.ts';

const doc = {
  securitySchemes: {
    cookieKey: { type: 'apiKey', in: 'cookie', name: 's' },
    headerKey: { type: 'apiKey', in: 'header', name: 'x-api-key' },
  },
} as unknown as OpenApiDocument;

const op = (security: OpenApiOperation['security'], definition: Record<string, unknown> = {}) =>
  ({
    method: 'POST',
    path: '/x',
    operationId: undefined,
    security,
    parameters: [],
    definition,
  }) as OpenApiOperation;

describe('CSRF', () => {
  it('protects cookie-authenticated and flagged operations only', () => {
    expect(needsCsrf(op([{ cookieKey: [] }]), doc)).toBe(true);
    expect(needsCsrf(op([{ headerKey: [] }, { cookieKey: [] }]), doc)).toBe(true);
    expect(needsCsrf(op([{ headerKey: [] }]), doc)).toBe(false);
    expect(needsCsrf(op([]), doc)).toBe(false);
    expect(needsCsrf(op([], { 'x-portcullis-csrf': true }), doc)).toBe(true);
    expect(needsCsrf(op([], { 'x-portcullis-csrf': 'yes' }), doc)).toBe(false);
  });

  it('compares tokens exactly and issues unpredictable ones', () => {
    const a = newCsrfToken();
    expect(a).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(newCsrfToken()).not.toBe(a);
    expect(tokensMatch(a, a)).toBe(true);
    expect(tokensMatch(a, `${a}x`)).toBe(false);
    expect(tokensMatch(a, a.slice(0, -1))).toBe(false);
  });
});
