/**
 * Reload and graceful shutdown: the real CLI as a child process (SIGHUP, the file watcher,
 * SIGTERM), and the in-process reload API with the config_versions record.
 */
import { spawn } from 'node:child_process';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { mkdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { join, resolve } from 'node:path';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml, stringify } from 'yaml';
import { runtimeVersion } from '../src/gateway/compile.ts';
import { listConfigVersions } from '../src/store/index.ts';
import { startRecordingUpstream, startTestGateway, tempDir, TEST_OPENAPI } from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';

const ROOT = resolve(import.meta.dirname, '..');
const WAIT_MS = 20_000;

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((ok) => server.close(() => ok()));
  return port;
}

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

/** The runtime version of a configuration text: it covers the OpenAPI documents it names. */
const versionOf = (dir: string, text: string): string => {
  const config = parseYaml(text) as { apis?: { name: string; openapi: string }[] } | null;
  const docs = (config?.apis ?? []).map((a) => ({
    name: a.name,
    sha256: sha256(readFileSync(join(dir, a.openapi), 'utf8')),
  }));
  return runtimeVersion(sha256(text), docs);
};

type LogLine = Record<string, unknown>;

/** The CLI as a child process, with its JSON log lines from stdout. */
class Cli {
  readonly child: ChildProcessWithoutNullStreams;
  readonly lines: LogLine[] = [];
  stderr = '';
  private buffer = '';
  private waiters: (() => void)[] = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(args: string[]) {
    this.child = spawn('sh', ['scripts/node24.sh', 'src/cli/main.ts', ...args], { cwd: ROOT });
    this.child.stdin.end();
    this.child.stdout.on('data', (chunk: Buffer) => {
      this.buffer += chunk.toString('utf8');
      let nl: number;
      while ((nl = this.buffer.indexOf('\n')) >= 0) {
        const line = this.buffer.slice(0, nl);
        this.buffer = this.buffer.slice(nl + 1);
        if (line.trim() === '') continue;
        this.lines.push(JSON.parse(line) as LogLine);
      }
      for (const w of this.waiters) w();
    });
    this.child.stderr.on('data', (chunk: Buffer) => (this.stderr += chunk.toString('utf8')));
    this.exited = once(this.child, 'exit').then(([code, signal]) => ({
      code: code as number | null,
      signal: signal as NodeJS.Signals | null,
    }));
  }

  /** Waits for a log line (at index `from` or later) that matches `match`. */
  async waitFor(match: (l: LogLine) => boolean, from = 0, timeoutMs = WAIT_MS): Promise<LogLine> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.lines.slice(from).find(match);
      if (found) return found;
      if (this.child.exitCode !== null) {
        throw new Error(`CLI exited (${String(this.child.exitCode)}); stderr:\n${this.stderr}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`no matching log line; got:\n${this.lines.map((l) => JSON.stringify(l)).join('\n')}`);
      }
      await new Promise<void>((ok) => {
        const timer = setTimeout(ok, Math.min(left, 500));
        this.waiters.push(() => {
          clearTimeout(timer);
          ok();
        });
      });
      this.waiters = [];
    }
  }

  events(name: string, from = 0): LogLine[] {
    return this.lines.slice(from).filter((l) => l.event === name);
  }
}

describe('the CLI reloads on SIGHUP and on file changes, and drains on SIGTERM', () => {
  let dir: string;
  let upstream: RecordingUpstream;
  let cli: Cli;
  let agent: Agent;
  let gatewayUrl: string;
  let gatewayPort: number;
  let adminPort: number;
  const configFile = () => join(dir, 'portcullis.yaml');
  // The configuration path is a symlink into real/ (as Kubernetes mounts a ConfigMap). Editing
  // the target changes the configuration without any event the watcher listens for, so a reload
  // seen after such an edit came from SIGHUP.
  const target = () => join(dir, 'real', 'portcullis.yaml');

  const configText = (apis: readonly { name: string; basePath: string }[], extra: string[] = []) =>
    [
      '# written by test/reload.test.ts',
      'gateway:',
      `  port: ${String(gatewayPort)}`,
      ...extra,
      'admin:',
      `  port: ${String(adminPort)}`,
      'apis:',
      ...apis.flatMap((a) => [
        `  - name: ${a.name}`,
        '    openapi: api.yaml',
        `    basePath: ${a.basePath}`,
        '    upstream:',
        `      url: ${upstream.url}`,
      ]),
    ].join('\n') + '\n';

  const get = async (path: string) => {
    const res = await request(gatewayUrl + path, { dispatcher: agent });
    return { status: res.statusCode, body: await res.body.text() };
  };

  beforeAll(async () => {
    dir = await tempDir('portcullis-reload-');
    upstream = await startRecordingUpstream();
    gatewayPort = await freePort();
    adminPort = await freePort();
    await writeFile(join(dir, 'api.yaml'), stringify(TEST_OPENAPI));
    await mkdir(join(dir, 'real'));
    await writeFile(target(), configText([{ name: 'items', basePath: '/v1' }]));
    await symlink(target(), configFile());
    cli = new Cli(['start', '--config', configFile(), '--data-dir', join(dir, 'data')]);
    const started = await cli.waitFor((l) => l.event === 'started');
    gatewayUrl = String(started.gateway);
    expect(gatewayUrl).toBe(`https://127.0.0.1:${String(gatewayPort)}`);
    const ca = await readFile(join(dir, 'data', 'tls', 'ca.crt'), 'utf8');
    agent = new Agent({ connect: { ca, servername: 'localhost' }, allowH2: false });
  }, 60_000);

