/**
 * `portcullis probe`: an active test of a running API from its OpenAPI contract — ours or anyone's.
 * It sends a bounded number of requests, at a bounded rate, to the one origin it was given, and
 * reports each weakness it can demonstrate with the operation, the request and the evidence:
 *
 * - authentication bypass: a protected operation answering 2xx without a credential, with an
 *   altered token, an `alg: none` token or a token signed by a key nobody trusts;
 * - object-level authorization: the caller's token reaching another subject's object
 *   (`--foreign-id name=value` names one);
 * - undeclared methods and paths answering 2xx;
 * - injection payloads in string parameters answering 5xx, or reflected unescaped in HTML;
 * - mass assignment: an undeclared or read-only property accepted in a request body;
 * - an oversized body (2 MiB) or a malformed JSON body accepted, or answered with 5xx;
 * - rate-limit evasion: once a limit answers 429, a forged `X-Forwarded-For` getting through;
 * - security headers missing (HSTS, nosniff, CSP or frame protection), a `Server` version;
 * - TLS: a protocol older than 1.2 accepted.
 *
 * Nothing is sent anywhere but the base URL's origin; redirects are not followed.
 */
import { createPrivateKey, generateKeyPairSync, sign } from 'node:crypto';
import { connect as tlsConnect } from 'node:tls';
import { Agent, request } from 'undici';
import { loadOpenApi } from '../gateway/openapi.ts';
import type { OpenApiOperation } from '../gateway/openapi.ts';

export type Severity = 'high' | 'medium' | 'low';

export interface ProbeFinding {
  readonly check: string;
  readonly severity: Severity;
  /** `GET /patients/{patientId}`, or `(origin)` for checks of the whole server. */
  readonly operation: string;
  /** What was sent: method, path and what was special about it (never a whole token). */
  readonly request: string;
  /** What came back that shows the weakness. */
  readonly evidence: string;
}

export interface ProbeOptions {
  /** The API's base URL (scheme, host, port and base path), given explicitly by the user. */
  readonly baseUrl: string;
  readonly openapi: string;
  /** A valid access token for the API (optional: without it, checks that need one are skipped). */
  readonly token?: string | undefined;
  /** Path parameter values of another subject's objects (`patientId` → `pat_…`). */
  readonly foreignIds?: Readonly<Record<string, string>>;
  /** PEM CA to trust for the target's certificate. */
  readonly ca?: string | undefined;
  /** Requests at most (default 400) and per second at most (default 50). */
  readonly maxRequests?: number;
  readonly ratePerSecond?: number;
  /** Called after each request (progress). */
  readonly onRequest?: (sent: number, max: number) => void;
}

export interface ProbeReport {
  readonly target: string;
  readonly requests: number;
  readonly findings: readonly ProbeFinding[];
  /** Checks that could not run, with why (e.g. no token given). */
  readonly skipped: readonly string[];
}

const INJECTIONS = [
  "' OR '1'='1",
  '"><script>alert(1)</script>',
  '../../../../etc/passwd',
  '${jndi:ldap://127.0.0.1/a}',
  '{"$gt":""}',
  '; cat /etc/passwd',
];
const UNDECLARED_PATHS = [
  '/.env',
  '/.git/config',
  '/admin',
  '/actuator/env',
  '/debug/vars',
  '/server-status',
];
const ALL_METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE'];

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A value a schema accepts, from its examples, enum, default or type. */
function sampleValue(schema: unknown): unknown {
  if (!isObject(schema)) return 'x';
  if (Array.isArray(schema.examples) && schema.examples.length > 0) return schema.examples[0];
  if (schema.example !== undefined) return schema.example;
  if (Array.isArray(schema.enum) && schema.enum.length > 0) return schema.enum[0];
  if (schema.const !== undefined) return schema.const;
  if (schema.default !== undefined) return schema.default;
  const type: unknown = Array.isArray(schema.type) ? (schema.type as unknown[])[0] : schema.type;
  if (type === 'integer' || type === 'number') return typeof schema.minimum === 'number' ? schema.minimum : 1;
  if (type === 'boolean') return true;
  if (type === 'array') return [];
  if (type === 'object' || isObject(schema.properties)) return sampleObject(schema);
  if (schema.format === 'date') return '1990-01-01';
  if (schema.format === 'email') return 'probe@example.com';
  return 'probe';
}

