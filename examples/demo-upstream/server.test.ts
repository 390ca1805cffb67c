import { readFile } from 'node:fs/promises';
import { connect } from 'node:net';
import $RefParser from '@apidevtools/json-schema-ref-parser';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormatsModule from 'ajv-formats';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { exportJWK, generateKeyPair, importJWK, SignJWT } from 'jose';
import type { JWK } from 'jose';
import { createIdentitySigner } from '../../src/tokens/identity.ts';
import { SEED_PATIENT_COUNT, startDemoUpstream } from './server.ts';
import type { DemoUpstream, Patient } from './server.ts';

const addFormats = addFormatsModule.default;
const SPEC_FILE = new URL('./openapi.yaml', import.meta.url);
const PATIENT_ID = /^pat_[a-z0-9]{12}$/;

interface Answer {
  status: number;
  headers: Headers;
  text: string;
  body: unknown;
}

function client(upstream: () => DemoUpstream) {
  return async (
    method: string,
    path: string,
    body?: unknown,
    contentType = 'application/json',
  ): Promise<Answer> => {
    const init: RequestInit = { method };
    if (body !== undefined) {
      init.body = typeof body === 'string' ? body : JSON.stringify(body);
      init.headers = { 'content-type': contentType };
    }
    const res = await fetch(upstream().url + path, init);
    const text = await res.text();
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = undefined;
    }
    return { status: res.status, headers: res.headers, text, body: parsed };
  };
}

function newPatientInput(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    givenName: 'Zebedee',
    familyName: "O'Quinn",
    birthDate: '1984-07-21',
    email: 'zebedee.oquinn@example.org',
    nationalId: 'ZQ-424242-X',
    ...overrides,
  };
}

function expectProblem(answer: Answer, status: number): void {
  expect(answer.status).toBe(status);
  expect(answer.headers.get('content-type')).toBe('application/problem+json');
  expect(answer.body).toMatchObject({ type: 'about:blank', status });
}

