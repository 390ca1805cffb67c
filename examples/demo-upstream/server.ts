/**
 * The demo upstream: a small patients API that the quickstart puts behind Portcullis.
 *
 * It is written the way a careful internal service would be, and it is meant to be read:
 * - it validates every input itself and answers RFC 9457 problems (400, 404, 405, 413, 415);
 * - every SQL statement is prepared once with placeholders, and the search escapes the LIKE
 *   wildcards `%` and `_`, so request data is only ever data;
 * - `nationalId` is write-only: the read queries never select it, so no response can carry it;
 * - it trusts nothing about the caller. Authentication, scopes and the owner binding of
 *   `GET /patients/{patientId}` are the gateway's job, in front of it on loopback; with the
 *   `identity` option it also verifies the gateway's signed caller assertion on every operation
 *   but `GET /status` (401 without a valid one) and checks the owner binding again itself
 *   (defence in depth: 403 unless the assertion's subject is the patient or it carries
 *   `patients:admin`). Lists and searches are bound the same way: a caller without
 *   `patients:admin` gets only its own record, read from the verified assertion.
 *
 * The contract is `openapi.yaml` beside this file; `server.test.ts` checks that the two agree.
 */
import { randomInt } from 'node:crypto';
import { createServer, STATUS_CODES } from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { DatabaseSync } from 'node:sqlite';
import type { SQLOutputValue } from 'node:sqlite';
import { errors as joseErrors } from 'jose';
import type { JSONWebKeySet } from 'jose';
import { createIdentityVerifier } from '../../src/tokens/identity.ts';
import type { VerifiedIdentity } from '../../src/tokens/identity.ts';

export interface DemoUpstreamOptions {
  /** The address to listen on. Default `127.0.0.1`: the service is only reached through the gateway. */
  host?: string;
  /** The port to listen on; `0` picks a free one. Default 4010. */
  port?: number;
  /** Seeds the fake data: the same seed gives the same patients, ids included. Default 1. */
  seed?: number;
  /**
   * Require the gateway's caller assertion (src/tokens/identity.ts) on every operation but
   * `GET /status`. `issuer` is the gateway's public URL, `audience` this service's origin as the
   * gateway addresses it (`http://127.0.0.1:4010`), `jwks` the gateway's current public keys.
   */
  identity?: DemoIdentityOptions;
}

export interface DemoIdentityOptions {
  issuer: string;
  audience: string;
  jwks: () => JSONWebKeySet;
  /** The request header carrying the assertion. Default `x-portcullis-identity`. */
  header?: string;
}

export interface DemoUpstream {
  /** The base URL, e.g. `http://127.0.0.1:4010`; the API's paths (`/patients`, ...) go after it. */
  url: string;
  port: number;
  /** Stops listening, drops open connections and discards the data. */
  close(): Promise<void>;
}

/** A patient as the API returns it: never with `nationalId`. */
export interface Patient {
  id: string;
  givenName: string;
  familyName: string;
  birthDate: string;
  email?: string;
  createdAt: string;
  updatedAt: string;
}

export const DEFAULT_PORT = 4010;
export const SEED_PATIENT_COUNT = 40;
const MAX_BODY_BYTES = 64 * 1024;
const MAX_PAGE_SIZE = 50;
const DEFAULT_PAGE_SIZE = 20;
const MAX_SEARCH_RESULTS = 50;

