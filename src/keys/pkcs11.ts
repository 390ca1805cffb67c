/**
 * The PKCS#11 provider: keys that live in a hardware security module and never leave it.
 *
 * - The key-encryption key is an AES-256 secret key on the token (sensitive, not extractable)
 *   that wraps and unwraps the data keys with CKM_AES_GCM; the envelope names the key's CKA_ID,
 *   so keys retired by `portcullis keys rotate-master` still unwrap what they wrapped.
 * - Signing keys (token signing when the algorithm is ES256, the audit-checkpoint key) are P-256
 *   key pairs generated on the token; signing is CKM_ECDSA over a SHA-256 digest, which returns
 *   the JOSE (IEEE P1363) `r ‖ s` form directly. Only the public point is ever read.
 *
 * One session per process and token, logged in as the user; pkcs11js calls are synchronous, so
 * operations never interleave on it. `pkcs11js` is a native addon loaded only when configured.
 */
import { createHash, createPublicKey, randomBytes } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { createRequire } from 'node:module';
import type { JWK } from 'jose';
import type * as Pkcs11Js from 'pkcs11js';
import { thumbprint } from './generate.ts';
import { KmsError, envelopeAad, parseEnvelope, ENVELOPE_V2, KEY_ID_BYTES } from './kms.ts';
import type { KeyRing } from './kms.ts';

export interface Pkcs11Options {
  /** Path of the PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so). */
  readonly module: string;
  /** Label of the token to use. */
  readonly tokenLabel: string;
  /** The user PIN (already resolved from `${env:…}` / `${file:…}`). */
  readonly pin: string;
  /** Label of the key-encryption key. */
  readonly kekLabel: string;
}

/** A signing key that lives on the token. */
export interface HsmSigningKey {
  readonly kid: string;
  /** Hex CKA_ID: what the store keeps to find the key again. */
  readonly ref: string;
  readonly publicJwk: JWK;
}

const IV_BYTES = 12;
const TAG_BITS = 128;
/** DER of the P-256 curve's OID (1.2.840.10045.3.1.7), CKA_EC_PARAMS. */
const P256_PARAMS = Buffer.from('06082a8648ce3d030107', 'hex');

type Lib = typeof Pkcs11Js;

let lib: Lib | undefined;
function load(): Lib {
  if (lib !== undefined) return lib;
  try {
    lib = createRequire(import.meta.url)('pkcs11js') as Lib;
  } catch (error) {
    const reason = error instanceof Error ? error.message.split('\n')[0] : 'unknown error';
    throw new KmsError('KMS_PROVIDER', `the pkcs11js module cannot be loaded (${String(reason)})`);
  }
  return lib;
}

/** Pkcs11Error's message is the CKR_ name (e.g. CKR_PIN_INCORRECT); never key material. */
function reasonOf(error: unknown): string {
  return error instanceof Error ? (error.message.split('\n')[0] ?? 'error') : 'unknown error';
}

export class Hsm {
  readonly #p: Pkcs11Js.PKCS11;
  readonly #session: Buffer;
  readonly #lib: Lib;
  readonly tokenLabel: string;
  #closed = false;

  private constructor(lib: Lib, p: Pkcs11Js.PKCS11, session: Buffer, tokenLabel: string) {
    this.#lib = lib;
    this.#p = p;
    this.#session = session;
    this.tokenLabel = tokenLabel;
  }

