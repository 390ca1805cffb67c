/**
 * The quickstart as a new user lives it: `portcullis start` on the quickstart configuration (a
 * copy on free ports, with a temporary data directory), then the three commands its banner prints
 * to get a token, run as printed: `portcullis clients create … --json` through the real CLI, the
 * curl to /token and the curl to the API as equivalent HTTPS requests trusting the printed CA
 * file. The token reads the patient list (200) and is refused someone else's record (403).
 */
import { spawn } from 'node:child_process';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { join, resolve } from 'node:path';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { tempDir } from './helpers.ts';

const ROOT = new URL('..', import.meta.url).pathname;

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((ok) => server.close(() => ok()));
  return port;
}

/** Splits a command line the way sh would for these commands (quotes and $VARIABLES). */
function shellWords(line: string, env: Record<string, string>): string[] {
  const words: string[] = [];
  let current: string | undefined;
  const expand = (text: string) => text.replace(/\$([A-Z_]+)/g, (_m, name: string) => env[name] ?? '');
  for (let i = 0; i < line.length; i++) {
    const ch = line[i] ?? '';
    if (ch === ' ') {
      if (current !== undefined) words.push(current);
      current = undefined;
    } else if (ch === "'") {
      const end = line.indexOf("'", i + 1);
      current = (current ?? '') + line.slice(i + 1, end);
      i = end;
    } else if (ch === '"') {
      const end = line.indexOf('"', i + 1);
      current = (current ?? '') + expand(line.slice(i + 1, end));
      i = end;
    } else {
      let end = i;
      while (end < line.length && !' \'"'.includes(line[end] ?? ' ')) end++;
      current = (current ?? '') + expand(line.slice(i, end));
      i = end - 1;
    }
  }
  if (current !== undefined) words.push(current);
  return words;
}

/** What a curl command line asks for (the options the banner uses). */
function parseCurl(words: string[]) {
  expect(words[0]).toBe('curl');
  const form: [string, string][] = [];
  const headers: Record<string, string> = {};
  let cacert: string | undefined;
  let user: string | undefined;
  let url: string | undefined;
  for (let i = 1; i < words.length; i++) {
    const w = words[i] ?? '';
    const next = () => words[++i] ?? '';
    if (w === '--cacert') cacert = next();
    else if (w === '-u') user = next();
    else if (w === '-d') {
      const pair = next();
      const eq = pair.indexOf('=');
      form.push([pair.slice(0, eq), pair.slice(eq + 1)]);
    } else if (w === '-H') {
      const h = next();
      const colon = h.indexOf(':');
      headers[h.slice(0, colon).toLowerCase()] = h.slice(colon + 1).trim();
    } else if (w.startsWith('-')) throw new Error(`unexpected curl option ${w}`);
    else url = w;
  }
  if (url === undefined) throw new Error('no URL');
  if (user !== undefined) headers.authorization = `Basic ${Buffer.from(user).toString('base64')}`;
  return { url, cacert, form, headers };
}

/** Sends what `curl` would: POST with -d (form-encoded), GET otherwise. */
async function curl(words: string[]) {
  const c = parseCurl(words);
  const ca = c.cacert === undefined ? undefined : readFileSync(resolve(ROOT, c.cacert), 'utf8');
  const agent = new Agent({ connect: { ca } });
  try {
    const post = c.form.length > 0;
    const res = await request(c.url, {
      method: post ? 'POST' : 'GET',
      headers: {
        ...(post ? { 'content-type': 'application/x-www-form-urlencoded' } : {}),
        ...c.headers,
      },
      body: post ? new URLSearchParams(c.form).toString() : null,
      dispatcher: agent,
    });
    return { status: res.statusCode, body: await res.body.text() };
  } finally {
    await agent.close();
  }
}

let dir: string;
let child: ChildProcessWithoutNullStreams | undefined;
let banner = '';
let logs = '';
let publicUrl: string;