describe('demo upstream over HTTP', () => {
  let upstream: DemoUpstream;
  const request = client(() => upstream);

  beforeAll(async () => {
    upstream = await startDemoUpstream({ port: 0 });
  });
  afterAll(async () => {
    await upstream.close();
  });

  async function count(): Promise<number> {
    const answer = await request('GET', '/status');
    return (answer.body as { patients: number }).patients;
  }

  async function walk(limit: number): Promise<Patient[]> {
    const all: Patient[] = [];
    let cursor: string | null = null;
    for (let pages = 0; pages < 100; pages++) {
      const query: string = cursor === null ? `?limit=${limit}` : `?limit=${limit}&cursor=${cursor}`;
      const answer = await request('GET', `/patients${query}`);
      expect(answer.status).toBe(200);
      const page = answer.body as { items: Patient[]; nextCursor: string | null };
      expect(page.items.length).toBeLessThanOrEqual(limit);
      all.push(...page.items);
      cursor = page.nextCursor;
      if (cursor === null) return all;
    }
    throw new Error('the walk did not end');
  }

  it('reports its status without any credentials', async () => {
    const answer = await request('GET', '/status');
    expect(answer.status).toBe(200);
    expect(answer.headers.get('content-type')).toBe('application/json');
    expect(answer.headers.get('cache-control')).toBe('no-store');
    expect(answer.body).toEqual({ status: 'ok', patients: expect.any(Number) });
    expect(await count()).toBeGreaterThanOrEqual(SEED_PATIENT_COUNT);
  });

  it('walks every patient exactly once, in id order, whatever the page size', async () => {
    const total = await count();
    for (const limit of [1, 7, 50]) {
      const ids = (await walk(limit)).map((p) => p.id);
      expect(ids).toHaveLength(total);
      expect(new Set(ids).size).toBe(total);
      expect(ids).toEqual([...ids].sort());
    }
    const first = await request('GET', '/patients');
    expect((first.body as { items: unknown[] }).items).toHaveLength(20);
  });

  it('rejects bad page sizes, bad cursors and unknown query parameters', async () => {
    const bad = [
      '?limit=0',
      '?limit=51',
      '?limit=abc',
      '?limit=1.5',
      '?limit=-1',
      '?limit=',
      '?limit=1&limit=2',
      '?cursor=not%20base64',
      `?cursor=${Buffer.from('hello').toString('base64url')}`,
      `?cursor=${Buffer.from("pat_' OR 1=1 --").toString('base64url')}`,
      '?offset=10',
    ];
    for (const query of bad) expectProblem(await request('GET', `/patients${query}`), 400);
  });

  it('searches by part of a given or family name, case-insensitively', async () => {
    const created = await request('POST', '/patients', newPatientInput());
    const id = (created.body as Patient).id;
    for (const name of ["O'Q", "o'quinn", 'bede', 'ZEBED']) {
      const answer = await request('GET', `/patients/search?name=${encodeURIComponent(name)}`);
      expect(answer.status).toBe(200);
      const items = (answer.body as { items: Patient[] }).items;
      expect(items.map((p) => p.id)).toContain(id);
      for (const p of items) {
        expect(`${p.givenName} ${p.familyName}`.toLowerCase()).toContain(name.toLowerCase());
      }
    }
    const many = await request('GET', '/patients/search?name=an');
    expect((many.body as { items: Patient[] }).items.length).toBeGreaterThan(1);
  });

  it('treats % and _ in a search literally', async () => {
    const all = await request('GET', '/patients/search?name=an');
    expect((all.body as { items: unknown[] }).items.length).toBeGreaterThan(0);
    for (const name of ['%%', '__', '_n', 'a%', '\\%', '%_%']) {
      const answer = await request('GET', `/patients/search?name=${encodeURIComponent(name)}`);
      expect(answer.status).toBe(200);
      expect(answer.body).toEqual({ items: [] });
    }
  });

  it('treats SQL injection in the search and in the id as plain data', async () => {
    const before = await count();
    const payloads = [
      "' OR '1'='1",
      "x' OR 1=1 --",
      "x'); DROP TABLE patients; --",
      '" OR ""="',
      "' UNION SELECT national_id, 1, 1, 1, 1, 1, 1 FROM patients --",
    ];
    for (const name of payloads) {
      const answer = await request('GET', `/patients/search?name=${encodeURIComponent(name)}`);
      expect(answer.status).toBe(200);
      expect(answer.body).toEqual({ items: [] });
    }
    for (const id of ["pat_aaaaaaaaaaaa' OR '1'='1", "' OR 1=1 --", 'pat_aaaaaaaaaaaa;DROP TABLE patients']) {
      expectProblem(await request('GET', `/patients/${encodeURIComponent(id)}`), 400);
      expectProblem(await request('PATCH', `/patients/${encodeURIComponent(id)}`, { givenName: 'Eve' }), 400);
    }
    expect(await count()).toBe(before);
    expect(await walk(50)).toHaveLength(before);
  });

  it('rejects bad searches', async () => {
    for (const query of [
      '',
      '?name=a',
      `?name=${'a'.repeat(65)}`,
      '?name=ab%00',
      '?name=ab&name=cd',
      '?name=ab&x=1',
    ]) {
      expectProblem(await request('GET', `/patients/search${query}`), 400);
    }
  });

  it('creates a patient and reads it back, never returning nationalId', async () => {
    const before = await count();
    const created = await request('POST', '/patients', newPatientInput({ nationalId: 'NI-000111-SECRET' }));
    expect(created.status).toBe(201);
    expect(created.headers.get('content-type')).toBe('application/json');
    const patient = created.body as Patient;
    expect(patient.id).toMatch(PATIENT_ID);
    expect(created.headers.get('location')).toBe(`patients/${patient.id}`);
    expect(patient).toMatchObject({
      givenName: 'Zebedee',
      familyName: "O'Quinn",
      birthDate: '1984-07-21',
      email: 'zebedee.oquinn@example.org',
    });
    expect(patient.createdAt).toBe(patient.updatedAt);
    expect(created.text).not.toContain('nationalId');
    expect(created.text).not.toContain('NI-000111-SECRET');

    const read = await request('GET', `/patients/${patient.id}`);
    expect(read.status).toBe(200);
    expect(read.body).toEqual(patient);
    expect(read.text).not.toContain('NI-000111-SECRET');
    expect(await count()).toBe(before + 1);

    const other = await request('POST', '/patients', newPatientInput({ email: undefined }));
    expect((other.body as Patient).id).not.toBe(patient.id);
    expect(other.body).not.toHaveProperty('email');
  });

  it('rejects invalid new patients', async () => {
    const before = await count();
    const invalid: unknown[] = [
      newPatientInput({ nationalId: undefined }),
      newPatientInput({ givenName: undefined }),
      newPatientInput({ id: 'pat_aaaaaaaaaaaa' }),
      newPatientInput({ createdAt: '2020-01-01T00:00:00.000Z' }),
      newPatientInput({ isAdmin: true }),
      newPatientInput({ givenName: '' }),
      newPatientInput({ givenName: 'R2-D2' }),
      newPatientInput({ givenName: 'a'.repeat(65) }),
      newPatientInput({ familyName: 42 }),
      newPatientInput({ birthDate: '2023-02-30' }),
      newPatientInput({ birthDate: '1899-12-31' }),
      newPatientInput({ birthDate: '2999-01-01' }),
      newPatientInput({ birthDate: '1984-7-21' }),
      newPatientInput({ email: 'not an email' }),
      newPatientInput({ email: null }),
      newPatientInput({ nationalId: 'lowercase-1' }),
      [newPatientInput()],
      null,
      'not json',
      '{"givenName": ',
    ];
    for (const body of invalid) expectProblem(await request('POST', '/patients', body), 400);
    expect(await count()).toBe(before);
  });

  it('answers 415 for other content types and 413 for large bodies', async () => {
    const body = JSON.stringify(newPatientInput());
    expectProblem(await request('POST', '/patients', body, 'text/plain'), 415);
    expectProblem(await request('POST', '/patients', body, 'application/json; charset=latin1'), 415);
    expect((await request('POST', '/patients', body, 'application/json; charset=utf-8')).status).toBe(201);
    expectProblem(await request('POST', '/patients', newPatientInput(), 'application/merge-patch+json'), 415);
    const large = newPatientInput({ familyName: 'a'.repeat(70 * 1024) });
    expectProblem(await request('POST', '/patients', large), 413);
  });

  it('answers 413 to a large chunked body, which has no Content-Length', async () => {
    const chunk = 'x'.repeat(70 * 1024);
    const raw = await new Promise<string>((resolve, reject) => {
      const socket = connect(upstream.port, '127.0.0.1');
      let received = '';
      socket.setEncoding('latin1');
      socket.on('data', (data: string) => (received += data));
      socket.on('end', () => resolve(received));
      socket.on('error', reject);
      socket.write(
        'POST /patients HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n' +
          `Transfer-Encoding: chunked\r\n\r\n${chunk.length.toString(16)}\r\n${chunk}\r\n0\r\n\r\n`,
      );
    });
    expect(raw).toMatch(/^HTTP\/1\.1 413 /);
    expect(raw.toLowerCase()).toContain('connection: close');
  });

  it('updates a patient as a merge patch', async () => {
    const created = (await request('POST', '/patients', newPatientInput())).body as Patient;
    const path = `/patients/${created.id}`;

    const renamed = await request(
      'PATCH',
      path,
      { familyName: 'Quinn-Jones' },
      'application/merge-patch+json',
    );
    expect(renamed.status).toBe(200);
    expect(renamed.body).toMatchObject({
      ...created,
      familyName: 'Quinn-Jones',
      updatedAt: expect.any(String),
    });
    expect((renamed.body as Patient).createdAt).toBe(created.createdAt);

    const noEmail = await request('PATCH', path, { email: null, nationalId: 'NEW-SECRET-99' });
    expect(noEmail.status).toBe(200);
    expect(noEmail.body).not.toHaveProperty('email');
    expect(noEmail.text).not.toContain('NEW-SECRET-99');
    expect(noEmail.text).not.toContain('nationalId');

    const read = await request('GET', path);
    expect(read.body).toEqual(noEmail.body);
    expect(read.body).toMatchObject({
      givenName: 'Zebedee',
      familyName: 'Quinn-Jones',
      birthDate: '1984-07-21',
    });
  });

  it('rejects invalid updates and unknown patients', async () => {
    const created = (await request('POST', '/patients', newPatientInput())).body as Patient;
    const path = `/patients/${created.id}`;
    for (const body of [
      {},
      { id: 'pat_aaaaaaaaaaaa' },
      { updatedAt: '2020-01-01T00:00:00Z' },
      { givenName: null },
      [],
    ]) {
      expectProblem(await request('PATCH', path, body), 400);
    }
    expectProblem(await request('PATCH', path, { givenName: 'Eve' }, 'text/plain'), 415);
    expect((await request('GET', path)).body).toEqual(created);

    expectProblem(await request('GET', '/patients/pat_000000000000'), 404);
    expectProblem(await request('PATCH', '/patients/pat_000000000000', { givenName: 'Eve' }), 404);
  });

  it('answers 404 for unknown paths and 405 with Allow for other methods', async () => {
    for (const path of [
      '/',
      '/patients/',
      '/v1/patients',
      '/patients/pat_aaaaaaaaaaaa/notes',
      '/status/',
      '/STATUS',
    ]) {
      expectProblem(await request('GET', path), 404);
    }
    const cases: [string, string, string][] = [
      ['DELETE', '/patients/pat_aaaaaaaaaaaa', 'GET, PATCH'],
      ['PUT', '/patients/pat_aaaaaaaaaaaa', 'GET, PATCH'],
      ['DELETE', '/patients', 'GET, POST'],
      ['POST', '/patients/search', 'GET'],
      ['POST', '/status', 'GET'],
      ['OPTIONS', '/status', 'GET'],
    ];
    for (const [method, path, allow] of cases) {
      const answer = await request(method, path);
      expectProblem(answer, 405);
      expect(answer.headers.get('allow')).toBe(allow);
    }
  });

  it('never repeats request data in a problem', async () => {
    const marker = 'zzmarkerzz';
    const answers = [
      await request('GET', `/patients/${marker}`),
      await request('GET', `/${marker}`),
      await request('GET', `/patients?${marker}=1`),
      await request('POST', '/patients', newPatientInput({ [marker]: marker })),
      await request('POST', '/patients', newPatientInput({ email: marker })),
    ];
    for (const answer of answers) {
      expect(answer.status).toBeGreaterThanOrEqual(400);
      expect(answer.text).not.toContain(marker);
    }
  });
});