  afterAll(async () => {
    if (cli.child.exitCode === null && cli.child.signalCode === null) {
      cli.child.kill('SIGKILL');
      await cli.exited;
    }
    await agent.close();
    await upstream.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('serves the configured API', async () => {
    expect(await get('/v1/items')).toMatchObject({ status: 200 });
    expect(upstream.received.at(-1)?.url).toBe('/items');
    expect((await get('/v2/items')).status).toBe(404);
  });

  it('(a) SIGHUP applies an edited configuration: the new route answers', async () => {
    const from = cli.lines.length;
    const text = configText([
      { name: 'items', basePath: '/v1' },
      { name: 'items-v2', basePath: '/v2' },
    ]);
    await writeFile(target(), text);
    cli.child.kill('SIGHUP');
    const reloaded = await cli.waitFor((l) => l.event === 'config-reloaded', from);
    expect(reloaded).toMatchObject({ trigger: 'SIGHUP', version: versionOf(dir, text), level: 'info' });
    expect(String(reloaded.apis)).toContain('items-v2@/v2');
    const res = await get('/v2/items/42');
    expect(res.status).toBe(200);
    expect(upstream.received.at(-1)?.url).toBe('/items/42');
    expect((await get('/v1/items')).status).toBe(200);
  });

  it('(b) SIGHUP with an invalid configuration is refused with key path and line; the old routes keep answering', async () => {
    const from = cli.lines.length;
    const valid = configText([
      { name: 'items', basePath: '/v1' },
      { name: 'items-v2', basePath: '/v2' },
    ]);
    const invalid = valid.replace('gateway:\n', 'gateway:\n  prot: 1\n');
    expect(invalid).not.toBe(valid);
    await writeFile(target(), invalid);
    cli.child.kill('SIGHUP');
    const refused = await cli.waitFor((l) => l.event === 'config-reload-refused', from);
    expect(refused).toMatchObject({ trigger: 'SIGHUP', keptVersion: versionOf(dir, valid), level: 'error' });
    expect(refused.issues).toEqual([
      expect.stringMatching(/portcullis\.yaml:3:3: gateway\.prot: unknown key/),
    ]);
    expect(cli.events('config-reloaded', from)).toEqual([]);
    expect((await get('/v1/items')).status).toBe(200);
    expect((await get('/v2/items')).status).toBe(200);
    // A mistake in an OpenAPI file named by the configuration is refused the same way.
    await writeFile(join(dir, 'broken.yaml'), 'openapi: 3.1.0\npaths: [\n');
    const from2 = cli.lines.length;
    await writeFile(target(), valid.replace('openapi: api.yaml', 'openapi: broken.yaml'));
    cli.child.kill('SIGHUP');
    const refused2 = await cli.waitFor((l) => l.event === 'config-reload-refused', from2);
    expect(refused2.issues).toEqual([
      expect.stringMatching(/portcullis\.yaml:8:5: apis\[0\]\.openapi: not valid YAML/),
    ]);
    expect((await get('/v1/items')).status).toBe(200);
  });

  it('(c) the file watcher applies a changed configuration without a signal', async () => {
    // An atomic replace (write beside, rename over), as editors and deploy tools do.
    const from = cli.lines.length;
    const text = configText([
      { name: 'items', basePath: '/v1' },
      { name: 'items-v3', basePath: '/v3' },
    ]);
    await writeFile(join(dir, 'portcullis.yaml.new'), text);
    await rename(join(dir, 'portcullis.yaml.new'), configFile());
    const reloaded = await cli.waitFor(
      (l) => l.event === 'config-reloaded' && l.version === versionOf(dir, text),
      from,
    );
    expect(reloaded.trigger).toBe('file-change');
    expect((await get('/v3/items')).status).toBe(200);
    expect((await get('/v2/items')).status).toBe(404);

    // An in-place edit of the (now regular) file is noticed too.
    const from2 = cli.lines.length;
    const text2 = configText([{ name: 'items', basePath: '/v1' }]);
    await writeFile(configFile(), text2);
    await cli.waitFor((l) => l.event === 'config-reloaded' && l.version === versionOf(dir, text2), from2);
    expect((await get('/v3/items')).status).toBe(404);
    expect((await get('/v1/items')).status).toBe(200);

    // So is an edit of the OpenAPI document alone.
    const from3 = cli.lines.length;
    const doc = structuredClone(TEST_OPENAPI) as { paths: Record<string, unknown> };
    doc.paths['/things'] = {
      get: { operationId: 'listThings', responses: { '200': { description: 'ok' } } },
    };
    expect((await get('/v1/things')).status).toBe(404);
    await writeFile(join(dir, 'api.yaml'), stringify(doc));
    const contract = await cli.waitFor((l) => l.event === 'config-reloaded', from3);
    expect(contract.trigger).toBe('file-change');
    expect((await get('/v1/things')).status).toBe(200);
  });

  it('(d) SIGTERM drains: a slow in-flight request completes with 200, then the process exits 0', async () => {
    const from = cli.lines.length;
    const seen = upstream.received.length;
    upstream.respond((req) => ({
      status: 200,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ slow: true, url: req.url }),
      delayMs: 1500,
    }));
    const inFlight = get('/v1/items/slow');
    // Signal only once the upstream holds the request: it is truly in flight.
    const deadline = Date.now() + WAIT_MS;
    while (upstream.received.length === seen && Date.now() < deadline) {
      await new Promise((ok) => setTimeout(ok, 20));
    }
    expect(upstream.received.length).toBe(seen + 1);
    cli.child.kill('SIGTERM');
    const res = await inFlight;
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body)).toEqual({ slow: true, url: '/items/slow' });
    expect(await cli.exited).toEqual({ code: 0, signal: null });
    expect(cli.events('stopping', from)).toMatchObject([{ signal: 'SIGTERM' }]);
    expect(cli.events('stopped', from)).toHaveLength(1);
    expect(cli.events('shutdown-forced', from)).toEqual([]);
  });
});

