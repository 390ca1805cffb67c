/**
 * FIPS mode (`crypto.fips`). FIPS 140 validation belongs to the cryptographic module, here
 * OpenSSL's FIPS provider: Portcullis checks at start that it is active and, in FIPS mode,
 * restricts what it negotiates to approved algorithms:
 *
 * - JOSE: ES256 and PS256 (EdDSA is left out: not every validated module covers it);
 * - TLS: AES-GCM suites only (no ChaCha20-Poly1305), key exchange on P-256/P-384 (no X25519);
 * - password hashing is PBKDF2-HMAC-SHA-256 already, random numbers come from OpenSSL's DRBG.
 *
 * The mode is process-wide, as OpenSSL's is: {@link applyFipsMode} sets it once at start, and
 * the restriction helpers read it where the lists are used.
 */
import { createHash, getFips } from 'node:crypto';
import type { Config } from '../config/schema.ts';

export type FipsSetting = Config['crypto']['fips'];

export interface FipsStatus {
  /** What `crypto.fips` says. */
  readonly configured: FipsSetting;
  /** Whether OpenSSL's FIPS provider is active and works (a SHA-256 self-check). */
  readonly providerActive: boolean;
  /** Whether Portcullis runs restricted to approved algorithms. */
  readonly mode: 'fips' | 'standard';
}

/** The approved JOSE algorithms in FIPS mode. */
export const FIPS_JOSE_ALGS: readonly string[] = ['ES256', 'PS256'];
/** TLS 1.3 and 1.2 suites in FIPS mode (AES-GCM with ECDHE only). */
export const FIPS_TLS_CIPHERS = [
  'TLS_AES_256_GCM_SHA384',
  'TLS_AES_128_GCM_SHA256',
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
].join(':');
/** Key-exchange groups in FIPS mode. */
export const FIPS_ECDH_CURVES = 'P-256:P-384';

let fipsMode = false;

/** Whether the process runs in FIPS mode (set by {@link applyFipsMode} at start). */
export function inFipsMode(): boolean {
  return fipsMode;
}

/**
 * Whether the OpenSSL FIPS provider is active: `crypto.getFips()` says so and a SHA-256 digest
 * works (with `--enable-fips` but no FIPS provider installed, getFips() is 1 and every digest
 * fails: that is not FIPS mode, it is a broken process).
 */
export function fipsProviderActive(getFipsFn: () => number = getFips): boolean {
  if (getFipsFn() !== 1) return false;
  try {
    createHash('sha256').update('portcullis-fips-self-check').digest();
    return true;
  } catch {
    return false;
  }
}

export class FipsError extends Error {
  readonly code = 'FIPS_REQUIRED';
  constructor(message: string) {
    super(message);
    this.name = 'FipsError';
  }
}

/**
 * Decides the mode from the setting and the provider, and checks the configuration against it.
 * Throws {@link FipsError} naming `crypto.fips` (and its line, when `at` is given) when FIPS is
 * required and the provider is absent, or when a setting asks for an algorithm FIPS mode refuses.
 */
export function decideFipsMode(
  config: Pick<Config, 'crypto' | 'oauth'>,
  providerActive: boolean,
  at: (path: string) => string = (p) => p,
): FipsStatus {
  const configured = config.crypto.fips;
  if (configured === 'required' && !providerActive) {
    throw new FipsError(
      `${at('crypto.fips')}: required, but the OpenSSL FIPS provider is not active (crypto.getFips() is 0 or the provider does not work); ` +
        'run Node.js on a FIPS-validated OpenSSL with the FIPS provider enabled (see docs/deployment.md, "FIPS mode"), or set crypto.fips to preferred or off',
    );
  }
  const mode = configured !== 'off' && providerActive ? 'fips' : 'standard';
  if (mode === 'fips' && !FIPS_JOSE_ALGS.includes(config.oauth.signing.alg)) {
    throw new FipsError(
      `${at('oauth.signing.alg')}: ${config.oauth.signing.alg} is not allowed in FIPS mode (crypto.fips: ${configured}); use ${FIPS_JOSE_ALGS.join(' or ')}`,
    );
  }
  return { configured, providerActive, mode };
}

/** Makes the decided mode the process's (the restriction helpers below follow it). */
export function applyFipsMode(status: FipsStatus): void {
  fipsMode = status.mode === 'fips';
}

/** `algs` without those FIPS mode refuses (all of them outside FIPS mode). */
export function approvedJoseAlgs<T extends string>(algs: readonly T[]): T[] {
  return fipsMode ? algs.filter((a) => FIPS_JOSE_ALGS.includes(a)) : [...algs];
}

/** The TLS `ciphers` and `ecdhCurve` for listeners: the FIPS ones in FIPS mode, else `standard`. */
export function tlsCipherPolicy(standard: { ciphers: string; ecdhCurve: string }): {
  ciphers: string;
  ecdhCurve: string;
} {
  return fipsMode ? { ciphers: FIPS_TLS_CIPHERS, ecdhCurve: FIPS_ECDH_CURVES } : standard;
}
