/**
 * Key-encryption-key providers. A provider wraps (encrypts) and unwraps small secrets — private
 * JWKs and peppers — binding each ciphertext to its purpose through additional authenticated
 * data, so a ciphertext copied to another row does not decrypt. The `local` provider keeps a
 * 256-bit key-encryption key in a 0600 file in the data directory or in an environment variable;
 * HSM and cloud KMS providers implement the same interface.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  constants as fsConstants,
  fstatSync,
  fsyncSync,
  linkSync,
  mkdirSync,
  openSync,
  readSync,
  readdirSync,
  renameSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';

export interface KmsProvider {
  /** Short stable name stored beside each ciphertext (e.g. `local`). */
  readonly name: string;
  /** Encrypts `plaintext`, authenticating `aad` (the purpose and id of the secret). */
  wrap(plaintext: Buffer, aad: string): Promise<Buffer>;
  /** Decrypts; rejects with a {@link KmsError} when the key or the `aad` does not match. */
  unwrap(ciphertext: Buffer, aad: string): Promise<Buffer>;
}

/**
 * A provider that holds several key-encryption keys: the current one wraps, any of them
 * unwraps what it wrapped (the envelope names the key), and `portcullis keys rotate-master`
 * moves every wrapped secret to a new one (src/keys/rotate-master.ts).
 */
export interface KeyRing extends KmsProvider {
  /** Hex id of the key new wraps use. */
  currentKeyId(): string;
  /** Wraps under a given key of the ring (the rotation's next key). */
  wrapUnder(keyId: string, plaintext: Buffer, aad: string): Promise<Buffer>;
  /** Re-reads which keys exist and which is current (a rotation elsewhere). */
  refresh(): Promise<void>;
  /** Creates the next key, or finds the one an interrupted rotation created; returns its id. */
  prepareNext(): Promise<string>;
  /** Makes the next key current; the old one is kept (retired) so old backups stay readable. */
  promoteNext(nextId: string): Promise<void>;
  /** Why this ring cannot be rotated in place (naming the setting), or undefined when it can. */
  canRotate(): string | undefined;
  /**
   * Names of providers whose envelopes this ring still unwraps (a local master key being
   * migrated to an HSM: `keys rotate-master --to pkcs11`).
   */
  readonly legacyNames?: readonly string[];
}

export type KmsErrorCode =
  | 'KMS_KEY_FILE_PERMISSIONS'
  | 'KMS_KEY_FILE_INVALID'
  | 'KMS_KEY_ENV_INVALID'
  | 'KMS_UNWRAP_FAILED'
  | 'KMS_FORMAT'
  | 'KMS_PROVIDER';

/** A key-encryption-key problem. Messages name files and variables, never key material. */
export class KmsError extends Error {
  readonly code: KmsErrorCode;
  constructor(code: KmsErrorCode, message: string) {
    super(message);
    this.name = 'KmsError';
    this.code = code;
  }
}

/** Version byte of the first local envelope: `v1 ‖ iv(12) ‖ ciphertext ‖ tag(16)`; still read. */
export const LOCAL_FORMAT_V1 = 1;
/** Version byte of the envelope that names its key: `v2 ‖ keyId(8) ‖ iv(12) ‖ ciphertext ‖ tag(16)`. */
export const ENVELOPE_V2 = 2;
/** Length of a key-encryption key's id in the envelope. */
export const KEY_ID_BYTES = 8;
const KEK_BYTES = 32;
const IV_BYTES = 12;
const TAG_BYTES = 16;
const BASE64URL_KEY = /^[A-Za-z0-9_-]{43}$/;

export function envelopeAad(version: number, aad: string): Buffer {
  if (typeof aad !== 'string' || aad.length === 0) {
    throw new TypeError('KMS: aad must be a non-empty string');
  }
  return Buffer.concat([Buffer.from([version]), Buffer.from(`portcullis-kms:${aad}`, 'utf8')]);
}

