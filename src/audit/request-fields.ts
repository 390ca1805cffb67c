/**
 * Issue 13: the documented request-event fields that need more than the request record's plain
 * values — `http.response.body.bytes`, `portcullis.rate_limit.key` and
 * `portcullis.rate_limit.retry_after`. Kept apart from the rest of the observer so that the
 * request-event transport (src/audit/pipe.ts, the audit worker) can change independently.
 *
 * `portcullis.rate_limit.key` is `<dimension>:<hash>`: the dimension that refused and a keyed
 * hash (HMAC-SHA-256, first 16 hex digits) of its counter key. The raw key (an address, a client
 * or API-key id, a token hash) never enters the trail; the same counter always hashes to the
 * same value (with the same key manager), so one offender's refusals can be correlated.
 */
import { createHmac } from 'node:crypto';
import type { AuditEventInput } from './event.ts';

/** The part of a request record these fields come from. */
export interface RequestFieldsSource {
  readonly responseBytes?: number | undefined;
  readonly denial?:
    | {
        readonly rateLimit?:
          | { readonly dimension: string; readonly key: string; readonly retryAfterSeconds: number }
          | undefined;
        readonly apiKeyId?: string | undefined;
      }
    | undefined;
}

export type RateLimitKeyHasher = (key: string) => string;

/**
 * A keyed hash for rate-limit keys. `secret` must be stable across processes sharing a trail,
 * e.g. `Buffer.from(keys.hmac('client-secret', 'portcullis/audit-rate-limit-key/v1'), 'base64url')`.
 */
export function rateLimitKeyHasher(secret: Uint8Array): RateLimitKeyHasher {
  return (key) => createHmac('sha256', secret).update(key, 'utf8').digest('hex').slice(0, 16);
}

export type RequestAuditFields = Pick<
  AuditEventInput,
  | 'http.response.body.bytes'
  | 'portcullis.rate_limit.key'
  | 'portcullis.rate_limit.retry_after'
  | 'portcullis.api_key_id'
>;

const NONE: RequestAuditFields = {};

/** The fields for one request record (an empty object when none apply). */
export function requestAuditFields(r: RequestFieldsSource, hash: RateLimitKeyHasher): RequestAuditFields {
  const bytes = r.responseBytes;
  const limited = r.denial?.rateLimit;
  const keyId = r.denial?.apiKeyId;
  if (keyId !== undefined) {
    // A refused request of a known API key names the key (the alert rules group by it).
    return {
      ...(bytes === undefined || !Number.isSafeInteger(bytes) ? {} : { 'http.response.body.bytes': bytes }),
      'portcullis.api_key_id': keyId,
    };
  }
  if (limited === undefined) {
    return bytes === undefined || !Number.isSafeInteger(bytes) ? NONE : { 'http.response.body.bytes': bytes };
  }
  return {
    ...(bytes === undefined || !Number.isSafeInteger(bytes) ? {} : { 'http.response.body.bytes': bytes }),
    'portcullis.rate_limit.key': `${limited.dimension}:${hash(`${limited.dimension}\0${limited.key}`)}`,
    'portcullis.rate_limit.retry_after': limited.retryAfterSeconds,
  };
}
