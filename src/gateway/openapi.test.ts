import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { loadOpenApi, OpenApiError, parseOpenApi } from './openapi.ts';

const schemes = {
  components: { securitySchemes: { key: { type: 'apiKey', in: 'header', name: 'x-api-key' } } },
};

describe('parseOpenApi', () => {
  it('reads an OpenAPI 3.0 document with document-level security inherited by operations', async () => {
    const doc = await parseOpenApi(
      stringify({
        openapi: '3.0.3',
        info: { title: 'legacy', version: '1' },
        security: [{ key: [] }],
        ...schemes,
        paths: {
          '/a': { get: { operationId: 'a', responses: {} }, post: { security: [], responses: {} } },
        },
      }),
      '/tmp/x.yaml',
    );
    expect(doc.version).toBe('3.0.3');
    expect(doc.operations.map((o) => [o.method, o.path, o.security])).toEqual([
      ['GET', '/a', [{ key: [] }]],
      ['POST', '/a', []],
    ]);
  });

  it('resolves local and relative-file $refs', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'oas-'));
    await writeFile(join(dir, 'schemas.yaml'), stringify({ Item: { type: 'object' } }));
    await writeFile(
      join(dir, 'api.yaml'),
      stringify({
        openapi: '3.1.0',
        info: { title: 't', version: '1' },
        paths: { '/i': { get: { responses: { '200': { $ref: '#/components/responses/Ok' } } } } },
        components: {
          responses: {
            Ok: {
              description: 'ok',
              content: { 'application/json': { schema: { $ref: 'schemas.yaml#/Item' } } },
            },
          },
        },
      }),
    );
    const doc = await loadOpenApi(join(dir, 'api.yaml'));
    const responses = doc.operations[0]!.definition.responses as Record<
      string,
      { content: Record<string, { schema: unknown }> }
    >;
    expect(responses['200']!.content['application/json']!.schema).toEqual({ type: 'object' });
  });

  const refused: [string, unknown, RegExp][] = [
    ['Swagger 2.0', { swagger: '2.0', paths: {} }, /3\.0\.x or 3\.1\.x/],
    ['an unsupported version', { openapi: '4.0.0', paths: {} }, /3\.0\.x or 3\.1\.x/],
    ['no paths', { openapi: '3.1.0' }, /"paths"/],
    ['a path without a leading slash', { openapi: '3.1.0', paths: { items: {} } }, /must start with/],
    [
      'an undeclared security scheme',
      { openapi: '3.1.0', paths: { '/a': { get: { security: [{ ghost: [] }] } } } },
      /"ghost" is not declared/,
    ],
    ...(
      [
        [
          'http basic',
          { type: 'http', scheme: 'basic' },
          /"s" is http "basic", which the gateway does not verify/,
        ],
        ['http digest', { type: 'http', scheme: 'Digest' }, /http "digest"/],
        ['an apiKey without a name', { type: 'apiKey', in: 'header' }, /apiKey scheme without a name/],
        [
          'an apiKey in the body',
          { type: 'apiKey', in: 'body', name: 'k' },
          /"in" is not header, query or cookie/,
        ],
        ['an unknown type', { type: 'hawk' }, /type "hawk", which the gateway does not verify/],
      ] as [string, unknown, RegExp][]
    ).map(([what, scheme, message]): [string, unknown, RegExp] => [
      `an operation requiring a scheme the gateway cannot verify: ${what}`,
      {
        openapi: '3.1.0',
        components: { securitySchemes: { s: scheme } },
        paths: { '/a': { get: { security: [{ s: [] }] } } },
      },
      message,
    ]),
    [
      'a network $ref (never fetched)',
      {
        openapi: '3.1.0',
        paths: { '/a': { get: { responses: { '200': { $ref: 'https://example.com/r.yaml' } } } } },
      },
      /\$ref/,
    ],
  ];
  for (const [what, doc, message] of refused) {
    it(`refuses ${what}`, async () => {
      const attempt = parseOpenApi(stringify(doc), '/tmp/x.yaml');
      await expect(attempt).rejects.toBeInstanceOf(OpenApiError);
      await expect(attempt).rejects.toThrow(message);
    });
  }

  const patternDoc = (schema: unknown): string =>
    stringify({
      openapi: '3.1.0',
      info: { title: 't', version: '1' },
      paths: { '/a': { get: { parameters: [{ name: 'q', in: 'query', schema }], responses: {} } } },
      components: { schemas: { Example: { example: { pattern: '(a)\\1' } } } },
    });

  it('refuses at load a pattern the linear-time engine cannot run, naming the file, pointer and why', async () => {
    const cases: [unknown, RegExp][] = [
      [{ type: 'string', pattern: '^(a)\\1$' }, /backreferences/],
      [{ type: 'string', pattern: '^(?=a)a$' }, /lookahead and lookbehind/],
      [{ type: 'string', pattern: '^(?<!a)b$' }, /lookahead and lookbehind/],
      [{ type: 'string', pattern: '^a{2,5000}$' }, /invalid repeat count/],
    ];
    for (const [schema, why] of cases) {
      const attempt = parseOpenApi(patternDoc(schema), '/tmp/api.yaml');
      await expect(attempt).rejects.toBeInstanceOf(OpenApiError);
      await expect(attempt).rejects.toThrow(
        '/tmp/api.yaml#/paths/~1a/get/parameters/0/schema/pattern: pattern refused: ',
      );
      await expect(attempt).rejects.toThrow(why);
    }
    const keys = parseOpenApi(
      patternDoc({ type: 'object', patternProperties: { '^x-(?!y)': { type: 'string' } } }),
      '/tmp/api.yaml',
    );
    await expect(keys).rejects.toThrow(
      '/tmp/api.yaml#/paths/~1a/get/parameters/0/schema/patternProperties/^x-(?!y): pattern refused',
    );
  });

  it('accepts patterns RE2 runs, ECMAScript escapes included, and ignores "pattern" in examples', async () => {
    const doc = await parseOpenApi(
      patternDoc({ type: 'string', pattern: '^[\\w.-]+\\u00e9?\\s\\d{1,3}$' }),
      '/tmp/api.yaml',
    );
    expect(doc.operations).toHaveLength(1);
  });

  it('accepts every scheme type the gateway verifies, and an unusable scheme no operation requires', async () => {
    const doc = await parseOpenApi(
      stringify({
        openapi: '3.1.0',
        components: {
          securitySchemes: {
            oauth: { type: 'oauth2', flows: {} },
            oidc: {
              type: 'openIdConnect',
              openIdConnectUrl: 'https://as.example/.well-known/openid-configuration',
            },
            bearer: { type: 'http', scheme: 'Bearer' },
            key: { type: 'apiKey', in: 'header', name: 'x-api-key' },
            cert: { type: 'mutualTLS' },
            unused: { type: 'http', scheme: 'basic' },
          },
        },
        paths: {
          '/a': {
            get: { security: [{ oauth: [] }, { oidc: [] }, { bearer: [] }, { key: [] }, { cert: [] }] },
          },
        },
      }),
      '/tmp/x.yaml',
    );
    expect(doc.operations[0]!.security).toHaveLength(5);
  });

  it('reports every invalid schema at once, each with its line, JSON pointer and what was expected', async () => {
    const text = [
      'openapi: 3.1.0',
      'info: { title: t, version: "1" }',
      'components:',
      '  schemas:',
      '    Item: { type: object, required: name }',
      'paths:',
      '  /a:',
      '    get:',
      '      parameters:',
      '        - { name: q, in: query, schema: { type: strnig } }',
      '      responses:',
      '        "200":',
      '          description: ok',
      '          content:',
      '            application/json:',
      '              schema: { type: object, properties: { n: { type: integer, minimum: zero } } }',
    ].join('\n');
    const attempt = parseOpenApi(text, '/tmp/api.yaml');
    await expect(attempt).rejects.toBeInstanceOf(OpenApiError);
    const error = (await attempt.catch((e: unknown) => e)) as OpenApiError;
    expect(error.issues).toEqual([
      {
        pointer: '/components/schemas/Item/required',
        line: 5,
        column: 37,
        message: 'must be array (got "name")',
      },
      {
        pointer: '/paths/~1a/get/parameters/0/schema/type',
        line: 10,
        column: 49,
        message: 'must be one of array, boolean, integer, null, number, object, string (got "strnig")',
      },
      {
        pointer: '/paths/~1a/get/responses/200/content/application~1json/schema/properties/n/minimum',
        line: 16,
        column: 82,
        message: 'must be number (got "zero")',
      },
    ]);
  });

  it("accepts OpenAPI 3.0's own schema keywords (nullable, boolean exclusiveMinimum)", async () => {
    const doc = await parseOpenApi(
      stringify({
        openapi: '3.0.3',
        paths: {
          '/a': {
            get: {
              parameters: [
                {
                  name: 'q',
                  in: 'query',
                  schema: { type: 'integer', minimum: 0, exclusiveMinimum: true, nullable: true },
                },
              ],
            },
          },
        },
      }),
      '/tmp/x.yaml',
    );
    expect(doc.operations).toHaveLength(1);
  });

  it('refuses text that is not YAML or JSON, and a missing file', async () => {
    await expect(parseOpenApi('openapi: [unclosed', '/tmp/x.yaml')).rejects.toBeInstanceOf(OpenApiError);
    await expect(loadOpenApi('/nonexistent/api.yaml')).rejects.toThrow(/cannot read .*ENOENT/);
  });
});
