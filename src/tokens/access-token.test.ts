import { createHmac, generateKeyPairSync, sign as cryptoSign } from 'node:crypto';
import { exportJWK, SignJWT } from 'jose';
import type { JSONWebKeySet, JWK, JWTPayload } from 'jose';
import type { KeyObject } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { bearerToken, createAccessTokenVerifier, TokenError } from './access-token.ts';
import type { AccessTokenVerifier, TokenRejection } from './access-token.ts';

const ISSUER = 'https://localhost:8443';
const AUDIENCE = 'https://localhost:8443/v1';
const NOW = 1_800_000_000_000;
const nowSec = NOW / 1000;

let signing: { privateKey: KeyObject; publicJwk: JWK };
let other: { privateKey: KeyObject };
let jwks: JSONWebKeySet;
let verify: AccessTokenVerifier;
const revoked = new Set<string>();

function claims(overrides: JWTPayload = {}): JWTPayload {
  return {
    iss: ISSUER,
    aud: AUDIENCE,
    sub: 'user-1',
    client_id: 'client-1',
    scope: 'patients:read',
    jti: `jti-${Math.random().toString(36).slice(2)}`,
    iat: nowSec - 10,
    exp: nowSec + 600,
    ...overrides,
  };
}

async function sign(
  payload: JWTPayload,
  header: Record<string, unknown> = {},
  key: KeyObject = signing.privateKey,
): Promise<string> {
  return new SignJWT(payload)
    .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: signing.publicJwk.kid, ...header })
    .sign(key);
}

