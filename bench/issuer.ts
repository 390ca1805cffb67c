/**
 * An external token issuer for the benchmarks: an ES256 key pair, its JWKS served over TLS on
 * loopback (the development certificate of `certs`), and access tokens (RFC 9068 `at+jwt`) that
 * Portcullis accepts through `tokens.issuers` and HAProxy verifies with the same public key.
 */
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { SignJWT } from 'jose';
import { onCleanup } from './processes.ts';

export const BENCH_ISSUER = 'https://issuer.bench.test';
export const BENCH_AUDIENCE = 'https://api.bench.test/v1';
const KID = 'bench-es256-1';

export interface BenchIssuer {
  jwksUri: string;
  /** The public key as SPKI PEM (for HAProxy's `jwt_verify`). */
  publicKeyPem: string;
  /** An ES256 access token for `sub`, valid for `lifetimeS` seconds (negative: expired). */
  token(claims: Claims): Promise<string>;
  /** The same token signed by another key under the same `kid`: a bad signature. */
  forgedToken(claims: Claims): Promise<string>;
}

export interface Claims {
  sub: string;
  scope: string;
  lifetimeS: number;
  /** Default {@link BENCH_AUDIENCE}. */
  audience?: string;
}

function sign(key: KeyObject, claims: Claims): Promise<string> {
  return new SignJWT({ client_id: 'bench-client', scope: claims.scope })
    .setProtectedHeader({ alg: 'ES256', kid: KID, typ: 'at+jwt' })
    .setIssuer(BENCH_ISSUER)
    .setAudience(claims.audience ?? BENCH_AUDIENCE)
    .setSubject(claims.sub)
    .setIssuedAt(Math.floor(Date.now() / 1000) + Math.min(0, claims.lifetimeS - 60))
    .setExpirationTime(Math.floor(Date.now() / 1000) + claims.lifetimeS)
    .setJti(randomUUID())
    .sign(key);
}

/** Starts the JWKS endpoint (`https://localhost:<port>/jwks`) with the given certificate. */
export async function startIssuer(certs: { certPem: string; keyPem: string }): Promise<BenchIssuer> {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const other = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  const jwks = JSON.stringify({
    keys: [{ ...publicKey.export({ format: 'jwk' }), kid: KID, alg: 'ES256', use: 'sig' }],
  });
  const server = createServer({ cert: certs.certPem, key: certs.keyPem }, (req, res) => {
    if (req.url !== '/jwks') {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': 'application/jwk-set+json' }).end(jwks);
  });
  server.listen(0, '127.0.0.1');
  await new Promise((ok) => server.once('listening', ok));
  onCleanup(
    () =>
      new Promise((ok) => {
        server.close(() => ok());
        server.closeAllConnections();
      }),
  );
  return {
    jwksUri: `https://localhost:${String((server.address() as AddressInfo).port)}/jwks`,
    publicKeyPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    token: (claims) => sign(privateKey, claims),
    forgedToken: (claims) => sign(other, claims),
  };
}
