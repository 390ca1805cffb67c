/**
 * The token-signing keys in the shape oidc-provider's `jwks` takes: a private JWK for a key held
 * in process, and an `ExternalSigningKey` (oidc-provider v9, `features.externalSigningSupport`,
 * experimental-01) for a key on an HSM, which signs through {@link TokenSigner.sign} (PKCS#11)
 * so the private key never leaves the token.
 *
 * @example
 * ```ts
 * new Provider(issuer, {
 *   jwks: oidcSigningKeys(keys),
 *   features: { externalSigningSupport: EXTERNAL_SIGNING_FEATURE, ... },
 * });
 * ```
 */
import { createPublicKey } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import type { JWK } from 'jose';
import * as oidc from 'oidc-provider';
import type { KeyManager, TokenSigner } from './types.ts';

/** oidc-provider's switch for external signers; the ack pins the experimental version. */
export const EXTERNAL_SIGNING_FEATURE = { enabled: true, ack: 'experimental-01' } as const;

interface ExternalSigningKeyBase {
  kid: string;
  alg: string;
}
type ExternalSigningKeyClass = new () => ExternalSigningKeyBase;

function base(): ExternalSigningKeyClass {
  const cls = (oidc as unknown as { ExternalSigningKey?: ExternalSigningKeyClass }).ExternalSigningKey;
  if (cls === undefined) throw new TypeError('this oidc-provider has no ExternalSigningKey (v9.x needed)');
  return cls;
}

/** Builds an oidc-provider ExternalSigningKey over a signer (what oidc-provider calls). */
export function externalSigningKey(signer: TokenSigner): ExternalSigningKeyBase {
  const Base = base();
  const publicKey = createPublicKey({ key: signer.publicJwk, format: 'jwk' });
  class PortcullisSigningKey extends Base {
    keyObject(): KeyObject {
      return publicKey;
    }
    sign(data: Buffer): Promise<Buffer> {
      return Promise.resolve(signer.sign(data));
    }
  }
  const key = new PortcullisSigningKey();
  key.kid = signer.kid;
  key.alg = signer.alg;
  return key;
}

/** The `jwks` for oidc-provider: the current key first; HSM keys as external signers. */
export function oidcSigningKeys(keys: KeyManager): { keys: (JWK | ExternalSigningKeyBase)[] } {
  const jwks = keys.signingJwks().keys;
  return {
    keys: keys
      .signers()
      .map((s) =>
        s.external ? externalSigningKey(s) : (jwks.find((j) => j.kid === s.kid) ?? externalSigningKey(s)),
      ),
  };
}
