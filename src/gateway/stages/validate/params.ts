/**
 * Parsing helpers for request validation: media types, `application/x-www-form-urlencoded`
 * (query strings and form bodies) and cookies. Results are null-prototype objects; the keys
 * `__proto__`, `constructor` and `prototype` are refused.
 */
import { boundPointer, FORBIDDEN_KEYS, pointerSegment } from '../../json.ts';
import type { InvalidParam } from '../../problems.ts';

export interface MediaType {
  /** `type/subtype`, lower case, without parameters. */
  readonly essence: string;
  readonly charset: string | undefined;
}

const TYPE = /^[!#$%&'*+.^_`|~0-9a-z-]+\/[!#$%&'*+.^_`|~0-9a-z-]+$/;
/**
 * One `;` parameter (RFC 9110 §5.6.6): a token name, then a token or a quoted string (the
 * HTTP parser has already refused control characters in header values).
 */
const PARAMETER =
  /[ \t]*;[ \t]*(?:([!#$%&'*+.^_`|~0-9A-Za-z-]+)=([!#$%&'*+.^_`|~0-9A-Za-z-]+|"(?:[^"\\]|\\.)*"))?/y;

/**
 * Parses a Content-Type value strictly (RFC 9110 §8.3.1); null when absent or malformed. A
 * parameter named twice (`charset=utf-8; charset=latin1`) is malformed: parsers disagree on which
 * one wins, so the gateway and the upstream could read the body differently.
 */
export function parseMediaType(value: string | undefined): MediaType | null {
  if (value === undefined) return null;
  const semi = value.indexOf(';');
  const essence = (semi < 0 ? value : value.slice(0, semi)).trim().toLowerCase();
  if (!TYPE.test(essence)) return null;
  let charset: string | undefined;
  const seen = new Set<string>();
  const text = value.trimEnd();
  let at = semi < 0 ? text.length : semi;
  while (at < text.length) {
    PARAMETER.lastIndex = at;
    const m = PARAMETER.exec(text);
    if (m === null) return null;
    at = PARAMETER.lastIndex;
    const name = m[1]?.toLowerCase();
    const raw = m[2];
    if (name === undefined || raw === undefined) continue; // an empty parameter: `type/sub;`
    if (seen.has(name)) return null;
    seen.add(name);
    if (name === 'charset') {
      charset = (raw.startsWith('"') ? raw.slice(1, -1).replace(/\\(.)/g, '$1') : raw).toLowerCase();
    }
  }
  return { essence, charset };
}

export function isJsonMediaType(essence: string): boolean {
  return essence === 'application/json' || essence.endsWith('+json');
}

export const FORM_MEDIA_TYPE = 'application/x-www-form-urlencoded';

/** Finds the declared entry for `essence`: exact, then `type/*`, then `*\/*`. */
export function matchMediaType<T>(declared: ReadonlyMap<string, T>, essence: string): T | undefined {
  return (
    declared.get(essence) ??
    declared.get(`${essence.slice(0, essence.indexOf('/'))}/*`) ??
    declared.get('*/*')
  );
}

export interface FormLimits {
  readonly maxKeys: number;
  readonly maxValuesPerKey: number;
}

/** Pairs in `name=value&…` order, decoded (`+` is a space); null-prototype, repeats kept. */
export function parseForm(
  text: string,
  where: InvalidParam['in'],
  limits: FormLimits,
  errors: InvalidParam[],
): Map<string, string[]> {
  const out = new Map<string, string[]>();
  if (text === '') return out;
  let pairs = 0;
  for (const part of text.split('&')) {
    if (part === '') continue;
    if (++pairs > limits.maxKeys * limits.maxValuesPerKey) {
      errors.push({ in: where, pointer: '', rule: 'maxProperties' });
      return out;
    }
    const eq = part.indexOf('=');
    let name: string;
    let value: string;
    try {
      name = decodeURIComponent((eq < 0 ? part : part.slice(0, eq)).replaceAll('+', ' '));
      value = eq < 0 ? '' : decodeURIComponent(part.slice(eq + 1).replaceAll('+', ' '));
    } catch {
      errors.push({ in: where, pointer: '', rule: 'encoding' });
      continue;
    }
    if (FORBIDDEN_KEYS.has(name)) {
      errors.push({ in: where, pointer: `/${name}`, rule: 'forbidden-key' });
      continue;
    }
    const values = out.get(name);
    if (values === undefined) {
      if (out.size >= limits.maxKeys) {
        errors.push({ in: where, pointer: '', rule: 'maxProperties' });
        return out;
      }
      out.set(name, [value]);
    } else if (values.length >= limits.maxValuesPerKey) {
      errors.push({ in: where, pointer: boundPointer(`/${pointerSegment(name)}`), rule: 'maxItems' });
    } else {
      values.push(value);
    }
  }
  return out;
}

/** Percent-encodes all but RFC 3986 unreserved characters (UTF-8, upper-case hex). */
export function encodeQueryComponent(value: string): string {
  return encodeURIComponent(value).replace(
    /[!'()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
}

/** Cookies by name (values as sent); the first of a repeated name wins, repeats are listed. */
export function parseCookies(header: string | undefined): {
  values: Map<string, string>;
  repeated: Set<string>;
} {
  const values = new Map<string, string>();
  const repeated = new Set<string>();
  if (header === undefined) return { values, repeated };
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    const name = part.slice(0, eq).trim();
    if (name === '') continue;
    if (values.has(name)) repeated.add(name);
    else values.set(name, part.slice(eq + 1).trim());
  }
  return { values, repeated };
}
