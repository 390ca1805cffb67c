/**
 * Request validation and response enforcement end to end, through a real gateway over TLS with a
 * recording upstream: what the contract allows passes unchanged, and every bad request is refused
 * with a generic problem that names the failing fields by JSON pointer without echoing values.
 * Upstream answers are minimised (undeclared and writeOnly members removed, pages capped) or, if
 * they break the contract, replaced by a generic 502.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { PROBLEM_TYPE_BASE } from '../src/gateway/problems.ts';
import { startRecordingUpstream, startTestGateway } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';

const PATIENT = {
  type: 'object',
  additionalProperties: false,
  required: ['id', 'givenName', 'familyName', 'birthDate', 'createdAt'],
  properties: {
    id: { type: 'string', pattern: '^pat_[a-z0-9]{12}$', readOnly: true },
    givenName: { type: 'string', minLength: 1, maxLength: 64 },
    familyName: { type: 'string', minLength: 1, maxLength: 64 },
    birthDate: { type: 'string', format: 'date' },
    email: { type: 'string', format: 'email' },
    nationalId: { type: 'string', pattern: '^[A-Z0-9-]{6,20}$', writeOnly: true },
    createdAt: { type: 'string', format: 'date-time', readOnly: true },
    // No additionalProperties here: closed by default.
    address: { type: 'object', properties: { city: { type: 'string' } } },
  },
};
const PROBLEM = {
  type: 'object',
  required: ['type', 'title', 'status'],
  properties: { type: { type: 'string' }, title: { type: 'string' }, status: { type: 'integer' } },
};
const json = (schema: unknown) => ({ 'application/json': { schema } });

const OPENAPI = {
  openapi: '3.1.0',
  info: { title: 'validation', version: '1' },
  paths: {
    '/patients': {
      get: {
        operationId: 'listPatients',
        parameters: [
          { name: 'limit', in: 'query', schema: { type: 'integer', minimum: 1, maximum: 50 } },
          { name: 'cursor', in: 'query', schema: { type: 'string', pattern: '^[A-Za-z0-9_-]+$' } },
          { name: 'ids', in: 'query', schema: { type: 'array', items: { type: 'integer' }, maxItems: 3 } },
        ],
        responses: {
          '200': {
            description: 'page',
            content: json({
              type: 'object',
              required: ['items', 'nextCursor'],
              properties: {
                items: { type: 'array', maxItems: 50, items: PATIENT },
                nextCursor: { type: ['string', 'null'] },
              },
            }),
          },
          default: { description: 'error', content: { 'application/problem+json': { schema: PROBLEM } } },
        },
      },
      post: {
        operationId: 'createPatient',
        requestBody: { required: true, content: json(PATIENT) },
        responses: { '201': { description: 'created', content: json(PATIENT) } },
      },
    },
    '/patients/search': {
      get: {
        operationId: 'searchPatients',
        parameters: [{ name: 'name', in: 'query', required: true, schema: { type: 'string', minLength: 2 } }],
        responses: { '200': { description: 'ok' } },
      },
    },
    '/patients/{patientId}': {
      parameters: [
        {
          name: 'patientId',
          in: 'path',
          required: true,
          schema: { type: 'string', pattern: '^pat_[a-z0-9]{12}$' },
        },
      ],
      get: {
        operationId: 'getPatient',
        responses: { '200': { description: 'patient', content: json(PATIENT) } },
      },
      delete: { operationId: 'deletePatient', responses: { '204': { description: 'gone' } } },
      patch: {
        operationId: 'updatePatient',
        requestBody: {
          required: true,
          content: {
            'application/merge-patch+json': {
              schema: {
                type: 'object',
                minProperties: 1,
                properties: { email: { type: ['string', 'null'] } },
              },
            },
          },
        },
        responses: { '200': { description: 'ok' } },
      },
    },
    '/tenants': {
      get: {
        operationId: 'tenant',
        parameters: [
          { name: 'X-Tenant', in: 'header', required: true, schema: { type: 'integer', minimum: 1 } },
          { name: 'session', in: 'cookie', schema: { type: 'string', pattern: '^[a-f0-9]{8}$' } },
        ],
        responses: { '200': { description: 'ok' } },
      },
    },
    '/forms': {
      post: {
        operationId: 'form',
        requestBody: {
          required: true,
          content: {
            'application/x-www-form-urlencoded': {
              schema: {
                type: 'object',
                required: ['count'],
                properties: {
                  count: { type: 'integer', maximum: 10 },
                  tags: { type: 'array', items: { type: 'string' } },
                },
              },
            },
          },
        },
        responses: { '200': { description: 'ok' } },
      },
    },
    '/codes': {
      get: {
        operationId: 'findCode',
        parameters: [{ name: 'code', in: 'query', schema: { type: 'string', pattern: '^(a+)+$' } }],
        responses: { '200': { description: 'ok' } },
      },
      post: {
        operationId: 'createCode',
        requestBody: {
          required: true,
          content: json({
            type: 'object',
            properties: {
              code: { type: 'string', pattern: '^(a+)+$' },
              site: { type: 'string', format: 'url' },
            },
            patternProperties: { '^(x+x+)+y$': { type: 'integer' } },
            additionalProperties: false,
          }),
        },
        responses: { '200': { description: 'ok' } },
      },
    },
    '/batches': {
      post: {
        operationId: 'createBatch',
        requestBody: {
          required: true,
          content: json({
            type: 'array',
            maxItems: 10_000,
            items: {
              type: 'object',
              properties: { a: { type: 'integer' }, b: { type: 'array', items: { type: 'integer' } } },
            },
          }),
        },
        responses: { '200': { description: 'ok' } },
      },
    },
    '/uploads': {
      post: {
        operationId: 'upload',
        requestBody: { content: { 'application/octet-stream': {} } },
        responses: { '200': { description: 'ok' } },
      },
    },
  },
};

let upstream: RecordingUpstream;
let gw: TestGateway;

const VALID = {
  givenName: 'Siobhan',
  familyName: "O'Brien",
  birthDate: '1984-07-21',
  nationalId: 'AB-123456-C',
  address: { city: 'Cork' },
};
const STORED = {
  id: 'pat_3k9x0m2q7a1b',
  givenName: 'Siobhan',
  familyName: "O'Brien",
  birthDate: '1984-07-21',
  createdAt: '2025-01-15T09:30:00.000Z',
};

type Res = { status: number; headers: Record<string, string>; body: string };

/** A generic problem naming exactly `errors`, with none of `secrets` anywhere in it. */
function expectRefusal(res: Res, status: number, code: string, errors?: unknown[], secrets: string[] = []) {
  expect(res.status).toBe(status);
  expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
  const body = JSON.parse(res.body) as Record<string, unknown>;
  expect(body.type).toBe(PROBLEM_TYPE_BASE + code);
  expect(body.status).toBe(status);
  expect(body.correlationId).toBe(res.headers['x-request-id']);
  if (errors === undefined) expect(body.errors).toBeUndefined();
  else expect(body.errors).toEqual(errors);
  expect(Object.keys(body).sort()).toEqual(
    ['correlationId', 'instance', 'status', 'title', 'type', ...(errors ? ['errors'] : [])].sort(),
  );
  for (const secret of secrets) expect(res.body).not.toContain(secret);
}

