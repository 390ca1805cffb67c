/**
 * Strict request-target normalisation.
 *
 * The gateway routes on the decoded segments this module returns and builds the upstream URL
 * from the canonical `path`, so no request reaches an upstream on a path the OpenAPI document
 * does not declare: anything an upstream, a proxy or a file system could read in two ways
 * (dot segments in any spelling, encoded slashes and backslashes, double encoding, `;` path
 * parameters, overlong UTF-8, controls, Unicode look-alikes of `.` and `/`) is refused rather
 * than "fixed".
 *
 * Everything here is pure and synchronous; character classes are lookup tables built once.
 */
import { Denial } from './problems.ts';

/** The result of {@link normalizeTarget}. */
export interface NormalizedTarget {
  /**
   * The canonical path, re-encoded from `segments` with {@link encodeSegment}: two targets
   * that decode to the same segments have the same `path` (`/%7Ea` and `/~a`, `%c3%a9` and
   * `%C3%A9`). Starts with `/`; `/` alone is the root.
   */
  readonly path: string;
  /**
   * The path segments, percent-decoded exactly once. The root `/` has no segments. A
   * trailing `/` is kept as a final empty segment, so `/a/b/` (`['a', 'b', '']`) is a
   * different path from `/a/b` (`['a', 'b']`) and is not found unless declared.
   * No segment contains `/`, `\`, `;`, a control character or a percent-escape.
   */
  readonly segments: readonly string[];
  /** The raw query (checked, not re-encoded), without the `?`; `''` when there is none. */
  readonly query: string;
}

const SLASH = 0x2f;
const PERCENT = 0x25;
const PLUS = 0x2b;

const ALPHA_DIGIT = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
const UNRESERVED = ALPHA_DIGIT + '-._~';

function charTable(chars: string): Uint8Array {
  const table = new Uint8Array(128);
  for (let i = 0; i < chars.length; i++) table[chars.charCodeAt(i)] = 1;
  return table;
}

/** Raw characters allowed inside a path segment: RFC 3986 pchar without `;` (refused). */
const PATH_CHAR = charTable(UNRESERVED + "!$&'()*+,=:@%");
/** Raw characters allowed in the query: RFC 3986 `query` (pchar, `/`, `?`). */
const QUERY_CHAR = charTable(UNRESERVED + "!$&'()*+,;=:@/?%");
/**
 * Characters {@link encodeSegment} leaves as they are: pchar without `;` and `+` (`+` is
 * encoded so that no upstream can read it as a space).
 */
const KEEP_CHAR = charTable(UNRESERVED + "!$&'()*,=:@");

const HEX_VALUE = new Int8Array(128).fill(-1);
for (let i = 0; i < 16; i++) {
  HEX_VALUE['0123456789ABCDEF'.charCodeAt(i)] = i;
  HEX_VALUE['0123456789abcdef'.charCodeAt(i)] = i;
}

const PCT_ENCODED: readonly string[] = Array.from(
  { length: 256 },
  (_, b) => '%' + b.toString(16).toUpperCase().padStart(2, '0'),
);

function hexValue(code: number): number {
  return code < 128 ? (HEX_VALUE[code] ?? -1) : -1;
}

// `fatal` refuses invalid UTF-8 (overlongs, surrogates, truncated sequences); `ignoreBOM`
// keeps a leading U+FEFF instead of silently dropping it (that would be a second spelling).
const DECODER = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const ENCODER = new TextEncoder();
let scratch = new Uint8Array(1024);

const EMPTY: readonly string[] = Object.freeze([]);
/** Structure that NFKC folding could produce from look-alikes (`／`, `＼`, `；`, `％２ｅ`). */
const FOLDED_STRUCTURE = /[/\\;]|%[0-9A-Fa-f]{2}/;

function invalidPath(reason: string): Denial {
  return new Denial('invalid-path', reason);
}

function rawCharReason(code: number): string {
  if (code === 0x3b) return 'path-parameter';
  if (code === 0x5c) return 'backslash';
  if (code < 0x20 || code === 0x7f) return 'control-char';
  if (code > 0x7f) return 'non-ascii';
  return 'forbidden-char';
}

/** True when `a` (and `b`) are hex digits, i.e. the three characters at `i` are an escape. */
function isEscapeAt(s: string, i: number, end: number): boolean {
  return i + 2 < end && hexValue(s.charCodeAt(i + 1)) >= 0 && hexValue(s.charCodeAt(i + 2)) >= 0;
}