function sampleObject(schema: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const props = isObject(schema.properties) ? schema.properties : {};
  const required = Array.isArray(schema.required) ? (schema.required as unknown[]) : Object.keys(props);
  for (const name of required) {
    if (typeof name !== 'string') continue;
    const sub = props[name];
    if (isObject(sub) && sub.readOnly === true) continue;
    out[name] = sampleValue(sub);
  }
  return out;
}

function jsonBodySchema(op: OpenApiOperation): Record<string, unknown> | undefined {
  const body = op.definition.requestBody;
  if (!isObject(body) || !isObject(body.content)) return undefined;
  const json = body.content['application/json'];
  return isObject(json) && isObject(json.schema) ? json.schema : undefined;
}

const b64url = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');

/** Tokens that must never be accepted: altered, unsigned, and signed by an unknown key. */
function forgedTokens(token: string | undefined): { name: string; token: string }[] {
  const claims = {
    sub: 'probe',
    aud: 'probe',
    iss: 'https://probe.invalid',
    exp: Math.floor(Date.now() / 1000) + 300,
  };
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const header = { alg: 'ES256', typ: 'at+jwt', kid: 'probe' };
  let payload = b64url(claims);
  if (token !== undefined && token.split('.').length === 3) payload = token.split('.')[1] ?? payload;
  const input = `${b64url(header)}.${payload}`;
  const foreign = `${input}.${sign('sha256', Buffer.from(input), { key: createPrivateKey(privateKey.export({ format: 'pem', type: 'pkcs8' })), dsaEncoding: 'ieee-p1363' }).toString('base64url')}`;
  const out = [
    { name: 'alg none', token: `${b64url({ alg: 'none', typ: 'at+jwt' })}.${payload}.` },
    { name: 'signed by an unknown key', token: foreign },
  ];
  if (token !== undefined) {
    const last = token.at(-2) === 'A' ? 'B' : 'A';
    out.push({ name: 'altered signature', token: `${token.slice(0, -2)}${last}${token.slice(-1)}` });
  }
  return out;
}