const post = (path: string, body: string, contentType: string | null = 'application/json') =>
  gw.request(path, {
    method: 'POST',
    headers: contentType === null ? {} : { 'content-type': contentType },
    body,
  });

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  gw = await startTestGateway(
    {
      // The JSON work budget (values per document) from the configuration, below its default.
      gateway: { limits: { jsonValues: 60_000 } },
      apis: [{ name: 'patients', openapi: 'api.yaml', basePath: '/v1', upstream: { url: upstream.url } }],
    },
    { openapi: OPENAPI },
  );
});

afterAll(async () => {
  await gw.close();
  await upstream.close();
});

beforeEach(() => {
  upstream.received.length = 0;
  upstream.respond((r) => ({ status: r.method === 'POST' && r.url === '/patients' ? 201 : 200 }));
});

describe('request bodies', () => {
  it('passes a valid body upstream byte for byte', async () => {
    const text = `{ "givenName":"Siobhan" ,\n "familyName":"O'Brien","birthDate":"1984-07-21","nationalId":"AB-123456-C","address":{"city":"Cork"}}`;
    upstream.respond(() => ({
      status: 201,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(STORED),
    }));
    const res = await post('/v1/patients', text);
    expect(res.status).toBe(201);
    expect(upstream.received).toHaveLength(1);
    expect(upstream.received[0]!.body).toBe(text);
    expect(JSON.parse(res.body)).toEqual(STORED);
  });

  it('refuses malformed JSON, naming where it stopped', async () => {
    const corpus: [string, string][] = [
      ['{"givenName":"Siobhan",}', ''],
      ['{"givenName":', '/givenName'],
      ["{'givenName':'x'}", ''],
      ['{"givenName":"x"}{}', ''],
      ['{"a":[1,2,NaN]}', '/a/2'],
      ['{"birthDate":"1984\u0000"}', '/birthDate'],
    ];
    for (const [body, pointer] of corpus) {
      expectRefusal(await post('/v1/patients', body), 400, 'invalid-request', [
        { in: 'body', pointer, rule: 'json-syntax' },
      ]);
    }
    expectRefusal(await post('/v1/patients', '\xff\xfe'), 400, 'invalid-request', [
      { in: 'body', pointer: '', rule: 'json-syntax' },
    ]);
    expect(upstream.received).toHaveLength(0);
  });

  it('refuses invalid UTF-8', async () => {
    const res = await gw.request('/v1/patients', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: Buffer.from([0x7b, 0x22, 0xc3, 0x28, 0x22, 0x3a, 0x31, 0x7d]) as unknown as string,
    });
    expectRefusal(res, 400, 'invalid-request', [{ in: 'body', pointer: '', rule: 'json-utf8' }]);
  });

  it('refuses oversized, deeply nested and over-long bodies', async () => {
    expectRefusal(
      await post('/v1/patients', `{"givenName":"${'a'.repeat(1024 * 1024)}"}`),
      413,
      'payload-too-large',
    );
    expectRefusal(
      await post('/v1/patients', '['.repeat(100_000) + ']'.repeat(100_000)),
      400,
      'invalid-request',
      [{ in: 'body', pointer: '/0'.repeat(32), rule: 'json-depth' }],
    );
    expectRefusal(
      await post('/v1/patients', '{"a":'.repeat(40) + '1' + '}'.repeat(40)),
      400,
      'invalid-request',
      [{ in: 'body', pointer: '/a'.repeat(32), rule: 'json-depth' }],
    );
    expectRefusal(
      await post('/v1/patients', `{"givenName":"${'b'.repeat(70_000)}"}`),
      400,
      'invalid-request',
      [{ in: 'body', pointer: '/givenName', rule: 'json-string-length' }],
    );
    expectRefusal(await post('/v1/patients', `[${'0,'.repeat(20_000)}0]`), 400, 'invalid-request', [
      { in: 'body', pointer: '', rule: 'json-array-items' },
    ]);
    const manyKeys = `{${Array.from({ length: 1_500 }, (_, i) => `"k${String(i)}":0`).join(',')}}`;
    expectRefusal(await post('/v1/patients', manyKeys), 400, 'invalid-request', [
      { in: 'body', pointer: '', rule: 'json-object-keys' },
    ]);
    expect(upstream.received).toHaveLength(0);
  });

  it('bounds the parsing work with gateway.limits.jsonValues (9,999 arrays 31 deep)', async () => {
    const nested = `${'['.repeat(31)}${']'.repeat(31)}`;
    const hostile = `[${Array.from({ length: 9_999 }, () => nested).join(',')}]`;
    // 60,000 values: the root, 1,935 items of 31, then 14 values into item 1,935.
    expectRefusal(await post('/v1/batches', hostile), 400, 'invalid-request', [
      { in: 'body', pointer: `/1935${'/0'.repeat(14)}`, rule: 'json-values' },
    ]);
    const item = { a: 1, b: [1, 2, 3, 4, 5, 6, 7, 8] }; // 11 values
    const over = JSON.stringify(Array.from({ length: 5_455 }, () => item)); // 60,006 values
    expectRefusal(await post('/v1/batches', over), 400, 'invalid-request', [
      { in: 'body', pointer: '/5454/b/2', rule: 'json-values' },
    ]);
    expect(upstream.received).toHaveLength(0);
    const within = JSON.stringify(Array.from({ length: 5_454 }, () => item)); // 59,995 values
    expect((await post('/v1/batches', within)).status).toBe(200);
    expect(upstream.received.map((r) => r.body)).toEqual([within]);
  });

  it('refuses wrong types and broken formats by pointer, without the values', async () => {
    const bad = { ...VALID, givenName: 42, birthDate: 'not-a-date-1984', address: { city: ['Cork-secret'] } };
    expectRefusal(
      await post('/v1/patients', JSON.stringify(bad)),
      400,
      'invalid-request',
      [
        { in: 'body', pointer: '/givenName', rule: 'type' },
        { in: 'body', pointer: '/birthDate', rule: 'format' },
        { in: 'body', pointer: '/address/city', rule: 'type' },
      ],
      ['not-a-date-1984', 'Cork-secret'],
    );
    expectRefusal(await post('/v1/patients', '[]'), 400, 'invalid-request', [
      { in: 'body', pointer: '', rule: 'type' },
    ]);
    expect(upstream.received).toHaveLength(0);
  });

  it('refuses unknown fields, at any depth (closed by default)', async () => {
    const bad = { ...VALID, isAdmin: 'yes-secret', address: { city: 'Cork', zip: 'Z-secret' } };
    expectRefusal(
      await post('/v1/patients', JSON.stringify(bad)),
      400,
      'invalid-request',
      [
        { in: 'body', pointer: '/isAdmin', rule: 'additionalProperties' },
        { in: 'body', pointer: '/address/zip', rule: 'additionalProperties' },
      ],
      ['yes-secret', 'Z-secret'],
    );
  });

  it('refuses readOnly fields in a request (mass assignment)', async () => {
    const bad = { ...VALID, id: 'pat_aaaaaaaaaaaa', createdAt: '2020-01-01T00:00:00Z' };
    expectRefusal(
      await post('/v1/patients', JSON.stringify(bad)),
      400,
      'invalid-request',
      [
        { in: 'body', pointer: '/id', rule: 'readOnly' },
        { in: 'body', pointer: '/createdAt', rule: 'readOnly' },
      ],
      ['pat_aaaaaaaaaaaa', '2020-01-01'],
    );
    expect(upstream.received).toHaveLength(0);
  });

  it('refuses prototype keys and duplicate keys', async () => {
    const corpus: [string, string, string][] = [
      ['{"__proto__":{"isAdmin":true}}', '/__proto__', 'json-forbidden-key'],
      [
        '{"address":{"constructor":{"prototype":{"polluted":1}}}}',
        '/address/constructor',
        'json-forbidden-key',
      ],
      ['{"givenName":"a","prototype":1}', '/prototype', 'json-forbidden-key'],
      ['{"givenName":"a","givenName":"b"}', '/givenName', 'json-duplicate-key'],
    ];
    for (const [body, pointer, rule] of corpus) {
      expectRefusal(await post('/v1/patients', body), 400, 'invalid-request', [
        { in: 'body', pointer, rule },
      ]);
    }
    expect(({} as Record<string, unknown>).isAdmin).toBeUndefined();
    expect(upstream.received).toHaveLength(0);
  });

  it('refuses a missing required body, and lists every failure at once (capped at 20)', async () => {
    expectRefusal(await gw.request('/v1/patients', { method: 'POST' }), 400, 'invalid-request', [
      { in: 'body', pointer: '', rule: 'required' },
    ]);
    const many = Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`x${String(i)}`, i]));
    const res = await post('/v1/patients', JSON.stringify(many));
    expect(res.status).toBe(400);
    expect((JSON.parse(res.body) as { errors: unknown[] }).errors).toHaveLength(20);
  });

  it('refuses undeclared content types, bodies where none is declared and non-UTF-8 JSON with 415', async () => {
    const body = JSON.stringify(VALID);
    expectRefusal(await post('/v1/patients', body, 'text/plain'), 415, 'unsupported-media-type');
    expectRefusal(await post('/v1/patients', body, 'application/xml'), 415, 'unsupported-media-type');
    expectRefusal(await post('/v1/patients', body, null), 415, 'unsupported-media-type');
    expectRefusal(
      await post('/v1/patients', body, 'application/json; charset=iso-8859-1'),
      415,
      'unsupported-media-type',
    );
    expectRefusal(
      await gw.request('/v1/patients/pat_3k9x0m2q7a1b', {
        method: 'PATCH',
        headers: { 'content-type': 'application/json' },
        body: '{"email":null}',
      }),
      415,
      'unsupported-media-type',
    );
    expectRefusal(
      await gw.request('/v1/patients/pat_3k9x0m2q7a1b', {
        method: 'DELETE',
        headers: { 'content-type': 'application/json' },
        body: '{}',
      }),
      415,
      'unsupported-media-type',
    );
    expect(upstream.received).toHaveLength(0);
    // The declared ones pass, parameters in the media type allowed.
    expect((await post('/v1/patients', body, 'Application/JSON; charset=UTF-8')).status).toBe(201);
    const patched = await gw.request('/v1/patients/pat_3k9x0m2q7a1b', {
      method: 'PATCH',
      headers: { 'content-type': 'application/merge-patch+json' },
      body: '{"email":null}',
    });
    expect(patched.status).toBe(200);
    expect(upstream.received.map((r) => r.body)).toEqual([body, '{"email":null}']);
  });

  it('refuses a Content-Type the upstream could read differently: duplicate or malformed parameters', async () => {
    const body = JSON.stringify(VALID);
    for (const contentType of [
      'application/json; charset=iso-8859-1; charset=utf-8',
      'application/json; charset=utf-8; charset=iso-8859-1',
      'application/json; charset=utf-8; CHARSET=utf-8',
      'application/json; charset=utf-8; q=1; q=2',
      'application/json; charset',
      'application/json; charset=utf-8 x',
      'application/json; charset="utf-8',
    ]) {
      expectRefusal(await post('/v1/patients', body, contentType), 415, 'unsupported-media-type');
    }
    expect(upstream.received).toHaveLength(0);
    for (const contentType of [
      'application/json;charset="utf-8"',
      'application/json ; charset=utf-8 ; q="a;b"',
      'application/json; charset=utf-8;',
    ]) {
      expect((await post('/v1/patients', body, contentType)).status, contentType).toBe(201);
    }
    expect(upstream.received).toHaveLength(3);
  });

  it('validates form bodies with coercion, and passes undeclared-schema bytes as they are', async () => {
    expect(
      (await post('/v1/forms', 'count=3&tags=a&tags=b', 'application/x-www-form-urlencoded')).status,
    ).toBe(200);
    expect(upstream.received[0]!.body).toBe('count=3&tags=a&tags=b');
    expectRefusal(
      await post('/v1/forms', 'count=11&extra=secret-x', 'application/x-www-form-urlencoded'),
      400,
      'invalid-request',
      [
        { in: 'body', pointer: '/extra', rule: 'additionalProperties' },
        { in: 'body', pointer: '/count', rule: 'maximum' },
      ],
      ['secret-x'],
    );
    expectRefusal(
      await post('/v1/forms', 'count=1&__proto__=x', 'application/x-www-form-urlencoded'),
      400,
      'invalid-request',
      [{ in: 'body', pointer: '/__proto__', rule: 'forbidden-key' }],
    );
    const bytes = Buffer.from([0, 1, 2, 0xff, 0xfe]);
    upstream.received.length = 0;
    const res = await gw.request('/v1/uploads', {
      method: 'POST',
      headers: { 'content-type': 'application/octet-stream' },
      body: bytes as unknown as string,
    });
    expect(res.status).toBe(200);
    expect(upstream.received).toHaveLength(1);
  });
});

