import { describe, expect, it } from 'vitest';
import { DEFAULT_JSON_LIMITS, parseJson } from './json.ts';
import { Denial } from './problems.ts';

function refusal(input: Buffer | string, limits?: Parameters<typeof parseJson>[1]): Denial {
  try {
    parseJson(input, limits);
  } catch (err) {
    if (err instanceof Denial) return err;
    throw err;
  }
  throw new Error('expected a refusal');
}

describe('parseJson', () => {
  it('parses what JSON.parse parses, into prototype-free objects', () => {
    const corpus = [
      '{"a":1,"b":[true,false,null],"c":{"d":"e\\u00e9\\n"},"f":-1.5e3}',
      '[]',
      '{}',
      ' "x" ',
      '0',
      '-0.0',
      '[{"a":[{"b":{}}]}]',
      '"\\ud83d\\ude00 ok"',
    ];
    for (const text of corpus) {
      const value = parseJson(text);
      expect(JSON.stringify(value)).toBe(JSON.stringify(JSON.parse(text)));
    }
    const obj = parseJson('{"a":{"b":1}}') as Record<string, Record<string, unknown>>;
    expect(Object.getPrototypeOf(obj)).toBeNull();
    expect(Object.getPrototypeOf(obj.a)).toBeNull();
  });

  it('refuses malformed JSON with a pointer to where it stopped', () => {
    const corpus: [string, string][] = [
      ['{"a":1,}', ''],
      ['{"a":[1,2', '/a/1'],
      ["{'a':1}", ''],
      ['[01]', '/0'],
      ['[1.]', '/0'],
      ['{"a" 1}', '/a'],
      ['[NaN]', '/0'],
      ['"\\x"', ''],
      ['"a\u0001"', ''],
      ['{"a":1} {}', ''],
      ['', ''],
      ['\uFEFF{}', ''],
      ['{"a":{"b":tru}}', '/a/b'],
    ];
    for (const [text, pointer] of corpus) {
      const d = refusal(text);
      expect(d.code).toBe('invalid-request');
      expect(d.errors).toEqual([{ in: 'body', pointer, rule: 'json-syntax' }]);
    }
  });

  it('refuses prototype keys anywhere, and duplicate keys, naming the key but no value', () => {
    for (const key of ['__proto__', 'constructor', 'prototype']) {
      const d = refusal(`{"ok":{"${key}":{"isAdmin":"secret-value"}}}`);
      expect(d.errors).toEqual([{ in: 'body', pointer: `/ok/${key}`, rule: 'json-forbidden-key' }]);
      expect(JSON.stringify(d.errors)).not.toContain('secret-value');
    }
    expect(refusal('{"role":"user","role":"admin"}').errors).toEqual([
      { in: 'body', pointer: '/role', rule: 'json-duplicate-key' },
    ]);
    expect(({} as Record<string, unknown>).isAdmin).toBeUndefined();
  });

  it('refuses invalid UTF-8, lone surrogates and non-finite numbers', () => {
    expect(refusal(Buffer.from([0x22, 0xc3, 0x28, 0x22])).errors?.[0]?.rule).toBe('json-utf8');
    expect(refusal(Buffer.from([0x22, 0xed, 0xa0, 0x80, 0x22])).errors?.[0]?.rule).toBe('json-utf8');
    expect(refusal('["\\ud800"]').errors).toEqual([{ in: 'body', pointer: '/0', rule: 'json-unicode' }]);
    expect(refusal('{"n":1e400}').errors).toEqual([{ in: 'body', pointer: '/n', rule: 'json-number' }]);
    expect(parseJson(Buffer.from('{"é":"ü"}'))).toEqual(
      Object.assign(Object.create(null) as object, { é: 'ü' }),
    );
  });

  it('applies depth, string, array and key limits while parsing', () => {
    const limits = { maxDepth: 3, maxStringLength: 5, maxArrayItems: 3, maxObjectKeys: 2 };
    expect(parseJson('[[[1]]]', limits)).toEqual([[[1]]]);
    expect(refusal('[[[[1]]]]', limits).errors).toEqual([
      { in: 'body', pointer: '/0/0/0', rule: 'json-depth' },
    ]);
    expect(parseJson('"abcde"', limits)).toBe('abcde');
    expect(refusal('["abcdef"]', limits).errors?.[0]?.rule).toBe('json-string-length');
    expect(refusal('["ab\\ncdef"]', limits).errors?.[0]?.rule).toBe('json-string-length');
    expect(refusal('{"abcdef":1}', limits).errors?.[0]?.rule).toBe('json-string-length');
    expect(parseJson('[1,2,3]', limits)).toEqual([1, 2, 3]);
    expect(refusal('[1,2,3,4]', limits).errors).toEqual([
      { in: 'body', pointer: '', rule: 'json-array-items' },
    ]);
    expect(refusal('{"a":1,"b":2,"c":3}', limits).errors?.[0]?.rule).toBe('json-object-keys');
  });

  it('fails fast on hostile bodies without exhausting the stack', () => {
    const deep = '['.repeat(100_000) + ']'.repeat(100_000);
    expect(refusal(deep).errors?.[0]?.rule).toBe('json-depth');
    const deepObject = '{"a":'.repeat(100_000) + '1' + '}'.repeat(100_000);
    expect(refusal(deepObject).errors?.[0]?.rule).toBe('json-depth');
    const manyItems = '[' + '0,'.repeat(500_000) + '0]';
    expect(refusal(manyItems).errors?.[0]?.rule).toBe('json-array-items');
    const manyKeys = '{' + Array.from({ length: 5_000 }, (_, i) => `"k${String(i)}":0`).join(',') + '}';
    expect(refusal(manyKeys).errors?.[0]?.rule).toBe('json-object-keys');
    const longString = `"${'a'.repeat(1_000_000)}"`;
    expect(refusal(longString).errors?.[0]?.rule).toBe('json-string-length');
  });

  it('bounds the total work: a budget of values beside depth and per-container limits', () => {
    // Issue 12: 9,999 arrays 31 deep (640 KB) are within depth, item and size limits.
    const nested = `${'['.repeat(31)}${']'.repeat(31)}`;
    const hostile = `[${Array.from({ length: 9_999 }, () => nested).join(',')}]`;
    expect(hostile.length).toBeGreaterThan(600_000);
    const d = refusal(hostile);
    expect(d.reason).toBe('json-values');
    expect(d.errors).toEqual([{ in: 'body', pointer: `/3225${'/0'.repeat(24)}`, rule: 'json-values' }]);
    // Without a budget (the response side), the same document parses.
    const { maxValues: _, ...unbounded } = DEFAULT_JSON_LIMITS;
    expect((parseJson(hostile, unbounded) as unknown[]).length).toBe(9_999);

    const budget = { ...DEFAULT_JSON_LIMITS, maxValues: 5 };
    expect(parseJson('{"a":[1,2],"b":null}', budget)).toEqual({ a: [1, 2], b: null });
    expect(refusal('{"a":[1,2],"b":null,"c":0}', budget).errors).toEqual([
      { in: 'body', pointer: '/c', rule: 'json-values' },
    ]);
    expect(refusal('[[],[],[],[],[]]', budget).errors?.[0]?.rule).toBe('json-values');
    expect(parseJson('"one scalar"', { ...DEFAULT_JSON_LIMITS, maxValues: 1 })).toBe('one scalar');
  });

  it('bounds pointers built from attacker-chosen keys', () => {
    const key = 'k'.repeat(5_000);
    const d = refusal(`{"${key}":1,"${key}":2}`, {
      ...{ maxDepth: 32, maxArrayItems: 10, maxObjectKeys: 10 },
      maxStringLength: 10_000,
    });
    expect(d.errors?.[0]?.pointer.length).toBeLessThanOrEqual(257);
  });
});