function b64(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

beforeAll(async () => {
  const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const publicJwk = { ...(await exportJWK(pair.publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
  signing = { privateKey: pair.privateKey, publicJwk };
  other = { privateKey: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey };
  jwks = { keys: [publicJwk] };
  verify = createAccessTokenVerifier({
    issuer: ISSUER,
    audience: AUDIENCE,
    keys: () => jwks,
    isRevoked: (jti) => revoked.has(jti),
    now: () => NOW,
  });
});

async function rejection(token: string): Promise<TokenRejection> {
  try {
    await verify(token);
  } catch (err) {
    if (err instanceof TokenError) return err.reason;
    throw err;
  }
  throw new Error('token was accepted');
}

describe('access-token verification', () => {
  it('accepts a well-formed token and returns its subject, client and scopes', async () => {
    const v = await verify(await sign(claims({ scope: 'patients:read patients:write' })));
    expect(v.subject).toBe('user-1');
    expect(v.clientId).toBe('client-1');
    expect([...v.scopes]).toEqual(['patients:read', 'patients:write']);
  });

  it('refuses forged, altered and unsigned tokens', async () => {
    expect(await rejection(await sign(claims(), {}, other.privateKey))).toBe('bad-signature');
    const good = await sign(claims());
    const [h, , s] = good.split('.');
    const altered = `${String(h)}.${b64(claims({ scope: 'patients:write admin' }))}.${String(s)}`;
    expect(await rejection(altered)).toBe('bad-signature');
    const unsigned = `${b64({ alg: 'none', typ: 'at+jwt' })}.${b64(claims())}.`;
    expect(['wrong-algorithm', 'invalid']).toContain(await rejection(unsigned));
  });

  it('refuses a repeated forged token every time, across a key rotation, and the genuine one still passes', async () => {
    const forged = await sign(claims({ jti: 'jti-forged-repeat' }), {}, other.privateKey);
    for (let i = 0; i < 3; i++) expect(await rejection(forged)).toBe('bad-signature');
    // The same claims signed by the issuer's key: a different token, verified on its own.
    const genuine = await sign(claims({ jti: 'jti-forged-repeat' }));
    expect((await verify(genuine)).subject).toBe('user-1');
    // A new key set (rotation) makes the remembered failure stale: it is verified again, and
    // still fails against the issuer's keys.
    const rotated = { ...signing.publicJwk, kid: 'k1-rotated' };
    const before = jwks;
    jwks = { keys: [signing.publicJwk, rotated] };
    try {
      expect(await rejection(forged)).toBe('bad-signature');
    } finally {
      jwks = before;
    }
  });

  it('refuses algorithm confusion: HS256 keyed with the public key', async () => {
    const header = b64({ alg: 'HS256', typ: 'at+jwt', kid: 'k1' });
    const body = b64(claims());
    const secret = JSON.stringify(signing.publicJwk);
    const mac = createHmac('sha256', secret).update(`${header}.${body}`).digest('base64url');
    expect(await rejection(`${header}.${body}.${mac}`)).toBe('wrong-algorithm');
  });

  it('never trusts keys named by the token: embedded jwk, jku, x5u', async () => {
    const attacker = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const attackerJwk = await exportJWK(attacker.publicKey);
    for (const header of [
      { jwk: attackerJwk, kid: 'attacker' },
      { jku: 'https://evil.example/jwks.json', kid: 'attacker' },
      { x5u: 'https://evil.example/cert.pem', kid: 'attacker' },
    ]) {
      expect(await rejection(await sign(claims(), header, attacker.privateKey))).toBe('bad-signature');
    }
  });

  it('refuses expired, not-yet-valid and future-issued tokens, within the skew', async () => {
    expect(await rejection(await sign(claims({ exp: nowSec - 31 })))).toBe('expired');
    await expect(verify(await sign(claims({ exp: nowSec - 5 })))).resolves.toBeDefined(); // within 30 s skew
    expect(await rejection(await sign(claims({ nbf: nowSec + 120 })))).toBe('not-yet-valid');
    expect(await rejection(await sign(claims({ iat: nowSec + 120 })))).toBe('not-yet-valid');
  });

  it('refuses the wrong issuer, audience and type', async () => {
    expect(await rejection(await sign(claims({ iss: 'https://evil.example' })))).toBe('wrong-issuer');
    expect(await rejection(await sign(claims({ aud: 'https://localhost:8443/v2' })))).toBe('wrong-audience');
    expect(await rejection(await sign(claims(), { typ: 'JWT' }))).toBe('wrong-type');
    // An ID token (typ JWT, aud = client) is not an access token.
    expect(await rejection(await sign(claims({ aud: 'client-1' }), { typ: 'JWT' }))).toMatch(/wrong-/);
  });

  it('refuses tokens missing required claims', async () => {
    for (const claim of ['exp', 'jti', 'sub', 'client_id', 'iat'] as const) {
      const c = claims();
      Reflect.deleteProperty(c, claim);
      expect(await rejection(await sign(c))).toBe('missing-claim');
    }
  });

  it('refuses unknown critical headers', async () => {
    // Signed by hand: jose itself refuses to produce a token with an unknown crit.
    const input = `${b64({ alg: 'ES256', typ: 'at+jwt', kid: 'k1', crit: ['x-must-understand'], 'x-must-understand': 1 })}.${b64(claims())}`;
    const signature = cryptoSign('sha256', Buffer.from(input), {
      key: signing.privateKey,
      dsaEncoding: 'ieee-p1363',
    });
    const token = `${input}.${signature.toString('base64url')}`;
    expect(await rejection(token)).toBe('invalid');
    // Control: the same hand-made signing without crit is accepted.
    const plain = `${b64({ alg: 'ES256', typ: 'at+jwt', kid: 'k1' })}.${b64(claims())}`;
    const plainSig = cryptoSign('sha256', Buffer.from(plain), {
      key: signing.privateKey,
      dsaEncoding: 'ieee-p1363',
    });
    await expect(verify(`${plain}.${plainSig.toString('base64url')}`)).resolves.toBeDefined();
  });

  it('refuses a revoked token on every request, even after it was cached', async () => {
    const c = claims();
    const token = await sign(c);
    await expect(verify(token)).resolves.toBeDefined();
    revoked.add(String(c.jti));
    expect(await rejection(token)).toBe('revoked');
  });

  it('refuses a key-bound token without proof of possession', async () => {
    expect(await rejection(await sign(claims({ cnf: { jkt: 'abc' } })))).toBe('bound-token-without-proof');
  });

  it('follows key rotation: a key removed from the set no longer verifies', async () => {
    const token = await sign(claims());
    jwks = { keys: [] };
    try {
      expect(await rejection(token.replace(/.$/, (c) => (c === 'A' ? 'B' : 'A')))).toBe('bad-signature');
      expect(await rejection(await sign(claims()))).toBe('bad-signature');
    } finally {
      jwks = { keys: [signing.publicJwk] };
    }
  });

  it('refuses configuring symmetric or none algorithms', () => {
    for (const alg of ['HS256', 'none']) {
      expect(() =>
        createAccessTokenVerifier({
          issuer: ISSUER,
          audience: AUDIENCE,
          keys: () => jwks,
          isRevoked: () => false,
          algorithms: [alg],
        }),
      ).toThrow(TypeError);
    }
  });
});

describe('bearerToken', () => {
  it('reads the Authorization header only in its exact form', () => {
    expect(bearerToken(undefined)).toBeUndefined();
    expect(bearerToken('Bearer abc.def.ghi')).toBe('abc.def.ghi');
    expect(bearerToken('bearer abc')).toBe('abc');
    for (const bad of [
      'Basic dXNlcjpwYXNz',
      'Bearer',
      'Bearer  abc',
      'Bearer abc def',
      'Bearer a\u0000b',
      'Token abc',
    ]) {
      expect(() => bearerToken(bad)).toThrow(TokenError);
    }
  });
});
