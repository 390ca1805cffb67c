import { describe, expect, it } from 'vitest';
import { encodeSegment, normalizeTarget } from './path.ts';
import { Denial } from './problems.ts';
import type { ProblemCode } from './problems.ts';

const MAX = 8192;

function refusal(target: string, max = MAX): { code: ProblemCode; reason: string } {
  try {
    normalizeTarget(target, max);
  } catch (error) {
    if (error instanceof Denial) return { code: error.code, reason: error.reason };
    throw error;
  }
  throw new Error(`accepted: ${JSON.stringify(target)}`);
}

// [target, problem code, reason]
const HOSTILE: ReadonlyArray<readonly [string, ProblemCode, string]> = [
  // Not origin-form.
  ['', 'bad-request', 'not-origin-form'],
  ['*', 'bad-request', 'asterisk-form'],
  ['http://evil.example/v1/patients', 'bad-request', 'not-origin-form'],
  ['https://localhost:8443/v1', 'bad-request', 'not-origin-form'],
  ['localhost:8443', 'bad-request', 'not-origin-form'],
  ['v1/patients', 'bad-request', 'not-origin-form'],
  ['../etc/passwd', 'bad-request', 'not-origin-form'],
  ['\\v1', 'bad-request', 'not-origin-form'],
  [' /v1', 'bad-request', 'not-origin-form'],
  // Fragments.
  ['/v1/patients#x', 'bad-request', 'fragment'],
  ['/v1?a=1#x', 'bad-request', 'fragment'],
  ['/#', 'bad-request', 'fragment'],
  ['/%2e%2e#/../x', 'bad-request', 'fragment'],
  // Dot segments, raw.
  ['/../etc/passwd', 'invalid-path', 'dot-segment'],
  ['/v1/../admin', 'invalid-path', 'dot-segment'],
  ['/v1/./patients', 'invalid-path', 'dot-segment'],
  ['/.', 'invalid-path', 'dot-segment'],
  ['/..', 'invalid-path', 'dot-segment'],
  ['/v1/..', 'invalid-path', 'dot-segment'],
  ['/v1/../', 'invalid-path', 'dot-segment'],
  // Dot segments, encoded in every spelling.
  ['/%2e%2e/etc/passwd', 'invalid-path', 'dot-segment'],
  ['/%2E%2E/etc/passwd', 'invalid-path', 'dot-segment'],
  ['/%2E%2e/x', 'invalid-path', 'dot-segment'],
  ['/.%2e/x', 'invalid-path', 'dot-segment'],
  ['/%2e./x', 'invalid-path', 'dot-segment'],
  ['/v1/%2e', 'invalid-path', 'dot-segment'],
  ['/v1/%2E/patients', 'invalid-path', 'dot-segment'],
  // Double encoding.
  ['/%252e%252e/etc/passwd', 'invalid-path', 'double-encoding'],
  ['/v1%252Fadmin', 'invalid-path', 'double-encoding'],
  ['/a%2541', 'invalid-path', 'double-encoding'],
  ['/%25%32%65%25%32%65/x', 'invalid-path', 'double-encoding'],
  ['/%25252e', 'invalid-path', 'double-encoding'],
  // Overlong and invalid UTF-8.
  ['/%c0%ae%c0%ae/etc/passwd', 'invalid-path', 'invalid-utf8'],
  ['/%C0%AF', 'invalid-path', 'invalid-utf8'],
  ['/%e0%80%ae', 'invalid-path', 'invalid-utf8'],
  ['/%f0%80%80%ae', 'invalid-path', 'invalid-utf8'],
  ['/%c1%9c', 'invalid-path', 'invalid-utf8'],
  ['/%ed%a0%80', 'invalid-path', 'invalid-utf8'],
  ['/%ff%fe', 'invalid-path', 'invalid-utf8'],
  ['/caf%C3', 'invalid-path', 'invalid-utf8'],
  ['/%80', 'invalid-path', 'invalid-utf8'],
  // Encoded slashes and backslashes.
  ['/v1%2Fadmin', 'invalid-path', 'encoded-slash'],
  ['/v1%2fadmin', 'invalid-path', 'encoded-slash'],
  ['/v1/patients/%2F..%2Fadmin', 'invalid-path', 'encoded-slash'],
  ['/v1%5Cadmin', 'invalid-path', 'encoded-backslash'],
  ['/v1%5cadmin', 'invalid-path', 'encoded-backslash'],
  // Raw backslashes.
  ['/v1\\admin', 'invalid-path', 'backslash'],
  ['/..\\..\\windows', 'invalid-path', 'backslash'],
  ['/v1/\\', 'invalid-path', 'backslash'],
  // NUL and other controls, raw and encoded.
  ['/v1%00', 'invalid-path', 'control-char'],
  ['/v1%00.json', 'invalid-path', 'control-char'],
  ['/v1\u0000', 'invalid-path', 'control-char'],
  ['/v1\tx', 'invalid-path', 'control-char'],
  ['/v1%0d%0aSet-Cookie:x', 'invalid-path', 'control-char'],
  ['/v1%09', 'invalid-path', 'control-char'],
  ['/v1%7F', 'invalid-path', 'control-char'],
  ['/v1\u007f', 'invalid-path', 'control-char'],
  ['/v1%C2%85', 'invalid-path', 'control-char'],
  ['/v1%C2%9B', 'invalid-path', 'control-char'],
  // Path parameters.
  ['/v1;jsessionid=1', 'invalid-path', 'path-parameter'],
  ['/..;/admin', 'invalid-path', 'path-parameter'],
  ['/v1/;/admin', 'invalid-path', 'path-parameter'],
  ['/v1/patients;x', 'invalid-path', 'path-parameter'],
  ['/v1%3Badmin', 'invalid-path', 'path-parameter'],
  ['/v1%3b', 'invalid-path', 'path-parameter'],
  // Empty segments.
  ['//evil.example/x', 'invalid-path', 'empty-segment'],
  ['/v1//patients', 'invalid-path', 'empty-segment'],
  ['/v1/patients//', 'invalid-path', 'empty-segment'],
  ['//', 'invalid-path', 'empty-segment'],
  ['///', 'invalid-path', 'empty-segment'],
  // Malformed escapes in the path.
  ['/v1%', 'invalid-path', 'bad-escape'],
  ['/v1%G1', 'invalid-path', 'bad-escape'],
  ['/v1%a', 'invalid-path', 'bad-escape'],
  ['/v1%a/x', 'invalid-path', 'bad-escape'],
  ['/v1%%41', 'invalid-path', 'bad-escape'],
  ['/v1%4?', 'invalid-path', 'bad-escape'],
  ['/v1%u002e', 'invalid-path', 'bad-escape'],
  ['/v1%-1', 'invalid-path', 'bad-escape'],
  // Characters outside pchar.
  ['/a b', 'invalid-path', 'forbidden-char'],
  ['/a"b', 'invalid-path', 'forbidden-char'],
  ['/a<script>', 'invalid-path', 'forbidden-char'],
  ['/a^b', 'invalid-path', 'forbidden-char'],
  ['/a`b', 'invalid-path', 'forbidden-char'],
  ['/{id}', 'invalid-path', 'forbidden-char'],
  ['/a|b', 'invalid-path', 'forbidden-char'],
  ['/a[0]', 'invalid-path', 'forbidden-char'],
  ['/café', 'invalid-path', 'non-ascii'],
  ['/\u2215etc', 'invalid-path', 'non-ascii'],
  // Unicode look-alikes that NFKC folds into structure.
  ['/%EF%BC%8E%EF%BC%8E/admin', 'invalid-path', 'unicode-confusable'],
  ['/v1%EF%BC%8Fadmin', 'invalid-path', 'unicode-confusable'],
  ['/v1%EF%BC%BCadmin', 'invalid-path', 'unicode-confusable'],
  ['/v1%EF%BC%9Bx', 'invalid-path', 'unicode-confusable'],
  ['/%EF%BC%85%EF%BC%92%EF%BD%85', 'invalid-path', 'unicode-confusable'],
  ['/%E2%80%A5', 'invalid-path', 'unicode-confusable'],
  // The query.
  ['/v1?a b', 'bad-request', 'query-char'],
  ['/v1?a=<x>', 'bad-request', 'query-char'],
  ['/v1?a="x"', 'bad-request', 'query-char'],
  ['/v1?a=\u0000', 'bad-request', 'query-char'],
  ['/v1?a=\\', 'bad-request', 'query-char'],
  ['/v1?a=é', 'bad-request', 'query-char'],
  ['/v1?a={}', 'bad-request', 'query-char'],
  ['/v1?a=%', 'bad-request', 'query-escape'],
  ['/v1?a=%G1', 'bad-request', 'query-escape'],
  ['/v1?a=%a', 'bad-request', 'query-escape'],
  ['/v1?a=%a&b=1', 'bad-request', 'query-escape'],
];