export interface Envelope {
  readonly version: number;
  /** Hex id of the wrapping key (v2); undefined for v1. */
  readonly keyId: string | undefined;
  readonly iv: Buffer;
  readonly body: Buffer;
  readonly tag: Buffer;
}

/** Splits an envelope (v1 or v2) into its parts; undefined when it is neither or truncated. */
export function parseEnvelope(ciphertext: Buffer): Envelope | undefined {
  if (!Buffer.isBuffer(ciphertext) || ciphertext.length < 1) return undefined;
  const version = ciphertext[0] ?? 0;
  const idLength = version === ENVELOPE_V2 ? KEY_ID_BYTES : version === LOCAL_FORMAT_V1 ? 0 : -1;
  if (idLength < 0 || ciphertext.length < 1 + idLength + IV_BYTES + TAG_BYTES) return undefined;
  const ivAt = 1 + idLength;
  return {
    version,
    keyId: idLength === 0 ? undefined : ciphertext.subarray(1, ivAt).toString('hex'),
    iv: ciphertext.subarray(ivAt, ivAt + IV_BYTES),
    body: ciphertext.subarray(ivAt + IV_BYTES, ciphertext.length - TAG_BYTES),
    tag: ciphertext.subarray(ciphertext.length - TAG_BYTES),
  };
}

/** The id of the key that wrapped `ciphertext` (v2), or undefined (v1, or not an envelope). */
export function envelopeKeyId(ciphertext: Buffer): string | undefined {
  return parseEnvelope(ciphertext)?.keyId;
}

/** The id a local key-encryption key is known by: a SHA-256 commitment, not the key. */
export function localKeyId(kek: Buffer): string {
  return createHash('sha256')
    .update('portcullis-kek-id\0')
    .update(kek)
    .digest()
    .subarray(0, KEY_ID_BYTES)
    .toString('hex');
}

const unwrapFailed = () =>
  new KmsError(
    'KMS_UNWRAP_FAILED',
    'local KMS: authentication failed while unwrapping (AES-GCM): wrong master key, or the ' +
      'stored ciphertext was altered',
  );

function gcmOpen(key: Buffer, env: Envelope, aad: string): Buffer | undefined {
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, env.iv, { authTagLength: TAG_BYTES });
    decipher.setAAD(envelopeAad(env.version, aad));
    decipher.setAuthTag(env.tag);
    return Buffer.concat([decipher.update(env.body), decipher.final()]);
  } catch {
    // No cause: it adds nothing and should carry no key-dependent detail.
    return undefined;
  }
}

/** Where a local ring's keys come from: the current key, and others that still unwrap. */
interface LocalKeySource {
  load(): { current: Buffer; others: Buffer[] };
  readonly rotation: LocalRotation | undefined;
  readonly cannotRotate: string | undefined;
}

interface LocalRotation {
  prepareNext(): Buffer;
  promote(nextId: string, currentId: string): void;
}

