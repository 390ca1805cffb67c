/**
 * DPoP (RFC 9449): the proof verifier's allowed path and attack corpus, the replay cache, and
 * DPoP-bound access tokens through the OAuth scheme verifier and the authenticate stage (the
 * `DPoP` authorization scheme, the Bearer-scheme downgrade, the RFC 9449 challenges).
 */
import { createHmac, generateKeyPairSync } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { calculateJwkThumbprint, exportJWK, SignJWT } from 'jose';
import type { JWK, JWTPayload } from 'jose';
import { beforeAll, describe, expect, it } from 'vitest';
import type { GatewayRequest } from '../gateway/context.ts';
import type { CompiledOperation } from '../gateway/compile.ts';
import { Denial } from '../gateway/problems.ts';
import { compileAuthenticate } from '../gateway/stages/authenticate/index.ts';
import { createAccessTokenVerifier } from './access-token.ts';
import type { AccessTokenVerifier } from './access-token.ts';
import { accessTokenHash, createMemoryReplayCache, DpopError, htuOf, verifyDpopProof } from './dpop.ts';
import type { DpopProofCheck, DpopRejection, ReplayCache } from './dpop.ts';
import { oauthSchemeVerifier } from './oauth-verifier.ts';

const NOW = 1_800_000_000_000;
const nowSec = NOW / 1000;
const URL_ = 'https://gw.example/v1/patients/42';
const ISSUER = 'https://gw.example';
const AUDIENCE = 'https://gw.example/v1';

interface Pair {
  privateKey: KeyObject;
  publicJwk: JWK;
  jkt: string;
}

async function pair(type: 'ec' | 'rsa' | 'ed25519' = 'ec'): Promise<Pair> {
  const keys =
    type === 'ec'
      ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
      : type === 'rsa'
        ? generateKeyPairSync('rsa', { modulusLength: 2048 })
        : generateKeyPairSync('ed25519');
  const publicJwk = await exportJWK(keys.publicKey);
  return { privateKey: keys.privateKey, publicJwk, jkt: await calculateJwkThumbprint(publicJwk, 'sha256') };
}

let client: Pair;
let attacker: Pair;
let issuerKey: Pair;
let jtiCounter = 0;

