/**
 * Tokens from an external issuer (config `tokens.issuers`) through a real gateway: the keys come
 * from a local HTTPS JWKS endpoint (development certificates, trusted through `caFile`), the
 * token is routed by its `iss`, and the upstream sees the gateway's assertion, never the token.
 */
import { createServer } from 'node:https';
import type { Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { decodeJwt, exportJWK, generateKeyPair, SignJWT } from 'jose';
import type { CryptoKey, JWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureDevCertificates } from '../src/server/devca.ts';
import { startRecordingUpstream, startTestGateway, TEST_OPENAPI, tempDir } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';

const ISSUER = 'https://idp.example.test';
const AUDIENCE = 'https://api.example.test/v1';

let upstream: RecordingUpstream;
let gw: TestGateway;
let jwksServer: Server;
let jwksHits = 0;
let es: { privateKey: CryptoKey; publicJwk: JWK };
let rs: { privateKey: CryptoKey; publicJwk: JWK };

async function key(kid: string, alg: string): Promise<{ privateKey: CryptoKey; publicJwk: JWK }> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  return { privateKey, publicJwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' } };
}

function token(
  options: { iss?: string; scope?: string; alg?: 'ES256' | 'RS256'; sub?: string } = {},
): Promise<string> {
  const alg = options.alg ?? 'ES256';
  return new SignJWT({ client_id: 'partner-app', scope: options.scope ?? 'read' })
    .setProtectedHeader({ alg, kid: alg === 'ES256' ? 'es-1' : 'rs-1', typ: 'at+jwt' })
    .setIssuer(options.iss ?? ISSUER)
    .setAudience(AUDIENCE)
    .setSubject(options.sub ?? 'partner-user-7')
    .setIssuedAt()
    .setExpirationTime('5m')
    .setJti(crypto.randomUUID())
    .sign(alg === 'ES256' ? es.privateKey : rs.privateKey);
}

beforeAll(async () => {
  [es, rs] = await Promise.all([key('es-1', 'ES256'), key('rs-1', 'RS256')]);
  const dir = await tempDir();
  const idp = await ensureDevCertificates(join(dir, 'idp'));
  jwksServer = createServer({ cert: idp.certPem, key: idp.keyPem }, (_req, res) => {
    jwksHits++;
    res.writeHead(200, { 'content-type': 'application/jwk-set+json' });
    res.end(JSON.stringify({ keys: [es.publicJwk, rs.publicJwk] }));
  });
  jwksServer.listen(0, '127.0.0.1');
  await new Promise((ok) => jwksServer.once('listening', ok));
  const jwksUri = `https://localhost:${String((jwksServer.address() as AddressInfo).port)}/jwks`;
  upstream = await startRecordingUpstream();
  gw = await startTestGateway(
    {
      apis: [
        {
          name: 'items',
          openapi: 'api.yaml',
          basePath: '/v1',
          audience: AUDIENCE,
          upstream: { url: upstream.url },
        },
      ],
      tokens: { issuers: [{ issuer: ISSUER, jwksUri, caFile: idp.caCertFile }] },
    },
    { openapi: TEST_OPENAPI, dir },
  );
}, 60_000);

afterAll(async () => {
  await gw.close();
  await upstream.close();
  jwksServer.closeAllConnections();
  await new Promise((ok) => jwksServer.close(ok));
});

describe('an external issuer', () => {
  it("accepts its valid token and sends the upstream the gateway's assertion instead", async () => {
    const t = await token();
    const before = upstream.received.length;
    const res = await gw.request('/v1/private', { headers: { authorization: `Bearer ${t}` } });
    expect(res.status).toBe(200);
    const received = upstream.received.slice(before);
    expect(received).toHaveLength(1);
    expect(received[0]?.headers.authorization).toBeUndefined();
    const assertion = received[0]?.headers['x-portcullis-identity'];
    expect(typeof assertion).toBe('string');
    expect(decodeJwt(String(assertion))).toMatchObject({ sub: 'partner-user-7', client_id: 'partner-app' });
    expect(jwksHits).toBe(1);
  });

  it('refuses its token without the required scope (403)', async () => {
    const res = await gw.request('/v1/private', {
      headers: { authorization: `Bearer ${await token({ scope: 'other' })}` },
    });
    expect(res.status).toBe(403);
    expect(res.headers['www-authenticate']).toContain('insufficient_scope');
  });

  it('refuses an unknown issuer and an algorithm the issuer is not allowed (401)', async () => {
    const before = upstream.received.length;
    for (const t of [await token({ iss: 'https://evil.example.test' }), await token({ alg: 'RS256' })]) {
      const res = await gw.request('/v1/private', { headers: { authorization: `Bearer ${t}` } });
      expect(res.status).toBe(401);
      expect(res.headers['www-authenticate']).toContain('invalid_token');
      expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
    }
    expect(upstream.received.length).toBe(before);
    // Neither made the gateway fetch keys again (the kids are known; the issuer unknown).
    expect(jwksHits).toBe(1);
  });
});
