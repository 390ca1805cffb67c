/**
 * Envelope encryption at rest: values the store or Redis would otherwise hold in clear
 * (idempotency replay records, the authorization server's model payloads) are sealed with
 * AES-256-GCM under a data key; the data key is wrapped by the master key (local or HSM, the key
 * manager's ring) and kept in `data_keys`. The sealed text names its data key, and its
 * additional authenticated data binds the purpose and the row it belongs to, so a value copied
 * to another row, or altered, does not open. A master-key rotation re-wraps the data keys
 * (src/keys/rotate-master.ts); the sealed values do not change.
 *
 * Sealed text: `e1.<data key id>.<base64url(iv ‖ ciphertext ‖ tag)>`.
 *
 * @example
 * ```ts
 * const sealers = createSealers({ db: store.db, kms: keys.kms });
 * const idem = sealers.for('idempotency');
 * const text = await idem.seal(Buffer.from(json), `record:${key}`);
 * const back = await idem.open(text, `record:${key}`);
 * ```
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import type { Kysely } from 'kysely';
import type { Database } from '../store/schema.ts';
import type { KmsProvider } from './kms.ts';

/** What may be sealed; each purpose has its own data key. */
export type SealPurpose = 'idempotency' | 'oauth-model';

const PREFIX = 'e1.';
const DATA_KEY_BYTES = 32;
const IV_BYTES = 12;
const TAG_BYTES = 16;
const ID = /^[0-9a-f]{32}$/;

/** A sealed value failed to open: altered, moved to another row, or its data key is gone. */
export class SealError extends Error {
  readonly code = 'SEAL_OPEN_FAILED';
  constructor(message: string) {
    super(message);
    this.name = 'SealError';
  }
}

export interface Sealer {
  readonly purpose: SealPurpose;
  /** Seals `plaintext`, bound to `aad` (the row it belongs to). */
  seal(plaintext: Buffer, aad: string): Promise<string>;
  /** Opens what {@link seal} made with the same `aad`; rejects with {@link SealError}. */
  open(sealed: string, aad: string): Promise<Buffer>;
}

/** Whether `text` is sealed (else it is a value written before encryption at rest). */
export function isSealed(text: string): boolean {
  return text.startsWith(PREFIX);
}

/** The additional data of a data key's wrapping (what rotate-master re-wraps it with). */
export function dataKeyAad(id: string): string {
  return `data-key:${id}`;
}

function gcmAad(purpose: SealPurpose, id: string, aad: string): Buffer {
  return Buffer.from(`portcullis-seal:e1:${purpose}:${id}:${aad}`, 'utf8');
}

export interface SealersOptions {
  readonly db: Kysely<Database>;
  /** The key manager's ring: wraps and unwraps the data keys. */
  readonly kms: Pick<KmsProvider, 'name' | 'wrap' | 'unwrap'>;
  readonly now?: () => Date;
}

export interface Sealers {
  for(purpose: SealPurpose): Sealer;
}

