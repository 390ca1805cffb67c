/**
 * External issuers against a real local HTTPS JWKS server (development certificates in a
 * temporary directory): key fetching, the refetch limit, keeping the last good keys, TLS, the
 * shape checks on the key set, and routing by `iss` with per-issuer algorithm allowlists.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:https';
import type { Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import type { CryptoKey, JWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureDevCertificates } from '../server/devca.ts';
import { createAccessTokenVerifier, TokenError } from './access-token.ts';
import { openExternalIssuers, routeByIssuer } from './issuers.ts';
import type { ExternalIssuerConfig, ExternalIssuers } from './issuers.ts';
import { createJwksCache, parseJwks } from './jwks.ts';

const ISSUER = 'https://idp.example.test';
const AUDIENCE = 'https://api.example.test/v1';
let clock = Date.now();
const now = () => clock;

interface Key {
  readonly kid: string;
  readonly alg: string;
  readonly privateKey: CryptoKey;
  readonly publicJwk: JWK;
  readonly privateJwk: JWK;
}
async function key(kid: string, alg = 'ES256'): Promise<Key> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  return {
    kid,
    alg,
    privateKey,
    publicJwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' },
    privateJwk: { ...(await exportJWK(privateKey)), kid, alg },
  };
}

function token(k: Key, claims: Record<string, unknown> = {}, header: Record<string, unknown> = {}) {
  return new SignJWT({ client_id: 'client-1', scope: 'patients:read', ...claims })
    .setProtectedHeader({ alg: k.alg, kid: k.kid, typ: 'at+jwt', ...header })
    .setIssuer(ISSUER)
    .setAudience(typeof claims.aud === 'string' ? claims.aud : AUDIENCE)
    .setSubject('user-1')
    .setIssuedAt(Math.floor(clock / 1000))
    .setExpirationTime(Math.floor(clock / 1000) + 300)
    .setJti(crypto.randomUUID())
    .sign(k.privateKey);
}

/** The issuer's JWKS endpoint: answers `body()` (or `status` with an error) and counts hits. */
interface JwksServer {
  url: string;
  hits: number;
  body: () => unknown;
  status: number;
  server: Server;
}

let dir: string;
let ca: string;
let jwks: JwksServer;
let es: Key;
let rotated: Key;
let rsa: Key;
let ps: Key;

async function startJwksServer(certPem: string, keyPem: string): Promise<JwksServer> {
  const state: JwksServer = {
    url: '',
    hits: 0,
    body: () => ({ keys: [] }),
    status: 200,
    server: createServer({ cert: certPem, key: keyPem }, (_req, res) => {
      state.hits++;
      if (state.status !== 200) {
        res.writeHead(state.status).end();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/jwk-set+json' });
      res.end(JSON.stringify(state.body()));
    }),
  };
  state.server.listen(0, '127.0.0.1');
  await new Promise((ok) => state.server.once('listening', ok));
  state.url = `https://localhost:${String((state.server.address() as AddressInfo).port)}/jwks`;
  return state;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'portcullis-jwks-'));
  const dev = await ensureDevCertificates(dir);
  ca = dev.caCertPem;
  jwks = await startJwksServer(dev.certPem, dev.keyPem);
  [es, rotated, rsa, ps] = await Promise.all([
    key('es-1'),
    key('es-2'),
    key('rs-1', 'RS256'),
    key('ps-1', 'PS256'),
  ]);
}, 60_000);

afterAll(async () => {
  jwks.server.closeAllConnections();
  await new Promise((ok) => jwks.server.close(ok));
  await rm(dir, { recursive: true, force: true });
});

function issuerConfig(overrides: Partial<ExternalIssuerConfig> = {}): ExternalIssuerConfig {
  return {
    issuer: ISSUER,
    jwksUri: jwks.url,
    caFile: 'dev-ca.pem',
    algorithms: ['ES256', 'PS256', 'EdDSA'],
    refreshMinIntervalSeconds: 60,
    clockSkewSeconds: 30,
    ...overrides,
  };
}