function localRing(source: LocalKeySource): KeyRing {
  let keys = new Map<string, Buffer>();
  let currentId = '';
  const load = () => {
    const { current, others } = source.load();
    const fresh = new Map<string, Buffer>();
    for (const k of others) fresh.set(localKeyId(k), k);
    currentId = localKeyId(current);
    fresh.set(currentId, current);
    for (const old of keys.values()) if (![...fresh.values()].includes(old)) old.fill(0);
    keys = fresh;
  };
  load();
  const current = () => keys.get(currentId) as Buffer;

  function wrapUnder(id: string, plaintext: Buffer, aad: string): Buffer {
    const key = keys.get(id);
    if (key === undefined) throw new KmsError('KMS_PROVIDER', `local KMS: no master key ${id}`);
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES });
    cipher.setAAD(envelopeAad(ENVELOPE_V2, aad));
    const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    return Buffer.concat([Buffer.from([ENVELOPE_V2]), Buffer.from(id, 'hex'), iv, body, cipher.getAuthTag()]);
  }

  return {
    name: 'local',
    currentKeyId: () => currentId,
    wrap(plaintext, aad) {
      return Promise.resolve(wrapUnder(currentId, plaintext, aad));
    },
    wrapUnder(id, plaintext, aad) {
      try {
        return Promise.resolve(wrapUnder(id, plaintext, aad));
      } catch (error) {
        return Promise.reject(error instanceof Error ? error : new KmsError('KMS_PROVIDER', 'wrap failed'));
      }
    },
    unwrap(ciphertext, aad) {
      if (typeof aad !== 'string' || aad.length === 0) {
        return Promise.reject(new TypeError('KMS: aad must be a non-empty string'));
      }
      const env = parseEnvelope(ciphertext);
      if (env === undefined) {
        const version = Buffer.isBuffer(ciphertext) ? ciphertext[0] : undefined;
        const known = version === LOCAL_FORMAT_V1 || version === ENVELOPE_V2;
        return Promise.reject(
          new KmsError(
            'KMS_FORMAT',
            known
              ? 'local KMS: wrapped secret is truncated'
              : `local KMS: unknown envelope version ${String(version)}`,
          ),
        );
      }
      if (env.keyId === undefined) {
        // v1 names no key: the current key first, then the others.
        for (const key of [current(), ...keys.values()]) {
          const out = gcmOpen(key, env, aad);
          if (out !== undefined) return Promise.resolve(out);
        }
        return Promise.reject(unwrapFailed());
      }
      let key = keys.get(env.keyId);
      if (key === undefined && source.rotation !== undefined) {
        // Rotated by another process since: the key files say more now.
        load();
        key = keys.get(env.keyId);
      }
      const out = key === undefined ? undefined : gcmOpen(key, env, aad);
      return out === undefined ? Promise.reject(unwrapFailed()) : Promise.resolve(out);
    },
    refresh() {
      load();
      return Promise.resolve();
    },
    prepareNext() {
      if (source.rotation === undefined) {
        return Promise.reject(new KmsError('KMS_PROVIDER', source.cannotRotate ?? 'cannot rotate'));
      }
      const next = source.rotation.prepareNext();
      load();
      return Promise.resolve(localKeyId(next));
    },
    promoteNext(nextId) {
      if (source.rotation === undefined) {
        return Promise.reject(new KmsError('KMS_PROVIDER', source.cannotRotate ?? 'cannot rotate'));
      }
      source.rotation.promote(nextId, currentId);
      load();
      return Promise.resolve();
    },
    canRotate: () => source.cannotRotate,
  };
}

/**
 * A provider over a 32-byte key-encryption key held in memory: AES-256-GCM with a random
 * 96-bit IV per wrap; the format version, the key's id and the caller's `aad` are authenticated.
 * `others` still unwrap (keys retired by a rotation).
 */
export function createLocalKms(kek: Buffer, others: readonly Buffer[] = []): KeyRing {
  for (const k of [kek, ...others]) {
    if (!Buffer.isBuffer(k) || k.length !== KEK_BYTES) {
      throw new TypeError(`local KMS: the key-encryption key must be ${String(KEK_BYTES)} bytes`);
    }
  }
  const current = Buffer.from(kek);
  const rest = others.map((k) => Buffer.from(k));
  return localRing({
    load: () => ({ current, others: rest }),
    rotation: undefined,
    cannotRotate: 'the master key is held in memory only',
  });
}

export interface LocalKmsOptions {
  readonly dataDir: string;
  /** Key file, relative to `dataDir` (or absolute). */
  readonly masterKeyFile: string;
  /** Name of the environment variable that holds the key (base64url); used when set. */
  readonly masterKeyEnv: string;
  /** The environment to read; defaults to `process.env`. */
  readonly env?: NodeJS.ProcessEnv;
}

export interface LoadedKek {
  readonly kek: Buffer;
  /** Where the key came from: `env:NAME`, `file:PATH` or `created:PATH`. */
  readonly source: string;
}

function decodeKeyText(text: string): Buffer | undefined {
  const trimmed = text.replace(/\r?\n$/, '');
  return BASE64URL_KEY.test(trimmed) ? Buffer.from(trimmed, 'base64url') : undefined;
}

