/**
 * A safe JSON parser for untrusted bodies.
 *
 * `JSON.parse` has no limits: a 1 MiB body of `[[[[…` or a million tiny array items is parsed in
 * full before any schema sees it. This parser applies the limits while it reads, so a hostile
 * body fails at the first byte past a limit, and it never recurses (an explicit stack bounded by
 * the depth limit), so nesting cannot exhaust the call stack; a total budget of values bounds
 * the work a body can cost within those limits. It also refuses what JSON allows but
 * an API must not accept: invalid UTF-8, duplicate keys (parsers disagree on which one wins),
 * lone surrogates, non-finite numbers, and the keys `__proto__`, `constructor` and `prototype`
 * (prototype pollution in whatever parses the body next). Objects are created without a
 * prototype.
 *
 * Every refusal is an `invalid-request` {@link Denial} whose one error names where parsing
 * stopped by JSON pointer and the rule, never the offending value.
 */
import { Denial } from './problems.ts';
import type { InvalidParam } from './problems.ts';

export interface JsonLimits {
  /** Deepest nesting of arrays and objects; the root container is depth 1. */
  readonly maxDepth: number;
  /** Longest string (and key), in UTF-16 code units. */
  readonly maxStringLength: number;
  /** Most items in one array. */
  readonly maxArrayItems: number;
  /** Most keys in one object. */
  readonly maxObjectKeys: number;
  /**
   * Most values in the whole document (every scalar, array and object counts one): the work
   * budget. Depth and per-container limits alone let 640 KB of 9,999 arrays 31 deep through.
   * Absent: no total bound (upstream responses, bounded by their buffer size).
   */
  readonly maxValues?: number;
}

/** The defaults for request bodies (DESIGN.md: JSON depth 32). */
export const DEFAULT_JSON_LIMITS: JsonLimits = {
  maxDepth: 32,
  maxStringLength: 64 * 1024,
  maxArrayItems: 10_000,
  maxObjectKeys: 1_000,
  maxValues: 100_000,
};

/** Keys refused anywhere in a document. */
export const FORBIDDEN_KEYS: ReadonlySet<string> = new Set(['__proto__', 'constructor', 'prototype']);

/** The rules a body can break while parsing (the `rule` of the error). */
export type JsonRule =
  | 'json-utf8'
  | 'json-syntax'
  | 'json-depth'
  | 'json-string-length'
  | 'json-array-items'
  | 'json-object-keys'
  | 'json-values'
  | 'json-duplicate-key'
  | 'json-forbidden-key'
  | 'json-unicode'
  | 'json-number';

const MAX_POINTER = 256;

/** Escapes one JSON pointer segment (RFC 6901). */
export function pointerSegment(key: string | number): string {
  return typeof key === 'number' ? String(key) : key.replaceAll('~', '~0').replaceAll('/', '~1');
}

/** Bounds a pointer so that an attacker-chosen key cannot make the error body large. */
export function boundPointer(pointer: string): string {
  return pointer.length <= MAX_POINTER ? pointer : `${pointer.slice(0, MAX_POINTER)}…`;
}

interface Frame {
  readonly container: Record<string, unknown> | unknown[];
  readonly isArray: boolean;
  /** The current key (objects) or index (arrays): for the value being read, and for pointers. */
  key: string | number;
  count: number;
}

const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COMMA = 0x2c;
const COLON = 0x3a;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;
const MINUS = 0x2d;
const ZERO = 0x30;
const NINE = 0x39;

const ESCAPES: Readonly<Record<number, string>> = {
  0x22: '"',
  0x5c: '\\',
  0x2f: '/',
  0x62: '\b',
  0x66: '\f',
  0x6e: '\n',
  0x72: '\r',
  0x74: '\t',
};

function isDigit(c: number): boolean {
  return c >= ZERO && c <= NINE;
}

/**
 * Parses `input` (bytes, which must be UTF-8, or already-decoded text) within `limits`.
 * `where` names the part of the request for the error (`body`, or `query` for a JSON parameter).
 * `basePointer` prefixes error pointers (e.g. `/filter` for a JSON-encoded parameter).
 *
 * @throws {Denial} `invalid-request` with one error: where parsing stopped and the rule broken.
 */