describe('seeded data', () => {
  it('is the same for the same seed and different for another', async () => {
    const ids = async (seed: number): Promise<string[]> => {
      const upstream = await startDemoUpstream({ port: 0, seed });
      try {
        const res = await fetch(`${upstream.url}/patients?limit=50`);
        const page = (await res.json()) as { items: Patient[] };
        expect(page.items).toHaveLength(SEED_PATIENT_COUNT);
        return page.items.map((p) => p.id);
      } finally {
        await upstream.close();
      }
    };
    const one = await ids(7);
    expect(await ids(7)).toEqual(one);
    expect(await ids(8)).not.toEqual(one);
  });
});

// ---------------------------------------------------------------------------------------------
// The document, and the document against the live server

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = Record<string, Json>;

function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function get(value: Json | undefined, ...path: string[]): Json | undefined {
  let current = value;
  for (const key of path) current = isObject(current) ? current[key] : undefined;
  return current;
}

/** Every subschema of a dereferenced document that looks like a JSON Schema, with its location. */
function* schemas(value: Json, at: string, seen = new Set<object>()): Generator<[string, JsonObject]> {
  if (typeof value !== 'object' || value === null || seen.has(value)) return;
  seen.add(value);
  if (isObject(value) && typeof value.type === 'string') yield [at, value];
  for (const [key, child] of Object.entries(value)) yield* schemas(child, `${at}/${key}`, seen);
}