// The same patterns and bounds as the schemas in openapi.yaml.
const PATIENT_ID = /^pat_[a-z0-9]{12}$/;
const PERSON_NAME = /^\p{L}(?:[\p{L}\p{M}' .-]*[\p{L}\p{M}.])?$/u;
const DATE = /^([0-9]{4})-([0-9]{2})-([0-9]{2})$/;
const NATIONAL_ID = /^[A-Z0-9-]{6,20}$/;
const CURSOR = /^[A-Za-z0-9_-]{1,64}$/;
// The `email` format of ajv-formats, so that the service and the gateway agree.
const EMAIL =
  /^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*@(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$/i;

/** Starts the demo upstream and resolves once it is listening. */
export async function startDemoUpstream(options: DemoUpstreamOptions = {}): Promise<DemoUpstream> {
  const host = options.host ?? '127.0.0.1';
  const seed = options.seed ?? 1;
  if (!Number.isSafeInteger(seed)) throw new TypeError('seed must be an integer');

  const store = openStore(seed);
  const caller = options.identity === undefined ? undefined : callerCheck(options.identity);
  const server = createServer({ headersTimeout: 10_000, requestTimeout: 30_000, maxHeaderSize: 16 * 1024 });
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    handle(req, res, store, caller).catch((error: unknown) => {
      if (!(error instanceof HttpProblem)) console.error('demo-upstream: unexpected error', error);
      const problem =
        error instanceof HttpProblem ? error : new HttpProblem(500, 'An unexpected error occurred.');
      if (res.headersSent) res.destroy();
      else sendProblem(res, problem);
    });
  });

  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port ?? DEFAULT_PORT, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (error) {
    store.close();
    throw error;
  }

  const { port } = server.address() as AddressInfo;
  let closing: Promise<void> | undefined;
  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${port}`,
    port,
    close() {
      closing ??= new Promise<void>((resolve, reject) => {
        server.close((error) => {
          store.close();
          if (error) reject(error);
          else resolve();
        });
        server.closeAllConnections();
      });
      return closing;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Routing

interface Reply {
  status: number;
  body: unknown;
  headers?: Record<string, string>;
}
interface Context {
  req: IncomingMessage;
  query: URLSearchParams;
  /** The path's captured segments, e.g. the raw `{patientId}`. */
  params: string[];
  store: Store;
  /** The verified caller assertion; undefined when the service runs without `identity`. */
  caller: VerifiedIdentity | undefined;
}
type Handler = (ctx: Context) => Reply | Promise<Reply>;

const routes: { path: RegExp; methods: Partial<Record<string, Handler>> }[] = [
  { path: /^\/status$/, methods: { GET: getStatus } },
  { path: /^\/patients$/, methods: { GET: listPatients, POST: createPatient } },
  { path: /^\/patients\/search$/, methods: { GET: searchPatients } },
  { path: /^\/patients\/([^/]+)$/, methods: { GET: getPatient, PATCH: updatePatient } },
  { path: /^\/insights$/, methods: { GET: getWellnessInsights } },
  { path: /^\/offers$/, methods: { GET: listPartnerOffers } },
  { path: /^\/care-programme\/eligibility$/, methods: { GET: checkProgrammeEligibility } },
];

type CallerCheck = (req: IncomingMessage) => Promise<VerifiedIdentity>;

/** Verifies the assertion header; 401 when it is missing, repeated or not valid. */
function callerCheck(options: DemoIdentityOptions): CallerCheck {
  const header = (options.header ?? 'x-portcullis-identity').toLowerCase();
  const verify = createIdentityVerifier({
    issuer: options.issuer,
    audience: options.audience,
    jwks: options.jwks,
  });
  const refused = () =>
    new HttpProblem(401, 'A valid caller assertion from the gateway is required.', {
      'www-authenticate': 'Portcullis-Identity',
    });
  return async (req) => {
    const assertion = req.headers[header];
    if (typeof assertion !== 'string' || assertion === '') throw refused();
    try {
      return await verify(assertion);
    } catch (error) {
      if (error instanceof joseErrors.JOSEError) throw refused();
      throw error;
    }
  };
}

async function handle(
  req: IncomingMessage,
  res: ServerResponse,
  store: Store,
  check: CallerCheck | undefined,
): Promise<void> {
  const target = req.url ?? '';
  const q = target.indexOf('?');
  const path = q === -1 ? target : target.slice(0, q);
  const query = new URLSearchParams(q === -1 ? '' : target.slice(q + 1));
  // Everything but the status probe needs the caller assertion, before anything else is told.
  const isStatusProbe = path === '/status' && req.method === 'GET';
  const caller = check === undefined || isStatusProbe ? undefined : await check(req);

  for (const route of routes) {
    const match = route.path.exec(path);
    if (!match) continue;
    const method = req.method ?? '';
    const handler = Object.hasOwn(route.methods, method) ? route.methods[method] : undefined;
    if (!handler) {
      throw new HttpProblem(405, 'The method is not allowed on this resource.', {
        allow: Object.keys(route.methods).join(', '),
      });
    }
    const reply = await handler({ req, query, params: match.slice(1), store, caller });
    send(res, reply.status, 'application/json', reply.body, reply.headers);
    return;
  }
  throw new HttpProblem(404, 'There is no resource at this path.');
}

// ---------------------------------------------------------------------------------------------
// Operations (their operationIds in openapi.yaml)

function getStatus({ query, store }: Context): Reply {
  onlyQueryParameters(query, []);
  return { status: 200, body: { status: 'ok', patients: store.count() } };
}

/** The privileged scope that reaches every record (the contract's `bypassScopes`). */
const ADMIN_SCOPE = 'patients:admin';

/**
 * The record a non-privileged caller may see in lists and searches: its own (patient id =
 * subject), as for the owner-bound record operations. `null` means every record (the caller holds
 * patients:admin, or the service runs without `identity` and knows no caller).
 */
function ownRecordOnly(caller: VerifiedIdentity | undefined): string | null {
  return caller === undefined || caller.scopes.has(ADMIN_SCOPE) ? null : caller.subject;
}

function listPatients({ query, store, caller }: Context): Reply {
  onlyQueryParameters(query, ['limit', 'cursor']);
  const limit = parseLimit(query.get('limit'));
  const after = parseCursor(query.get('cursor'));
  const own = ownRecordOnly(caller);
  if (own !== null) {
    const patient = store.get(own);
    return { status: 200, body: { items: patient && patient.id > after ? [patient] : [], nextCursor: null } };
  }
  // One more than asked tells whether another page follows.
  const rows = store.page(after, limit + 1);
  const items = rows.slice(0, limit);
  const last = items.at(-1);
  const nextCursor = rows.length > limit && last ? Buffer.from(last.id).toString('base64url') : null;
  return { status: 200, body: { items, nextCursor } };
}

function searchPatients({ query, store, caller }: Context): Reply {
  onlyQueryParameters(query, ['name']);
  const name = query.get('name');
  if (name === null) throw new HttpProblem(400, 'The query parameter name is required.');
  const length = lengthInCodePoints(name);
  if (length < 2 || length > 64 || hasControlCharacter(name)) {
    throw new HttpProblem(
      400,
      'The query parameter name must be 2 to 64 characters, without control characters.',
    );
  }
  const own = ownRecordOnly(caller);
  const found = store.search(name, own === null ? MAX_SEARCH_RESULTS : store.count());
  return { status: 200, body: { items: own === null ? found : found.filter((p) => p.id === own) } };
}

async function createPatient({ req, query, store }: Context): Promise<Reply> {
  onlyQueryParameters(query, []);
  const input = parsePatientFields(await readJson(req, ['application/json']), 'create');
  const now = new Date().toISOString();
  const patient = store.insert({
    id: newPatientId(() => randomInt(36)),
    givenName: required(input.givenName),
    familyName: required(input.familyName),
    birthDate: required(input.birthDate),
    email: input.email ?? null,
    nationalId: required(input.nationalId),
    createdAt: now,
    updatedAt: now,
  });
  // A relative reference resolves against the request URL (RFC 9110 §10.2.2), so it is right
  // both here (`/patients`) and behind the gateway's base path (`/v1/patients`).
  return { status: 201, body: patient, headers: { location: `patients/${patient.id}` } };
}

/** Defence in depth: the gateway's owner binding, checked again (patient id = subject). */
function mayReach(caller: VerifiedIdentity | undefined, id: string): void {
  if (caller === undefined || caller.subject === id || caller.scopes.has(ADMIN_SCOPE)) return;
  throw new HttpProblem(403, 'The caller may not reach this patient record.');
}

function getPatient({ query, params, store, caller }: Context): Reply {
  onlyQueryParameters(query, []);
  const id = parsePatientId(params[0]);
  mayReach(caller, id);
  const patient = store.get(id);
  if (!patient) throw new HttpProblem(404, 'There is no patient with this id.');
  return { status: 200, body: patient };
}

async function updatePatient({ req, query, params, store, caller }: Context): Promise<Reply> {
  onlyQueryParameters(query, []);
  const id = parsePatientId(params[0]);
  mayReach(caller, id);
  const changes = parsePatientFields(
    await readJson(req, ['application/merge-patch+json', 'application/json']),
    'patch',
  );
  const current = store.get(id);
  if (!current) throw new HttpProblem(404, 'There is no patient with this id.');
  const patient = store.update({
    id,
    givenName: changes.givenName ?? current.givenName,
    familyName: changes.familyName ?? current.familyName,
    birthDate: changes.birthDate ?? current.birthDate,
    // Merge patch: absent keeps, null removes.
    email: changes.email === undefined ? (current.email ?? null) : changes.email,
    nationalId: changes.nationalId ?? null,
    updatedAt: new Date().toISOString(),
  });
  if (!patient) throw new HttpProblem(404, 'There is no patient with this id.');
  return { status: 200, body: patient };
}

// ---------------------------------------------------------------------------------------------
// Input validation. Problem details are fixed texts: they never repeat request data.

class HttpProblem extends Error {
  readonly status: number;
  readonly detail: string;
  readonly headers: Record<string, string>;
  constructor(status: number, detail: string, headers: Record<string, string> = {}) {
    super(detail);
    this.status = status;
    this.detail = detail;
    this.headers = headers;
  }
}

/** Rejects unknown and repeated query parameters. */
// Beyond the service (issue 16): the gateway let these through only with the caller's consent;
// each answer shows what the caller assertion said about it (its `privacy` claim).

function received(caller: VerifiedIdentity | undefined) {
  return { consents: [...(caller?.privacy?.consents ?? [])], optOuts: [...(caller?.privacy?.optOuts ?? [])] };
}

/** A stable number from the caller's subject (the demo's stand-in for a model's input). */
function subjectScore(caller: VerifiedIdentity | undefined): number {
  let h = 0;
  for (const ch of caller?.subject ?? '') h = (h * 31 + (ch.codePointAt(0) ?? 0)) >>> 0;
  return h;
}

function getWellnessInsights({ query, caller }: Context): Reply {
  onlyQueryParameters(query, []);
  const bands = ['low', 'moderate', 'high'] as const;
  return { status: 200, body: { riskBand: bands[subjectScore(caller) % 3], received: received(caller) } };
}

function listPartnerOffers({ query, caller }: Context): Reply {
  onlyQueryParameters(query, []);
  const offers = [
    { partner: 'Example Pharmacy', title: '10% off vitamins' },
    { partner: 'Example Gym', title: 'A free month' },
  ];
  return { status: 200, body: { offers, received: received(caller) } };
}

function checkProgrammeEligibility({ query, caller }: Context): Reply {
  onlyQueryParameters(query, []);
  // The demo has no birth date for an arbitrary subject: a stable stand-in age from 20 to 89.
  const age = 20 + (subjectScore(caller) % 70);
  return {
    status: 200,
    body: { eligible: age >= 40 && age <= 75, programme: 'preventive-care', received: received(caller) },
  };
}

function onlyQueryParameters(query: URLSearchParams, allowed: readonly string[]): void {
  const seen = new Set<string>();
  for (const key of query.keys()) {
    if (!allowed.includes(key) || seen.has(key)) {
      throw new HttpProblem(400, 'The query string has an unknown or repeated parameter.');
    }
    seen.add(key);
  }
}

/** A string's length as JSON Schema's `minLength`/`maxLength` count it: in code points. */
function lengthInCodePoints(value: string): number {
  let length = 0;
  for (const _ of value) length++;
  return length;
}

function hasControlCharacter(value: string): boolean {
  for (let i = 0; i < value.length; i++) {
    const unit = value.charCodeAt(i);
    if (unit <= 0x1f || unit === 0x7f) return true;
  }
  return false;
}

function parseLimit(raw: string | null): number {
  if (raw === null) return DEFAULT_PAGE_SIZE;
  const limit = /^[0-9]{1,3}$/.test(raw) ? Number(raw) : NaN;
  if (!(limit >= 1 && limit <= MAX_PAGE_SIZE)) {
    throw new HttpProblem(400, `The query parameter limit must be an integer from 1 to ${MAX_PAGE_SIZE}.`);
  }
  return limit;
}

/** The cursor is the base64url of the last id of the previous page; null means the first page. */
function parseCursor(raw: string | null): string {
  if (raw === null) return '';
  const id = CURSOR.test(raw) ? Buffer.from(raw, 'base64url').toString('latin1') : '';
  if (!PATIENT_ID.test(id)) throw new HttpProblem(400, 'The query parameter cursor is not valid.');
  return id;
}

function parsePatientId(raw: string | undefined): string {
  if (raw === undefined || !PATIENT_ID.test(raw)) throw new HttpProblem(400, 'The patient id is not valid.');
  return raw;
}

interface PatientFields {
  givenName?: string;
  familyName?: string;
  birthDate?: string;
  email?: string | null;
  nationalId?: string;
}

const FIELDS = ['givenName', 'familyName', 'birthDate', 'email', 'nationalId'] as const;
const REQUIRED_ON_CREATE = ['givenName', 'familyName', 'birthDate', 'nationalId'] as const;

/** Checks a `PatientInput` (create) or a `PatientPatch` (patch) body. */
function parsePatientFields(body: unknown, mode: 'create' | 'patch'): PatientFields {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new HttpProblem(400, 'The body must be a JSON object.');
  }
  const fields: Record<string, unknown> = { ...body };
  const keys = Object.keys(fields);
  if (keys.some((key) => !(FIELDS as readonly string[]).includes(key))) {
    throw new HttpProblem(400, 'The body has a member that is not allowed.');
  }
  if (mode === 'create') {
    for (const key of REQUIRED_ON_CREATE) {
      if (!(key in fields)) throw new HttpProblem(400, `The body is missing ${key}.`);
    }
  } else if (keys.length === 0) {
    throw new HttpProblem(400, 'The body must change at least one member.');
  }

  const result: PatientFields = {};
  for (const key of ['givenName', 'familyName'] as const) {
    const value = fields[key];
    if (value === undefined) continue;
    if (typeof value !== 'string' || lengthInCodePoints(value) > 64 || !PERSON_NAME.test(value)) {
      throw new HttpProblem(400, `The member ${key} must be a name of 1 to 64 letters.`);
    }
    result[key] = value;
  }
  if (fields.birthDate !== undefined) {
    if (!isBirthDate(fields.birthDate)) {
      throw new HttpProblem(
        400,
        'The member birthDate must be a date (YYYY-MM-DD) from 1900-01-01 to today.',
      );
    }
    result.birthDate = fields.birthDate;
  }
  if (fields.email !== undefined) {
    const email = fields.email;
    if (email === null && mode === 'patch') result.email = null;
    else if (typeof email === 'string' && email.length <= 254 && EMAIL.test(email)) result.email = email;
    else throw new HttpProblem(400, 'The member email must be an email address.');
  }
  if (fields.nationalId !== undefined) {
    if (typeof fields.nationalId !== 'string' || !NATIONAL_ID.test(fields.nationalId)) {
      throw new HttpProblem(400, 'The member nationalId must be 6 to 20 capital letters, digits or hyphens.');
    }
    result.nationalId = fields.nationalId;
  }
  return result;
}

function isBirthDate(value: unknown): value is string {
  if (typeof value !== 'string') return false;
  const match = DATE.exec(value);
  if (!match) return false;
  const [year, month, day] = [Number(match[1]), Number(match[2]), Number(match[3])];
  const date = new Date(Date.UTC(year, month - 1, day));
  const isCalendarDate = date.getUTCMonth() === month - 1 && date.getUTCDate() === day;
  return isCalendarDate && year >= 1900 && date.getTime() <= Date.now();
}

function required(value: string | undefined): string {
  if (value === undefined) throw new HttpProblem(400, 'The body is missing a required member.');
  return value;
}

/** Reads a JSON body of at most 64 KiB in one of the accepted media types. */
async function readJson(req: IncomingMessage, accepted: readonly string[]): Promise<unknown> {
  const [mediaType = '', ...parameters] = (req.headers['content-type'] ?? '').split(';');
  const charset = parameters.map((p) => p.trim().toLowerCase()).find((p) => p.startsWith('charset='));
  if (!accepted.includes(mediaType.trim().toLowerCase()) || (charset && charset !== 'charset=utf-8')) {
    throw new HttpProblem(415, `The body must be ${accepted.join(' or ')}.`);
  }
  const tooLarge = new HttpProblem(413, `The body must not be larger than ${MAX_BODY_BYTES} bytes.`, {
    connection: 'close',
  });
  if (Number(req.headers['content-length'] ?? 0) > MAX_BODY_BYTES) throw tooLarge;

  // Listeners rather than `for await`: leaving an async iterator early would destroy the
  // socket before the 413 could be sent.
  const body = await new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        req.off('data', onData);
        req.resume(); // discard the rest; the 413 closes the connection
        reject(tooLarge);
      } else chunks.push(chunk);
    };
    req.on('data', onData);
    req.once('end', () => resolve(Buffer.concat(chunks)));
    req.once('error', reject);
  });
  try {
    const text = new TextDecoder('utf-8', { fatal: true }).decode(body);
    return JSON.parse(text) as unknown;
  } catch {
    throw new HttpProblem(400, 'The body is not valid UTF-8 JSON.');
  }
}

// ---------------------------------------------------------------------------------------------
// Responses

function send(
  res: ServerResponse,
  status: number,
  contentType: string,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const payload = JSON.stringify(body);
  res.writeHead(status, {
    ...headers,
    'content-type': contentType,
    'content-length': Buffer.byteLength(payload),
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
  });
  res.end(payload);
}

function sendProblem(res: ServerResponse, problem: HttpProblem): void {
  const body = {
    type: 'about:blank',
    title: STATUS_CODES[problem.status] ?? 'Error',
    status: problem.status,
    detail: problem.detail,
  };
  send(res, problem.status, 'application/problem+json', body, problem.headers);
}

// ---------------------------------------------------------------------------------------------
// Storage: an in-memory SQLite database, one prepared statement per query.

interface PatientRow {
  id: string;
  givenName: string;
  familyName: string;
  birthDate: string;
  email: string | null;
  nationalId: string;
  createdAt: string;
  updatedAt: string;
}
/** An update: `nationalId: null` keeps the stored one. */
type PatientUpdate = Omit<PatientRow, 'nationalId' | 'createdAt'> & { nationalId: string | null };

interface Store {
  count(): number;
  page(afterId: string, limit: number): Patient[];
  search(name: string, limit: number): Patient[];
  get(id: string): Patient | undefined;
  insert(row: PatientRow): Patient;
  update(row: PatientUpdate): Patient | undefined;
  close(): void;
}

// A constant list of columns, never request data. It leaves out national_id on purpose.
const PUBLIC_COLUMNS = `id, given_name AS givenName, family_name AS familyName, birth_date AS birthDate,
  email, created_at AS createdAt, updated_at AS updatedAt`;

function openStore(seed: number): Store {
  const db = new DatabaseSync(':memory:');
  db.exec(`CREATE TABLE patients (
    id          TEXT PRIMARY KEY,
    given_name  TEXT NOT NULL,
    family_name TEXT NOT NULL,
    birth_date  TEXT NOT NULL,
    email       TEXT,
    national_id TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
  ) STRICT`);

  const count = db.prepare('SELECT count(*) AS n FROM patients');
  const page = db.prepare(`SELECT ${PUBLIC_COLUMNS} FROM patients WHERE id > ? ORDER BY id LIMIT ?`);
  const search = db.prepare(
    `SELECT ${PUBLIC_COLUMNS} FROM patients
     WHERE given_name LIKE ? ESCAPE '\\' OR family_name LIKE ? ESCAPE '\\'
     ORDER BY family_name, given_name, id LIMIT ?`,
  );
  const byId = db.prepare(`SELECT ${PUBLIC_COLUMNS} FROM patients WHERE id = ?`);
  const insert = db.prepare(
    `INSERT INTO patients (id, given_name, family_name, birth_date, email, national_id, created_at, updated_at)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
  );
  const update = db.prepare(
    `UPDATE patients SET given_name = ?, family_name = ?, birth_date = ?, email = ?,
       national_id = coalesce(?, national_id), updated_at = ?
     WHERE id = ?`,
  );

  const store: Store = {
    count: () => Number(count.get()?.n ?? 0),
    page: (afterId, limit) => page.all(afterId, limit).map(toPatient),
    search: (name, limit) => {
      const pattern = `%${name.replace(/[\\%_]/g, '\\$&')}%`;
      return search.all(pattern, pattern, limit).map(toPatient);
    },
    get: (id) => {
      const row = byId.get(id);
      return row ? toPatient(row) : undefined;
    },
    insert: (p) => {
      insert.run(
        p.id,
        p.givenName,
        p.familyName,
        p.birthDate,
        p.email,
        p.nationalId,
        p.createdAt,
        p.updatedAt,
      );
      const patient = store.get(p.id);
      if (!patient) throw new Error('the inserted patient is missing');
      return patient;
    },
    update: (p) => {
      const { changes } = update.run(
        p.givenName,
        p.familyName,
        p.birthDate,
        p.email,
        p.nationalId,
        p.updatedAt,
        p.id,
      );
      return changes === 0 ? undefined : store.get(p.id);
    },
    close: () => {
      if (db.isOpen) db.close();
    },
  };

  for (const row of fakePatients(seed, SEED_PATIENT_COUNT)) store.insert(row);
  return store;
}

