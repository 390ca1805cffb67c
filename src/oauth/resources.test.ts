import { describe, expect, it } from 'vitest';
import {
  ResourceRefusal,
  checkScopes,
  checkTarget,
  chooseResource,
  registeredAudiences,
} from './resources.ts';
import type { ResourceCatalog } from './resources.ts';

const A = 'https://gw.example/a';
const B = 'https://gw.example/b';
const catalog: ResourceCatalog = {
  resources: new Map([
    [A, { name: 'a', audience: A, scopes: new Set(['a:read', 'shared']) }],
    [B, { name: 'b', audience: B, scopes: new Set(['b:read', 'shared']) }],
  ]),
  oidcScopes: new Set(['openid', 'offline_access', 'profile']),
};

function refusal(fn: () => unknown): { error: string; description: string } {
  try {
    fn();
  } catch (err) {
    if (err instanceof ResourceRefusal) return { error: err.error, description: err.description };
    throw err;
  }
  throw new Error('expected a refusal');
}

describe('registeredAudiences', () => {
  it('derives them from the scopes, or takes the registered names and audiences', () => {
    expect(registeredAudiences(catalog, 'a:read openid', undefined)).toEqual(new Set([A]));
    expect(registeredAudiences(catalog, 'shared', undefined)).toEqual(new Set([A, B]));
    expect(registeredAudiences(catalog, 'a:read b:read', ['b'])).toEqual(new Set([B]));
    expect(registeredAudiences(catalog, 'a:read', [A, 'gone'])).toEqual(new Set([A]));
  });
});

describe('checkTarget and checkScopes', () => {
  const client = { scope: 'a:read shared openid', audiences: new Set([A]) };
  it('allow a registered resource and its scopes the client holds, plus OpenID scopes', () => {
    expect(checkTarget(catalog, client, A).name).toBe('a');
    expect(() => {
      checkScopes(catalog, client, [A], 'openid a:read shared profile');
    }).not.toThrow();
  });
  it('refuse unknown and unregistered resources, and foreign or unheld scopes', () => {
    expect(refusal(() => checkTarget(catalog, client, 'https://elsewhere/x')).error).toBe('invalid_target');
    expect(refusal(() => checkTarget(catalog, client, B)).error).toBe('invalid_target');
    expect(refusal(() => checkScopes(catalog, client, [A], 'b:read')).error).toBe('invalid_scope');
    expect(refusal(() => checkScopes(catalog, client, [A], 'a:write')).error).toBe('invalid_scope');
    const narrow = { scope: 'shared', audiences: new Set([A]) };
    expect(refusal(() => checkScopes(catalog, narrow, [A], 'a:read'))).toEqual({
      error: 'invalid_scope',
      description: 'client is not registered for scope a:read',
    });
  });
});

describe('chooseResource (no resource parameter)', () => {
  const both = { scope: 'a:read b:read shared', audiences: new Set([A, B]) };
  const onlyA = { scope: 'a:read shared', audiences: new Set([A]) };
  const at = (openIdOnly: boolean, oneOf?: string[]) => ({ openIdOnly, oneOf });
  it('takes the one API of the scopes, else the only registered one', () => {
    expect(chooseResource(catalog, both, 'a:read', at(false))).toBe(A);
    expect(chooseResource(catalog, both, 'openid b:read', at(true))).toBe(B);
    expect(chooseResource(catalog, onlyA, 'shared', at(false))).toBe(A);
    expect(chooseResource(catalog, onlyA, undefined, at(false))).toBe(A);
    expect(chooseResource(catalog, both, undefined, at(false, [B]))).toBe(B);
  });
  it('needs none for a sign-in with OpenID scopes only', () => {
    expect(chooseResource(catalog, both, 'openid profile', at(true))).toBeUndefined();
  });
  it('refuses what it cannot decide, saying what to send', () => {
    expect(refusal(() => chooseResource(catalog, both, 'a:read b:read', at(false))).error).toBe(
      'invalid_target',
    );
    expect(refusal(() => chooseResource(catalog, both, 'shared', at(false))).description).toMatch(
      /several APIs/,
    );
    expect(refusal(() => chooseResource(catalog, both, undefined, at(false))).description).toMatch(
      /choose one with the resource parameter/,
    );
    expect(refusal(() => chooseResource(catalog, both, undefined, at(false, [A, B]))).description).toMatch(
      /several resources were granted/,
    );
    expect(refusal(() => chooseResource(catalog, both, 'x:y', at(false))).error).toBe('invalid_scope');
    expect(refusal(() => chooseResource(catalog, onlyA, 'b:read', at(false))).error).toBe('invalid_scope');
  });
});
