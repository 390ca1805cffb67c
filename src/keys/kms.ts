/**
 * Key-encryption-key providers. A provider wraps (encrypts) and unwraps small secrets — private
 * JWKs and peppers — binding each ciphertext to its purpose through additional authenticated
 * data, so a ciphertext copied to another row does not decrypt. The `local` provider keeps a
 * 256-bit key-encryption key in a 0600 file in the data directory or in an environment variable;
 * HSM and cloud KMS providers implement the same interface.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import {
  closeSync,
  constants as fsConstants,
  fstatSync,
  fsyncSync,
  linkSync,
  mkdirSync,
  openSync,
  readSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { dirname, resolve } from 'node:path';

export interface KmsProvider {
  /** Short stable name stored beside each ciphertext (e.g. `local`). */
  readonly name: string;
  /** Encrypts `plaintext`, authenticating `aad` (the purpose and id of the secret). */
  wrap(plaintext: Buffer, aad: string): Promise<Buffer>;
  /** Decrypts; rejects with a {@link KmsError} when the key or the `aad` does not match. */
  unwrap(ciphertext: Buffer, aad: string): Promise<Buffer>;
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

/** Version byte of the local provider's envelope: `v1 ‖ iv(12) ‖ ciphertext ‖ tag(16)`. */
export const LOCAL_FORMAT_V1 = 1;
const KEK_BYTES = 32;
const IV_BYTES = 12;
const TAG_BYTES = 16;
const BASE64URL_KEY = /^[A-Za-z0-9_-]{43}$/;

function aadBytes(version: number, aad: string): Buffer {
  if (typeof aad !== 'string' || aad.length === 0) {
    throw new TypeError('KMS: aad must be a non-empty string');
  }
  return Buffer.concat([Buffer.from([version]), Buffer.from(`portcullis-kms:${aad}`, 'utf8')]);
}

/**
 * A provider over a 32-byte key-encryption key held in memory: AES-256-GCM with a random
 * 96-bit IV per wrap; the format version and the caller's `aad` are authenticated.
 */
export function createLocalKms(kek: Buffer): KmsProvider {
  if (!Buffer.isBuffer(kek) || kek.length !== KEK_BYTES) {
    throw new TypeError(`local KMS: the key-encryption key must be ${String(KEK_BYTES)} bytes`);
  }
  const key = Buffer.from(kek);
  return {
    name: 'local',
    wrap(plaintext, aad) {
      const iv = randomBytes(IV_BYTES);
      const cipher = createCipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES });
      cipher.setAAD(aadBytes(LOCAL_FORMAT_V1, aad));
      const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
      return Promise.resolve(Buffer.concat([Buffer.from([LOCAL_FORMAT_V1]), iv, body, cipher.getAuthTag()]));
    },
    unwrap(ciphertext, aad) {
      if (!Buffer.isBuffer(ciphertext) || ciphertext.length < 1 + IV_BYTES + TAG_BYTES) {
        return Promise.reject(new KmsError('KMS_FORMAT', 'local KMS: wrapped secret is truncated'));
      }
      const version = ciphertext[0];
      if (version !== LOCAL_FORMAT_V1) {
        return Promise.reject(
          new KmsError('KMS_FORMAT', `local KMS: unknown envelope version ${String(version)}`),
        );
      }
      const iv = ciphertext.subarray(1, 1 + IV_BYTES);
      const tag = ciphertext.subarray(ciphertext.length - TAG_BYTES);
      const body = ciphertext.subarray(1 + IV_BYTES, ciphertext.length - TAG_BYTES);
      try {
        const decipher = createDecipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES });
        decipher.setAAD(aadBytes(version, aad));
        decipher.setAuthTag(tag);
        return Promise.resolve(Buffer.concat([decipher.update(body), decipher.final()]));
      } catch {
        // No cause: it adds nothing and should carry no key-dependent detail.
        return Promise.reject(
          new KmsError(
            'KMS_UNWRAP_FAILED',
            'local KMS: authentication failed while unwrapping (AES-GCM): wrong master key, or the ' +
              'stored ciphertext was altered',
          ),
        );
      }
    },
  };
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

export interface KmsConfig {
  readonly provider: string;
  readonly masterKeyFile: string;
  readonly masterKeyEnv: string;
}

/** The provider the configuration names. */
export function openKms(
  config: KmsConfig,
  dataDir: string,
  env?: NodeJS.ProcessEnv,
): { kms: KmsProvider; source: string } {
  if (config.provider !== 'local') {
    throw new KmsError('KMS_PROVIDER', `unknown KMS provider "${config.provider}"`);
  }
  const loaded = loadLocalKek({
    dataDir,
    masterKeyFile: config.masterKeyFile,
    masterKeyEnv: config.masterKeyEnv,
    ...(env === undefined ? {} : { env }),
  });
  const kms = createLocalKms(loaded.kek);
  loaded.kek.fill(0);
  return { kms, source: loaded.source };
}