function b64(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

async function proof(
  claims: JWTPayload = {},
  options: { header?: Record<string, unknown>; key?: Pair; alg?: string } = {},
): Promise<string> {
  const key = options.key ?? client;
  const alg = options.alg ?? 'ES256';
  return new SignJWT({ htm: 'GET', htu: URL_, iat: nowSec, jti: `jti-${String(++jtiCounter)}`, ...claims })
    .setProtectedHeader({ alg, typ: 'dpop+jwt', jwk: key.publicJwk, ...options.header })
    .sign(key.privateKey);
}

beforeAll(async () => {
  client = await pair();
  attacker = await pair();
  issuerKey = await pair();
});

function check(p: string, over: Partial<DpopProofCheck> = {}): DpopProofCheck {
  return {
    proof: p,
    method: 'GET',
    url: URL_,
    now: NOW,
    iatWindowSeconds: 60,
    replay: createMemoryReplayCache({ now: () => NOW }),
    ...over,
  };
}

async function rejection(c: DpopProofCheck): Promise<DpopRejection> {
  try {
    await verifyDpopProof(c);
  } catch (err) {
    if (err instanceof DpopError) return err.reason;
    throw err;
  }
  throw new Error('proof was accepted');
}

describe('DPoP proof verification', () => {
  it('accepts a valid proof (ES256, PS256, EdDSA) and returns the key thumbprint', async () => {
    const r = await verifyDpopProof(check(await proof()));
    expect(r.jkt).toBe(client.jkt);
    for (const [type, alg] of [
      ['rsa', 'PS256'],
      ['ed25519', 'EdDSA'],
    ] as const) {
      const k = await pair(type);
      const v = await verifyDpopProof(check(await proof({}, { key: k, alg })));
      expect(v.jkt).toBe(k.jkt);
    }
  });

  it('accepts the matching ath and cnf.jkt, and htu differing only by query, fragment or normalisation', async () => {
    const token = 'eyJ.token.value';
    const p = await proof({
      ath: accessTokenHash(token),
      htu: 'HTTPS://GW.example:443/v1/patients/42?x=1#f',
    });
    const r = await verifyDpopProof(
      check(p, { accessToken: token, expectedJkt: client.jkt, url: `${URL_}?page=2` }),
    );
    expect(r.jkt).toBe(client.jkt);
    expect(htuOf('https://gw.example/a?b#c')).toBe('https://gw.example/a');
    expect(htuOf('ftp://gw.example/a')).toBeUndefined();
    expect(htuOf('https://u:p@gw.example/a')).toBeUndefined();
  });

  it('refuses a replayed proof, once valid, within the window', async () => {
    const replay = createMemoryReplayCache({ now: () => NOW });
    const p = await proof();
    await verifyDpopProof(check(p, { replay }));
    expect(await rejection(check(p, { replay }))).toBe('replayed');
    // A different key may use the same jti (jtis are scoped by the key).
    await verifyDpopProof(check(await proof({ jti: 'jti-shared' }), { replay }));
    await verifyDpopProof(check(await proof({ jti: 'jti-shared' }, { key: attacker }), { replay }));
    // An invalid proof does not occupy the cache.
    const wrong = await proof({ htm: 'POST' });
    expect(await rejection(check(wrong, { replay }))).toBe('wrong-method');
    await expect(verifyDpopProof(check(wrong, { replay, method: 'POST' }))).resolves.toMatchObject({
      jkt: client.jkt,
    });
  });

  it('bounds the in-memory replay cache: expired entries go, a full cache refuses', async () => {
    let t = NOW;
    const cache = createMemoryReplayCache({ maxEntries: 2, now: () => t });
    expect(await cache.seen('a', NOW + 1000)).toBe(false);
    expect(await cache.seen('a', NOW + 1000)).toBe(true);
    expect(await cache.seen('b', NOW + 5000)).toBe(false);
    await expect(cache.seen('c', NOW + 5000)).rejects.toThrow(/full/);
    expect(await rejection(check(await proof(), { replay: cache }))).toBe('replay-cache-full');
    t = NOW + 1000;
    expect(await cache.seen('a', NOW + 6000)).toBe(false);
    expect(cache.size).toBe(2);
  });

  it.each<[string, () => Promise<DpopProofCheck>, DpopRejection]>([
    ['wrong htm', async () => check(await proof({ htm: 'POST' })), 'wrong-method'],
    ['lower-case htm', async () => check(await proof({ htm: 'get' })), 'wrong-method'],
    [
      'wrong htu path',
      async () => check(await proof({ htu: 'https://gw.example/v1/patients/43' })),
      'wrong-url',
    ],
    [
      'wrong htu host',
      async () => check(await proof({ htu: 'https://evil.example/v1/patients/42' })),
      'wrong-url',
    ],
    [
      'wrong htu scheme',
      async () => check(await proof({ htu: 'http://gw.example/v1/patients/42' })),
      'wrong-url',
    ],
    ['relative htu', async () => check(await proof({ htu: '/v1/patients/42' })), 'wrong-url'],
    ['htu with a trailing slash', async () => check(await proof({ htu: `${URL_}/` })), 'wrong-url'],
    ['iat too old', async () => check(await proof({ iat: nowSec - 61 })), 'iat-too-old'],
    ['iat in the future', async () => check(await proof({ iat: nowSec + 6 })), 'iat-in-future'],
    ['missing iat', async () => check(await proof({ iat: undefined })), 'missing-claim'],
    ['missing jti', async () => check(await proof({ jti: undefined })), 'missing-claim'],
    ['empty jti', async () => check(await proof({ jti: '' })), 'missing-claim'],
    ['missing htm', async () => check(await proof({ htm: undefined })), 'missing-claim'],
    ['missing ath with a token', async () => check(await proof(), { accessToken: 'tok' }), 'wrong-ath'],
    [
      'ath of another token',
      async () => check(await proof({ ath: accessTokenHash('other') }), { accessToken: 'tok' }),
      'wrong-ath',
    ],
    [
      'signed by another key than cnf.jkt',
      async () => check(await proof({}, { key: attacker }), { expectedJkt: client.jkt }),
      'key-mismatch',
    ],
    ['typ JWT', async () => check(await proof({}, { header: { typ: 'JWT' } })), 'wrong-type'],
    ['no typ', async () => check(await proof({}, { header: { typ: undefined } })), 'wrong-type'],
    [
      'alg none',
      async () =>
        check(`${b64({ alg: 'none', typ: 'dpop+jwt', jwk: client.publicJwk })}.${b64({ htm: 'GET' })}.`),
      'malformed',
    ],
    [
      'alg none with a signature part',
      async () =>
        check(
          `${b64({ alg: 'none', typ: 'dpop+jwt', jwk: client.publicJwk })}.${b64({ htm: 'GET', htu: URL_, iat: nowSec, jti: 'n' })}.AAAA`,
        ),
      'wrong-algorithm',
    ],
    [
      'HS256 with a symmetric jwk',
      async () => {
        const secret = Buffer.from('secret-secret-secret-secret-32by');
        const h = b64({
          alg: 'HS256',
          typ: 'dpop+jwt',
          jwk: { kty: 'oct', k: secret.toString('base64url') },
        });
        const p = b64({ htm: 'GET', htu: URL_, iat: nowSec, jti: 'h' });
        return check(`${h}.${p}.${createHmac('sha256', secret).update(`${h}.${p}`).digest('base64url')}`);
      },
      'wrong-algorithm',
    ],
    [
      'ES256 header over an Ed25519 key',
      async () => {
        const ed = await pair('ed25519');
        const [, body, sig] = (await proof({}, { key: ed, alg: 'EdDSA' })).split('.');
        return check(
          `${b64({ alg: 'ES256', typ: 'dpop+jwt', jwk: ed.publicJwk })}.${body ?? ''}.${sig ?? ''}`,
        );
      },
      'bad-key',
    ],
    [
      'private key in the header jwk',
      async () => {
        const jwk = await exportJWK(client.privateKey);
        return check(await proof({}, { header: { jwk } }));
      },
      'bad-key',
    ],
    ['no jwk', async () => check(await proof({}, { header: { jwk: undefined } })), 'bad-key'],
    ['jwk not an object', async () => check(await proof({}, { header: { jwk: 'x' } })), 'bad-key'],
    [
      'jwk of another key than the signature',
      async () => check(await proof({}, { header: { jwk: attacker.publicJwk } })),
      'bad-signature',
    ],
    [
      'altered payload',
      async () => {
        const [h, , s] = (await proof()).split('.');
        return check(`${h ?? ''}.${b64({ htm: 'GET', htu: URL_, iat: nowSec, jti: 'x' })}.${s ?? ''}`);
      },
      'bad-signature',
    ],
    ['not a JWS', async () => check('a.b'), 'malformed'],
    ['oversized', async () => check('a'.repeat(9000) + '.b.c'), 'malformed'],
    ['two proofs joined', async () => check(`${await proof()}, ${await proof()}`), 'malformed'],
  ])('refuses a proof with %s', async (_name, make, reason) => {
    expect(await rejection(await make())).toBe(reason);
  });

  it('refuses to be configured with none or HS* algorithms', async () => {
    await expect(verifyDpopProof(check(await proof(), { algorithms: ['HS256'] }))).rejects.toThrow(TypeError);
    await expect(verifyDpopProof(check(await proof(), { algorithms: ['none'] }))).rejects.toThrow(TypeError);
  });
});

// ---------------------------------------------------------------------------------------------
// DPoP-bound access tokens at the gateway

async function accessToken(claims: JWTPayload = {}): Promise<string> {
  return new SignJWT({
    iss: ISSUER,
    aud: AUDIENCE,
    sub: 'user-1',
    client_id: 'client-1',
    scope: 'patients:read',
    jti: `at-${String(++jtiCounter)}`,
    iat: nowSec - 10,
    exp: nowSec + 600,
    ...claims,
  })
    .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: 'k1' })
    .sign(issuerKey.privateKey);
}