function operationIdOf(op: JsonObject): string {
  return typeof op.operationId === 'string' ? op.operationId : '(no operationId)';
}

const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];

describe('openapi.yaml', () => {
  let raw: JsonObject;
  let spec: JsonObject;

  beforeAll(async () => {
    const parsed = parse(await readFile(SPEC_FILE, 'utf8')) as unknown;
    if (!isObject(parsed)) throw new Error('openapi.yaml is not an object');
    raw = parsed;
    spec = await $RefParser.dereference<JsonObject>(structuredClone(parsed));
  });

  function operations(): { method: string; path: string; op: JsonObject }[] {
    const result: { method: string; path: string; op: JsonObject }[] = [];
    for (const [path, item] of Object.entries(spec.paths as JsonObject)) {
      for (const method of METHODS) {
        const op = get(item, method);
        if (isObject(op)) result.push({ method: method.toUpperCase(), path, op });
      }
    }
    return result;
  }

  it('is OpenAPI 3.1.0 whose $refs all resolve', () => {
    expect(raw.openapi).toBe('3.1.0');
    expect(raw.servers).toEqual([{ url: '/v1', 'x-internal': false }]);
    expect(JSON.stringify(raw)).toContain('"$ref"');
    expect(JSON.stringify(spec)).not.toContain('"$ref"');
  });

  it('declares the operations and their security', () => {
    const read = [{ oauth2: ['patients:read'] }];
    const write = [{ oauth2: ['patients:write'] }];
    expect(raw.security).toEqual(read);
    const declared = operations().map(({ method, path, op }) => [
      method,
      path,
      op.operationId,
      op.security ?? read,
    ]);
    expect(declared).toEqual([
      ['GET', '/status', 'getStatus', []],
      ['GET', '/patients', 'listPatients', read],
      ['POST', '/patients', 'createPatient', write],
      ['GET', '/patients/search', 'searchPatients', read],
      ['GET', '/patients/{patientId}', 'getPatient', read],
      ['PATCH', '/patients/{patientId}', 'updatePatient', write],
      ['GET', '/insights', 'getWellnessInsights', read],
      ['GET', '/offers', 'listPartnerOffers', read],
      ['GET', '/care-programme/eligibility', 'checkProgrammeEligibility', read],
    ]);
    const flows = get(spec, 'components', 'securitySchemes', 'oauth2', 'flows');
    expect(get(flows, 'clientCredentials', 'tokenUrl')).toBe('https://localhost:8443/token');
    expect(get(flows, 'authorizationCode', 'authorizationUrl')).toBe('https://localhost:8443/auth');
    expect(Object.keys(get(flows, 'authorizationCode', 'scopes') as JsonObject)).toEqual([
      'patients:read',
      'patients:write',
      'patients:admin',
    ]);
    // The owner-bound record: the gateway lets a caller reach only its own patient id.
    for (const op of ['get', 'patch']) {
      expect(get(spec, 'paths', '/patients/{patientId}', op, 'x-portcullis-owner')).toEqual({
        parameter: 'patientId',
        claim: 'sub',
        bypassScopes: ['patients:admin'],
      });
    }
  });

  it('bounds every schema and declares a schema for every response', () => {
    let checked = 0;
    for (const [at, schema] of schemas(spec, '#')) {
      checked++;
      if (schema.type === 'object') expect(schema.additionalProperties, at).toBe(false);
      if (schema.type === 'string') expect(schema.maxLength ?? schema.enum, at).toBeDefined();
      if (schema.type === 'integer') expect([schema.minimum, schema.maximum], at).not.toContain(undefined);
      if (schema.type === 'array') expect(schema.maxItems, at).toBeDefined();
    }
    expect(checked).toBeGreaterThan(20);
    for (const { op } of operations()) {
      for (const [status, response] of Object.entries(op.responses as JsonObject)) {
        const content = get(response, 'content');
        expect(isObject(content) && Object.keys(content).length > 0, `${operationIdOf(op)} ${status}`).toBe(
          true,
        );
        for (const media of Object.values(content as JsonObject)) expect(get(media, 'schema')).toBeDefined();
      }
    }
    const patient = get(spec, 'components', 'schemas', 'Patient', 'properties');
    expect(get(patient, 'id', 'readOnly')).toBe(true);
    expect(get(patient, 'nationalId', 'writeOnly')).toBe(true);
  });

  it('describes every response the live server gives, and the server gives every declared one', async () => {
    const upstream = await startDemoUpstream({ port: 0 });
    const request = client(() => upstream);
    try {
      const ajv = new Ajv2020({ allErrors: true, strictTypes: false });
      ajv.addKeyword('x-portcullis-data');
      addFormats(ajv);
      const ops = operations();

      const input = newPatientInput();
      const created = await request('POST', '/patients', input);
      const id = (created.body as Patient).id;
      const big = newPatientInput({ familyName: 'a'.repeat(70 * 1024) });
      // [operationId, method, path, body, content type]
      const samples: [string, string, string, unknown?, string?][] = [
        ['getStatus', 'GET', '/status'],
        ['getStatus', 'GET', '/status?x=1'],
        ['listPatients', 'GET', '/patients?limit=3'],
        ['listPatients', 'GET', '/patients?limit=50'],
        ['listPatients', 'GET', '/patients?limit=0'],
        ['createPatient', 'POST', '/patients', input],
        ['createPatient', 'POST', '/patients', newPatientInput({ email: undefined })],
        ['createPatient', 'POST', '/patients', { givenName: 'x' }],
        ['createPatient', 'POST', '/patients', big],
        ['createPatient', 'POST', '/patients', input, 'text/plain'],
        ['searchPatients', 'GET', '/patients/search?name=an'],
        ['searchPatients', 'GET', '/patients/search?name=%25%25'],
        ['searchPatients', 'GET', '/patients/search?name=a'],
        ['getPatient', 'GET', `/patients/${id}`],
        ['getPatient', 'GET', '/patients/pat_000000000000'],
        ['getPatient', 'GET', '/patients/nope'],
        ['updatePatient', 'PATCH', `/patients/${id}`, { email: null }, 'application/merge-patch+json'],
        ['updatePatient', 'PATCH', `/patients/${id}`, { givenName: 'Ann' }],
        ['updatePatient', 'PATCH', `/patients/${id}`, {}],
        ['updatePatient', 'PATCH', '/patients/pat_000000000000', { givenName: 'Ann' }],
        ['updatePatient', 'PATCH', `/patients/${id}`, big],
        ['updatePatient', 'PATCH', `/patients/${id}`, { givenName: 'Ann' }, 'text/plain'],
        ['getWellnessInsights', 'GET', '/insights'],
        ['listPartnerOffers', 'GET', '/offers'],
        ['checkProgrammeEligibility', 'GET', '/care-programme/eligibility'],
      ];

      const produced = new Set<string>();
      for (const [operationId, method, path, body, contentType] of samples) {
        const op = ops.find((o) => o.op.operationId === operationId);
        if (!op) throw new Error(`no operation ${operationId}`);
        const template = new RegExp(`^${op.path.replace(/\{[^}]+\}/g, '[^/]+')}(\\?|$)`);
        expect(method, operationId).toBe(op.method);
        expect(path, operationId).toMatch(template);

        const answer = await request(method, path, body, contentType);
        const responses = op.op.responses as JsonObject;
        const declared = responses[String(answer.status)] ?? responses.default;
        const mediaType = (answer.headers.get('content-type') ?? '').split(';')[0] ?? '';
        const schema = get(declared, 'content', mediaType, 'schema');
        expect(schema, `${operationId} ${answer.status} ${mediaType}`).toBeDefined();
        const validate = ajv.compile(schema as JsonObject);
        expect(
          validate(answer.body),
          `${operationId} ${answer.status}: ${ajv.errorsText(validate.errors)}`,
        ).toBe(true);
        for (const [name, header] of Object.entries((get(declared, 'headers') ?? {}) as JsonObject)) {
          const value = answer.headers.get(name);
          if (get(header, 'required') === true) expect(value, `${operationId} ${name}`).not.toBeNull();
          if (value !== null) expect(ajv.validate(get(header, 'schema') as JsonObject, value)).toBe(true);
        }
        // The request schema and the server agree on which bodies are valid.
        const requestSchema = get(
          op.op,
          'requestBody',
          'content',
          contentType ?? 'application/json',
          'schema',
        );
        if (requestSchema !== undefined && (answer.status < 300 || answer.status === 400)) {
          expect(ajv.validate(requestSchema as JsonObject, body), `${operationId} request`).toBe(
            answer.status < 300,
          );
        }
        produced.add(`${operationId} ${answer.status}`);
      }

      // Every operation's every declared status (other than `default`) came up at least once.
      const declaredStatuses = ops.flatMap(({ op }) =>
        Object.keys(op.responses as JsonObject)
          .filter((status) => status !== 'default')
          .map((status) => `${operationIdOf(op)} ${status}`),
      );
      expect([...produced].sort()).toEqual(declaredStatuses.sort());

      // Answers outside any operation (unknown path, other method) are Problems too.
      const problem = ajv.compile(get(spec, 'components', 'schemas', 'Problem') as JsonObject);
      for (const [method, path] of [
        ['GET', '/nowhere'],
        ['DELETE', '/patients'],
      ] as const) {
        const answer = await request(method, path);
        expect(answer.headers.get('content-type')).toBe('application/problem+json');
        expect(problem(answer.body), ajv.errorsText(problem.errors)).toBe(true);
      }
    } finally {
      await upstream.close();
    }
  });
});

