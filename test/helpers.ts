/**
 * Test harness: a recording upstream, Portcullis started in-process on port 0 with a temporary
 * data directory, captured JSON logs, and clients that send bytes exactly as written (so the
 * gateway, not the client library, is what normalises or refuses a path).
 */
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { IncomingHttpHeaders, Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { connect } from 'node:tls';
import { Agent, request as undiciRequest } from 'undici';
import { stringify } from 'yaml';
import { createLogger } from '../src/log/index.ts';
import { startPortcullis } from '../src/server/lifecycle.ts';
import type { Portcullis } from '../src/server/lifecycle.ts';

export interface Received {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
}

export interface RecordingUpstream {
  url: string;
  received: Received[];
  /** Replaces the response for the next requests. */
  respond: (handler: UpstreamHandler) => void;
  close(): Promise<void>;
}

export type UpstreamHandler = (req: Received) => {
  status: number;
  headers?: Record<string, string | string[]>;
  body?: string;
  delayMs?: number;
};

const defaultHandler: UpstreamHandler = (req) => ({
  status: 200,
  headers: { 'content-type': 'application/json', server: 'upstream/1.2.3', 'x-powered-by': 'Express' },
  body: JSON.stringify({ ok: true, method: req.method, url: req.url }),
});

export async function startRecordingUpstream(): Promise<RecordingUpstream> {
  const received: Received[] = [];
  let handler = defaultHandler;
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const r: Received = {
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        body: Buffer.concat(chunks).toString('utf8'),
      };
      received.push(r);
      const out = handler(r);
      const send = () => {
        if (res.destroyed) return;
        res.writeHead(out.status, out.headers ?? {});
        res.end(out.body ?? '');
      };
      if (out.delayMs) setTimeout(send, out.delayMs);
      else send();
    });
  });
  server.keepAliveTimeout = 1000;
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${String(port)}`,
    received,
    respond: (h) => {
      handler = h;
    },
    close: () =>
      new Promise<void>((ok) => {
        server.close(() => ok());
        server.closeAllConnections();
      }),
  };
}

/** A minimal OpenAPI 3.1 document: a public item API plus a protected operation. */
export const TEST_OPENAPI = {
  openapi: '3.1.0',
  info: { title: 'test', version: '1' },
  components: {
    securitySchemes: {
      oauth: {
        type: 'oauth2',
        flows: { clientCredentials: { tokenUrl: 'https://localhost/token', scopes: { read: 'read' } } },
      },
    },
  },
  paths: {
    '/items': {
      get: { operationId: 'listItems', responses: { '200': { description: 'ok' } } },
      post: {
        operationId: 'createItem',
        requestBody: {
          content: {
            'application/json': { schema: { type: 'object', properties: { name: { type: 'string' } } } },
          },
        },
        responses: { '200': { description: 'ok' }, '201': { description: 'created' } },
      },
    },
    '/items/search': { get: { operationId: 'searchItems', responses: { '200': { description: 'ok' } } } },
    '/items/{id}': {
      parameters: [{ name: 'id', in: 'path', required: true, schema: { type: 'string' } }],
      get: {
        operationId: 'getItem',
        parameters: [
          { name: 'x', in: 'query', schema: { type: 'string' } },
          { name: 'y', in: 'query', schema: { type: 'string' } },
        ],
        responses: { '200': { description: 'ok' } },
      },
      delete: { operationId: 'deleteItem', responses: { '204': { description: 'gone' } } },
    },
    '/private': {
      get: {
        operationId: 'private',
        security: [{ oauth: ['read'] }],
        responses: { '200': { description: 'ok' } },
      },
    },
  },
};

const GENEROUS = { burst: { points: 100_000, seconds: 1 }, sustained: { points: 1_000_000, seconds: 60 } };

/** Limits high enough that functional tests never meet them (still enforced, never off). */
export const FUNCTIONAL_TEST_LIMITS = {
  ip: GENEROUS,
  client: GENEROUS,
  apiKey: GENEROUS,
  user: GENEROUS,
  token: GENEROUS,
  login: GENEROUS,
};

export interface TestGateway {
  p: Portcullis;
  dir: string;
  configFile: string;
  logs: () => string;
  /** Parsed JSON log lines. */
  logLines: () => Record<string, unknown>[];
  /** Fetch through the gateway over HTTPS, trusting the development CA. */
  request: (
    path: string,
    init?: RequestInit,
  ) => Promise<{ status: number; headers: Record<string, string>; body: string }>;
  close(): Promise<void>;
}

export async function tempDir(prefix = 'portcullis-test-'): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix));
}

/**
 * Starts Portcullis with a config built from `config` (YAML-serialised into a temp dir, with the
 * test OpenAPI document beside it unless `openapi` is given).
 */
export async function startTestGateway(
  config: Record<string, unknown>,
  options: { openapi?: unknown; dir?: string } = {},
): Promise<TestGateway> {
  const dir = options.dir ?? (await tempDir());
  await writeFile(join(dir, 'api.yaml'), stringify(options.openapi ?? TEST_OPENAPI));
  const configFile = join(dir, 'portcullis.yaml');
  const full = {
    gateway: { port: 0, ...(config.gateway as object | undefined) },
    admin: { port: 0, ...(config.admin as object | undefined) },
    // Functional tests send bursts from one address; the rate-limit tests set their own limits.
    rateLimits: { ...FUNCTIONAL_TEST_LIMITS, ...(config.rateLimits as object | undefined) },
    ...Object.fromEntries(
      Object.entries(config).filter(([k]) => k !== 'gateway' && k !== 'admin' && k !== 'rateLimits'),
    ),
  };
  await writeFile(configFile, stringify(full));
  let captured = '';
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      captured += chunk.toString('utf8');
      cb();
    },
  });
  const logger = createLogger('debug', sink);
  const p = await startPortcullis({ configFile, dataDir: join(dir, 'data'), logger });
  const ca = p.tls.source === 'development' ? p.tls.caCertPem : undefined;
  const agent = new Agent({ connect: { ca, servername: 'localhost' }, allowH2: false });
  return {
    p,
    dir,
    configFile,
    logs: () => captured,
    logLines: () =>
      captured
        .split('\n')
        .filter((l) => l.trim() !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>),
    request: async (path, init = {}) => {
      const res = await undiciRequest(p.gatewayUrl + path, {
        method: (init.method ?? 'GET') as 'GET',
        headers: (init.headers ?? {}) as Record<string, string>,
        body: (init.body ?? null) as string | null,
        dispatcher: agent,
      });
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(res.headers))
        if (v !== undefined) headers[k] = Array.isArray(v) ? v.join(', ') : v;
      return { status: res.statusCode, headers, body: await res.body.text() };
    },
    close: async () => {
      await p.close();
      await agent.close();
      if (options.dir === undefined) await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Sends one HTTP/1.1 request over TLS with the request line exactly as given, and returns the raw
 * response text. Clients like curl or fetch normalise `..` and escapes themselves; this does not.
 */
export async function rawHttps(
  url: string,
  ca: string | undefined,
  requestText: string,
  timeoutMs = 10_000,
): Promise<string> {
  const { hostname, port } = new URL(url);
  const socket = connect({
    host: hostname,
    port: Number(port),
    ca,
    servername: 'localhost',
    ALPNProtocols: ['http/1.1'],
  });
  await once(socket, 'secureConnect');
  socket.write(requestText);
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  const timer = setTimeout(() => socket.destroy(), timeoutMs);
  await Promise.race([once(socket, 'end'), once(socket, 'close')]).catch(() => undefined);
  clearTimeout(timer);
  socket.destroy();
  return Buffer.concat(chunks).toString('utf8');
}

/** Status code of a raw HTTP/1.1 response. */
export function statusOf(raw: string): number {
  const m = /^HTTP\/1\.1 (\d{3})/.exec(raw);
  return m ? Number(m[1]) : 0;
}

export function bodyOf(raw: string): string {
  const i = raw.indexOf('\r\n\r\n');
  return i < 0 ? '' : raw.slice(i + 4);
}
