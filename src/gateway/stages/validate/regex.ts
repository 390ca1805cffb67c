/**
 * Regular expressions from contracts run on a linear-time engine (RE2, via the pure-JS `re2js`
 * port), never on V8's backtracking engine: a `pattern` such as `^(a+)+$` cannot stall the event
 * loop whatever the input (issue 12, #5; OWASP ReDoS).
 *
 * Contracts are written in ECMAScript regex syntax (JSON Schema says so), so the pattern is
 * translated before RE2 compiles it, keeping ECMAScript's meaning where the two differ:
 * `\uXXXX` / `\u{X}` escapes become `\x{X}`, `.` excludes every ECMAScript line terminator, and
 * `\s` / `\S` are ECMAScript's (Unicode) white space. What RE2 cannot run in linear time
 * (backreferences, lookahead, lookbehind) or does not know (`\cX`, `[\b]`, `\S` inside a
 * character class, the empty class `[]`) is refused with a {@link PatternError} that says why:
 * at load by openapi.ts, with the JSON pointer of the pattern.
 *
 * The format checks of ajv-formats that are regular expressions run on the same engine
 * ({@link LINEAR_FORMATS}); those whose regex uses lookaround are rewritten here.
 */
import { fullFormats } from 'ajv-formats/dist/formats.js';
import { RE2JS } from 're2js';

/** A pattern the linear-time engine cannot run; `message` says why (never echoed to clients). */
export class PatternError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PatternError';
  }
}

/** ECMAScript's WhiteSpace and LineTerminator code points, as RE2 class members. */
const JS_SPACE =
  '\\t\\n\\x{0B}\\f\\r \\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}\\x{FEFF}';
/** ECMAScript's `.` without the `s` flag: anything but a line terminator. */
const JS_DOT = '[^\\n\\r\\x{2028}\\x{2029}]';

const HEX4 = /^[0-9A-Fa-f]{4}$/;
const HEX_BRACED = /^\{([0-9A-Fa-f]{1,6})\}/;

/** Reads a `\u` escape at `i` (the backslash); returns the code point and the escape's length. */
function readUnicodeEscape(pattern: string, i: number): { cp: number; length: number } {
  const braced = HEX_BRACED.exec(pattern.slice(i + 2, i + 11));
  if (braced?.[1] !== undefined) return { cp: Number.parseInt(braced[1], 16), length: braced[0].length + 2 };
  const hex = pattern.slice(i + 2, i + 6);
  if (!HEX4.test(hex)) throw new PatternError('malformed \\u escape');
  let cp = Number.parseInt(hex, 16);
  let length = 6;
  // A surrogate pair written as two escapes is one code point (the `u` flag's reading).
  if (cp >= 0xd800 && cp <= 0xdbff && pattern.startsWith('\\u', i + 6)) {
    const low = pattern.slice(i + 8, i + 12);
    const lowCp = HEX4.test(low) ? Number.parseInt(low, 16) : 0;
    if (lowCp >= 0xdc00 && lowCp <= 0xdfff) {
      cp = 0x10000 + ((cp - 0xd800) << 10) + (lowCp - 0xdc00);
      length = 12;
    }
  }
  if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
    throw new PatternError('\\u escape of a lone surrogate or beyond U+10FFFF');
  }
  return { cp, length };
}