function request(headers: Record<string, string>, method = 'GET'): GatewayRequest {
  return {
    correlationId: 'c',
    method,
    target: { path: '/v1/patients/42', segments: ['v1', 'patients', '42'], query: 'page=2' },
    headers,
    peerIp: '127.0.0.1',
    clientIp: '127.0.0.1',
    peerCertificate: () => undefined,
    operation: { api: { name: 'patients' }, operationId: 'getPatient' } as unknown as CompiledOperation,
    params: {},
    body: undefined,
    credentialPresented: false,
    responseHeaders: {},
  };
}

describe('DPoP-bound access tokens', () => {
  let verifyBound: AccessTokenVerifier;
  let verifyPlain: AccessTokenVerifier;
  let replay: ReplayCache;
  const dpopOptions = () => ({
    replay,
    requestUrl: (req: GatewayRequest) => `https://gw.example${req.target.path}`,
    now: () => NOW,
  });

  beforeAll(() => {
    const common = {
      issuer: ISSUER,
      audience: AUDIENCE,
      keys: () => ({ keys: [{ ...issuerKey.publicJwk, kid: 'k1', alg: 'ES256' }] }),
      isRevoked: () => false,
      now: () => NOW,
    };
    verifyBound = createAccessTokenVerifier({ ...common, allowBoundTokens: true });
    verifyPlain = createAccessTokenVerifier(common);
    replay = createMemoryReplayCache({ now: () => NOW });
  });

  const bound = () => accessToken({ cnf: { jkt: client.jkt } });
  const proofFor = (token: string, claims: JWTPayload = {}, key: Pair = client) =>
    proof({ ath: accessTokenHash(token), ...claims }, { key });

  it('accepts a bound token with the DPoP scheme and a valid proof', async () => {
    const verify = oauthSchemeVerifier('oauth', verifyBound, { realm: 'patients', dpop: dpopOptions() });
    const token = await bound();
    const outcome = await verify(request({ authorization: `DPoP ${token}`, dpop: await proofFor(token) }), [
      'patients:read',
    ]);
    expect(outcome).toMatchObject({ ok: true, principal: { subject: 'user-1', clientId: 'client-1' } });
    // An unbound token still works as a Bearer token.
    const plain = await accessToken();
    expect(await verify(request({ authorization: `Bearer ${plain}` }), [])).toMatchObject({ ok: true });
  });

  it('keeps refusing bound tokens when DPoP is not configured (fail closed)', async () => {
    const token = await bound();
    const headers = { authorization: `DPoP ${token}`, dpop: await proofFor(token) };
    expect(await oauthSchemeVerifier('oauth', verifyBound)(request(headers), [])).toEqual({
      ok: false,
      status: 401,
      reason: 'token-malformed-authorization',
    });
    expect(
      await oauthSchemeVerifier('oauth', verifyPlain, { dpop: dpopOptions() })(request(headers), []),
    ).toMatchObject({ ok: false, reason: 'token-bound-token-without-proof' });
    expect(
      await oauthSchemeVerifier('oauth', verifyPlain)(request({ authorization: `Bearer ${token}` }), []),
    ).toEqual({
      ok: false,
      status: 401,
      reason: 'token-bound-token-without-proof',
    });
  });

  it('refuses unknown cnf members and malformed thumbprints', async () => {
    const verify = oauthSchemeVerifier('oauth', verifyBound, { dpop: dpopOptions() });
    for (const cnf of [{ jwk: client.publicJwk }, { jkt: 'short' }, { jkt: client.jkt, kid: 'x' }, 'x', {}]) {
      const token = await accessToken({ cnf });
      expect(
        await verify(request({ authorization: `DPoP ${token}`, dpop: await proofFor(token) }), []),
      ).toMatchObject({
        ok: false,
        reason: 'token-unsupported-confirmation',
      });
    }
  });

  it.each<[string, () => Promise<Record<string, string>>, string, string]>([
    [
      'bound token without a proof',
      async () => ({ authorization: `DPoP ${await bound()}` }),
      'dpop-proof-missing',
      'invalid_dpop_proof',
    ],
    [
      'bound token under the Bearer scheme',
      async () => {
        const t = await bound();
        return { authorization: `Bearer ${t}`, dpop: await proofFor(t) };
      },
      'token-dpop-bound-as-bearer',
      'invalid_token',
    ],
    [
      'unbound token under the DPoP scheme',
      async () => {
        const t = await accessToken();
        return { authorization: `DPoP ${t}`, dpop: await proofFor(t) };
      },
      'token-not-dpop-bound',
      'invalid_token',
    ],
    [
      'proof signed by another key than cnf.jkt',
      async () => {
        const t = await bound();
        return { authorization: `DPoP ${t}`, dpop: await proofFor(t, {}, attacker) };
      },
      'dpop-key-mismatch',
      'invalid_dpop_proof',
    ],
    [
      'proof for another token',
      async () => {
        const t = await bound();
        return { authorization: `DPoP ${t}`, dpop: await proofFor(await bound()) };
      },
      'dpop-wrong-ath',
      'invalid_dpop_proof',
    ],
    [
      'proof for another method',
      async () => {
        const t = await bound();
        return { authorization: `DPoP ${t}`, dpop: await proofFor(t, { htm: 'DELETE' }) };
      },
      'dpop-wrong-method',
      'invalid_dpop_proof',
    ],
    [
      'proof for another URL',
      async () => {
        const t = await bound();
        return {
          authorization: `DPoP ${t}`,
          dpop: await proofFor(t, { htu: 'https://gw.example/v1/patients/7' }),
        };
      },
      'dpop-wrong-url',
      'invalid_dpop_proof',
    ],
    [
      'forged token',
      async () => {
        const t = await bound();
        const forged = `${t.slice(0, -4)}AAAA`;
        return { authorization: `DPoP ${forged}`, dpop: await proofFor(forged) };
      },
      'token-bad-signature',
      'invalid_token',
    ],
  ])('refuses a %s with the DPoP challenge', async (_name, headers, reason, error) => {
    const verify = oauthSchemeVerifier('oauth', verifyBound, { realm: 'patients', dpop: dpopOptions() });
    const outcome = await verify(request(await headers()), []);
    expect(outcome).toMatchObject({ ok: false, status: 401, reason });
    const challenge = outcome.ok ? '' : (outcome.challenge ?? '');
    expect(challenge).toContain('algs="ES256 PS256 EdDSA"');
    expect(challenge).toContain(`error="${error}"`);
    expect(challenge).toMatch(/^Bearer realm="patients".*, DPoP realm="patients"/);
  });

  it('refuses a replayed request (same proof twice)', async () => {
    const verify = oauthSchemeVerifier('oauth', verifyBound, { dpop: dpopOptions() });
    const token = await bound();
    const headers = { authorization: `DPoP ${token}`, dpop: await proofFor(token) };
    expect(await verify(request(headers), [])).toMatchObject({ ok: true });
    expect(await verify(request(headers), [])).toMatchObject({ ok: false, reason: 'dpop-replayed' });
  });

  it('sends the DPoP challenges through the authenticate stage (401 and 403)', async () => {
    const verify = oauthSchemeVerifier('oauth', verifyBound, { realm: 'patients', dpop: dpopOptions() });
    const stage = compileAuthenticate({
      apiName: 'patients',
      security: [{ oauth: ['patients:write'] }],
      schemeTypes: { oauth: 'oauth2' },
      verifiers: { oauth: verify },
    });
    const denial = async (headers: Record<string, string>): Promise<Denial> => {
      try {
        await stage?.(request(headers));
      } catch (err) {
        if (err instanceof Denial) return err;
        throw err;
      }
      throw new Error('request was allowed');
    };
    const missing = await denial({});
    expect(missing.status).toBe(401);
    expect(missing.headers['www-authenticate']).toBe(
      'Bearer realm="patients", DPoP realm="patients", algs="ES256 PS256 EdDSA"',
    );
    const token = await bound();
    const noProof = await denial({ authorization: `DPoP ${token}` });
    expect(noProof.headers['www-authenticate']).toBe(
      'Bearer realm="patients", DPoP realm="patients", error="invalid_dpop_proof", algs="ES256 PS256 EdDSA"',
    );
    const scope = await denial({ authorization: `DPoP ${token}`, dpop: await proofFor(token) });
    expect(scope.status).toBe(403);
    expect(scope.headers['www-authenticate']).toBe(
      'Bearer realm="patients", DPoP realm="patients", error="insufficient_scope", scope="patients:write", algs="ES256 PS256 EdDSA"',
    );
    // Without DPoP configured the stage keeps its Bearer challenge.
    const plainStage = compileAuthenticate({
      apiName: 'patients',
      security: [{ oauth: [] }],
      schemeTypes: { oauth: 'oauth2' },
      verifiers: { oauth: oauthSchemeVerifier('oauth', verifyPlain) },
    });
    try {
      await plainStage?.(request({ authorization: `Bearer ${token}` }));
      throw new Error('allowed');
    } catch (err) {
      expect(err).toBeInstanceOf(Denial);
      expect((err as Denial).headers['www-authenticate']).toBe(
        'Bearer realm="patients", error="invalid_token"',
      );
    }
  });
});