  /** Loads the module, finds the token by label and logs in. Errors name the setting at fault. */
  static open(options: Pick<Pkcs11Options, 'module' | 'tokenLabel' | 'pin'>): Hsm {
    const L = load();
    const p = new L.PKCS11();
    try {
      p.load(options.module);
    } catch (error) {
      throw new KmsError(
        'KMS_PROVIDER',
        `keys.pkcs11.module: cannot load PKCS#11 module ${options.module} (${reasonOf(error)})`,
      );
    }
    try {
      p.C_Initialize();
    } catch (error) {
      if (!(error instanceof L.Pkcs11Error && error.code === L.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
        throw new KmsError('KMS_PROVIDER', `keys.pkcs11.module: C_Initialize failed (${reasonOf(error)})`);
      }
    }
    const slot = p
      .C_GetSlotList(true)
      .find((s) => p.C_GetTokenInfo(s).label.trimEnd() === options.tokenLabel);
    if (slot === undefined) {
      throw new KmsError(
        'KMS_PROVIDER',
        `keys.pkcs11.tokenLabel: no token labelled "${options.tokenLabel}" in ${options.module}`,
      );
    }
    const session = p.C_OpenSession(slot, L.CKF_SERIAL_SESSION | L.CKF_RW_SESSION);
    try {
      p.C_Login(session, L.CKU_USER, options.pin);
    } catch (error) {
      if (!(error instanceof L.Pkcs11Error && error.code === L.CKR_USER_ALREADY_LOGGED_IN)) {
        p.C_CloseSession(session);
        throw new KmsError(
          'KMS_PROVIDER',
          `keys.pkcs11.pin: login to token "${options.tokenLabel}" failed (${reasonOf(error)})`,
        );
      }
    }
    return new Hsm(L, p, session, options.tokenLabel);
  }

  #find(template: Pkcs11Js.Template): Buffer[] {
    const p = this.#p;
    p.C_FindObjectsInit(this.#session, template);
    try {
      return p.C_FindObjects(this.#session, 64);
    } finally {
      p.C_FindObjectsFinal(this.#session);
    }
  }

  #label(handle: Buffer): string {
    const [attr] = this.#p.C_GetAttributeValue(this.#session, handle, [{ type: this.#lib.CKA_LABEL }]);
    return Buffer.isBuffer(attr?.value) ? attr.value.toString('utf8') : '';
  }

  #id(handle: Buffer): string {
    const [attr] = this.#p.C_GetAttributeValue(this.#session, handle, [{ type: this.#lib.CKA_ID }]);
    return Buffer.isBuffer(attr?.value) ? attr.value.toString('hex') : '';
  }

  /** Secret AES keys carrying `label`, with their hex CKA_IDs. */
  aesKeys(label: string): { id: string; handle: Buffer }[] {
    const L = this.#lib;
    return this.#find([
      { type: L.CKA_CLASS, value: L.CKO_SECRET_KEY },
      { type: L.CKA_KEY_TYPE, value: L.CKK_AES },
      { type: L.CKA_LABEL, value: label },
    ]).map((handle) => ({ id: this.#id(handle), handle }));
  }

  /** The AES key whose CKA_ID is `id`, whatever its label. */
  aesKeyById(id: string): Buffer | undefined {
    const L = this.#lib;
    return this.#find([
      { type: L.CKA_CLASS, value: L.CKO_SECRET_KEY },
      { type: L.CKA_ID, value: Buffer.from(id, 'hex') },
    ])[0];
  }