describe('in-process reload', () => {
  let upstream: RecordingUpstream;
  let gw: TestGateway;

  beforeAll(async () => {
    upstream = await startRecordingUpstream();
    gw = await startTestGateway({
      apis: [{ name: 'items', openapi: 'api.yaml', basePath: '/v1', upstream: { url: upstream.url } }],
    });
  });
  afterAll(async () => {
    await gw.close();
    await upstream.close();
  });

  const write = async (config: Record<string, unknown>): Promise<string> => {
    const text = stringify({ gateway: { port: 0 }, admin: { port: 0 }, ...config });
    await writeFile(gw.configFile, text);
    return text;
  };
  const api = (name: string, basePath: string) => ({
    name,
    openapi: 'api.yaml',
    basePath,
    upstream: { url: upstream.url },
  });

  it('reports unchanged, applied and refused, records each applied version, and keeps serving the last good one', async () => {
    const versions = async () => (await listConfigVersions(gw.p.store.db, 100)).map((v) => v.sha256);
    const first = gw.p.runtime().version;
    expect(await versions()).toEqual([first]);

    expect(await gw.p.reload()).toEqual({ status: 'unchanged', version: first });
    expect(await versions()).toEqual([first]);

    const text = await write({ apis: [api('items', '/v1'), api('more', '/v2')] });
    const applied = await gw.p.reload();
    expect(applied).toEqual({ status: 'applied', version: versionOf(gw.dir, text) });
    expect(gw.p.runtime().version).toBe(versionOf(gw.dir, text));
    expect((await gw.request('/v2/items')).status).toBe(200);
    expect(await versions()).toEqual([versionOf(gw.dir, text), first]);
    const [newest] = await listConfigVersions(gw.p.store.db, 1);
    expect(newest?.source).toBe(gw.configFile);
    expect(newest?.summary).toContain('more@/v2');

    // Invalid: refused with key path and line; nothing recorded; the last good one keeps serving.
    await writeFile(gw.configFile, 'gateway:\n  port: 0\nadmin:\n  port: 0\nlogging:\n  level: loud\n');
    const refused = await gw.p.reload('test');
    expect(refused.status).toBe('refused');
    expect(refused.version).toBe(versionOf(gw.dir, text));
    expect(refused.issues).toEqual([
      expect.stringMatching(/portcullis\.yaml:6:3: logging\.level: expected one of/),
    ]);
    expect(await versions()).toEqual([versionOf(gw.dir, text), first]);
    expect((await gw.request('/v2/items')).status).toBe(200);
    expect(gw.logLines().filter((l) => l.event === 'config-reload-refused')).toMatchObject([
      { trigger: 'test', keptVersion: versionOf(gw.dir, text) },
    ]);

    // A semantic refusal (duplicate base path) is refused too.
    await write({ apis: [api('items', '/v1'), api('other', '/v1')] });
    const dup = await gw.p.reload();
    expect(dup.status).toBe('refused');
    expect(dup.issues).toEqual([expect.stringMatching(/apis\[1\]\.basePath: base path \/v1 is used twice/)]);

    // Back to one API: applied again, the removed route is gone.
    const text3 = await write({ apis: [api('items', '/v1')] });
    expect(await gw.p.reload()).toEqual({ status: 'applied', version: versionOf(gw.dir, text3) });
    expect((await gw.request('/v2/items')).status).toBe(404);
    expect((await gw.request('/v1/items')).status).toBe(200);
    expect(await versions()).toEqual([versionOf(gw.dir, text3), versionOf(gw.dir, text), first]);
    expect(gw.logLines().filter((l) => l.event === 'config-reloaded')).toMatchObject([
      { trigger: 'api', version: versionOf(gw.dir, text), previousVersion: first },
      { trigger: 'api', version: versionOf(gw.dir, text3), previousVersion: versionOf(gw.dir, text) },
    ]);
  });

  it('an edit to the OpenAPI document alone is applied, not reported unchanged', async () => {
    const before = await listConfigVersions(gw.p.store.db, 100);
    expect((await gw.request('/v1/things')).status).toBe(404);
    const doc = structuredClone(TEST_OPENAPI) as { paths: Record<string, unknown> };
    doc.paths['/things'] = {
      get: { operationId: 'listThings', responses: { '200': { description: 'ok' } } },
    };
    await writeFile(join(gw.dir, 'api.yaml'), stringify(doc));
    expect((await gw.p.reload()).status).toBe('applied');
    expect((await gw.request('/v1/things')).status).toBe(200);
    expect(await listConfigVersions(gw.p.store.db, 100)).toHaveLength(before.length + 1);
    expect((await gw.p.reload()).status).toBe('unchanged');
  });

  it('concurrent reloads are serialised: one applies, the other sees it unchanged', async () => {
    const text = await write({ apis: [api('items', '/v1'), api('again', '/v4')] });
    const results = await Promise.all([gw.p.reload(), gw.p.reload()]);
    expect(results.map((r) => r.status)).toEqual(['applied', 'unchanged']);
    expect(results.map((r) => r.version)).toEqual([versionOf(gw.dir, text), versionOf(gw.dir, text)]);
  });
});