describe('parameters', () => {
  it('forwards exactly the query it validated, in canonical form', async () => {
    upstream.respond(() => ({
      status: 200,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ items: [], nextCursor: null }),
    }));
    const res = await gw.request('/v1/patients?limit=10&cursor=abc_1&ids=1&ids=2');
    expect(res.status).toBe(200);
    expect(upstream.received[0]!.url).toBe('/patients?limit=10&cursor=abc_1&ids=1&ids=2');
    // Issue 12: validated after coercion, so forwarded as coerced (what the gateway checked).
    const forwarded: [string, string][] = [
      ['/v1/patients?limit=1.0', '/patients?limit=1'],
      ['/v1/patients?limit=%2B1', '/patients?limit=1'],
      ['/v1/patients?limit=01', '/patients?limit=1'],
      ['/v1/patients?limit=1e1', '/patients?limit=10'],
      ['/v1/patients?cursor=abc_1&li%6Dit=5&ids=01&ids=%32', '/patients?limit=5&cursor=abc_1&ids=1&ids=2'],
      ['/v1/patients?&&limit=3&', '/patients?limit=3'],
      ['/v1/patients/search?name=a+b', '/patients/search?name=a%20b'],
      [
        "/v1/patients/search?name=%c3%a9t%C3%A9!'()*~%2f",
        '/patients/search?name=%C3%A9t%C3%A9%21%27%28%29%2A~%2F',
      ],
    ];
    upstream.received.length = 0;
    for (const [sent] of forwarded) expect((await gw.request(sent)).status, sent).toBe(200);
    expect(upstream.received.map((r) => r.url)).toEqual(forwarded.map(([, canonical]) => canonical));
  });

  it('refuses unknown, repeated, out-of-range and mistyped query parameters', async () => {
    const corpus: [string, unknown[]][] = [
      ['?limit=10&debug=true', [{ in: 'query', pointer: '/debug', rule: 'additionalProperties' }]],
      ['?limit=51', [{ in: 'query', pointer: '/limit', rule: 'maximum' }]],
      ['?limit=0', [{ in: 'query', pointer: '/limit', rule: 'minimum' }]],
      ['?limit=ten', [{ in: 'query', pointer: '/limit', rule: 'type' }]],
      ['?limit=1.5', [{ in: 'query', pointer: '/limit', rule: 'type' }]],
      ['?limit=10&limit=20', [{ in: 'query', pointer: '/limit', rule: 'duplicate' }]],
      ['?limit=10&li%6Dit=10', [{ in: 'query', pointer: '/limit', rule: 'duplicate' }]],
      ['?cursor=a&cursor=a', [{ in: 'query', pointer: '/cursor', rule: 'duplicate' }]],
      ['?cursor=%27%20OR%201%3D1--', [{ in: 'query', pointer: '/cursor', rule: 'pattern' }]],
      ['?ids=1&ids=2&ids=3&ids=4', [{ in: 'query', pointer: '/ids', rule: 'maxItems' }]],
      ['?ids=x', [{ in: 'query', pointer: '/ids/0', rule: 'type' }]],
      ['?__proto__=1', [{ in: 'query', pointer: '/__proto__', rule: 'forbidden-key' }]],
    ];
    for (const [query, errors] of corpus) {
      expectRefusal(await gw.request(`/v1/patients${query}`), 400, 'invalid-request', errors, [
        'OR 1',
        'ten',
      ]);
    }
    expectRefusal(
      await gw.request('/v1/patients/search?name=ab&password=hunter2'),
      400,
      'invalid-request',
      [{ in: 'query', pointer: '/password', rule: 'additionalProperties' }],
      ['hunter2'],
    );
    expect(upstream.received).toHaveLength(0);
  });

  it('refuses missing required and malformed path, header and cookie parameters', async () => {
    expectRefusal(await gw.request('/v1/patients/search'), 400, 'invalid-request', [
      { in: 'query', pointer: '/name', rule: 'required' },
    ]);
    expectRefusal(await gw.request('/v1/patients/search?name=a'), 400, 'invalid-request', [
      { in: 'query', pointer: '/name', rule: 'minLength' },
    ]);
    expectRefusal(
      await gw.request('/v1/patients/1%20OR%201=1'),
      400,
      'invalid-request',
      [{ in: 'path', pointer: '/patientId', rule: 'pattern' }],
      ['OR 1=1'],
    );
    expectRefusal(await gw.request('/v1/tenants'), 400, 'invalid-request', [
      { in: 'header', pointer: '/x-tenant', rule: 'required' },
    ]);
    expectRefusal(
      await gw.request('/v1/tenants', { headers: { 'x-tenant': 'acme-secret' } }),
      400,
      'invalid-request',
      [{ in: 'header', pointer: '/x-tenant', rule: 'type' }],
      ['acme-secret'],
    );
    expectRefusal(
      await gw.request('/v1/tenants', { headers: { 'x-tenant': '7', cookie: 'session=<script>' } }),
      400,
      'invalid-request',
      [{ in: 'cookie', pointer: '/session', rule: 'pattern' }],
      ['<script>'],
    );
    expect(upstream.received).toHaveLength(0);
    const ok = await gw.request('/v1/tenants', {
      headers: { 'x-tenant': '7', cookie: 'other=1; session=0badf00d' },
    });
    expect(ok.status).toBe(200);
    expect(upstream.received).toHaveLength(1);
    expect((await gw.request('/v1/patients/search?name=ab')).status).toBe(200);
  });
});

