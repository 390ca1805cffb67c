/**
 * How the authorization server's artifacts rest in the store: never in the clear.
 *
 * - Every identifier that is a credential or a handle on one (authorization codes, refresh
 *   tokens, session ids and uids, grant ids, interaction ids, user codes, account ids) is stored
 *   as a keyed hash, HMAC-SHA-256 under a key derived from the key manager's pepper; lookups go
 *   by hash, so a copy of the database does not yield a usable code, token or session.
 * - Each payload (which repeats those identifiers: a code's `jti`, a session's grant ids) is
 *   sealed with AES-256-GCM under a second derived key, bound to its model and hashed id.
 *
 * Both keys are derived from the `client-secret` pepper (the way the cookie-signing key is), so
 * that they live, wrapped by the KMS, with the other key material and survive a master-key
 * rotation unchanged.
 */
import { createCipheriv, createDecipheriv, createHmac, randomBytes } from 'node:crypto';
import type { KeyManager } from '../keys/types.ts';

export interface ModelCodec {
  /** The keyed hash of an identifier (base64url, 43 characters). */
  hash(value: string): string;
  /** Seals a payload for `model` / `hashedId` (AEAD: a row moved to another id does not open). */
  seal(model: string, hashedId: string, payload: unknown): string;
  /** Opens a sealed payload; throws when it was not sealed for this model and id, or altered. */
  open(model: string, hashedId: string, sealed: string): unknown;
}

const VERSION = 'v1';

/** A codec from two 32-byte keys (tests; production uses {@link modelCodecFromKeys}). */
export function createModelCodec(hashKey: Buffer, sealKey: Buffer): ModelCodec {
  if (hashKey.length < 32 || sealKey.length !== 32) throw new TypeError('model codec keys must be 32 bytes');
  const aad = (model: string, id: string) => Buffer.from(`${model}\n${id}`, 'utf8');
  return {
    hash: (value) => createHmac('sha256', hashKey).update(value, 'utf8').digest('base64url'),
    seal(model, hashedId, payload) {
      const iv = randomBytes(12);
      const cipher = createCipheriv('aes-256-gcm', sealKey, iv);
      cipher.setAAD(aad(model, hashedId));
      const body = Buffer.concat([cipher.update(JSON.stringify(payload), 'utf8'), cipher.final()]);
      return `${VERSION}.${iv.toString('base64url')}.${Buffer.concat([body, cipher.getAuthTag()]).toString('base64url')}`;
    },
    open(model, hashedId, sealed) {
      const [version, ivText, bodyText] = sealed.split('.');
      if (version !== VERSION || ivText === undefined || bodyText === undefined) {
        throw new Error('oauth model payload: unknown format');
      }
      const body = Buffer.from(bodyText, 'base64url');
      if (body.length < 16) throw new Error('oauth model payload: truncated');
      const decipher = createDecipheriv('aes-256-gcm', sealKey, Buffer.from(ivText, 'base64url'));
      decipher.setAAD(aad(model, hashedId));
      decipher.setAuthTag(body.subarray(body.length - 16));
      const plain = Buffer.concat([decipher.update(body.subarray(0, body.length - 16)), decipher.final()]);
      return JSON.parse(plain.toString('utf8')) as unknown;
    },
  };
}

/** The codec whose keys derive from the key manager's `client-secret` pepper. */
export function modelCodecFromKeys(keys: Pick<KeyManager, 'hmac'>): ModelCodec {
  const derive = (label: string) =>
    Buffer.from(keys.hmac('client-secret', `portcullis/oauth-models/${label}/v1`), 'base64url');
  return createModelCodec(derive('id-hash'), derive('payload-seal'));
}