function toPatient(row: Record<string, SQLOutputValue>): Patient {
  const text = (key: string): string => {
    const value = row[key];
    if (typeof value !== 'string') throw new Error(`patients.${key} is not text`);
    return value;
  };
  return {
    id: text('id'),
    givenName: text('givenName'),
    familyName: text('familyName'),
    birthDate: text('birthDate'),
    ...(row.email === null ? {} : { email: text('email') }),
    createdAt: text('createdAt'),
    updatedAt: text('updatedAt'),
  };
}

// ---------------------------------------------------------------------------------------------
// Fake data

/** `pat_` and 12 characters from [a-z0-9], each drawn with `nextIndex(36)`. */
function newPatientId(nextIndex: (bound: number) => number): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  let id = 'pat_';
  for (let i = 0; i < 12; i++) id += alphabet[nextIndex(alphabet.length)] ?? '';
  return id;
}

// prettier-ignore
const GIVEN_NAMES = [
  'Amara', 'Björn', 'Chloé', 'Dmitri', 'Elif', 'Farah', 'Giulia', 'Hiroshi', 'Ingrid', 'José',
  'Kwame', 'Leila', 'Mateo', 'Niamh', 'Oluwaseun', 'Priya', 'Quentin', 'Rosa', 'Siobhan', 'Tomás',
  'Ugne', 'Valentina', 'Wei', 'Ximena', 'Yusuf', 'Zofia', 'Anne-Marie', 'Jean Luc',
];
// prettier-ignore
const FAMILY_NAMES = [
  "O'Brien", 'García', 'Müller', 'Nguyen', 'Okafor', 'Kowalski', 'Rossi', 'Tanaka', 'Haddad', 'Silva',
  'Johansson', 'Dubois', 'Novak', 'Patel', 'Smith', 'van der Berg', 'Ivanova', 'Kim', 'Mensah', 'Costa',
];