describe('contract patterns run in linear time (ReDoS)', () => {
  it('refuses an adversarial value for a catastrophic pattern, and still validates both ways', async () => {
    const evil = `${'a'.repeat(7000)}!`;
    expectRefusal(
      await gw.request(`/v1/codes?code=${evil}`),
      400,
      'invalid-request',
      [{ in: 'query', pointer: '/code', rule: 'pattern' }],
      [evil],
    );
    expectRefusal(
      await post('/v1/codes', JSON.stringify({ code: `${'a'.repeat(60_000)}!` })),
      400,
      'invalid-request',
      [{ in: 'body', pointer: '/code', rule: 'pattern' }],
    );
    expectRefusal(
      await post('/v1/codes', JSON.stringify({ [`${'x'.repeat(5000)}!`]: 1 })),
      400,
      'invalid-request',
      [{ in: 'body', pointer: `/${'x'.repeat(5000)}!`.slice(0, 256) + '…', rule: 'additionalProperties' }],
    );
    expectRefusal(
      await post('/v1/codes', JSON.stringify({ site: `http://${':'.repeat(60_000)}!` })),
      400,
      'invalid-request',
      [{ in: 'body', pointer: '/site', rule: 'format' }],
    );
    expectRefusal(await gw.request('/v1/codes?code=aab'), 400, 'invalid-request', [
      { in: 'query', pointer: '/code', rule: 'pattern' },
    ]);
    expect(upstream.received).toHaveLength(0);

    expect((await gw.request(`/v1/codes?code=${'a'.repeat(7000)}`)).status).toBe(200);
    const body = JSON.stringify({ code: 'aaa', xxxy: 3, site: 'https://example.com/a' });
    expect((await post('/v1/codes', body)).status).toBe(200);
    expect(upstream.received.map((r) => r.body)).toEqual(['', body]);
  });
});