/** Translates an ECMAScript (`u` flag) pattern into RE2 syntax with the same meaning. */
export function toRe2Syntax(pattern: string): string {
  let out = '';
  let inClass = false;
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern.charAt(i);
    if (c === '\\') {
      const e = pattern.charAt(i + 1);
      if (e === '') throw new PatternError('trailing backslash');
      if (e === 'u') {
        const { cp, length } = readUnicodeEscape(pattern, i);
        out += `\\x{${cp.toString(16)}}`;
        i += length - 1;
        continue;
      }
      if (e >= '1' && e <= '9') throw new PatternError('backreferences are not supported');
      if (e === 'k') throw new PatternError('named backreferences are not supported');
      if (e === 's') out += inClass ? JS_SPACE : `[${JS_SPACE}]`;
      else if (e === 'S') {
        if (inClass) throw new PatternError('\\S inside a character class is not supported');
        out += `[^${JS_SPACE}]`;
      } else out += c + e;
      i++;
      continue;
    }
    if (inClass) {
      if (c === ']') inClass = false;
      out += c;
      continue;
    }
    if (c === '[') {
      inClass = true;
      out += c;
      if (pattern.charAt(i + 1) === '^') {
        out += '^';
        i++;
      }
      if (pattern.charAt(i + 1) === ']') throw new PatternError('the empty character class is not supported');
      continue;
    }
    if (c === '(' && /^\(\?<?[=!]/.test(pattern.slice(i, i + 4))) {
      throw new PatternError('lookahead and lookbehind are not supported');
    }
    out += c === '.' ? JS_DOT : c;
  }
  return out;
}

/**
 * Compiles an ECMAScript pattern for the linear-time engine.
 * @throws {PatternError} when it cannot run there, saying why.
 */
export function compileLinear(pattern: string, caseInsensitive = false): RE2JS {
  const source = toRe2Syntax(pattern);
  try {
    return RE2JS.compile(source, caseInsensitive ? RE2JS.CASE_INSENSITIVE : 0);
  } catch (err) {
    const detail = (err as Error).message.replace(/^error parsing regexp: /, '');
    throw new PatternError(`not supported by the linear-time engine (${detail})`);
  }
}

/**
 * The inside of a pattern written `^X$` with no top-level `|`, else undefined: such a pattern is
 * a whole-input match, which RE2JS runs several times faster (`testExact`) than a search.
 */
function wholeInputBody(pattern: string): string | undefined {
  if (!pattern.startsWith('^') || !pattern.endsWith('$')) return undefined;
  let depth = 0;
  let inClass = false;
  const last = pattern.length - 1;
  for (let i = 1; i < last; i++) {
    const c = pattern.charAt(i);
    if (c === '\\') {
      if (i + 1 === last) return undefined; // the final `$` is escaped
      i++;
    } else if (inClass) {
      if (c === ']') inClass = false;
    } else if (c === '[') inClass = true;
    else if (c === '(') depth++;
    else if (c === ')') depth--;
    else if (c === '|' && depth === 0) return undefined;
  }
  return inClass || depth !== 0 ? undefined : pattern.slice(1, last);
}

/**
 * A linear-time `test` for an ECMAScript pattern (unanchored search, as `RegExp#test`).
 * @throws {PatternError} when it cannot run on the linear-time engine, saying why.
 */
export function linearTester(pattern: string, caseInsensitive = false): (input: string) => boolean {
  const body = wholeInputBody(pattern);
  if (body !== undefined) {
    const exact = compileLinear(body, caseInsensitive);
    return (input) => exact.testExact(input);
  }
  const re = compileLinear(pattern, caseInsensitive);
  return (input) => re.test(input);
}

/** What Ajv calls: the same interface as `new RegExp(pattern, 'u')` for `.test`. */
class LinearRegExp {
  readonly test: (input: string) => boolean;
  readonly #source: string;
  constructor(source: string) {
    this.#source = source;
    this.test = linearTester(source);
  }
  /** Ajv keys its compiled-pattern cache on this: it must differ per pattern. */
  toString(): string {
    return `/${this.#source}/re2`;
  }
}

/** Ajv's `code.regExp` engine: `pattern` and `patternProperties` run through RE2. */
export const linearRegExp = Object.assign((pattern: string) => new LinearRegExp(pattern), {
  code: 'linearRegExp',
});

/** Compiled on first use: the large format regexes cost ~170 ms to compile at start-up. */
function lazy(build: () => (s: string) => boolean): (s: string) => boolean {
  let test: ((s: string) => boolean) | undefined;
  return (s) => (test ??= build())(s);
}

