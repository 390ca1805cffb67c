import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createCipheriv } from 'node:crypto';
import {
  ENVELOPE_V2,
  KmsError,
  LOCAL_FORMAT_V1,
  createLocalKms,
  envelopeAad,
  localKeyId,
  loadLocalKek,
  openKms,
} from './kms.ts';

const tmp = mkdtempSync(join(tmpdir(), 'portcullis-kms-'));
afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
});

let dirCounter = 0;
function freshDir(): string {
  const dir = join(tmp, `d${String(++dirCounter)}`);
  return dir;
}

async function rejection(promise: Promise<unknown>): Promise<KmsError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(KmsError);
    return error as KmsError;
  }
  throw new Error('expected a rejection');
}

function thrown(fn: () => unknown): KmsError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(KmsError);
    return error as KmsError;
  }
  throw new Error('expected a throw');
}

/** Every spelling of a secret that could leak into a message. */
function spellings(secret: Buffer): string[] {
  return [
    secret.toString('hex'),
    secret.toString('base64'),
    secret.toString('base64url'),
    secret.toString('latin1'),
  ];
}

describe('local KMS provider (AES-256-GCM)', () => {
  const kek = randomBytes(32);
  const kms = createLocalKms(kek);
  const plaintext = Buffer.from('{"kty":"EC","d":"secret-scalar"}');

  it('round-trips and writes the versioned envelope v2 ‖ keyId ‖ iv ‖ ciphertext ‖ tag', async () => {
    const wrapped = await kms.wrap(plaintext, 'signing-key:abc');
    expect(kms.name).toBe('local');
    expect(wrapped[0]).toBe(ENVELOPE_V2);
    expect(wrapped.subarray(1, 9).toString('hex')).toBe(localKeyId(kek));
    expect(kms.currentKeyId()).toBe(localKeyId(kek));
    expect(wrapped.length).toBe(1 + 8 + 12 + plaintext.length + 16);
    expect(wrapped.includes(plaintext)).toBe(false);
    expect(await kms.unwrap(wrapped, 'signing-key:abc')).toEqual(plaintext);
  });

  it('still unwraps the v1 envelope (no key id) written before key ids existed', async () => {
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', kek, iv, { authTagLength: 16 });
    cipher.setAAD(envelopeAad(LOCAL_FORMAT_V1, 'p'));
    const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    const v1 = Buffer.concat([Buffer.from([LOCAL_FORMAT_V1]), iv, body, cipher.getAuthTag()]);
    expect(await kms.unwrap(v1, 'p')).toEqual(plaintext);
    expect((await rejection(kms.unwrap(v1, 'q'))).code).toBe('KMS_UNWRAP_FAILED');
  });

  it('uses a fresh IV for every wrap', async () => {
    const a = await kms.wrap(plaintext, 'x');
    const b = await kms.wrap(plaintext, 'x');
    expect(a.subarray(9, 21).equals(b.subarray(9, 21))).toBe(false);
    expect(a.equals(b)).toBe(false);
  });

  it('binds the ciphertext to its purpose: another aad does not unwrap', async () => {
    const wrapped = await kms.wrap(plaintext, 'signing-key:abc');
    const error = await rejection(kms.unwrap(wrapped, 'signing-key:abd'));
    expect(error.code).toBe('KMS_UNWRAP_FAILED');
  });

  it('fails with a clear authentication error under a wrong key, never garbage', async () => {
    const wrapped = await kms.wrap(plaintext, 'p');
    const other = createLocalKms(randomBytes(32));
    const error = await rejection(other.unwrap(wrapped, 'p'));
    expect(error.code).toBe('KMS_UNWRAP_FAILED');
    expect(error.message).toMatch(/authentication failed.*AES-GCM.*wrong master key/);
    for (const s of spellings(kek)) expect(error.message).not.toContain(s);
  });

  it('detects tampering with any part of the envelope', async () => {
    const wrapped = await kms.wrap(plaintext, 'p');
    for (const index of [5, 13, wrapped.length - 1]) {
      const bad = Buffer.from(wrapped);
      bad[index] = (bad[index] ?? 0) ^ 1;
      expect((await rejection(kms.unwrap(bad, 'p'))).code).toBe('KMS_UNWRAP_FAILED');
    }
  });

  it('refuses unknown versions and truncated envelopes', async () => {
    const wrapped = await kms.wrap(plaintext, 'p');
    const v3 = Buffer.from(wrapped);
    v3[0] = 3;
    expect((await rejection(kms.unwrap(v3, 'p'))).code).toBe('KMS_FORMAT');
    expect((await rejection(kms.unwrap(wrapped.subarray(0, 20), 'p'))).code).toBe('KMS_FORMAT');
  });

  it('refuses a key that is not 32 bytes and an empty aad', () => {
    expect(() => createLocalKms(randomBytes(16))).toThrow(TypeError);
    expect(() => kms.wrap(plaintext, '')).toThrow(TypeError);
  });
});