/** Sealers over the data keys in the store; data keys are created on first use and cached. */
export function createSealers(options: SealersOptions): Sealers {
  const { db, kms } = options;
  const now = options.now ?? (() => new Date());
  const keys = new Map<string, Promise<Buffer>>();
  const current = new Map<SealPurpose, Promise<string>>();

  const unwrapKey = (id: string): Promise<Buffer> => {
    let p = keys.get(id);
    if (p === undefined) {
      p = (async () => {
        const row = await db
          .selectFrom('data_keys')
          .select(['wrapped'])
          .where('id', '=', id)
          .executeTakeFirst();
        if (row === undefined) throw new SealError(`data key ${id} is not in the store`);
        try {
          return await kms.unwrap(Buffer.from(row.wrapped, 'base64url'), dataKeyAad(id));
        } catch {
          throw new SealError(`data key ${id} does not unwrap under the master key`);
        }
      })();
      keys.set(id, p);
      // A failure is not cached: the store may be back, or the ring refreshed, next time.
      p.catch(() => keys.delete(id));
    }
    return p;
  };

  const currentKey = (purpose: SealPurpose): Promise<string> => {
    let p = current.get(purpose);
    if (p === undefined) {
      p = (async () => {
        const existing = await db
          .selectFrom('data_keys')
          .select('id')
          .where('purpose', '=', purpose)
          .orderBy('created_at', 'desc')
          .orderBy('id')
          .executeTakeFirst();
        if (existing !== undefined) return existing.id;
        const id = randomBytes(16).toString('hex');
        const key = randomBytes(DATA_KEY_BYTES);
        const wrapped = await kms.wrap(key, dataKeyAad(id));
        // Two processes may both create one: each seals with its own, both open either.
        await db
          .insertInto('data_keys')
          .values({
            id,
            purpose,
            wrapped: wrapped.toString('base64url'),
            kms: kms.name,
            created_at: now().toISOString(),
          })
          .execute();
        keys.set(id, Promise.resolve(key));
        return id;
      })();
      current.set(purpose, p);
      p.catch(() => current.delete(purpose));
    }
    return p;
  };

  const sealers = new Map<SealPurpose, Sealer>();
  return {
    for(purpose) {
      let s = sealers.get(purpose);
      if (s !== undefined) return s;
      s = {
        purpose,
        async seal(plaintext, aad) {
          const id = await currentKey(purpose);
          const key = await unwrapKey(id);
          const iv = randomBytes(IV_BYTES);
          const cipher = createCipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES });
          cipher.setAAD(gcmAad(purpose, id, aad));
          const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
          return `${PREFIX}${id}.${Buffer.concat([iv, body, cipher.getAuthTag()]).toString('base64url')}`;
        },
        async open(sealed, aad) {
          if (!isSealed(sealed)) throw new SealError('not a sealed value');
          const dot = sealed.indexOf('.', PREFIX.length);
          const id = sealed.slice(PREFIX.length, dot);
          if (dot < 0 || !ID.test(id)) throw new SealError('malformed sealed value');
          const raw = Buffer.from(sealed.slice(dot + 1), 'base64url');
          if (raw.length < IV_BYTES + TAG_BYTES) throw new SealError('truncated sealed value');
          const key = await unwrapKey(id);
          try {
            const decipher = createDecipheriv('aes-256-gcm', key, raw.subarray(0, IV_BYTES), {
              authTagLength: TAG_BYTES,
            });
            decipher.setAAD(gcmAad(purpose, id, aad));
            decipher.setAuthTag(raw.subarray(raw.length - TAG_BYTES));
            return Buffer.concat([
              decipher.update(raw.subarray(IV_BYTES, raw.length - TAG_BYTES)),
              decipher.final(),
            ]);
          } catch {
            throw new SealError(
              `sealed ${purpose} value does not authenticate: altered, or moved from another row`,
            );
          }
        },
      };
      sealers.set(purpose, s);
      return s;
    },
  };
}

/**
 * Seals a text value when a sealer is given (else returns it as is): the one call the
 * authorization server's adapter makes on write.
 */
export async function sealText(sealer: Sealer | undefined, aad: string, text: string): Promise<string> {
  if (sealer === undefined) return text;
  return sealer.seal(Buffer.from(text, 'utf8'), aad);
}

/**
 * Opens a stored text value with the sealer: a value that is not sealed is refused too (someone
 * with write access to the store must not be able to swap in a plaintext payload). Without a
 * sealer (no key manager) values are read as they are. The adapter's one call on read.
 */
export async function openText(sealer: Sealer | undefined, aad: string, stored: string): Promise<string> {
  if (sealer === undefined) {
    if (isSealed(stored)) throw new SealError('a sealed value, but no key manager to open it');
    return stored;
  }
  return (await sealer.open(stored, aad)).toString('utf8');
}