describe('the caller assertion from the gateway', () => {
  const ISSUER = 'https://gateway.test';
  let upstream: DemoUpstream;
  let audience: string;
  let privateJwk: JWK;
  let otherJwk: JWK;

  async function keyPair(kid: string): Promise<{ privateJwk: JWK; publicJwk: JWK }> {
    const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
    return {
      privateJwk: { ...(await exportJWK(privateKey)), kid, alg: 'ES256', use: 'sig' },
      publicJwk: { ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' },
    };
  }

  beforeAll(async () => {
    const gatewayKey = await keyPair('k1');
    privateJwk = gatewayKey.privateJwk;
    // Same kid, another key: a forgery that names the gateway's key.
    otherJwk = (await keyPair('k1')).privateJwk;
    // The audience is this service's origin, which names the port: find a free one first.
    const probe = await startDemoUpstream({ port: 0 });
    const port = probe.port;
    await probe.close();
    audience = `http://127.0.0.1:${String(port)}`;
    upstream = await startDemoUpstream({
      port,
      identity: { issuer: ISSUER, audience, jwks: () => ({ keys: [gatewayKey.publicJwk] }) },
    });
  });
  afterAll(async () => {
    await upstream.close();
  });

  interface Assertion {
    subject?: string;
    scopes?: string[];
    key?: JWK;
    audience?: string;
    issuer?: string;
    now?: () => number;
  }
  function assertion(a: Assertion = {}): Promise<string> {
    const sign = createIdentitySigner({
      issuer: a.issuer ?? ISSUER,
      signingJwks: () => ({ keys: [a.key ?? privateJwk] }),
      ttlSeconds: 30,
      ...(a.now === undefined ? {} : { now: a.now }),
    });
    return Promise.resolve(
      sign({
        audience: a.audience ?? audience,
        principal: {
          scheme: 'oauth2',
          subject: a.subject ?? 'user-1',
          clientId: 'client-1',
          scopes: new Set(a.scopes ?? ['patients:read', 'patients:write']),
        },
      }),
    );
  }
  async function call(
    method: string,
    path: string,
    identity: string | undefined,
    body?: unknown,
  ): Promise<Answer> {
    const headers: Record<string, string> = {};
    if (identity !== undefined) headers['x-portcullis-identity'] = identity;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(upstream.url + path, {
      method,
      headers,
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const text = await res.text();
    return { status: res.status, headers: res.headers, text, body: JSON.parse(text) as unknown };
  }

  it('answers the status probe without one', async () => {
    expect((await call('GET', '/status', undefined)).status).toBe(200);
  });

  it('passes a valid assertion on every operation', async () => {
    const valid = await assertion();
    expect((await call('GET', '/patients?limit=2', valid)).status).toBe(200);
    expect((await call('GET', '/patients/search?name=an', valid)).status).toBe(200);
    const created = await call('POST', '/patients', valid, newPatientInput());
    expect(created.status).toBe(201);
    const id = (created.body as Patient).id;
    const own = await assertion({ subject: id });
    expect((await call('GET', `/patients/${id}`, own)).status).toBe(200);
    const patched = await call('PATCH', `/patients/${id}`, own, { givenName: 'Ann' });
    expect(patched.status).toBe(200);
    expect((patched.body as Patient).givenName).toBe('Ann');
  });

  it('refuses a missing, forged, expired, misaddressed or foreign assertion with 401', async () => {
    const past = Date.now() - 10 * 60_000;
    const [forged, expired, wrongAudience, wrongIssuer] = await Promise.all([
      assertion({ key: otherJwk }),
      assertion({ now: () => past }),
      assertion({ audience: 'http://127.0.0.1:1' }),
      assertion({ issuer: 'https://evil.test' }),
    ]);
    // Correctly signed but typed as an access token, not an assertion.
    const accessToken = await new SignJWT({ client_id: 'client-1', txn: 'x', scope: 'patients:read' })
      .setProtectedHeader({ alg: 'ES256', kid: 'k1', typ: 'at+jwt' })
      .setIssuer(ISSUER)
      .setAudience(audience)
      .setSubject('user-1')
      .setIssuedAt()
      .setExpirationTime('30s')
      .setJti('j1')
      .sign(await importJWK(privateJwk, 'ES256'));
    const valid = await assertion();
    const tampered = valid.replace(/\.([^.]+)\./, (_m, p: string) => {
      const claims = JSON.parse(Buffer.from(p, 'base64url').toString()) as Record<string, unknown>;
      return `.${Buffer.from(JSON.stringify({ ...claims, scope: 'patients:admin' })).toString('base64url')}.`;
    });
    const bad: (string | undefined)[] = [
      undefined,
      '',
      'not-a-jwt',
      forged,
      expired,
      wrongAudience,
      wrongIssuer,
      accessToken,
      tampered,
    ];
    const staff = await assertion({ scopes: ['patients:read', 'patients:admin'] });
    const id = (await call('GET', '/patients?limit=1', staff)).body as { items: Patient[] };
    const target = id.items[0]?.id ?? '';
    for (const identity of bad) {
      for (const [method, path, body] of [
        ['GET', '/patients'],
        ['GET', '/patients/search?name=an'],
        ['POST', '/patients', newPatientInput()],
        ['GET', `/patients/${target}`],
        ['PATCH', `/patients/${target}`, { givenName: 'Eve' }],
        ['GET', '/nowhere'],
      ] as const) {
        const answer = await call(method, path, identity, body);
        expectProblem(answer, 401);
        expect(answer.text).not.toContain('evil');
      }
    }
  });

  it('lists and searches only the caller’s own record unless it holds patients:admin', async () => {
    const created = await call('POST', '/patients', await assertion(), {
      ...newPatientInput(),
      givenName: 'Quintessa',
    });
    const id = (created.body as Patient).id;
    const own = await assertion({ subject: id, scopes: ['patients:read'] });
    const list = await call('GET', '/patients?limit=50', own);
    expect(list.status).toBe(200);
    expect(list.body).toEqual({ items: [created.body], nextCursor: null });
    const found = await call('GET', '/patients/search?name=quint', own);
    expect((found.body as { items: Patient[] }).items.map((p) => p.id)).toEqual([id]);
    // Someone else (no record of their own): nothing, though the records exist.
    const stranger = await assertion({ subject: 'user-9', scopes: ['patients:read'] });
    expect((await call('GET', '/patients?limit=50', stranger)).body).toEqual({ items: [], nextCursor: null });
    expect((await call('GET', '/patients/search?name=an', stranger)).body).toEqual({ items: [] });
    expect((await call('GET', '/patients/search?name=quint', stranger)).body).toEqual({ items: [] });
    // Staff: every record, paginated.
    const admin = await assertion({ subject: 'staff-1', scopes: ['patients:read', 'patients:admin'] });
    const page = (await call('GET', '/patients?limit=5', admin)).body as {
      items: Patient[];
      nextCursor: string;
    };
    expect(page.items).toHaveLength(5);
    expect(page.nextCursor).not.toBeNull();
    const staffFound = await call('GET', '/patients/search?name=an', admin);
    expect((staffFound.body as { items: Patient[] }).items.length).toBeGreaterThan(1);
  });

  it("checks the owner binding again: 403 for another's record unless patients:admin", async () => {
    const created = await call('POST', '/patients', await assertion(), newPatientInput());
    const id = (created.body as Patient).id;
    const other = await assertion({ subject: 'pat_aaaaaaaaaaaa' });
    expectProblem(await call('GET', `/patients/${id}`, other), 403);
    expectProblem(await call('PATCH', `/patients/${id}`, other, { givenName: 'Eve' }), 403);
    const stored = await call('GET', `/patients/${id}`, await assertion({ subject: id }));
    expect((stored.body as Patient).givenName).toBe('Zebedee');
    const admin = await assertion({ subject: 'staff-1', scopes: ['patients:read', 'patients:admin'] });
    expect((await call('GET', `/patients/${id}`, admin)).status).toBe(200);
    expect((await call('PATCH', `/patients/${id}`, admin, { givenName: 'Bo' })).status).toBe(200);
  });
});