describe('loadLocalKek', () => {
  const options = (dataDir: string, env: NodeJS.ProcessEnv = {}) => ({
    dataDir,
    masterKeyFile: 'master.key',
    masterKeyEnv: 'TEST_MASTER_KEY',
    env,
  });

  it('creates a 32-byte key file with mode 0600 on first start and reads it back later', () => {
    const dir = freshDir();
    const first = loadLocalKek(options(dir));
    const file = join(dir, 'master.key');
    expect(first.source).toBe(`created:${file}`);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(readFileSync(file)).toEqual(first.kek);
    expect(first.kek.length).toBe(32);
    const second = loadLocalKek(options(dir));
    expect(second.source).toBe(`file:${file}`);
    expect(second.kek).toEqual(first.kek);
  });

  it('refuses a key file readable by group or others, naming the file and not its contents', () => {
    const dir = freshDir();
    const { kek } = loadLocalKek(options(dir));
    const file = join(dir, 'master.key');
    for (const mode of [0o644, 0o640, 0o604]) {
      chmodSync(file, mode);
      const error = thrown(() => loadLocalKek(options(dir)));
      expect(error.code).toBe('KMS_KEY_FILE_PERMISSIONS');
      expect(error.message).toContain(file);
      expect(error.message).toContain(mode.toString(8));
      for (const s of spellings(kek)) expect(error.message).not.toContain(s);
    }
    chmodSync(file, 0o400);
    expect(loadLocalKek(options(dir)).kek).toEqual(kek);
  });

  it('refuses a key file of the wrong length', () => {
    const dir = freshDir();
    loadLocalKek(options(dir));
    const file = join(dir, 'master.key');
    const short = randomBytes(31);
    writeFileSync(file, short, { mode: 0o600 });
    const error = thrown(() => loadLocalKek(options(dir)));
    expect(error.code).toBe('KMS_KEY_FILE_INVALID');
    expect(error.message).toContain(file);
    for (const s of spellings(short)) expect(error.message).not.toContain(s);
  });

  it('accepts a key file holding the key as base64url text', () => {
    const dir = freshDir();
    loadLocalKek(options(dir));
    const key = randomBytes(32);
    writeFileSync(join(dir, 'master.key'), key.toString('base64url') + '\n', { mode: 0o600 });
    expect(loadLocalKek(options(dir)).kek).toEqual(key);
  });

  it('refuses a symbolic link as the key file', () => {
    const dir = freshDir();
    loadLocalKek({ ...options(dir), masterKeyFile: 'real.key' });
    symlinkSync(join(dir, 'real.key'), join(dir, 'master.key'));
    expect(thrown(() => loadLocalKek(options(dir))).code).toBe('KMS_KEY_FILE_INVALID');
  });

  it('uses the environment variable when set, and then creates no file', () => {
    const dir = freshDir();
    const key = randomBytes(32);
    const loaded = loadLocalKek(options(dir, { TEST_MASTER_KEY: key.toString('base64url') }));
    expect(loaded.kek).toEqual(key);
    expect(loaded.source).toBe('env:TEST_MASTER_KEY');
    expect(existsSync(join(dir, 'master.key'))).toBe(false);
  });

  it('refuses a malformed environment key, naming the variable and not its value', () => {
    const dir = freshDir();
    const short = randomBytes(24).toString('base64url');
    for (const value of [
      short,
      'not base64url at all!!!!!!!!!!!!!!!!!!!!!!!',
      randomBytes(32).toString('hex'),
    ]) {
      const error = thrown(() => loadLocalKek(options(dir, { TEST_MASTER_KEY: value })));
      expect(error.code).toBe('KMS_KEY_ENV_INVALID');
      expect(error.message).toContain('TEST_MASTER_KEY');
      expect(error.message).not.toContain(value);
    }
  });

  it('openKms builds the configured provider', async () => {
    const dir = freshDir();
    const { kms, source } = openKms(
      { provider: 'local', masterKeyFile: 'kek.bin', masterKeyEnv: 'TEST_MASTER_KEY' },
      dir,
      {},
    );
    expect(source).toBe(`created:${join(dir, 'kek.bin')}`);
    const again = openKms(
      { provider: 'local', masterKeyFile: 'kek.bin', masterKeyEnv: 'TEST_MASTER_KEY' },
      dir,
      {},
    );
    const wrapped = await kms.wrap(Buffer.from('x'), 'a');
    expect((await again.kms.unwrap(wrapped, 'a')).toString()).toBe('x');
    expect(
      thrown(() => openKms({ provider: 'hsm', masterKeyFile: 'k', masterKeyEnv: 'K' }, dir, {})).code,
    ).toBe('KMS_PROVIDER');
  });
});
