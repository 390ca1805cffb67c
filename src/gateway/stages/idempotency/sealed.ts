/**
 * Encryption at rest of idempotency records (Redis and store backends): the stored response —
 * the upstream's full answer — is sealed under a data key (src/keys/envelope.ts) bound to the
 * record key and the request fingerprint; what the backend holds is `{ sealed }` only. A record
 * that does not open (altered, copied from another key, or written in clear) is an error, which
 * the stage answers with 503 rather than replaying it.
 */
import type { Sealer } from '../../../keys/envelope.ts';
import { SealError } from '../../../keys/envelope.ts';
import type { IdempotencyStore, StoredResponse } from './store.ts';

const aadOf = (key: string, fingerprint: string) => `record:${key}:${fingerprint}`;

/** `inner` with its responses sealed; `inner` itself when there is no sealer. */
export function sealedIdempotencyStore(
  inner: IdempotencyStore,
  sealer: Sealer | undefined,
): IdempotencyStore {
  if (sealer === undefined) return inner;
  return {
    async begin(key, fingerprint, lockMs) {
      const begun = await inner.begin(key, fingerprint, lockMs);
      if (begun.kind !== 'replay') return begun;
      const sealed = begun.response.sealed;
      if (sealed === undefined) throw new SealError('idempotency record stored in clear');
      const text = (await sealer.open(sealed, aadOf(key, fingerprint))).toString('utf8');
      return { kind: 'replay', response: JSON.parse(text) as StoredResponse };
    },
    async complete(key, fingerprint, response, ttlMs) {
      const sealed = await sealer.seal(
        Buffer.from(JSON.stringify(response), 'utf8'),
        aadOf(key, fingerprint),
      );
      await inner.complete(key, fingerprint, { status: 0, headers: {}, body: '', sealed }, ttlMs);
    },
    release: (key, fingerprint) => inner.release(key, fingerprint),
  };
}