  /** Generates a non-extractable AES-256 key for wrapping; returns its hex CKA_ID. */
  generateAesKey(label: string): string {
    const L = this.#lib;
    const id = randomBytes(KEY_ID_BYTES);
    this.#p.C_GenerateKey(this.#session, { mechanism: L.CKM_AES_KEY_GEN }, [
      { type: L.CKA_CLASS, value: L.CKO_SECRET_KEY },
      { type: L.CKA_KEY_TYPE, value: L.CKK_AES },
      { type: L.CKA_VALUE_LEN, value: 32 },
      { type: L.CKA_TOKEN, value: true },
      { type: L.CKA_PRIVATE, value: true },
      { type: L.CKA_SENSITIVE, value: true },
      { type: L.CKA_EXTRACTABLE, value: false },
      { type: L.CKA_ENCRYPT, value: true },
      { type: L.CKA_DECRYPT, value: true },
      { type: L.CKA_LABEL, value: label },
      { type: L.CKA_ID, value: id },
    ]);
    return id.toString('hex');
  }

  setLabel(handle: Buffer, label: string): void {
    this.#p.C_SetAttributeValue(this.#session, handle, [{ type: this.#lib.CKA_LABEL, value: label }]);
  }

  labelOf(handle: Buffer): string {
    return this.#label(handle);
  }

  #gcm(iv: Buffer, aad: Buffer): Pkcs11Js.Mechanism {
    const L = this.#lib;
    const parameter: Pkcs11Js.GcmParams = {
      type: L.CK_PARAMS_AES_GCM,
      iv,
      ivBits: IV_BYTES * 8,
      aad,
      tagBits: TAG_BITS,
    };
    return { mechanism: L.CKM_AES_GCM, parameter };
  }

  encrypt(key: Buffer, iv: Buffer, aad: Buffer, plaintext: Buffer): Buffer {
    this.#p.C_EncryptInit(this.#session, this.#gcm(iv, aad), key);
    return Buffer.from(this.#p.C_Encrypt(this.#session, plaintext, Buffer.alloc(plaintext.length + 64)));
  }

  decrypt(key: Buffer, iv: Buffer, aad: Buffer, ciphertext: Buffer): Buffer {
    this.#p.C_DecryptInit(this.#session, this.#gcm(iv, aad), key);
    return Buffer.from(this.#p.C_Decrypt(this.#session, ciphertext, Buffer.alloc(ciphertext.length)));
  }

  /** Generates a P-256 key pair on the token (private half sensitive, not extractable). */
  async generateEcKey(label: string): Promise<HsmSigningKey> {
    const L = this.#lib;
    const id = randomBytes(KEY_ID_BYTES);
    const common = [
      { type: L.CKA_TOKEN, value: true },
      { type: L.CKA_ID, value: id },
      { type: L.CKA_LABEL, value: label },
    ];
    const pair = this.#p.C_GenerateKeyPair(
      this.#session,
      { mechanism: L.CKM_EC_KEY_PAIR_GEN },
      [...common, { type: L.CKA_VERIFY, value: true }, { type: L.CKA_EC_PARAMS, value: P256_PARAMS }],
      [
        ...common,
        { type: L.CKA_SIGN, value: true },
        { type: L.CKA_PRIVATE, value: true },
        { type: L.CKA_SENSITIVE, value: true },
        { type: L.CKA_EXTRACTABLE, value: false },
      ],
    );
    const ref = id.toString('hex');
    const jwk = this.#publicJwk(pair.publicKey);
    const kid = await thumbprint(jwk);
    return { kid, ref, publicJwk: { ...jwk, kid, alg: 'ES256', use: 'sig' } };
  }

  #publicJwk(handle: Buffer): JWK {
    const [attr] = this.#p.C_GetAttributeValue(this.#session, handle, [{ type: this.#lib.CKA_EC_POINT }]);
    const der = attr?.value;
    // CKA_EC_POINT: DER OCTET STRING (04 41) around the uncompressed point 04 ‖ x ‖ y.
    if (!Buffer.isBuffer(der) || der.length !== 67 || der[0] !== 0x04 || der[2] !== 0x04) {
      throw new KmsError('KMS_PROVIDER', 'the token returned an unexpected EC public key');
    }
    return {
      kty: 'EC',
      crv: 'P-256',
      x: der.subarray(3, 35).toString('base64url'),
      y: der.subarray(35, 67).toString('base64url'),
    };
  }

  #keyByRef(ref: string, cls: number): Buffer | undefined {
    const L = this.#lib;
    return this.#find([
      { type: L.CKA_CLASS, value: cls },
      { type: L.CKA_ID, value: Buffer.from(ref, 'hex') },
    ])[0];
  }

  /** The public key of the signing key `ref` (read from the token). */
  publicKeyOf(ref: string): KeyObject {
    const handle = this.#keyByRef(ref, this.#lib.CKO_PUBLIC_KEY);
    if (handle === undefined) throw new KmsError('KMS_PROVIDER', `no public key ${ref} on the token`);
    return createPublicKey({ key: this.#publicJwk(handle), format: 'jwk' });
  }

  /**
   * A synchronous ES256 signer over the token's private key `ref`: SHA-256 here, CKM_ECDSA on
   * the token. Throws when the key is not on the token (named by its kid).
   */
  es256Signer(ref: string, kid: string): (data: Buffer) => Buffer {
    const handle = this.#keyByRef(ref, this.#lib.CKO_PRIVATE_KEY);
    if (handle === undefined) {
      throw new KmsError('KMS_PROVIDER', `signing key ${kid} is not on token "${this.tokenLabel}"`);
    }
    const mech = { mechanism: this.#lib.CKM_ECDSA };
    return (data) => {
      if (this.#closed) throw new KmsError('KMS_PROVIDER', 'the PKCS#11 session is closed');
      const digest = createHash('sha256').update(data).digest();
      this.#p.C_SignInit(this.#session, mech, handle);
      return Buffer.from(this.#p.C_Sign(this.#session, digest, Buffer.alloc(72)));
    };
  }

  /** Whether the token holds a private key `ref`. */
  hasPrivateKey(ref: string): boolean {
    return this.#keyByRef(ref, this.#lib.CKO_PRIVATE_KEY) !== undefined;
  }

  /** Destroys both halves of the signing key `ref` (a retired key). */
  destroyKeyPair(ref: string): void {
    for (const cls of [this.#lib.CKO_PRIVATE_KEY, this.#lib.CKO_PUBLIC_KEY]) {
      const handle = this.#keyByRef(ref, cls);
      if (handle !== undefined) this.#p.C_DestroyObject(this.#session, handle);
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#p.C_CloseSession(this.#session);
    } catch {
      // Already gone with the module.
    }
  }
}

/** Hex CKA_ID of the KEK the ring wraps with, and the labels in use during a rotation. */
function labels(kekLabel: string): { current: string; next: string; retired: string } {
  return { current: kekLabel, next: `${kekLabel}.next`, retired: `${kekLabel}.retired` };
}

/**
 * The KEK ring on the token: the AES key labelled `kekLabel` wraps; any AES key on the token
 * unwraps what it wrapped (found by the CKA_ID in the envelope). Created on first use.
 */
export function createPkcs11KeyRing(hsm: Hsm, kekLabel: string): KeyRing {
  const names = labels(kekLabel);
  const handles = new Map<string, Buffer>();

  function resolveCurrent(create: boolean): string {
    const current = hsm.aesKeys(names.current);
    if (current.length > 1) {
      throw new KmsError(
        'KMS_PROVIDER',
        `keys.pkcs11.kekLabel: ${String(current.length)} AES keys on token "${hsm.tokenLabel}" are labelled "${kekLabel}"; expected one`,
      );
    }
    const found = current[0];
    if (found !== undefined) {
      handles.set(found.id, found.handle);
      return found.id;
    }
    // A rotation that stopped between its two relabels: the next key already wraps everything.
    const next = hsm.aesKeys(names.next)[0];
    if (next !== undefined) {
      hsm.setLabel(next.handle, names.current);
      handles.set(next.id, next.handle);
      return next.id;
    }
    if (!create) throw new KmsError('KMS_PROVIDER', `no AES key labelled "${kekLabel}" on the token`);
    const id = hsm.generateAesKey(names.current);
    return resolveCurrent(false) === id ? id : resolveCurrent(false);
  }

  let currentId = resolveCurrent(true);

  function handle(id: string): Buffer | undefined {
    let h = handles.get(id);
    if (h === undefined) {
      h = hsm.aesKeyById(id);
      if (h !== undefined) handles.set(id, h);
    }
    return h;
  }

  function wrapUnder(id: string, plaintext: Buffer, aad: string): Buffer {
    const key = handle(id);
    if (key === undefined) throw new KmsError('KMS_PROVIDER', `no key-encryption key ${id} on the token`);
    const iv = randomBytes(IV_BYTES);
    const head = Buffer.concat([Buffer.from([ENVELOPE_V2]), Buffer.from(id, 'hex'), iv]);
    const body = hsm.encrypt(key, iv, envelopeAad(ENVELOPE_V2, aad), plaintext);
    return Buffer.concat([head, body]);
  }

  return {
    name: 'pkcs11',
    currentKeyId: () => currentId,
    wrap(plaintext, aad) {
      try {
        return Promise.resolve(wrapUnder(currentId, plaintext, aad));
      } catch (error) {
        return Promise.reject(
          error instanceof KmsError ? error : new KmsError('KMS_PROVIDER', reasonOf(error)),
        );
      }
    },
    wrapUnder(id, plaintext, aad) {
      try {
        return Promise.resolve(wrapUnder(id, plaintext, aad));
      } catch (error) {
        return Promise.reject(
          error instanceof KmsError ? error : new KmsError('KMS_PROVIDER', reasonOf(error)),
        );
      }
    },
    unwrap(ciphertext, aad) {
      const env = parseEnvelope(ciphertext);
      if (env === undefined || env.keyId === undefined) {
        return Promise.reject(new KmsError('KMS_FORMAT', 'pkcs11 KMS: not a PKCS#11 envelope'));
      }
      const key = handle(env.keyId);
      if (key === undefined) {
        return Promise.reject(
          new KmsError(
            'KMS_UNWRAP_FAILED',
            `pkcs11 KMS: key-encryption key ${env.keyId} is not on the token`,
          ),
        );
      }
      try {
        return Promise.resolve(
          hsm.decrypt(key, env.iv, envelopeAad(ENVELOPE_V2, aad), Buffer.concat([env.body, env.tag])),
        );
      } catch {
        return Promise.reject(
          new KmsError(
            'KMS_UNWRAP_FAILED',
            'pkcs11 KMS: authentication failed while unwrapping (AES-GCM): wrong key, or the stored ciphertext was altered',
          ),
        );
      }
    },
    refresh() {
      currentId = resolveCurrent(false);
      return Promise.resolve();
    },
    prepareNext() {
      const existing = hsm.aesKeys(names.next)[0];
      if (existing !== undefined) return Promise.resolve(existing.id);
      return Promise.resolve(hsm.generateAesKey(names.next));
    },
    promoteNext(nextId) {
      const next = handle(nextId);
      if (next === undefined)
        throw new KmsError('KMS_PROVIDER', `no key-encryption key ${nextId} on the token`);
      // Old first, then new: a stop in between leaves only `.next`, which resolveCurrent adopts.
      for (const k of hsm.aesKeys(names.current)) {
        if (k.id !== nextId) hsm.setLabel(k.handle, names.retired);
      }
      if (hsm.labelOf(next) !== names.current) hsm.setLabel(next, names.current);
      currentId = nextId;
      return Promise.resolve();
    },
    canRotate: () => undefined,
  };
}