describe('normalizeTarget refuses hostile targets', () => {
  it('has a broad corpus', () => {
    expect(HOSTILE.length).toBeGreaterThanOrEqual(40);
  });

  it.each(HOSTILE)('%j → %s (%s)', (target, code, reason) => {
    expect(refusal(target)).toEqual({ code, reason });
  });

  it('refuses targets longer than the limit, before anything else', () => {
    expect(refusal('/' + 'a'.repeat(MAX))).toEqual({ code: 'uri-too-long', reason: 'target-too-long' });
    expect(refusal('/a?' + 'b'.repeat(MAX))).toEqual({ code: 'uri-too-long', reason: 'target-too-long' });
    expect(refusal('http://x/' + '%2e'.repeat(10), 10).code).toBe('uri-too-long');
  });

  it('accepts a target exactly at the limit', () => {
    const target = '/' + 'a'.repeat(MAX - 1);
    expect(normalizeTarget(target, MAX).segments).toEqual(['a'.repeat(MAX - 1)]);
  });

  it('throws a TypeError for a bad limit (a programming error)', () => {
    expect(() => normalizeTarget('/', 0)).toThrow(TypeError);
    expect(() => normalizeTarget('/', Number.NaN)).toThrow(TypeError);
    expect(() => normalizeTarget('/', 1.5)).toThrow(TypeError);
  });
});

