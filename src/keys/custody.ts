/**
 * Key custody: where the master key (KEK) and the signing keys live, as `keys.provider` says.
 *
 * - `local`: the KEK is `oauth.kms`'s key file (or environment variable); signing keys are
 *   generated in process and stored wrapped by it.
 * - `pkcs11`: the KEK is an AES key on an HSM token; with `keys.pkcs11.signingKeys` (default) the
 *   ES256 token-signing keys and the audit-checkpoint key are generated on the token and sign
 *   there, never leaving it. Peppers (HMAC keys on the API-key hot path) stay wrapped by the KEK.
 */
import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import type { KeysConfig, OAuthConfig } from '../config/schema.ts';
import { KmsError, openKms } from './kms.ts';
import type { KeyRing } from './kms.ts';
import { Hsm, createPkcs11KeyRing } from './pkcs11.ts';

export interface Custody {
  readonly kms: KeyRing;
  /** The token, when `keys.provider` is `pkcs11`. */
  readonly hsm: Hsm | undefined;
  /** Whether new signing keys are generated on the token. */
  readonly hsmSigning: boolean;
  /** Where the KEK came from (`env:NAME`, `file:PATH`, `created:PATH`, `pkcs11:TOKEN/LABEL`). */
  readonly source: string;
}

const ENV_REF = /^\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}$/;
const FILE_REF = /^\$\{file:([^}]+)\}$/;

/**
 * Resolves a secret reference: `${env:NAME}` (the variable's value) or `${file:PATH}` (the file's
 * first line; a relative path is resolved against `baseDir`). A literal is refused so that a
 * PIN is never written into the configuration file. Errors name `key`, never the value.
 */
export function resolveSecretRef(
  value: string,
  key: string,
  baseDir: string,
  env: NodeJS.ProcessEnv,
): string {
  const byEnv = ENV_REF.exec(value);
  if (byEnv !== null) {
    const name = byEnv[1] as string;
    const v = env[name];
    if (v === undefined || v === '')
      throw new KmsError('KMS_PROVIDER', `${key}: environment variable ${name} is not set`);
    return v;
  }
  const byFile = FILE_REF.exec(value);
  if (byFile !== null) {
    const path = resolve(baseDir, byFile[1] as string);
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? 'error';
      throw new KmsError('KMS_PROVIDER', `${key}: cannot read ${path} (${code})`);
    }
    const line = text.split(/\r?\n/, 1)[0] ?? '';
    if (line === '') throw new KmsError('KMS_PROVIDER', `${key}: ${path} is empty`);
    return line;
  }
  throw new KmsError('KMS_PROVIDER', `${key}: expected \${env:NAME} or \${file:PATH}, not a literal secret`);
}

export interface OpenCustodyOptions {
  readonly keys: KeysConfig;
  readonly kms: OAuthConfig['kms'];
  readonly dataDir: string;
  readonly env?: NodeJS.ProcessEnv;
}

/** Opens the custody the configuration names. */
export function openCustody(options: OpenCustodyOptions): Custody {
  const env = options.env ?? process.env;
  const { keys } = options;
  if (keys.provider === 'local') {
    const opened = openKms(options.kms, options.dataDir, env);
    return { kms: opened.kms, hsm: undefined, hsmSigning: false, source: opened.source };
  }
  const p = keys.pkcs11;
  if (p === undefined) {
    throw new KmsError('KMS_PROVIDER', 'keys.provider: pkcs11 needs keys.pkcs11 (module, tokenLabel, pin)');
  }
  const pin = resolveSecretRef(p.pin, 'keys.pkcs11.pin', options.dataDir, env);
  const hsm = Hsm.open({ module: p.module, tokenLabel: p.tokenLabel, pin });
  try {
    const ring = createPkcs11KeyRing(hsm, p.kekLabel);
    // A local master key that is still there (file or variable) keeps unwrapping what it wrapped
    // until `keys rotate-master --to pkcs11` has moved everything to the HSM's key.
    const localKey =
      (env[options.kms.masterKeyEnv] ?? '') !== '' ||
      existsSync(resolve(options.dataDir, options.kms.masterKeyFile));
    const kms = localKey ? withLegacy(ring, openKms(options.kms, options.dataDir, env).kms) : ring;
    return { kms, hsm, hsmSigning: p.signingKeys, source: `pkcs11:${p.tokenLabel}/${p.kekLabel}` };
  } catch (error) {
    hsm.close();
    throw error;
  }
}

/**
 * `primary` wraps; what it cannot unwrap is tried with `legacy` (the local master key an HSM
 * replaces). Rotation and key ids are the primary's.
 */
export function withLegacy(primary: KeyRing, legacy: KeyRing): KeyRing {
  return {
    name: primary.name,
    legacyNames: [legacy.name],
    currentKeyId: () => primary.currentKeyId(),
    wrap: (plaintext, aad) => primary.wrap(plaintext, aad),
    wrapUnder: (id, plaintext, aad) => primary.wrapUnder(id, plaintext, aad),
    async unwrap(ciphertext, aad) {
      try {
        return await primary.unwrap(ciphertext, aad);
      } catch (error) {
        try {
          return await legacy.unwrap(ciphertext, aad);
        } catch {
          throw error;
        }
      }
    },
    async refresh() {
      await primary.refresh();
      // The local key may be removed once migrated: that must not stop the HSM ring's refresh.
      await legacy.refresh().catch(() => undefined);
    },
    prepareNext: () => primary.prepareNext(),
    promoteNext: (id) => primary.promoteNext(id),
    canRotate: () => primary.canRotate(),
  };
}