/**
 * Checks a decoded piece of a segment. Refuses what an upstream could read as structure:
 * `/`, `\`, `;`, controls (C0, DEL, C1), a remaining percent-escape (double encoding) and,
 * for non-ASCII text, any of those or a dot segment after NFKC (full-width `．．` or `／`).
 */
function checkDecoded(text: string): void {
  let nonAscii = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x20 || (c >= 0x7f && c <= 0x9f)) throw invalidPath('control-char');
    if (c === SLASH) throw invalidPath('encoded-slash');
    if (c === 0x5c) throw invalidPath('encoded-backslash');
    if (c === 0x3b) throw invalidPath('path-parameter');
    if (c === PERCENT && isEscapeAt(text, i, text.length)) throw invalidPath('double-encoding');
    if (c > 0x7f) nonAscii = true;
  }
  if (nonAscii) {
    const folded = text.normalize('NFKC');
    if (folded === '.' || folded === '..' || FOLDED_STRUCTURE.test(folded)) {
      throw invalidPath('unicode-confusable');
    }
  }
}

/**
 * Validates the raw characters of `s[start, end)` and percent-decodes them once.
 * Throws a `Denial('invalid-path', …)`. Does not check for dot segments (the caller does,
 * on whole segments).
 */
function decodeRange(s: string, start: number, end: number): string {
  let escaped = false;
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i);
    if (c >= 128 || PATH_CHAR[c] !== 1) throw invalidPath(rawCharReason(c));
    if (c === PERCENT) {
      if (!isEscapeAt(s, i, end)) throw invalidPath('bad-escape');
      escaped = true;
      i += 2;
    }
  }
  // Raw characters that passed the table need no further check: the table holds no
  // control, `/`, `\` or `;`, and a raw `%` always starts an escape.
  if (!escaped) return s.slice(start, end);

  if (scratch.length < end - start) scratch = new Uint8Array(end - start);
  let n = 0;
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i);
    if (c === PERCENT) {
      scratch[n++] = (hexValue(s.charCodeAt(i + 1)) << 4) | hexValue(s.charCodeAt(i + 2));
      i += 2;
    } else {
      scratch[n++] = c;
    }
  }
  let text: string;
  try {
    text = DECODER.decode(scratch.subarray(0, n));
  } catch {
    throw invalidPath('invalid-utf8');
  }
  checkDecoded(text);
  return text;
}

/**
 * Validates and percent-decodes one piece of a path (a segment, or the literal text between
 * parameters of a route template) under the same rules as {@link normalizeTarget}, without
 * the dot-segment check. Throws `Denial('invalid-path', reason)`.
 * @internal For the route table, which decodes template literals with it.
 */
export function decodePathPiece(raw: string): string {
  return decodeRange(raw, 0, raw.length);
}

/** True for the dot segments `.` and `..` (after decoding). */
export function isDotSegment(segment: string): boolean {
  return segment === '.' || segment === '..';
}

/**
 * The canonical encoding of one decoded segment: unreserved characters and the sub-delims
 * `! $ & ' ( ) * , =` plus `:` and `@` stay as they are; everything else, `+` included, is
 * percent-encoded as UTF-8 with upper-case hex. Use it to put route parameters into an
 * upstream path.
 * @throws TypeError when `segment` is not well-formed Unicode (a lone surrogate).
 */
export function encodeSegment(segment: string): string {
  let i = 0;
  for (; i < segment.length; i++) {
    const c = segment.charCodeAt(i);
    if (c >= 128 || KEEP_CHAR[c] !== 1) break;
  }
  if (i === segment.length) return segment;
  if (!segment.isWellFormed()) throw new TypeError('encodeSegment: segment is not well-formed Unicode');
  let out = segment.slice(0, i);
  const bytes = ENCODER.encode(segment.slice(i));
  for (const b of bytes) {
    out += b < 128 && KEEP_CHAR[b] === 1 ? String.fromCharCode(b) : (PCT_ENCODED[b] ?? '');
  }
  return out;
}

function checkQuery(s: string, start: number, end: number): void {
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i);
    if (c >= 128 || QUERY_CHAR[c] !== 1) throw new Denial('bad-request', 'query-char');
    if (c === PERCENT) {
      if (!isEscapeAt(s, i, end)) throw new Denial('bad-request', 'query-escape');
      i += 2;
    }
  }
}