beforeAll(async () => {
  dir = await tempDir('portcullis-quickstart-');
  const [gatewayPort, adminPort, demoPort] = [await freePort(), await freePort(), await freePort()];
  const quickstart = parse(readFileSync(join(ROOT, 'examples/quickstart/portcullis.yaml'), 'utf8')) as {
    gateway: { port: number; publicUrl: string };
    admin: { port: number };
    demoUpstream: { port: number };
    apis: { openapi: string; upstream: { url: string } }[];
  };
  // The same configuration on free ports (the OpenAPI path made absolute for the copy).
  publicUrl = `https://localhost:${String(gatewayPort)}`;
  quickstart.gateway.port = gatewayPort;
  quickstart.gateway.publicUrl = publicUrl;
  quickstart.admin.port = adminPort;
  quickstart.demoUpstream.port = demoPort;
  for (const api of quickstart.apis) {
    api.openapi = resolve(ROOT, 'examples/quickstart', api.openapi);
    api.upstream.url = `http://127.0.0.1:${String(demoPort)}`;
  }
  const config = join(dir, 'portcullis.yaml');
  await writeFile(config, stringify(quickstart));

  const c = spawn(
    'sh',
    [
      join(ROOT, 'scripts/node24.sh'),
      join(ROOT, 'src/cli/main.ts'),
      'start',
      '--config',
      config,
      '--data-dir',
      join(dir, 'data'),
    ],
    { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] },
  );
  child = c;
  c.stdout.on('data', (d: Buffer) => (logs += d.toString('utf8')));
  c.stderr.on('data', (d: Buffer) => (banner += d.toString('utf8')));
  const deadline = Date.now() + 45_000;
  while (!banner.includes('Stop: Ctrl-C')) {
    if (c.exitCode !== null) throw new Error(`portcullis exited: ${banner}${logs}`);
    if (Date.now() > deadline) throw new Error(`portcullis did not start: ${banner}${logs}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}, 90_000);

afterAll(async () => {
  if (child !== undefined && child.exitCode === null) {
    const closed = once(child, 'close');
    child.kill('SIGTERM');
    await closed;
  }
  await rm(dir, { recursive: true, force: true });
}, 30_000);

/** The numbered steps of the banner's "Get a token" section. */
function steps(): string[] {
  return [...banner.matchAll(/^ {4}\d\. (.+)$/gm)].map((m) => m[1] ?? '');
}

describe('the quickstart banner', () => {
  it('prints how to get a token: create a client, POST /token, call /v1/patients', () => {
    expect(banner).toContain('Get a token and call the API:');
    const [create, token, call] = steps();
    expect(create).toMatch(
      /^npx portcullis clients create --name demo --grant client_credentials --scope "patients:read" --json --data-dir /,
    );
    // The data directory's start record names the configuration (src/cli/paths.ts): no --config.
    expect(create).not.toContain('--config');
    expect(token).toContain(`${publicUrl}/token`);
    expect(token).toContain('-d grant_type=client_credentials');
    expect(call).toContain(`${publicUrl}/v1/patients`);
  });

  it('each printed command works as printed: 200 for the list, 403 for someone else’s record', async () => {
    const [create = '', tokenLine = '', callLine = ''] = steps();
    // 1. The real CLI (bin/portcullis is what `npx portcullis` runs from the project folder).
    const words = shellWords(create, {});
    expect(words.slice(0, 2)).toEqual(['npx', 'portcullis']);
    const cli = spawn('sh', [join(ROOT, 'bin/portcullis'), ...words.slice(2)], {
      cwd: ROOT,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    cli.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
    cli.stderr.on('data', (d: Buffer) => (err += d.toString('utf8')));
    cli.stdin.end();
    const [code] = (await once(cli, 'close')) as [number];
    expect(code, err).toBe(0);
    const created = JSON.parse(out) as { client_id: string; client_secret: string };
    expect(Object.keys(created).sort()).toEqual(['client_id', 'client_secret']);

    // 2. The token request.
    const env = { CLIENT_ID: created.client_id, CLIENT_SECRET: created.client_secret };
    const tokenRes = await curl(shellWords(tokenLine, env));
    expect(tokenRes.status).toBe(200);
    const { access_token: token } = JSON.parse(tokenRes.body) as { access_token: string };
    expect(token).toMatch(/^ey/);

    // 3. The API call.
    const list = await curl(shellWords(callLine, { ...env, TOKEN: token }));
    expect(list.status).toBe(200);
    // The list is owner-bound like the records (issue 12): a client owns no patient record.
    expect(JSON.parse(list.body)).toEqual({ items: [], nextCursor: null });

    // Someone else's record (the demo's first seeded patient): the owner binding refuses it.
    const other = await curl(
      shellWords(callLine.replace('/v1/patients', '/v1/patients/pat_0h52dgzb28m6'), {
        ...env,
        TOKEN: token,
      }),
    );
    expect(other.status).toBe(403);
    expect(JSON.parse(other.body)).toMatchObject({ type: 'urn:portcullis:problem:forbidden', status: 403 });

    // Without the token: 401. Nothing secret reached the logs.
    const withoutToken = shellWords(callLine, {});
    withoutToken.splice(withoutToken.indexOf('-H'), 2);
    const anonymous = await curl(withoutToken);
    expect(anonymous.status).toBe(401);
    expect(logs + banner).not.toContain(created.client_secret);
    expect(logs + banner).not.toContain(token);
  });

  it('config validate prints the version the running gateway reports', async () => {
    const validate = spawn(
      'sh',
      [
        join(ROOT, 'scripts/node24.sh'),
        join(ROOT, 'src/cli/main.ts'),
        'config',
        'validate',
        '--json',
        '--config',
        join(dir, 'portcullis.yaml'),
      ],
      { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    validate.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
    const [code] = (await once(validate, 'close')) as [number];
    expect(code).toBe(0);
    const { version } = JSON.parse(out) as { version: string };
    const admin = /admin\s+(https:\/\/\S+)/.exec(banner)?.[1] ?? '';
    const ready = await curl(['curl', '--cacert', join(dir, 'data', 'tls', 'ca.crt'), `${admin}/readyz`]);
    const { checks } = JSON.parse(ready.body) as { checks: Record<string, { detail?: string }> };
    const reported = checks.config?.detail;
    expect(reported).toMatch(/^[0-9a-f]{12}$/);
    expect(version.startsWith(reported ?? '-')).toBe(true);
  });
});