/**
 * Deterministic fake patients: ids, names and dates come from a small PRNG seeded with `seed`,
 * so documentation and tests can rely on them. (Ids of records created through the API come
 * from `crypto.randomInt`.)
 */
function fakePatients(seed: number, count: number): PatientRow[] {
  const next = mulberry32(seed);
  const nextIndex = (bound: number): number => Math.floor(next() * bound);
  const pick = (list: readonly string[]): string => list[nextIndex(list.length)] ?? '';
  const rows: PatientRow[] = [];
  for (let i = 0; i < count; i++) {
    const givenName = pick(GIVEN_NAMES);
    const familyName = pick(FAMILY_NAMES);
    const birthDate = new Date(Date.UTC(1940, 0, 1) + nextIndex(70 * 365) * 86_400_000)
      .toISOString()
      .slice(0, 10);
    const local = `${givenName}.${familyName}`
      .normalize('NFD')
      .replace(/[^A-Za-z.]/g, '')
      .toLowerCase();
    const createdAt = new Date(Date.UTC(2025, 0, 1) + i * 3_600_000).toISOString();
    rows.push({
      id: newPatientId(nextIndex),
      givenName,
      familyName,
      birthDate,
      email: nextIndex(3) === 0 ? null : `${local}@example.org`,
      nationalId: `${String.fromCharCode(65 + nextIndex(26), 65 + nextIndex(26))}-${String(nextIndex(1e6)).padStart(6, '0')}`,
      createdAt,
      updatedAt: createdAt,
    });
  }
  return rows;
}

/** A tiny, well-known 32-bit PRNG (fake data only; never for ids of real records or secrets). */
function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