/**
 * Checks a request-target strictly and splits it into canonical path, decoded segments and
 * raw query.
 *
 * Refusals (each a {@link Denial} with a short `reason`):
 * - `uri-too-long`: the target is longer than `maxUrlBytes` (the target is measured in
 *   UTF-16 code units; every accepted target is ASCII, so that is its byte length).
 * - `bad-request`: not origin-form (`*`, `http://host/…`, `host:443`, relative), a `#`
 *   anywhere, a query character outside RFC 3986 `query` or a malformed escape in the query.
 * - `invalid-path`: a raw character outside RFC 3986 pchar (space, `\`, `"`, `<`, `>`, `^`,
 *   `` ` ``, `{`, `|`, `}`, controls, non-ASCII), `;` raw or encoded (path parameters), a
 *   malformed escape (`%`, `%G1`, `%a`), decoded bytes that are not valid UTF-8 (overlong
 *   `%C0%AE`, surrogates, truncated), an encoded `/` or `\`, decoded controls (C0, DEL, C1,
 *   NUL included), a decoded segment still holding an escape (`%252e`), dot segments in any
 *   spelling (`..`, `%2e%2E`, `.%2e`), Unicode text whose NFKC form is a dot segment or holds
 *   `/`, `\`, `;` or an escape, and empty segments (`//`). A lone `/` is the root.
 *
 * A trailing `/` is kept as a final empty segment: `/a/b/` and `/a/b` are different paths.
 *
 * @param rawTarget the request-target as received (e.g. Node's `req.url`).
 * @param maxUrlBytes the largest accepted target (a positive integer, e.g. 8192).
 * @throws TypeError when `maxUrlBytes` is not a positive integer (a programming error).
 *
 * @example
 * normalizeTarget('/v1/files/caf%c3%a9%20menu.json?x=1', 8192)
 * // { path: '/v1/files/caf%C3%A9%20menu.json', segments: ['v1', 'files', 'café menu.json'], query: 'x=1' }
 */
export function normalizeTarget(rawTarget: string, maxUrlBytes: number): NormalizedTarget {
  if (!Number.isSafeInteger(maxUrlBytes) || maxUrlBytes < 1) {
    throw new TypeError(
      `normalizeTarget: maxUrlBytes must be a positive integer, got ${String(maxUrlBytes)}`,
    );
  }
  const length = rawTarget.length;
  if (length > maxUrlBytes) throw new Denial('uri-too-long', 'target-too-long');
  if (length === 0 || rawTarget.charCodeAt(0) !== SLASH) {
    throw new Denial('bad-request', rawTarget === '*' ? 'asterisk-form' : 'not-origin-form');
  }
  if (rawTarget.includes('#')) throw new Denial('bad-request', 'fragment');

  const q = rawTarget.indexOf('?');
  const pathEnd = q === -1 ? length : q;

  let segments: readonly string[] = EMPTY;
  if (pathEnd > 1) {
    const list: string[] = [];
    let start = 1;
    for (;;) {
      let end = rawTarget.indexOf('/', start);
      if (end === -1 || end > pathEnd) end = pathEnd;
      if (end === start) {
        // Empty segment: allowed only as the final one (a trailing slash).
        if (end !== pathEnd) throw invalidPath('empty-segment');
        list.push('');
        break;
      }
      const segment = decodeRange(rawTarget, start, end);
      if (isDotSegment(segment)) throw invalidPath('dot-segment');
      list.push(segment);
      if (end === pathEnd) break;
      start = end + 1;
    }
    segments = list;
  }

  let query = '';
  if (q !== -1) {
    checkQuery(rawTarget, q + 1, length);
    query = rawTarget.slice(q + 1);
  }

  let path = q === -1 ? rawTarget : rawTarget.slice(0, pathEnd);
  if (needsReencoding(path)) path = '/' + segments.map(encodeSegment).join('/');
  return { path, segments, query };
}

/** Only escapes and `+` can make the raw path differ from its canonical form. */
function needsReencoding(rawPath: string): boolean {
  for (let i = 0; i < rawPath.length; i++) {
    const c = rawPath.charCodeAt(i);
    if (c === PERCENT || c === PLUS) return true;
  }
  return false;
}
