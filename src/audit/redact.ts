/**
 * The credential guard every audit string passes through. Events are built only from typed
 * fields, so a credential can only arrive by mistake (a token put into `event.reason`, a header
 * value used as a user id); the guard catches the shapes credentials have:
 *
 * - JWT / JWS / JWE compact serialisations (`eyJ…` segments joined by dots);
 * - `Bearer …`, `Basic …`, `DPoP …` authorization values;
 * - Portcullis API keys (`pcl_…`) and client secrets in `name=value` form;
 * - `password=`, `secret=`, `token=`, `api_key=` and similar assignments;
 * - in free-text fields, any run of more than 32 base64url characters that mixes upper case,
 *   lower case and digits (random secrets, session ids); hex digests and UUIDs, which are
 *   lower-case, pass.
 *
 * A match replaces the whole value with `[REDACTED]`: a partial clean-up could leave a secret's
 * remainder behind.
 */

/**
 * `id`: identifiers (client id, key id, route names): every rule except the entropy rule, since
 * a JWK thumbprint or a random client id is public by design. `text`: free text: every rule.
 */
export type FieldKind = 'id' | 'text';

export const REDACTED = '[REDACTED]';

const RULES: readonly RegExp[] = [
  // JWT/JWS (3 parts) and JWE (5 parts); the header always starts with base64url of '{"'.
  /eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*/,
  // An authorization scheme followed by a credential-like token (at least one digit or symbol,
  // so that prose such as "basic authentication" passes).
  /\b(?:bearer|basic|dpop|negotiate)\s+(?=[A-Za-z0-9._~+/=-]*[0-9._~+/=-])[A-Za-z0-9._~+/=-]{8,}/i,
  /\bpcl_[A-Za-z0-9_-]{4,}/i,
  /\b(?:password|passwd|pwd|secret|client_secret|token|access_token|refresh_token|id_token|api_?key|authorization|cookie|session)\s*[=:]/i,
  /-----BEGIN [A-Z ]*PRIVATE KEY-----/,
];

const LONG_RUN = /[A-Za-z0-9_-]{33,}/g;

/** Shannon entropy of `s` in bits per character. */
function entropy(s: string): number {
  const counts = new Map<string, number>();
  for (const c of s) counts.set(c, (counts.get(c) ?? 0) + 1);
  let h = 0;
  for (const n of counts.values()) {
    const p = n / s.length;
    h -= p * Math.log2(p);
  }
  return h;
}

/** Whether `run` (base64url characters only) looks like a random secret. */
export function isHighEntropyToken(run: string): boolean {
  return run.length > 32 && /[A-Z]/.test(run) && /[a-z]/.test(run) && /[0-9]/.test(run) && entropy(run) >= 4;
}

/** Whether `value` looks like (or contains) a credential under the rules for `kind`. */
export function looksLikeCredential(value: string, kind: FieldKind = 'text'): boolean {
  if (RULES.some((r) => r.test(value))) return true;
  if (kind === 'text') {
    for (const m of value.matchAll(LONG_RUN)) if (isHighEntropyToken(m[0])) return true;
  }
  return false;
}

/**
 * Lower-case hex, digits and `-` (UUIDs, digests, numbers, dates without letters): no rule can
 * match such a string (every rule needs a letter outside a–f, an upper-case letter or `_`).
 */
const INERT = /^[0-9a-f:./-]*$/;

/**
 * Verdicts already computed, per kind: request events repeat the same few values (methods,
 * routes, API names, reasons, client ids, addresses), so each is scanned once. Bounded: the
 * map is emptied when full, so an attacker choosing values only costs the scans it would
 * have cost anyway.
 */
const VERDICTS = { id: new Map<string, boolean>(), text: new Map<string, boolean>() };
const MAX_VERDICTS = 4096;

/** {@link looksLikeCredential}, with the verdict cached for values seen before. */
function isCredential(value: string, kind: FieldKind): boolean {
  if (INERT.test(value)) return false;
  const cache = VERDICTS[kind];
  let verdict = cache.get(value);
  if (verdict === undefined) {
    verdict = looksLikeCredential(value, kind);
    if (cache.size >= MAX_VERDICTS) cache.clear();
    cache.set(value, verdict);
  }
  return verdict;
}

/** Returns the value unchanged, or `[REDACTED]` when it looks like a credential. */
export function redactValue(value: string, kind: FieldKind): { value: string; redacted: boolean } {
  return isCredential(value, kind) ? { value: REDACTED, redacted: true } : { value, redacted: false };
}

/** Whether {@link redactValue} would replace `value` (no allocation). */
export function mustRedact(value: string, kind: FieldKind): boolean {
  return isCredential(value, kind);
}