export async function probe(options: ProbeOptions): Promise<ProbeReport> {
  const base = new URL(options.baseUrl);
  if (base.protocol !== 'https:' && base.protocol !== 'http:')
    throw new Error('the base URL must be http(s)://');
  const basePath = base.pathname.replace(/\/$/, '');
  const document = await loadOpenApi(options.openapi);
  const maxRequests = options.maxRequests ?? 400;
  const interval = 1000 / (options.ratePerSecond ?? 50);
  const agent = new Agent({ connect: { ca: options.ca, rejectUnauthorized: true } });
  const findings: ProbeFinding[] = [];
  const skipped: string[] = [];
  let sent = 0;
  let last = 0;

  const send = async (
    method: string,
    path: string,
    init: { headers?: Record<string, string>; body?: string | Buffer } = {},
  ): Promise<{ status: number; headers: Record<string, string>; body: string } | undefined> => {
    if (sent >= maxRequests) return undefined;
    const wait = last + interval - Date.now();
    if (wait > 0) await new Promise((ok) => setTimeout(ok, wait));
    last = Date.now();
    sent++;
    options.onRequest?.(sent, maxRequests);
    const url = new URL(base.origin);
    url.pathname = basePath + (path.split('?')[0] ?? '');
    url.search = path.includes('?') ? path.slice(path.indexOf('?')) : '';
    try {
      const res = await request(url, {
        method,
        headers: init.headers ?? {},
        body: init.body ?? null,
        dispatcher: agent,
        maxRedirections: 0,
      } as Parameters<typeof request>[1]);
      const text = (await res.body.text()).slice(0, 4096);
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(res.headers))
        headers[k] = Array.isArray(v) ? v.join(', ') : (v ?? '');
      return { status: res.statusCode, headers, body: text };
    } catch (err) {
      return { status: 0, headers: {}, body: (err as Error).message };
    }
  };
  const bearer = (t: string) => ({ authorization: `Bearer ${t}` });
  const fill = (op: OpenApiOperation, ids: Readonly<Record<string, string>> = {}) =>
    op.path.replace(/\{([^}]+)\}/g, (_m, name: string) => {
      if (ids[name] !== undefined) return encodeURIComponent(ids[name]);
      const p = op.parameters.find((x) => x.in === 'path' && x.name === name);
      return encodeURIComponent(String(sampleValue(p?.schema)));
    });
  const label = (op: OpenApiOperation) => `${op.method} ${op.path}`;
  const isProtected = (op: OpenApiOperation) =>
    op.security.length > 0 && !op.security.some((r) => Object.keys(r).length === 0);
  const ok = (status: number) => status >= 200 && status < 300;

  try {
    // Security headers and the Server header, from the first declared public or protected GET.
    const probeOp = document.operations.find((op) => op.method === 'GET' && !op.path.includes('{'));
    if (probeOp !== undefined) {
      const res = await send('GET', fill(probeOp), options.token ? { headers: bearer(options.token) } : {});
      if (res !== undefined && res.status !== 0) {
        const h = res.headers;
        const missing: string[] = [];
        if (base.protocol === 'https:' && !/max-age=\d+/.test(h['strict-transport-security'] ?? ''))
          missing.push('Strict-Transport-Security');
        if ((h['x-content-type-options'] ?? '').toLowerCase() !== 'nosniff')
          missing.push('X-Content-Type-Options: nosniff');
        if (h['content-security-policy'] === undefined && h['x-frame-options'] === undefined)
          missing.push('Content-Security-Policy or X-Frame-Options');
        if (missing.length > 0) {
          findings.push({
            check: 'security-headers',
            severity: 'medium',
            operation: label(probeOp),
            request: `GET ${fill(probeOp)}`,
            evidence: `missing: ${missing.join(', ')}`,
          });
        }
        if (/\d/.test(h.server ?? '')) {
          findings.push({
            check: 'server-version',
            severity: 'low',
            operation: label(probeOp),
            request: `GET ${fill(probeOp)}`,
            evidence: `Server: ${h.server ?? ''}`,
          });
        }
      }
    }

    for (const op of document.operations) {
      const path = fill(op);
      // Authentication bypass.
      if (isProtected(op)) {
        const none = await send(op.method, path);
        if (none !== undefined && ok(none.status)) {
          findings.push({
            check: 'auth-bypass',
            severity: 'high',
            operation: label(op),
            request: `${op.method} ${path} without a credential`,
            evidence: `HTTP ${String(none.status)}`,
          });
        }
        for (const forged of forgedTokens(options.token)) {
          const res = await send(op.method, path, { headers: bearer(forged.token) });
          if (res !== undefined && ok(res.status)) {
            findings.push({
              check: 'auth-bypass',
              severity: 'high',
              operation: label(op),
              request: `${op.method} ${path} with a token: ${forged.name}`,
              evidence: `HTTP ${String(res.status)}`,
            });
          }
        }
      }
      const auth = options.token === undefined ? {} : bearer(options.token);
      // Object-level authorization with another subject's ids.
      const params = [...op.path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1] ?? '');
      const foreign = params.filter((p) => options.foreignIds?.[p] !== undefined);
      if (foreign.length > 0 && options.token !== undefined && op.method === 'GET') {
        const foreignPath = fill(op, options.foreignIds);
        const res = await send(op.method, foreignPath, { headers: auth });
        if (res !== undefined && ok(res.status)) {
          findings.push({
            check: 'object-level-authorization',
            severity: 'high',
            operation: label(op),
            request: `${op.method} ${foreignPath} with the caller's token`,
            evidence: `HTTP ${String(res.status)}: another subject's object was returned`,
          });
        }
      }
      // Injection in string query parameters.
      for (const p of op.parameters.filter((x) => x.in === 'query').slice(0, 2)) {
        for (const payload of INJECTIONS.slice(0, 3)) {
          const q = `${path}?${encodeURIComponent(String(p.name))}=${encodeURIComponent(payload)}`;
          const res = await send(op.method === 'GET' ? 'GET' : op.method, q, { headers: auth });
          if (res === undefined) continue;
          if (res.status >= 500) {
            findings.push({
              check: 'injection',
              severity: 'high',
              operation: label(op),
              request: `${op.method} ${q}`,
              evidence: `HTTP ${String(res.status)} on an injection payload`,
            });
          } else if (/text\/html/.test(res.headers['content-type'] ?? '') && res.body.includes(payload)) {
            findings.push({
              check: 'injection',
              severity: 'high',
              operation: label(op),
              request: `${op.method} ${q}`,
              evidence: 'the payload is reflected unescaped in an HTML answer',
            });
          }
        }
      }
      // Mass assignment, oversized and malformed bodies.
      const schema = jsonBodySchema(op);
      if (schema !== undefined) {
        const json = { 'content-type': 'application/json', ...auth };
        if (options.token === undefined && isProtected(op)) {
          skipped.push(`${label(op)}: body checks need --token`);
        } else {
          const props = isObject(schema.properties) ? schema.properties : {};
          const readOnly = Object.entries(props).find(([, s]) => isObject(s) && s.readOnly === true)?.[0];
          const body = {
            ...sampleObject(schema),
            isAdmin: true,
            role: 'admin',
            ...(readOnly ? { [readOnly]: 'probe-set' } : {}),
          };
          const mass = await send(op.method, path, { headers: json, body: JSON.stringify(body) });
          if (mass !== undefined && ok(mass.status)) {
            findings.push({
              check: 'mass-assignment',
              severity: 'high',
              operation: label(op),
              request: `${op.method} ${path} with undeclared isAdmin/role${readOnly ? ` and read-only ${readOnly}` : ''}`,
              evidence: `HTTP ${String(mass.status)}: accepted`,
            });
          }
          const big = await send(op.method, path, {
            headers: json,
            body: Buffer.alloc(2 * 1024 * 1024, 0x20),
          });
          if (big !== undefined && (ok(big.status) || big.status >= 500)) {
            findings.push({
              check: 'oversized-body',
              severity: ok(big.status) ? 'high' : 'medium',
              operation: label(op),
              request: `${op.method} ${path} with a 2 MiB body`,
              evidence: `HTTP ${String(big.status)}`,
            });
          }
          const bad = await send(op.method, path, { headers: json, body: '{"a":' });
          if (bad !== undefined && (ok(bad.status) || bad.status >= 500)) {
            findings.push({
              check: 'malformed-body',
              severity: 'medium',
              operation: label(op),
              request: `${op.method} ${path} with malformed JSON`,
              evidence: `HTTP ${String(bad.status)}`,
            });
          }
        }
      }
    }

    // Undeclared methods on declared paths, and undeclared paths.
    const byPath = new Map<string, Set<string>>();
    for (const op of document.operations)
      byPath.set(op.path, (byPath.get(op.path) ?? new Set()).add(op.method));
    for (const [template, methods] of byPath) {
      const op = document.operations.find((o) => o.path === template);
      if (op === undefined) continue;
      for (const method of ALL_METHODS.filter((m) => !methods.has(m)).slice(0, 2)) {
        const res = await send(
          method,
          fill(op),
          options.token === undefined ? {} : { headers: bearer(options.token) },
        );
        if (res !== undefined && ok(res.status)) {
          findings.push({
            check: 'undeclared-method',
            severity: 'medium',
            operation: label(op),
            request: `${method} ${fill(op)}`,
            evidence: `HTTP ${String(res.status)} for a method the contract does not declare`,
          });
        }
      }
    }
    for (const path of UNDECLARED_PATHS) {
      const res = await send('GET', path);
      if (res !== undefined && ok(res.status)) {
        findings.push({
          check: 'undeclared-path',
          severity: 'medium',
          operation: '(undeclared)',
          request: `GET ${path}`,
          evidence: `HTTP ${String(res.status)}`,
        });
      }
    }

    // Rate-limit evasion: find a limit on the first public GET, then forge X-Forwarded-For.
    const limited = document.operations.find((op) => op.method === 'GET' && !op.path.includes('{'));
    if (limited !== undefined) {
      const path = fill(limited);
      const headers = options.token === undefined ? {} : bearer(options.token);
      let limitedAt: number | undefined;
      const budget = Math.min(150, Math.max(0, maxRequests - sent - 5));
      // This check needs a burst: ten at a time, still within the request budget.
      const saved = last;
      for (let i = 0; i < budget && limitedAt === undefined; i += 10) {
        last = 0;
        const batch = await Promise.all(
          Array.from({ length: Math.min(10, budget - i) }, () => {
            last = 0;
            return send('GET', path, { headers });
          }),
        );
        if (batch.some((res) => res?.status === 429)) limitedAt = i + batch.length;
      }
      last = saved;
      if (limitedAt === undefined) {
        findings.push({
          check: 'rate-limit',
          severity: 'medium',
          operation: label(limited),
          request: `${String(budget)} × GET ${path} in a burst`,
          evidence: 'no 429 answer',
        });
      } else {
        const forged = await send('GET', path, {
          headers: {
            ...headers,
            'x-forwarded-for': `203.0.113.${String(1 + (sent % 250))}`,
            forwarded: 'for=198.51.100.7',
          },
        });
        if (forged !== undefined && ok(forged.status)) {
          findings.push({
            check: 'rate-limit-evasion',
            severity: 'high',
            operation: label(limited),
            request: `GET ${path} with a forged X-Forwarded-For after a 429`,
            evidence: `HTTP ${String(forged.status)}: the limit follows a header the client controls`,
          });
        }
      }
    }
  } finally {
    await agent.close();
  }

  // TLS below 1.2 (one handshake, not counted as an HTTP request).
  if (base.protocol === 'https:') {
    const accepted = await new Promise<string | undefined>((done) => {
      const socket = tlsConnect({
        host: base.hostname,
        port: Number(base.port || 443),
        servername: /^[\d.]+$/.test(base.hostname) ? undefined : base.hostname,
        maxVersion: 'TLSv1.1',
        minVersion: 'TLSv1',
        ciphers: 'DEFAULT@SECLEVEL=0',
        rejectUnauthorized: false,
      });
      socket.setTimeout(5000, () => socket.destroy());
      socket.once('secureConnect', () => {
        done(socket.getProtocol() ?? 'old TLS');
        socket.destroy();
      });
      socket.once('error', () => done(undefined));
      socket.once('close', () => done(undefined));
    });
    if (accepted !== undefined) {
      findings.push({
        check: 'tls-version',
        severity: 'high',
        operation: '(origin)',
        request: `TLS handshake offering at most TLS 1.1 to ${base.host}`,
        evidence: `accepted: ${accepted}`,
      });
    }
  }
  if (options.token === undefined)
    skipped.push('object-level authorization and authenticated checks: pass --token');
  return { target: base.href, requests: sent, findings, skipped };
}