describe('responses', () => {
  it('passes a conforming response unchanged', async () => {
    const text = JSON.stringify(STORED);
    upstream.respond(() => ({
      status: 200,
      headers: { 'content-type': 'application/json', etag: '"v1"' },
      body: text,
    }));
    const res = await gw.request('/v1/patients/pat_3k9x0m2q7a1b');
    expect(res.status).toBe(200);
    expect(res.body).toBe(text);
    expect(res.headers.etag).toBe('"v1"');
  });

  it('removes undeclared and writeOnly members before the client sees them', async () => {
    upstream.respond(() => ({
      status: 200,
      headers: { 'content-type': 'application/json; charset=utf-8', etag: '"v1"' },
      body: JSON.stringify({
        ...STORED,
        nationalId: 'AB-123456-C',
        passwordHash: '$2b$10$secret-hash',
        address: { city: 'Cork', internalNote: 'vip-secret' },
      }),
    }));
    const res = await gw.request('/v1/patients/pat_3k9x0m2q7a1b');
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body)).toEqual({ ...STORED, address: { city: 'Cork' } });
    for (const secret of ['AB-123456-C', 'secret-hash', 'vip-secret', 'passwordHash', 'nationalId']) {
      expect(res.body).not.toContain(secret);
    }
    expect(res.headers['content-type']).toBe('application/json');
    expect(res.headers['content-length']).toBe(String(Buffer.byteLength(res.body)));
    expect(res.headers.etag).toBeUndefined();
    expect(res.headers['x-content-type-options']).toBe('nosniff');
  });

  it('caps a collection at its declared page size, also when the body streams', async () => {
    const items = Array.from({ length: 400 }, (_, i) => ({
      ...STORED,
      id: `pat_${String(i).padStart(12, '0')}`,
      nationalId: 'AB-123456-C',
      notes: 'x'.repeat(200),
    }));
    upstream.respond(() => ({
      status: 200,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ items, nextCursor: 'next' }),
    }));
    const res = await gw.request('/v1/patients?limit=50');
    expect(res.status).toBe(200);
    const page = JSON.parse(res.body) as { items: Record<string, unknown>[]; nextCursor: string };
    expect(page.items).toHaveLength(50);
    expect(page.items[0]).toEqual({ ...STORED, id: 'pat_000000000000' });
    expect(page.nextCursor).toBe('next');
    expect(res.body).not.toContain('AB-123456-C');
  });

  it('turns a response that breaks its schema into a generic 502', async () => {
    const corpus = [
      { ...STORED, givenName: undefined, nationalId: 'AB-999999-Z' },
      { ...STORED, birthDate: 19840721 },
      { ...STORED, id: 'leaked-internal-id-secret' },
      '{"id": "pat_3k9x0m2q7a1b", "id": "dup"}',
      'not json at all secret',
    ];
    for (const body of corpus) {
      upstream.respond(() => ({
        status: 200,
        headers: { 'content-type': 'application/json' },
        body: typeof body === 'string' ? body : JSON.stringify(body),
      }));
      const res = await gw.request('/v1/patients/pat_3k9x0m2q7a1b');
      expectRefusal(res, 502, 'bad-gateway', undefined, [
        'AB-999999-Z',
        'leaked-internal',
        'secret',
        'Siobhan',
      ]);
      const failed = gw
        .logLines()
        .find((l) => l.event === 'request-failed' && l.correlationId === res.headers['x-request-id']);
      expect(failed?.reason).toBe('response-schema');
      expect(JSON.stringify(failed)).not.toContain('AB-999999-Z');
      expect(JSON.stringify(failed)).not.toContain('leaked-internal');
    }
  });

  it('refuses undeclared statuses and media types, unless a default covers them', async () => {
    upstream.respond(() => ({ status: 202, headers: { 'content-type': 'application/json' }, body: '{}' }));
    expectRefusal(await gw.request('/v1/patients/pat_3k9x0m2q7a1b'), 502, 'bad-gateway');
    upstream.respond(() => ({
      status: 200,
      headers: { 'content-type': 'text/html' },
      body: '<h1>secret</h1>',
    }));
    expectRefusal(await gw.request('/v1/patients/pat_3k9x0m2q7a1b'), 502, 'bad-gateway', undefined, [
      'secret',
    ]);
    // listPatients declares `default`: a 404 problem passes, minimised to its schema.
    upstream.respond(() => ({
      status: 404,
      headers: { 'content-type': 'application/problem+json' },
      body: JSON.stringify({
        type: 'about:blank',
        title: 'Not Found',
        status: 404,
        detail: 'stack at db.js:12',
      }),
    }));
    const res = await gw.request('/v1/patients');
    expect(res.status).toBe(404);
    expect(JSON.parse(res.body)).toEqual({ type: 'about:blank', title: 'Not Found', status: 404 });
    expect(res.headers['content-type']).toBe('application/problem+json');
  });
});
