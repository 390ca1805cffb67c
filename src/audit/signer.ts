/**
 * The interim checkpoint key: an ECDSA P-256 key in `<dataDir>/audit/checkpoint-key.pem`
 * (mode 0600), created on first use. The gateway and the CLI sign with the key manager's
 * audit-checkpoint key (`KeyManager.auditCheckpointSigner`, KMS-wrapped in the store); this file
 * key remains the default of `openAuditLog` without a signer, and `audit verify` still accepts it
 * so that logs written before the key manager signed them keep verifying.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { es256Signer, es256Verifier } from './chain.ts';
import type { CheckpointSigner, CheckpointVerifier } from './chain.ts';

/** RFC 7638 thumbprint of a P-256 public key (the kid). */
export function ecThumbprint(publicKey: KeyObject): string {
  const jwk = publicKey.export({ format: 'jwk' });
  const canonical = JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y });
  return createHash('sha256').update(canonical).digest('base64url');
}

export function checkpointKeyFile(dataDir: string): string {
  return join(dataDir, 'audit', 'checkpoint-key.pem');
}

function load(dataDir: string, create: boolean): KeyObject | undefined {
  const file = checkpointKeyFile(dataDir);
  try {
    return createPrivateKey(readFileSync(file, 'utf8'));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT' || !create) {
      if (!create) return undefined;
      throw error;
    }
  }
  mkdirSync(join(dataDir, 'audit'), { recursive: true, mode: 0o700 });
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600, flag: 'wx' });
  renameSync(tmp, file);
  return privateKey;
}

/** The file key's signer, creating the key on first use. */
export function fileCheckpointSigner(dataDir: string): CheckpointSigner {
  const key = load(dataDir, true);
  if (key === undefined) throw new Error('audit checkpoint key missing');
  return es256Signer(key, ecThumbprint(createPublicKey(key)));
}

/** A verifier that knows the file key (none when it does not exist). */
export function fileCheckpointVerifier(dataDir: string): CheckpointVerifier {
  const key = load(dataDir, false);
  const keys = new Map<string, KeyObject>();
  if (key !== undefined) {
    const pub = createPublicKey(key);
    keys.set(ecThumbprint(pub), pub);
  }
  return es256Verifier(keys);
}

/**
 * A verifier that accepts a signature any of `verifiers` accepts: the key manager's
 * audit-checkpoint keys, and the interim file key of logs written before them.
 */
export function anyCheckpointVerifier(...verifiers: readonly CheckpointVerifier[]): CheckpointVerifier {
  return {
    async verify(kid, data, signature) {
      for (const v of verifiers) if (await v.verify(kid, data, signature)) return true;
      return false;
    },
  };
}