const linearFormat = (pattern: string, caseInsensitive: boolean): ((s: string) => boolean) =>
  lazy(() => linearTester(pattern, caseInsensitive));

/** ajv-formats' `duration`, its lookarounds (`P(?!$)`, `T(?=\d)`) unrolled. */
const DURATION = linearFormat(
  String.raw`^P(?:(?:\d+Y)?(?:\d+M)?(?:\d+D)?(?:T(?:\d+H(?:\d+M)?(?:\d+S)?|\d+M(?:\d+S)?|\d+S))?|\d+W)$`,
  false,
);

/** ajv-formats' `hostname`, its length lookahead `(?=.{1,253}\.?$)` done as a length check. */
const HOSTNAME = linearFormat(
  String.raw`^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[-0-9a-z]{0,61}[0-9a-z])?)*\.?$`,
  true,
);

/**
 * ajv-formats' `url` (dperini's regex): quadratic on V8 (2 s for 64 KB of `http://::::…`). The
 * structure runs on RE2 with the host captured; the private-range lookaheads are checked on
 * what follows the host's start, as they were.
 */
const urlRe = (): RE2JS =>
  compileLinear(
    String.raw`^(?:https?|ftp):\/\/(?:\S+(?::\S*)?@)?((?:[1-9]\d?|1\d\d|2[01]\d|22[0-3])(?:\.(?:1?\d{1,2}|2[0-4]\d|25[0-5])){2}(?:\.(?:[1-9]\d?|1\d\d|2[0-4]\d|25[0-4]))|(?:(?:[a-z0-9\u{00a1}-\u{ffff}]+-)*[a-z0-9\u{00a1}-\u{ffff}]+)(?:\.(?:[a-z0-9\u{00a1}-\u{ffff}]+-)*[a-z0-9\u{00a1}-\u{ffff}]+)*(?:\.(?:[a-z\u{00a1}-\u{ffff}]{2,})))(?::\d{2,5})?(?:\/[^\s]*)?$`,
    true,
  );
const privateHost = (): RE2JS =>
  compileLinear(
    String.raw`^(?:(?:10|127)(?:\.\d{1,3}){3}|(?:169\.254|192\.168)(?:\.\d{1,3}){2}|172\.(?:1[6-9]|2\d|3[0-1])(?:\.\d{1,3}){2})`,
  );

/** Formats whose ajv-formats regex uses lookaround: rewritten above. */
const REWRITTEN: Readonly<Record<string, (s: string) => boolean>> = {
  duration: (s) => s !== 'P' && DURATION(s),
  hostname: (s) => (s.length <= 253 || (s.length === 254 && s.endsWith('.'))) && HOSTNAME(s),
  url: lazy(() => {
    const url = urlRe();
    const internal = privateHost();
    return (s) => {
      const m = url.matcher(s);
      return m.matches() && !internal.test(s.slice(m.start(1)));
    };
  }),
};

/**
 * Replacements for every ajv-formats check that is a regular expression, all linear-time: the
 * same regex on RE2, or a rewrite. The others (date, time, date-time, uri, regex) are functions
 * over fixed-shape or RFC 3986 regexes that stay linear on V8; `regex` only compiles the value,
 * never runs it. A new lookaround regex in an ajv-formats upgrade fails regex.test.ts.
 */
export const LINEAR_FORMATS: Readonly<Record<string, (s: string) => boolean>> = Object.fromEntries(
  Object.entries(fullFormats as Record<string, unknown>).flatMap(([name, format]) => {
    const re = format instanceof RegExp ? format : undefined;
    if (re === undefined) return [];
    const rewritten = REWRITTEN[name];
    if (rewritten !== undefined) return [[name, rewritten]];
    return [[name, linearFormat(re.source, re.flags.includes('i'))]];
  }),
);
