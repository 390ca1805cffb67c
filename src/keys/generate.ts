/**
 * Signing-key generation with node:crypto and the JWK shapes the key manager hands out.
 */
import { generateKeyPair } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { calculateJwkThumbprint } from 'jose';
import type { JWK } from 'jose';
import type { SigningAlg } from './types.ts';

export const SIGNING_ALGS: readonly SigningAlg[] = ['ES256', 'PS256', 'EdDSA'];

export function isSigningAlg(value: unknown): value is SigningAlg {
  return typeof value === 'string' && (SIGNING_ALGS as readonly string[]).includes(value);
}

/** JWK members that carry private key material (RFC 7517/7518), never published. */
export const PRIVATE_JWK_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'] as const;

/** RSA modulus for PS256 keys. */
export const RSA_MODULUS_BITS = 3072;

export interface GeneratedKey {
  readonly kid: string;
  readonly alg: SigningAlg;
  /** With `kid`, `alg`, `use: 'sig'`; no private members. */
  readonly publicJwk: JWK;
  /** With `kid`, `alg`, `use: 'sig'`. */
  readonly privateJwk: JWK;
}

function keyPair(alg: SigningAlg): Promise<{ publicKey: KeyObject; privateKey: KeyObject }> {
  return new Promise((ok, fail) => {
    const done = (err: Error | null, publicKey: KeyObject, privateKey: KeyObject): void => {
      if (err) fail(err);
      else ok({ publicKey, privateKey });
    };
    switch (alg) {
      case 'ES256':
        generateKeyPair('ec', { namedCurve: 'P-256' }, done);
        break;
      case 'PS256':
        generateKeyPair('rsa', { modulusLength: RSA_MODULUS_BITS }, done);
        break;
      case 'EdDSA':
        generateKeyPair('ed25519', undefined, done);
        break;
    }
  });
}

/** A JWK with only the public members of `jwk` (whatever its key type). */
export function publicPart(jwk: JWK): JWK {
  const secret = new Set<string>(PRIVATE_JWK_MEMBERS);
  return Object.fromEntries(Object.entries(jwk).filter(([name]) => !secret.has(name)));
}

function exportJwk(key: KeyObject): JWK {
  const exported = key.export({ format: 'jwk' });
  const out: JWK = {};
  for (const [name, value] of Object.entries(exported)) {
    if (typeof value === 'string') (out as Record<string, string>)[name] = value;
  }
  return out;
}

/** RFC 7638 thumbprint (SHA-256, base64url) of a JWK's public members. */
export function thumbprint(jwk: JWK): Promise<string> {
  return calculateJwkThumbprint(publicPart(jwk), 'sha256');
}

/** Generates a signing key pair for `alg`; the kid is the RFC 7638 thumbprint. */
export async function generateSigningKey(alg: SigningAlg): Promise<GeneratedKey> {
  if (!isSigningAlg(alg)) throw new TypeError('generateSigningKey: unsupported algorithm');
  const { publicKey, privateKey } = await keyPair(alg);
  const pub = publicPart(exportJwk(publicKey));
  const kid = await thumbprint(pub);
  const meta = { kid, alg, use: 'sig' };
  return {
    kid,
    alg,
    publicJwk: { ...pub, ...meta },
    privateJwk: { ...exportJwk(privateKey), ...meta },
  };
}
