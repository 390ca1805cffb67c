/**
 * The key manager's contract. Signing keys for issued tokens and the peppers that keyed hashes
 * of client secrets and API keys use live behind it; private material never leaves it except as
 * the private JWKs handed to the in-process token signer (oidc-provider).
 */
import type { JWK } from 'jose';
import type { CheckpointSigner, CheckpointVerifier } from '../audit/chain.ts';

export type SigningAlg = 'ES256' | 'PS256' | 'EdDSA';

/** Lifecycle of a signing key: published before use, used, published after use, then gone. */
export type KeyStatus = 'next' | 'current' | 'previous';

/** What may be shown about a key (CLI, admin API, logs): never private material. */
export interface KeySummary {
  readonly kid: string;
  readonly alg: SigningAlg;
  readonly status: KeyStatus;
  readonly createdAt: Date;
  /** When it became current (undefined while `next`). */
  readonly activatedAt: Date | undefined;
  /** When it stops being published (set once it is `previous`). */
  readonly retiresAt: Date | undefined;
}

/**
 * Signs with one token-signing key, synchronously, wherever the key lives: in process
 * (node:crypto) or on an HSM (PKCS#11, the private key never leaves it). `sign` returns the JWS
 * signature over the signing input (`base64url(header).base64url(payload)`): IEEE P1363 `r‖s`
 * for ES256, RSASSA-PSS for PS256, Ed25519 for EdDSA.
 */
export interface TokenSigner {
  readonly kid: string;
  readonly alg: SigningAlg;
  /** Public JWK with kid, alg and use. */
  readonly publicJwk: JWK;
  /** True when the private key is not exportable (on an HSM): there is no private JWK for it. */
  readonly external: boolean;
  sign(data: Buffer): Buffer;
}

/** Purposes of keyed hashes; each has its own pepper. */
export type PepperPurpose = 'client-secret' | 'api-key';

export interface KeyManager {
  /**
   * Private JWKs for the token signer: the current key first, then next, then previous. Keys on
   * an HSM have none and are left out: use {@link signers} (or `oidcSigningKeys`) for them.
   */
  signingJwks(): { keys: JWK[] };
  /** Signers of the published keys: the current key first, then next, then previous. */
  signers(): TokenSigner[];
  /** Public JWKs of next, current and previous keys (what /jwks publishes). */
  publicJwks(): { keys: JWK[] };
  /** The key tokens are signed with now. */
  current(): KeySummary;
  list(): KeySummary[];
  /**
   * Rotates: next → current, current → previous (published for the overlap period), a new next
   * is generated, previous keys past their overlap are removed. Durable before it resolves.
   */
  rotate(reason: string): Promise<KeySummary[]>;
  /** Re-reads keys from the store (another node rotated); emits a change when they differ. */
  refresh(): Promise<boolean>;
  /** HMAC-SHA-256 of `value` under the pepper for `purpose`, base64url. */
  hmac(purpose: PepperPurpose, value: string): string;
  /**
   * HMAC-SHA-256 of `value` under each replaced pepper of `purpose` still in its grace period
   * (`portcullis keys rotate-pepper`); empty when there is none. A secret that matches one of
   * these is valid, and its stored hash should be replaced by {@link hmac}'s.
   */
  hmacPrevious(purpose: PepperPurpose, value: string): string[];
  /**
   * Signs audit-trail checkpoints (ES256) with the audit-checkpoint key: created once per store,
   * its private part wrapped by the KMS like the signing keys; the kid is its RFC 7638 thumbprint.
   */
  auditCheckpointSigner(): CheckpointSigner;
  /** Verifies checkpoints signed by any audit-checkpoint key this store ever held. */
  auditCheckpointVerifier(): CheckpointVerifier;
  /** Called after the key set changed (rotation here or refreshed from another node). */
  onChange(listener: () => void): () => void;
  /** Stops the rotation timer. */
  close(): void;
}