export function parseJson(
  input: Buffer | Uint8Array | string,
  limits: JsonLimits = DEFAULT_JSON_LIMITS,
  where: InvalidParam['in'] = 'body',
  basePointer = '',
): unknown {
  const stack: Frame[] = [];
  /** `inside`: the error is about the innermost container itself (its keys, its size). */
  const fail = (rule: JsonRule, extra?: string | number, inside = false): Denial => {
    let pointer = basePointer;
    const frames = inside ? stack.length - 1 : stack.length;
    for (let f = 0; f < frames; f++) pointer += `/${pointerSegment(stack[f]?.key ?? '')}`;
    if (extra !== undefined) pointer += `/${pointerSegment(extra)}`;
    return new Denial('invalid-request', rule, {
      errors: [{ in: where, pointer: boundPointer(pointer), rule }],
    });
  };

  let text: string;
  if (typeof input === 'string') {
    text = input;
  } else {
    try {
      text = decoder.decode(input);
    } catch {
      throw fail('json-utf8');
    }
  }
  const n = text.length;
  let i = 0;
  const maxValues = limits.maxValues ?? Number.POSITIVE_INFINITY;
  let values = 0;

  const skipWhitespace = (): void => {
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) i++;
      else break;
    }
  };

  /** Reads a string starting at the opening quote (text[i] === '"'). */
  const readString = (): string => {
    let j = i + 1;
    let chunkStart = j;
    let out = '';
    let escaped = false;
    for (;;) {
      if (j >= n) throw fail('json-syntax');
      const c = text.charCodeAt(j);
      if (c === QUOTE) break;
      if (c < 0x20) throw fail('json-syntax');
      if (c === BACKSLASH) {
        escaped = true;
        out += text.slice(chunkStart, j);
        const e = text.charCodeAt(j + 1);
        if (e === 0x75) {
          const hex = text.slice(j + 2, j + 6);
          if (!/^[0-9A-Fa-f]{4}$/.test(hex)) throw fail('json-syntax');
          out += String.fromCharCode(Number.parseInt(hex, 16));
          j += 6;
        } else {
          const s = ESCAPES[e];
          if (s === undefined) throw fail('json-syntax');
          out += s;
          j += 2;
        }
        chunkStart = j;
        if (out.length > limits.maxStringLength) throw fail('json-string-length');
        continue;
      }
      j++;
      if (j - chunkStart + out.length > limits.maxStringLength) throw fail('json-string-length');
    }
    out += text.slice(chunkStart, j);
    i = j + 1;
    if (escaped && !out.isWellFormed()) throw fail('json-unicode');
    return out;
  };

  const readNumber = (): number => {
    const start = i;
    if (text.charCodeAt(i) === MINUS) i++;
    const first = text.charCodeAt(i);
    if (first === ZERO) i++;
    else if (isDigit(first)) while (isDigit(text.charCodeAt(i))) i++;
    else throw fail('json-syntax');
    if (text.charCodeAt(i) === 0x2e) {
      i++;
      if (!isDigit(text.charCodeAt(i))) throw fail('json-syntax');
      while (isDigit(text.charCodeAt(i))) i++;
    }
    const e = text.charCodeAt(i);
    if (e === 0x65 || e === 0x45) {
      i++;
      const sign = text.charCodeAt(i);
      if (sign === 0x2b || sign === MINUS) i++;
      if (!isDigit(text.charCodeAt(i))) throw fail('json-syntax');
      while (isDigit(text.charCodeAt(i))) i++;
    }
    const value = Number(text.slice(start, i));
    if (!Number.isFinite(value)) throw fail('json-number');
    return value;
  };

  /** Reads `"key":` in the object of `frame` and makes it the frame's current key. */
  const readKey = (frame: Frame): void => {
    skipWhitespace();
    if (text.charCodeAt(i) !== QUOTE) throw fail('json-syntax', undefined, true);
    const key = readString();
    if (FORBIDDEN_KEYS.has(key)) throw fail('json-forbidden-key', key, true);
    if (Object.hasOwn(frame.container, key)) throw fail('json-duplicate-key', key, true);
    if (++frame.count > limits.maxObjectKeys) throw fail('json-object-keys', undefined, true);
    frame.key = key;
    skipWhitespace();
    if (text.charCodeAt(i) !== COLON) throw fail('json-syntax', key, true);
    i++;
  };

  const open = (container: Record<string, unknown> | unknown[], isArray: boolean): Frame => {
    if (stack.length >= limits.maxDepth) throw fail('json-depth');
    const frame: Frame = { container, isArray, key: 0, count: 0 };
    stack.push(frame);
    i++;
    skipWhitespace();
    return frame;
  };

  for (;;) {
    // Read one value at i.
    if (++values > maxValues) throw fail('json-values');
    skipWhitespace();
    let value: unknown;
    const c = text.charCodeAt(i);
    if (c === OPEN_BRACE) {
      const frame = open(Object.create(null) as Record<string, unknown>, false);
      if (text.charCodeAt(i) === CLOSE_BRACE) {
        i++;
        stack.pop();
        value = frame.container;
      } else {
        readKey(frame);
        continue;
      }
    } else if (c === OPEN_BRACKET) {
      const frame = open([], true);
      if (text.charCodeAt(i) === CLOSE_BRACKET) {
        i++;
        stack.pop();
        value = frame.container;
      } else {
        if (limits.maxArrayItems < 1) throw fail('json-array-items', undefined, true);
        continue;
      }
    } else if (c === QUOTE) {
      value = readString();
    } else if (c === MINUS || isDigit(c)) {
      value = readNumber();
    } else if (text.startsWith('true', i)) {
      value = true;
      i += 4;
    } else if (text.startsWith('false', i)) {
      value = false;
      i += 5;
    } else if (text.startsWith('null', i)) {
      value = null;
      i += 4;
    } else {
      throw fail('json-syntax');
    }

    // Attach the value to its container; close containers that end here.
    for (;;) {
      const top = stack.at(-1);
      if (top === undefined) {
        skipWhitespace();
        if (i !== n) throw fail('json-syntax');
        return value;
      }
      if (top.isArray) {
        (top.container as unknown[]).push(value);
        top.count++;
      } else {
        (top.container as Record<string, unknown>)[top.key as string] = value;
      }
      skipWhitespace();
      const d = text.charCodeAt(i);
      if (d === COMMA) {
        i++;
        if (top.isArray) {
          if (top.count >= limits.maxArrayItems) throw fail('json-array-items', undefined, true);
          top.key = top.count;
        } else {
          readKey(top);
        }
        break;
      }
      if (d === (top.isArray ? CLOSE_BRACKET : CLOSE_BRACE)) {
        i++;
        stack.pop();
        value = top.container;
        continue;
      }
      throw fail('json-syntax');
    }
  }
}