function readKeyFile(path: string): Buffer | undefined {
  let fd: number;
  try {
    fd = openSync(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    if (code === 'ELOOP') {
      throw new KmsError('KMS_KEY_FILE_INVALID', `master key file ${path} is a symbolic link; refusing it`);
    }
    throw new KmsError('KMS_KEY_FILE_INVALID', `master key file ${path} cannot be opened (${String(code)})`);
  }
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) {
      throw new KmsError('KMS_KEY_FILE_INVALID', `master key file ${path} is not a regular file`);
    }
    if ((stat.mode & 0o077) !== 0) {
      const mode = (stat.mode & 0o777).toString(8).padStart(4, '0');
      throw new KmsError(
        'KMS_KEY_FILE_PERMISSIONS',
        `master key file ${path} has mode ${mode}; it must be readable by its owner only (chmod 600 ${path})`,
      );
    }
    if (typeof process.getuid === 'function' && stat.uid !== process.getuid()) {
      throw new KmsError(
        'KMS_KEY_FILE_PERMISSIONS',
        `master key file ${path} is owned by another user (uid ${String(stat.uid)}); it must belong to the user running Portcullis`,
      );
    }
    // Raw 32 bytes, or 43 base64url characters (an optional final newline).
    const buffer = Buffer.alloc(64);
    let length = 0;
    for (;;) {
      const n = readSync(fd, buffer, length, buffer.length - length, null);
      if (n === 0) break;
      length += n;
      if (length === buffer.length) break;
    }
    const content = buffer.subarray(0, length);
    const key = length === KEK_BYTES ? Buffer.from(content) : decodeKeyText(content.toString('latin1'));
    buffer.fill(0);
    if (key?.length !== KEK_BYTES) {
      throw new KmsError(
        'KMS_KEY_FILE_INVALID',
        `master key file ${path} is not a ${String(KEK_BYTES)}-byte key (raw, or base64url text)`,
      );
    }
    return key;
  } finally {
    closeSync(fd);
  }
}