/** Opens the issuers with the test CA, and a verifier that also knows a built-in issuer. */
function open(config: ExternalIssuerConfig = issuerConfig()): {
  issuers: ExternalIssuers;
  verify: (t: string) => Promise<unknown>;
} {
  const issuers = openExternalIssuers([config], { readCa: () => ca, now, reserved: ['https://gw.test'] });
  const builtIn = createAccessTokenVerifier({
    issuer: 'https://gw.test',
    audience: AUDIENCE,
    keys: () => ({ keys: [] }),
    isRevoked: () => false,
  });
  const verify = routeByIssuer([
    { issuer: 'https://gw.test', verify: builtIn },
    ...issuers.verifiersFor({ audience: AUDIENCE, isRevoked: () => false, allowBoundTokens: false }),
  ]);
  if (verify === undefined) throw new Error('no verifier');
  return { issuers, verify };
}

async function reason(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    if (err instanceof TokenError) return err.reason;
    throw err;
  }
  return 'accepted';
}

describe('external issuers', () => {
  it('accepts a valid token from the issuer, fetching its keys once', async () => {
    jwks.body = () => ({ keys: [es.publicJwk] });
    jwks.status = 200;
    const { issuers, verify } = open();
    try {
      const before = jwks.hits;
      await expect(verify(await token(es))).resolves.toMatchObject({
        subject: 'user-1',
        clientId: 'client-1',
        issuer: ISSUER,
      });
      await expect(verify(await token(es))).resolves.toMatchObject({ subject: 'user-1' });
      expect(jwks.hits - before).toBe(1);
    } finally {
      await issuers.close();
    }
  });

  it('refetches on an unknown kid at most once per interval, then knows the rotated key', async () => {
    jwks.body = () => ({ keys: [es.publicJwk] });
    jwks.status = 200;
    const { issuers, verify } = open();
    try {
      expect(await reason(verify(await token(es)))).toBe('accepted');
      const afterFirst = jwks.hits;
      // The issuer rotates; the gateway does not know es-2 yet.
      jwks.body = () => ({ keys: [es.publicJwk, rotated.publicJwk] });
      clock += 61_000;
      expect(await reason(verify(await token(rotated)))).toBe('accepted');
      expect(jwks.hits - afterFirst).toBe(1);
      // Forged kids within the interval: refused, and no further fetch at all.
      for (let i = 0; i < 5; i++) {
        const forged = await token(await key(`forged-${String(i)}`));
        expect(await reason(verify(forged))).toBe('bad-signature');
      }
      expect(jwks.hits - afterFirst).toBe(1);
      // A new interval allows exactly one more.
      clock += 61_000;
      expect(await reason(verify(await token(await key('forged-x'))))).toBe('bad-signature');
      expect(await reason(verify(await token(await key('forged-y'))))).toBe('bad-signature');
      expect(jwks.hits - afterFirst).toBe(2);
    } finally {
      await issuers.close();
    }
  });

  it('keeps the last good keys while the issuer is down or answers garbage', async () => {
    jwks.body = () => ({ keys: [es.publicJwk] });
    jwks.status = 200;
    const errors: string[] = [];
    const issuers = openExternalIssuers([issuerConfig()], {
      readCa: () => ca,
      now,
      onError: (_iss, e) => errors.push(e.message),
    });
    const cache = issuers.caches.get(ISSUER);
    if (cache === undefined) throw new Error('no cache');
    try {
      await cache.ensure('es-1');
      expect(cache.current().keys.map((k) => k.kid)).toEqual(['es-1']);
      for (const [status, body] of [
        [503, { keys: [] }],
        [200, 'not json'],
        [200, { keys: [es.privateJwk] }],
        [200, { keys: [{ kty: 'oct', k: 'c2VjcmV0', kid: 'hs' }] }],
        [200, { keys: Array.from({ length: 60 }, () => es.publicJwk) }],
        [200, { keys: [es.publicJwk], pad: 'x'.repeat(70 * 1024) }],
      ] as const) {
        jwks.status = status;
        jwks.body = () => body;
        clock += 61_000;
        await cache.ensure('unknown-kid');
        expect(cache.current().keys.map((k) => k.kid)).toEqual(['es-1']);
      }
      expect(errors).toHaveLength(6);
      expect(errors.join('\n')).toMatch(/answered 503/);
      expect(errors.join('\n')).toMatch(/private or symmetric/);
      expect(errors.join('\n')).toMatch(/too large/);
      // The tokens of the last good key still verify.
      const verify = routeByIssuer(
        issuers.verifiersFor({ audience: AUDIENCE, isRevoked: () => false, allowBoundTokens: false }),
      );
      expect(await reason(verify!(await token(es)))).toBe('accepted');
    } finally {
      jwks.status = 200;
      await issuers.close();
    }
  });

  it('refuses unknown issuers without fetching, and algorithms not on the allowlist', async () => {
    jwks.body = () => ({ keys: [es.publicJwk, rsa.publicJwk, ps.publicJwk] });
    jwks.status = 200;
    const { issuers, verify } = open();
    try {
      expect(await reason(verify(await token(ps)))).toBe('accepted');
      const before = jwks.hits;
      const foreign = await new SignJWT({ client_id: 'c' })
        .setProtectedHeader({ alg: 'ES256', kid: 'es-1', typ: 'at+jwt' })
        .setIssuer('https://evil.test')
        .setAudience(AUDIENCE)
        .setSubject('user-1')
        .setIssuedAt(Math.floor(clock / 1000))
        .setExpirationTime(Math.floor(clock / 1000) + 300)
        .setJti('j')
        .sign(es.privateKey);
      expect(await reason(verify(foreign))).toBe('wrong-issuer');
      expect(await reason(verify('not.a.jwt'))).toBe('invalid');
      expect(jwks.hits).toBe(before);
      // RS256 is not listed: refused though the key is published.
      expect(await reason(verify(await token(rsa)))).toBe('wrong-algorithm');
      // HS256 with the public key as the secret (algorithm confusion).
      const hs = await new SignJWT({ client_id: 'c' })
        .setProtectedHeader({ alg: 'HS256', kid: 'es-1', typ: 'at+jwt' })
        .setIssuer(ISSUER)
        .setAudience(AUDIENCE)
        .setSubject('user-1')
        .setIssuedAt(Math.floor(clock / 1000))
        .setExpirationTime(Math.floor(clock / 1000) + 300)
        .setJti('j')
        .sign(new TextEncoder().encode(JSON.stringify(es.publicJwk)));
      expect(await reason(verify(hs))).toBe('wrong-algorithm');
      // Signed by the issuer for another audience, or with the wrong type.
      expect(await reason(verify(await token(es, { aud: 'https://other.test' })))).toBe('wrong-audience');
      expect(await reason(verify(await token(es, {}, { typ: 'JWT' })))).toBe('wrong-type');
    } finally {
      await issuers.close();
    }
  });

  it('accepts RS256 only when the issuer lists it', async () => {
    jwks.body = () => ({ keys: [rsa.publicJwk] });
    jwks.status = 200;
    const { issuers, verify } = open(issuerConfig({ algorithms: ['RS256'] }));
    try {
      expect(await reason(verify(await token(rsa)))).toBe('accepted');
    } finally {
      await issuers.close();
    }
  });

  it('fetches over verified TLS only', async () => {
    expect(() => createJwksCache({ uri: 'http://localhost/jwks', refreshMinIntervalSeconds: 60 })).toThrow(
      /https only/,
    );
    jwks.body = () => ({ keys: [es.publicJwk] });
    jwks.status = 200;
    // Without the development CA the server's certificate is not trusted: no keys.
    const errors: Error[] = [];
    const untrusted = createJwksCache({
      uri: jwks.url,
      refreshMinIntervalSeconds: 60,
      onError: (e) => errors.push(e),
    });
    try {
      await untrusted.ensure('es-1');
      expect(untrusted.current().keys).toEqual([]);
      expect(errors).toHaveLength(1);
    } finally {
      await untrusted.close();
    }
  });

  it('refuses configurations that repeat an issuer or allow symmetric algorithms', () => {
    expect(() => openExternalIssuers([issuerConfig(), issuerConfig()], { readCa: () => ca })).toThrow(
      /twice/,
    );
    expect(() => openExternalIssuers([issuerConfig()], { readCa: () => ca, reserved: [ISSUER] })).toThrow(
      /twice/,
    );
    expect(() =>
      openExternalIssuers([issuerConfig({ algorithms: ['HS256'] })], { readCa: () => ca }),
    ).toThrow(/asymmetric/);
    expect(() => parseJwks({ keys: 'x' }, 10)).toThrow();
    expect(parseJwks({ keys: [{ ...es.publicJwk, use: 'enc' }] }, 10).keys).toEqual([]);
  });
});
