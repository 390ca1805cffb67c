import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import {
  compileLinear,
  LINEAR_FORMATS,
  linearRegExp,
  linearTester,
  PatternError,
  toRe2Syntax,
} from './regex.ts';

const { fullFormats } = createRequire(import.meta.url)('ajv-formats/dist/formats.js') as {
  fullFormats: Record<string, unknown>;
};

describe('compileLinear', () => {
  it('answers a catastrophic-backtracking pattern correctly on a long adversarial input', () => {
    const re = compileLinear('^(a+)+$');
    expect(re.test(`${'a'.repeat(100_000)}!`)).toBe(false);
    expect(re.test('a'.repeat(100_000))).toBe(true);
    expect(compileLinear('^(\\w+\\s?)*$').test(`${'word '.repeat(20_000)}!`)).toBe(false);
  });

  it('keeps ECMAScript meaning: \\u escapes, `.`, `\\s`, unanchored search', () => {
    expect(compileLinear('^\\u0041\\u{1F600}$').test('A\u{1F600}')).toBe(true);
    expect(compileLinear('^\\uD83D\\uDE00$').test('\u{1F600}')).toBe(true);
    expect(compileLinear('^.$').test('\u{1F600}')).toBe(true);
    for (const terminator of ['\n', '\r', '\u2028', '\u2029']) {
      expect(compileLinear('^a.b$').test(`a${terminator}b`)).toBe(false);
    }
    for (const space of ['\u00a0', '\u2003', '\ufeff', '\v']) {
      expect(compileLinear('^\\s$').test(space)).toBe(true);
      expect(compileLinear('^[\\sx]$').test(space)).toBe(true);
      expect(compileLinear('^\\S$').test(space)).toBe(false);
      expect(compileLinear('^[^\\s]$').test(space)).toBe(false);
    }
    expect(compileLinear('b+').test('abbbc')).toBe(true);
    expect(compileLinear('\\\\u0041').test('\\u0041')).toBe(true);
  });

  it('refuses what a linear-time engine cannot run, saying why', () => {
    const refused: [string, RegExp][] = [
      ['^(a)\\1$', /backreferences/],
      ['^(?<x>a)\\k<x>$', /named backreferences/],
      ['^(?=a)a', /lookahead and lookbehind/],
      ['^(?!a)b', /lookahead and lookbehind/],
      ['(?<=a)b', /lookahead and lookbehind/],
      ['(?<!a)b', /lookahead and lookbehind/],
      ['[\\S-]', /\\S inside a character class/],
      ['a[]', /empty character class/],
      ['\\cA', /invalid escape/],
      ['a{1,1001}', /invalid repeat count/],
      ['\\uD800', /lone surrogate/],
      ['(', /missing closing \)/],
      ['a\\', /trailing backslash/],
    ];
    for (const [pattern, why] of refused) {
      expect(() => compileLinear(pattern), pattern).toThrow(PatternError);
      expect(() => compileLinear(pattern), pattern).toThrow(why);
    }
  });

  it('translates to RE2 syntax', () => {
    expect(toRe2Syntax('^\\u00e9[a-z]\\d$')).toBe('^\\x{e9}[a-z]\\d$');
  });
});

describe('linearTester', () => {
  it('answers as RegExp#test does, whole-input patterns included', () => {
    const patterns = ['^a+$', '^a|b$', '^(a|b)$', '^\\$', '^a\\$', '^[$]$', '^(a)(b)$', 'a$', '^a', '^[|]$'];
    const inputs = ['a', 'aa', 'b', 'xb', 'ax', '$', 'a$', '\\', 'ab', '|', ''];
    for (const pattern of patterns) {
      const native = new RegExp(pattern, 'u');
      const linear = linearTester(pattern);
      for (const input of inputs) expect(linear(input), `${pattern} ${input}`).toBe(native.test(input));
    }
  });
});

describe('linearRegExp (the Ajv engine)', () => {
  it('gives each pattern its own cache key', () => {
    expect(linearRegExp('^a$').toString()).not.toBe(linearRegExp('^b$').toString());
    expect(linearRegExp('^a$').test('a')).toBe(true);
  });
});

describe('LINEAR_FORMATS', () => {
  const samples = [
    'http://example.com',
    'https://user:pw@example.com:8443/a?b#c',
    'http://10.0.0.1/',
    'http://172.20.1.1',
    'http://192.168.0.1:8080',
    'http://169.254.169.254/latest',
    'http://8.8.8.8',
    'ftp://files.example.org/x',
    'http://localhost',
    'http://例子.测试',
    'mailto:a@b.co',
    'a@b.co',
    'a..b@c.co',
    'P1Y2M3DT4H5M6S',
    'P',
    'PT',
    'PT1',
    'P1W',
    'P1Y1W',
    'example.com',
    'example.com.',
    '-a.com',
    `${'a.'.repeat(126)}a`,
    `${'a.'.repeat(127)}a`,
    `${'a'.repeat(63)}.com`,
    `${'a'.repeat(64)}.com`,
    '::1',
    '2001:db8::1',
    '1.2.3.4',
    '256.1.1.1',
    '/a/b~0~1',
    '#/a%20b',
    '0/a',
    '1#',
    'urn:uuid:123e4567-e89b-12d3-a456-426614174000',
    '123E4567-E89B-12D3-A456-426614174000',
    '{x,y:3}/a',
    'a b',
    '',
  ];

  it('covers every regex format of ajv-formats and agrees with it', () => {
    const regexFormats = Object.entries(fullFormats).filter(([, f]) => f instanceof RegExp);
    expect(Object.keys(LINEAR_FORMATS).sort()).toEqual(regexFormats.map(([name]) => name).sort());
    for (const [name, original] of regexFormats) {
      const linear = LINEAR_FORMATS[name]!;
      for (const s of samples) expect(linear(s), `${name} ${s}`).toBe((original as RegExp).test(s));
    }
  });

  it('answers the input that makes ajv-formats `url` quadratic', () => {
    expect(LINEAR_FORMATS.url!(`http://${':'.repeat(64 * 1024)}!`)).toBe(false);
    expect(LINEAR_FORMATS.email!(`${'a-'.repeat(32 * 1024)}@`)).toBe(false);
  });
});