// [target, expected path, expected segments, expected query]
const ALLOWED: ReadonlyArray<readonly [string, string, readonly string[], string]> = [
  ['/', '/', [], ''],
  ['/?', '/', [], ''],
  ['/?a=1', '/', [], 'a=1'],
  ['/v1/patients', '/v1/patients', ['v1', 'patients'], ''],
  ['/v1/patients/', '/v1/patients/', ['v1', 'patients', ''], ''],
  ['/v1/patients/?page=2', '/v1/patients/', ['v1', 'patients', ''], 'page=2'],
  ['/v1/files/a%20b.json', '/v1/files/a%20b.json', ['v1', 'files', 'a b.json'], ''],
  ['/v1/files/caf%C3%A9', '/v1/files/caf%C3%A9', ['v1', 'files', 'café'], ''],
  ['/v1/files/caf%c3%a9', '/v1/files/caf%C3%A9', ['v1', 'files', 'café'], ''],
  ['/%E6%82%A3%E8%80%85', '/%E6%82%A3%E8%80%85', ['患者'], ''],
  ['/%F0%9F%A9%BA', '/%F0%9F%A9%BA', ['🩺'], ''],
  ['/%EF%BB%BFx', '/%EF%BB%BFx', ['\uFEFFx'], ''],
  ['/a%C2%A0b', '/a%C2%A0b', ['a\u00a0b'], ''],
  ['/~user', '/~user', ['~user'], ''],
  ['/%7Euser', '/~user', ['~user'], ''],
  ['/%7euser', '/~user', ['~user'], ''],
  ['/%41%62c', '/Abc', ['Abc'], ''],
  ["/a!$&'()*,=:@b", "/a!$&'()*,=:@b", ["a!$&'()*,=:@b"], ''],
  ['/a%21%24%26%27%28%29%2A%2C%3D%3A%40b', "/a!$&'()*,=:@b", ["a!$&'()*,=:@b"], ''],
  ['/a+b', '/a%2Bb', ['a+b'], ''],
  ['/a%2Bb', '/a%2Bb', ['a+b'], ''],
  ['/a%2bb', '/a%2Bb', ['a+b'], ''],
  ['/100%25', '/100%25', ['100%'], ''],
  ['/%25zz', '/%25zz', ['%zz'], ''],
  ['/%25', '/%25', ['%'], ''],
  ['/a%22b%3Cc%3E', '/a%22b%3Cc%3E', ['a"b<c>'], ''],
  ['/a%3Fb%23c', '/a%3Fb%23c', ['a?b#c'], ''],
  ['/...', '/...', ['...'], ''],
  ['/.a/a./..b', '/.a/a./..b', ['.a', 'a.', '..b'], ''],
  ['/%2e%2e%2e', '/...', ['...'], ''],
  [
    '/.well-known/openid-configuration',
    '/.well-known/openid-configuration',
    ['.well-known', 'openid-configuration'],
    '',
  ],
  ['/v1/patients?name=a%20b&x=%C3%A9', '/v1/patients', ['v1', 'patients'], 'name=a%20b&x=%C3%A9'],
  ["/v1?a=1;b=2/c?d:@!$&'()*+,=~", '/v1', ['v1'], "a=1;b=2/c?d:@!$&'()*+,=~"],
  ['/v1?a=%2e%2e%2F', '/v1', ['v1'], 'a=%2e%2e%2F'],
  ['/v1?', '/v1', ['v1'], ''],
];

describe('normalizeTarget accepts legitimate targets', () => {
  it.each(ALLOWED)('%j', (target, path, segments, query) => {
    expect(normalizeTarget(target, MAX)).toEqual({ path, segments, query });
  });

  it('gives a canonical path that normalises to itself', () => {
    for (const [target] of ALLOWED) {
      const once = normalizeTarget(target, MAX);
      const twice = normalizeTarget(once.path, MAX);
      expect(twice.path).toBe(once.path);
      expect(twice.segments).toEqual(once.segments);
    }
  });

  it('maps every spelling of one segment to the same path', () => {
    const spellings = ['/~a+b', '/%7Ea%2Bb', '/%7ea%2bb', '/~a%2B%62'];
    expect(new Set(spellings.map((t) => normalizeTarget(t, MAX).path))).toEqual(new Set(['/~a%2Bb']));
  });
});

describe('encodeSegment', () => {
  it('keeps pchar except ; and +, encodes the rest as upper-case UTF-8', () => {
    expect(encodeSegment("Az09-._~!$&'()*,=:@")).toBe("Az09-._~!$&'()*,=:@");
    expect(encodeSegment('a b/c?d#e%f;g+h')).toBe('a%20b%2Fc%3Fd%23e%25f%3Bg%2Bh');
    expect(encodeSegment('é患')).toBe('%C3%A9%E6%82%A3');
    expect(encodeSegment('')).toBe('');
  });

  it('refuses a lone surrogate', () => {
    expect(() => encodeSegment('a\uD800')).toThrow(TypeError);
  });
});