/** Writes a new random key file with mode 0600 without ever replacing an existing one. */
function createKeyFile(path: string): Buffer {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const key = randomBytes(KEK_BYTES);
  const tmp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
  const fd = openSync(
    tmp,
    fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW,
    0o600,
  );
  try {
    writeSync(fd, key);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  try {
    // link() fails when the name exists: a key another process created first wins.
    linkSync(tmp, path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  } finally {
    unlinkSync(tmp);
  }
  return key;
}

/**
 * Loads the local key-encryption key: from the environment variable when it is set, else from
 * the key file, which is created (32 random bytes, mode 0600) when missing. A file readable by
 * group or others, a file of the wrong length and a malformed variable are refused.
 */
export function loadLocalKek(options: LocalKmsOptions): LoadedKek {
  const env = options.env ?? process.env;
  const fromEnv = env[options.masterKeyEnv];
  if (fromEnv !== undefined && fromEnv !== '') {
    const key = decodeKeyText(fromEnv);
    if (key?.length !== KEK_BYTES) {
      throw new KmsError(
        'KMS_KEY_ENV_INVALID',
        `environment variable ${options.masterKeyEnv} must hold a ${String(KEK_BYTES)}-byte key as 43 base64url characters`,
      );
    }
    return { kek: key, source: `env:${options.masterKeyEnv}` };
  }
  const path = resolve(options.dataDir, options.masterKeyFile);
  const existing = readKeyFile(path);
  if (existing !== undefined) return { kek: existing, source: `file:${path}` };
  const created = createKeyFile(path);
  // Read back what is on disk: another process may have created the file first.
  const onDisk = readKeyFile(path);
  if (onDisk === undefined) {
    throw new KmsError('KMS_KEY_FILE_INVALID', `master key file ${path} vanished after it was created`);
  }
  const ours = onDisk.equals(created);
  created.fill(0);
  return { kek: onDisk, source: ours ? `created:${path}` : `file:${path}` };
}

const RETIRED = '.retired-';
const NEXT = '.next';

/**
 * The key files of a local ring: `FILE` (current), `FILE.next` (only during a master-key
 * rotation) and `FILE.retired-<id>` (kept after a rotation so that backups taken before it can
 * still be restored; delete them once no such backup is needed).
 */
function fileSource(path: string): LocalKeySource {
  const dir = dirname(path);
  const base = basename(path);
  const others = (): Buffer[] => {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      return [];
    }
    const out: Buffer[] = [];
    for (const name of names) {
      if (name === `${base}${NEXT}` || name.startsWith(`${base}${RETIRED}`)) {
        const key = readKeyFile(join(dir, name));
        if (key !== undefined) out.push(key);
      }
    }
    return out;
  };
  return {
    load() {
      const current = readKeyFile(path);
      if (current === undefined) {
        throw new KmsError('KMS_KEY_FILE_INVALID', `master key file ${path} is missing`);
      }
      return { current, others: others() };
    },
    cannotRotate: undefined,
    rotation: {
      prepareNext() {
        const nextPath = `${path}${NEXT}`;
        const existing = readKeyFile(nextPath);
        if (existing !== undefined) return existing;
        createKeyFile(nextPath).fill(0);
        const onDisk = readKeyFile(nextPath);
        if (onDisk === undefined) throw new KmsError('KMS_KEY_FILE_INVALID', `${nextPath} vanished`);
        return onDisk;
      },
      promote(nextId, currentId) {
        const nextPath = `${path}${NEXT}`;
        const next = readKeyFile(nextPath);
        if (next === undefined) {
          // Promoted already (a rerun after a stop right after the rename).
          const current = readKeyFile(path);
          if (current !== undefined && localKeyId(current) === nextId) return;
          throw new KmsError('KMS_KEY_FILE_INVALID', `${nextPath} is missing: cannot finish the rotation`);
        }
        if (localKeyId(next) !== nextId) {
          throw new KmsError('KMS_KEY_FILE_INVALID', `${nextPath} is not the key this rotation started with`);
        }
        // Keep the old key under its id first; then the atomic rename makes the new one current.
        try {
          linkSync(path, `${path}${RETIRED}${currentId}`);
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
        }
        renameSync(nextPath, path);
        const fd = openSync(dir, fsConstants.O_RDONLY);
        try {
          fsyncSync(fd);
        } finally {
          closeSync(fd);
        }
      },
    },
  };
}

/**
 * The local ring the configuration names: from the environment variable when it is set (one key;
 * rotating it means restarting with the new value, see docs/deployment.md), else from the key
 * file and its `.next` / `.retired-<id>` siblings. The key file is created when missing.
 */
export function openLocalKeyRing(options: LocalKmsOptions): { kms: KeyRing; source: string } {
  const loaded = loadLocalKek(options);
  if (loaded.source.startsWith('env:')) {
    const kms = localRing({
      load: () => ({ current: loaded.kek, others: [] }),
      rotation: undefined,
      cannotRotate: `the master key comes from the environment variable ${options.masterKeyEnv} (oauth.kms.masterKeyEnv); rotate it by restarting with the new value, see docs/deployment.md`,
    });
    return { kms, source: loaded.source };
  }
  loaded.kek.fill(0);
  const path = resolve(options.dataDir, options.masterKeyFile);
  return { kms: localRing(fileSource(path)), source: loaded.source };
}

export interface KmsConfig {
  readonly provider: string;
  readonly masterKeyFile: string;
  readonly masterKeyEnv: string;
}

/** The provider the configuration names (`oauth.kms`; the PKCS#11 ring is opened by keys/hsm). */
export function openKms(
  config: KmsConfig,
  dataDir: string,
  env?: NodeJS.ProcessEnv,
): { kms: KeyRing; source: string } {
  if (config.provider !== 'local') {
    throw new KmsError('KMS_PROVIDER', `unknown KMS provider "${config.provider}"`);
  }
  return openLocalKeyRing({
    dataDir,
    masterKeyFile: config.masterKeyFile,
    masterKeyEnv: config.masterKeyEnv,
    ...(env === undefined ? {} : { env }),
  });
}
