import { beforeAll, describe, expect, it } from 'vitest';
import { generateSigningKey } from '../keys/generate.ts';
import type { GeneratedKey } from '../keys/generate.ts';
import { SIGNING_ALGS } from '../keys/generate.ts';
import type { Principal } from '../gateway/stages/authenticate/index.ts';
import { IDENTITY_TYP, createIdentitySigner, createIdentityVerifier } from './identity.ts';

const ISSUER = 'https://gateway.test';
const UPSTREAM = 'http://127.0.0.1:4999';
const T0 = Date.now();

function principal(over: Partial<Principal> = {}): Principal {
  return {
    scheme: 'oauth2',
    subject: 'user-1',
    clientId: 'client-1',
    scopes: new Set(['patients:read']),
    ...over,
  };
}

function claims(assertion: string): Record<string, unknown> {
  const [header, payload] = assertion.split('.');
  expect(JSON.parse(Buffer.from(header ?? '', 'base64url').toString())).toMatchObject({ typ: IDENTITY_TYP });
  return JSON.parse(Buffer.from(payload ?? '', 'base64url').toString()) as Record<string, unknown>;
}

describe('identity assertions', () => {
  const keys = new Map<string, GeneratedKey>();
  beforeAll(async () => {
    for (const alg of SIGNING_ALGS) keys.set(alg, await generateSigningKey(alg));
    keys.set('rotated', await generateSigningKey('ES256'));
  });
  const key = (name: string): GeneratedKey => {
    const k = keys.get(name);
    if (k === undefined) throw new Error(name);
    return k;
  };

  it.each(SIGNING_ALGS)('signs with %s synchronously, and the upstream verifier accepts it', async (alg) => {
    const k = key(alg);
    const sign = createIdentitySigner({
      issuer: ISSUER,
      signingJwks: () => ({ keys: [k.privateJwk] }),
      ttlSeconds: 30,
    });
    const assertion = sign({ audience: UPSTREAM, principal: principal() });
    expect(typeof assertion).toBe('string');
    const verify = createIdentityVerifier({
      issuer: ISSUER,
      audience: UPSTREAM,
      jwks: () => ({ keys: [k.publicJwk] }),
    });
    const who = await verify(assertion);
    expect(who).toEqual({ subject: 'user-1', clientId: 'client-1', scopes: new Set(['patients:read']) });
    const c = claims(assertion);
    expect(c).toMatchObject({ iss: ISSUER, aud: UPSTREAM, sub: 'user-1', auth_scheme: 'oauth2' });
    expect(Number(c.exp) - Number(c.iat)).toBe(30);
    expect(c.txn).toBeUndefined();
    // Bound to its audience: another upstream refuses it.
    const other = createIdentityVerifier({
      issuer: ISSUER,
      audience: 'http://127.0.0.1:1',
      jwks: () => ({ keys: [k.publicJwk] }),
    });
    await expect(other(assertion)).rejects.toThrow();
  });

  it('reuses one assertion per caller, client, scopes and audience for half its lifetime', () => {
    let now = T0;
    const k = key('ES256');
    const sign = createIdentitySigner({
      issuer: ISSUER,
      signingJwks: () => ({ keys: [k.privateJwk] }),
      ttlSeconds: 30,
      now: () => now,
    });
    const first = sign({ audience: UPSTREAM, principal: principal() });
    now += 14_000;
    expect(sign({ audience: UPSTREAM, principal: principal() })).toBe(first);
    // Any difference in who is asking or for whom gives another assertion.
    const variants = [
      sign({ audience: 'http://127.0.0.1:5000', principal: principal() }),
      sign({ audience: UPSTREAM, principal: principal({ subject: 'user-2' }) }),
      sign({ audience: UPSTREAM, principal: principal({ clientId: 'client-2' }) }),
      sign({
        audience: UPSTREAM,
        principal: principal({ scopes: new Set(['patients:read', 'patients:write']) }),
      }),
      sign({ audience: UPSTREAM, principal: principal({ scheme: 'apiKey' }) }),
    ];
    expect(new Set([first, ...variants]).size).toBe(6);
    expect(claims(variants[0] ?? '').aud).toBe('http://127.0.0.1:5000');
    expect(claims(variants[1] ?? '').sub).toBe('user-2');
    // Past half its lifetime a fresh one is signed, so an upstream never gets one about to expire.
    now += 1_001;
    const second = sign({ audience: UPSTREAM, principal: principal() });
    expect(second).not.toBe(first);
    expect(Number(claims(second).exp) * 1000).toBeGreaterThan(now + 29_000);
    expect(claims(second).jti).not.toBe(claims(first).jti);
  });

  it('drops every cached assertion when the current key changes', async () => {
    let current = key('ES256');
    const sign = createIdentitySigner({
      issuer: ISSUER,
      signingJwks: () => ({ keys: [current.privateJwk] }),
      currentKid: () => current.kid,
      ttlSeconds: 30,
    });
    const before = sign({ audience: UPSTREAM, principal: principal() });
    expect(sign({ audience: UPSTREAM, principal: principal() })).toBe(before);
    current = key('rotated');
    const after = sign({ audience: UPSTREAM, principal: principal() });
    expect(after).not.toBe(before);
    const header = JSON.parse(Buffer.from(after.split('.')[0] ?? '', 'base64url').toString()) as {
      kid: string;
    };
    expect(header.kid).toBe(current.kid);
    const verify = createIdentityVerifier({
      issuer: ISSUER,
      audience: UPSTREAM,
      jwks: () => ({ keys: [current.publicJwk] }),
    });
    await expect(verify(after)).resolves.toMatchObject({ subject: 'user-1' });
  });

  it('carries the privacy claim, and a change of consent gives a new assertion at once (issue 16)', async () => {
    const k = key('ES256');
    const sign = createIdentitySigner({
      issuer: ISSUER,
      signingJwks: () => ({ keys: [k.privateJwk] }),
      ttlSeconds: 30,
    });
    const verify = createIdentityVerifier({
      issuer: ISSUER,
      audience: UPSTREAM,
      jwks: () => ({ keys: [k.publicJwk] }),
    });
    const granted = {
      consents: ['analytics', 'profiling'],
      optOuts: [],
      version: 'c:analytics,profiling|o:',
    };
    const first = sign({ audience: UPSTREAM, principal: principal(), privacy: granted });
    expect(claims(first).privacy).toEqual({ consents: ['analytics', 'profiling'], opt_outs: [] });
    expect((await verify(first)).privacy).toEqual({ consents: ['analytics', 'profiling'], optOuts: [] });
    // Same choices: reused. Withdrawn consent: a new assertion, within the reuse window.
    expect(sign({ audience: UPSTREAM, principal: principal(), privacy: granted })).toBe(first);
    const withdrawn = {
      consents: ['analytics'],
      optOuts: ['sale-sharing'],
      version: 'c:analytics|o:sale-sharing',
    };
    const second = sign({ audience: UPSTREAM, principal: principal(), privacy: withdrawn });
    expect(second).not.toBe(first);
    expect(claims(second).privacy).toEqual({ consents: ['analytics'], opt_outs: ['sale-sharing'] });
    // Operations without privacy annotations: no claim, and a separate cache entry.
    const plain = sign({ audience: UPSTREAM, principal: principal() });
    expect(claims(plain).privacy).toBeUndefined();
    expect((await verify(plain)).privacy).toBeUndefined();
  });

  it('keeps the reuse cache bounded', () => {
    const k = key('ES256');
    const sign = createIdentitySigner({
      issuer: ISSUER,
      signingJwks: () => ({ keys: [k.privateJwk] }),
      ttlSeconds: 30,
      cacheMax: 2,
    });
    const a = sign({ audience: UPSTREAM, principal: principal({ subject: 'a' }) });
    sign({ audience: UPSTREAM, principal: principal({ subject: 'b' }) });
    sign({ audience: UPSTREAM, principal: principal({ subject: 'c' }) });
    // 'a' was the oldest and left the cache: asked again, it is signed anew.
    expect(sign({ audience: UPSTREAM, principal: principal({ subject: 'a' }) })).not.toBe(a);
  });

  it('refuses a lifetime above 60 seconds', () => {
    const k = key('ES256');
    expect(() =>
      createIdentitySigner({ issuer: ISSUER, signingJwks: () => ({ keys: [k.privateJwk] }), ttlSeconds: 61 }),
    ).toThrow(TypeError);
  });
});
