/**
 * Issue 12 (abuse resistance), against the real listeners: connection floods under a low
 * open-files limit (`portcullis start` as a child process under `prlimit`), sockets left silent
 * past the handshake timeout, HTTP/2 rapid reset, slow clients, strict HTTP/1.1 framing and Host.
 * Floods are bounded and stay on loopback (127.0.0.1–127.0.0.8).
 */
import { adminCredentials } from './admin-harness.ts';
import { spawn } from 'node:child_process';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync, readFileSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { connect as h2connect, constants as h2 } from 'node:http2';
import type { ClientHttp2Session } from 'node:http2';
import { connect as netConnect } from 'node:net';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { ROOT } from './cli-harness.ts';
import {
  FUNCTIONAL_TEST_LIMITS,
  rawHttps,
  startRecordingUpstream,
  startTestGateway,
  statusOf,
  tempDir,
  TEST_OPENAPI,
} from './helpers.ts';
import type { RecordingUpstream, TestGateway } from './helpers.ts';

const sleep = (ms: number) => new Promise((ok) => setTimeout(ok, ms));

/** Open descriptors of a process. */
function fdCount(pid: number | 'self'): number {
  return readdirSync(`/proc/${String(pid)}/fd`).length;
}

/** A silent TCP connection from `source`; `closedAt` is set when the server hangs up. */
interface Silent {
  socket: Socket;
  opened: number;
  closedAt?: number;
}

async function openSilent(port: number, source: string, count: number): Promise<Silent[]> {
  const out: Silent[] = [];
  const ready: Promise<unknown>[] = [];
  for (let i = 0; i < count; i++) {
    const socket = netConnect({ host: '127.0.0.1', port, localAddress: source });
    const s: Silent = { socket, opened: Date.now() };
    socket.on('error', () => undefined);
    socket.once('close', () => (s.closedAt = Date.now()));
    ready.push(Promise.race([once(socket, 'connect'), once(socket, 'close')]).catch(() => undefined));
    out.push(s);
  }
  await Promise.all(ready);
  return out;
}

const sources = (n: number) => Array.from({ length: n }, (_, i) => `127.0.0.${String(i + 1)}`);
const portOf = (url: string) => Number(new URL(url).port);

let upstream: RecordingUpstream;
beforeAll(async () => {
  upstream = await startRecordingUpstream();
});
afterAll(async () => {
  await upstream.close();
});

const apis = () => [{ name: 'items', openapi: 'api.yaml', basePath: '/v1', upstream: { url: upstream.url } }];

/** `portcullis start` under `prlimit --nofile=256:256`, its JSON log lines collected. */
class Child {
  readonly child: ChildProcessWithoutNullStreams;
  readonly lines: Record<string, unknown>[] = [];
  stderr = '';
  private buffer = '';
  readonly exited: Promise<{ code: number | null; signal: string | null }>;

  constructor(configFile: string, dataDir: string) {
    this.child = spawn(
      'prlimit',
      [
        '--nofile=256:256',
        'sh',
        'scripts/node24.sh',
        'src/cli/main.ts',
        'start',
        '--config',
        configFile,
        '--data-dir',
        dataDir,
      ],
      { cwd: ROOT, env: { ...process.env, PORTCULLIS_MASTER_KEY: '' } },
    );
    this.child.stdin.end();
    this.child.stdout.on('data', (chunk: Buffer) => {
      this.buffer += chunk.toString('utf8');
      let nl: number;
      while ((nl = this.buffer.indexOf('\n')) >= 0) {
        const line = this.buffer.slice(0, nl);
        this.buffer = this.buffer.slice(nl + 1);
        if (line.trim() !== '') this.lines.push(JSON.parse(line) as Record<string, unknown>);
      }
    });
    this.child.stderr.on('data', (c: Buffer) => (this.stderr += c.toString('utf8')));
    this.exited = once(this.child, 'exit').then(([code, signal]) => ({
      code: code as number | null,
      signal: signal as string | null,
    }));
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  async waitFor(
    match: (l: Record<string, unknown>) => boolean,
    ms = 20_000,
  ): Promise<Record<string, unknown>> {
    const deadline = Date.now() + ms;
    for (;;) {
      const found = this.lines.find(match);
      if (found) return found;
      if (!this.alive() || Date.now() > deadline) {
        throw new Error(`no matching log line; stderr:\n${this.stderr}`);
      }
      await sleep(50);
    }
  }
}

describe('connection floods under a low open-files limit (portcullis start under prlimit)', () => {
  let dir: string;
  let child: Child;
  let gatewayUrl: string;
  let adminUrl: string;
  let agent: Agent;
  /** The admin listener answers /metrics only to an administrator (a client certificate here). */
  let adminAgent: Agent;

  beforeAll(async () => {
    dir = await tempDir('portcullis-hostile-');
    const creds = await adminCredentials(dir);
    await writeFile(join(dir, 'api.yaml'), stringify(TEST_OPENAPI));
    await writeFile(
      join(dir, 'portcullis.yaml'),
      stringify({
        gateway: {
          port: 0,
          shutdownGraceMs: 2_000,
          timeouts: { keepAliveMs: 30_000 },
          connections: { perIp: 40, handshakeTimeoutMs: 3_000 },
        },
        admin: { port: 0, ...creds.config },
        logging: { accessLog: false },
        rateLimits: FUNCTIONAL_TEST_LIMITS,
        apis: apis(),
      }),
    );
    child = new Child(join(dir, 'portcullis.yaml'), join(dir, 'data'));
    const started = await child.waitFor((l) => l.event === 'started', 40_000);
    gatewayUrl = String(started.gateway);
    adminUrl = String(started.admin);
    const ca = await readFile(join(dir, 'data', 'tls', 'ca.crt'), 'utf8');
    agent = new Agent({ connect: { ca, servername: 'localhost' }, allowH2: false, pipelining: 1 });
    adminAgent = new Agent({ connect: { ca, servername: 'localhost', cert: creds.cert, key: creds.key } });
  }, 60_000);

  afterAll(async () => {
    if (child.alive()) child.child.kill('SIGKILL');
    await agent.close();
    await adminAgent.close();
    await rm(dir, { recursive: true, force: true });
  });

  const get = async (path: string, base = gatewayUrl) => {
    const res = await request(base + path, { dispatcher: base === adminUrl ? adminAgent : agent });
    const body = await res.body.text();
    return { status: res.statusCode, body };
  };

  it('refuses the excess at accept, keeps serving, never exits, and returns to its baseline', async () => {
    // A legitimate client connected before the flood keeps its keep-alive connection.
    expect((await get('/v1/items')).status).toBe(200);
    const baseline = fdCount(child.pid);

    let peak = baseline;
    const sampler = setInterval(() => {
      try {
        peak = Math.max(peak, fdCount(child.pid));
      } catch {
        // the process is gone: the assertions below say so
      }
    }, 20);
    // 7 sources × 70 silent connections: beyond the per-source cap and beyond what 256
    // descriptors allow (the total cap is bounded to 96 connections, a source to a quarter of it).
    const flood = (
      await Promise.all(
        sources(8)
          .slice(1)
          .map((s) => openSilent(portOf(gatewayUrl), s, 70)),
      )
    ).flat();
    await sleep(500);
    const refused = flood.filter((s) => s.closedAt !== undefined && s.closedAt - s.opened < 1_000);
    const held = flood.filter((s) => s.closedAt === undefined);
    expect(child.alive()).toBe(true);
    expect(refused.length).toBeGreaterThan(350);
    expect(held.length).toBeLessThanOrEqual(96);
    // Existing connections are served during the flood.
    expect((await get('/v1/items')).status).toBe(200);
    // A new client from a quiet source takes the place of a stalled handshake of a source holding
    // more than its share.
    const ca = await readFile(join(dir, 'data', 'tls', 'ca.crt'), 'utf8');
    const quiet = new Agent({ connect: { ca, servername: 'localhost', localAddress: '127.0.0.1' } });
    const during = await request(`${gatewayUrl}/v1/items`, { dispatcher: quiet });
    await during.body.text();
    expect(during.statusCode).toBe(200);
    await quiet.close();

    // Silent connections never complete a handshake: destroyed at the 3 s handshake timeout.
    await sleep(3_500);
    clearInterval(sampler);
    expect(flood.every((s) => s.closedAt !== undefined)).toBe(true);
    for (const s of flood) s.socket.destroy();
    expect(child.alive()).toBe(true);
    expect(peak).toBeLessThan(256);
    await sleep(200);
    expect(fdCount(child.pid)).toBeLessThanOrEqual(baseline + 2);
    // New connections are admitted again.
    const fresh = new Agent({ connect: { ca, servername: 'localhost' } });
    const after = await request(`${gatewayUrl}/v1/items`, { dispatcher: fresh });
    await after.body.text();
    expect(after.statusCode).toBe(200);
    await fresh.close();

    // Counted per connection in the metrics, reported once per window in the log.
    const metrics = await get('/metrics', adminUrl);
    const count = (reason: string) =>
      Number(
        new RegExp(
          `portcullis_connections_refused_total\\{listener="gateway",reason="${reason}"\\} (\\d+)`,
        ).exec(metrics.body)?.[1] ?? 0,
      );
    expect(
      count('connection-limit') + count('source-limit') + count('fd-pressure') + count('handshake-evicted'),
    ).toBeGreaterThanOrEqual(refused.length);
    // Held connections ended at the handshake timeout (or made room for the quiet client).
    expect(count('handshake-failed') + count('handshake-evicted')).toBeGreaterThanOrEqual(
      held.length +
        refused.length -
        (count('connection-limit') + count('source-limit') + count('fd-pressure')),
    );
    const summary = await child.waitFor(
      (l) => l.event === 'connections-refused' && l.listener === 'gateway',
      12_000,
    );
    expect(Number(summary.total)).toBeGreaterThan(300);
    expect(child.lines.filter((l) => l.event === 'connections-refused').length).toBeLessThan(5);
    // Memory stays bounded too (it reached 1.8 GB under connection floods): the process's peak
    // resident size, startup included, stays well under half a gigabyte.
    const hwmKiB = Number(
      /VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${String(child.pid)}/status`, 'utf8'))?.[1],
    );
    expect(hwmKiB).toBeLessThan(512 * 1024);
    process.stdout.write(
      `hostile-traffic: flood of ${String(flood.length)} silent connections: peak open fds ${String(peak)} (baseline ${String(baseline)}), peak RSS ${String(hwmKiB)} kB\n`,
    );
  }, 30_000);

  it('finishes SIGTERM within the grace period with silent connections open', async () => {
    const silent = await openSilent(portOf(gatewayUrl), '127.0.0.5', 30);
    const started = Date.now();
    child.child.kill('SIGTERM');
    const { code } = await child.exited;
    expect(code).toBe(0);
    expect(Date.now() - started).toBeLessThan(5_000);
    for (const s of silent) s.socket.destroy();
  }, 15_000);
});

describe('in-process gateway', () => {
  let gw: TestGateway;
  let ca: string | undefined;

  beforeAll(async () => {
    gw = await startTestGateway({
      gateway: {
        timeouts: { headersMs: 2_000, requestMs: 2_000 },
        connections: { perIp: 20, handshakeTimeoutMs: 1_000, http2MaxResets: 10 },
      },
      apis: apis(),
    });
    ca = gw.p.tls.source === 'development' ? gw.p.tls.caCertPem : undefined;
  });
  afterAll(async () => {
    await gw.close();
  });

  describe('sockets silent past the handshake timeout', () => {
    it('are destroyed by the server and descriptors return to the baseline', async () => {
      const baseline = fdCount('self');
      const port = portOf(gw.p.gatewayUrl);
      const silent = await openSilent(port, '127.0.0.2', 15);
      // A ClientHello that never finishes: the same deadline.
      const partial = await openSilent(port, '127.0.0.2', 5);
      for (const s of partial) s.socket.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]));
      await sleep(2_000);
      const all = [...silent, ...partial];
      expect(all.every((s) => s.closedAt !== undefined)).toBe(true);
      // Closed by the server, not refused: they lived until the timeout.
      expect(all.every((s) => (s.closedAt ?? 0) - s.opened >= 900)).toBe(true);
      for (const s of all) s.socket.destroy();
      await sleep(100);
      expect(fdCount('self')).toBeLessThanOrEqual(baseline + 1);
      // No plaintext answer was written onto an unfinished TLS socket.
      expect(gw.logs()).not.toContain('"status":400');
    });

    it('refuses connections beyond the per-source cap at accept, others still served', async () => {
      const port = portOf(gw.p.gatewayUrl);
      const flood = await openSilent(port, '127.0.0.3', 30);
      await sleep(300);
      const refused = flood.filter((s) => s.closedAt !== undefined);
      expect(refused.length).toBe(10);
      // Another source is unaffected.
      const ok = await rawHttps(
        gw.p.gatewayUrl,
        ca,
        'GET /v1/items HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n',
      );
      expect(statusOf(ok)).toBe(200);
      for (const s of flood) s.socket.destroy();
    });
  });

  describe('HTTP/2 rapid reset', () => {
    const h2session = (localAddress: string): ClientHttp2Session =>
      h2connect(gw.p.gatewayUrl, {
        ca,
        servername: 'localhost',
        createConnection: () =>
          tlsConnect({
            socket: netConnect({ host: '127.0.0.1', port: portOf(gw.p.gatewayUrl), localAddress }),
            ca,
            servername: 'localhost',
            ALPNProtocols: ['h2'],
          }),
      });
    const h2get = (session: ClientHttp2Session, path: string) =>
      new Promise<number>((ok, fail) => {
        const req = session.request({ ':path': path, ':authority': 'localhost' });
        req.on('response', (h) => {
          ok(Number(h[':status']));
        });
        req.on('error', fail);
        req.resume();
        req.end();
      });

    /** Opens a stream and resets it at once (CVE-2023-44487). */
    const resetOne = (session: ClientHttp2Session) => {
      try {
        const req = session.request({ ':path': '/v1/items', ':authority': 'localhost' });
        req.on('error', () => undefined);
        req.close(h2.NGHTTP2_CANCEL);
      } catch {
        // the server already sent GOAWAY
      }
    };

    it('advertises a bounded SETTINGS_MAX_CONCURRENT_STREAMS', async () => {
      const session = h2session('127.0.0.4');
      const [settings] = (await once(session, 'remoteSettings')) as [{ maxConcurrentStreams?: number }];
      expect(settings.maxConcurrentStreams).toBe(100);
      session.close();
    });

    it('closes a connection that resets streams faster than it completes them; others are served', async () => {
      const legit = h2session('127.0.0.5');
      expect(await h2get(legit, '/v1/items')).toBe(200);
      const attacker = h2session('127.0.0.6');
      attacker.on('error', () => undefined);
      const goaway = new Promise<number>((ok) => attacker.once('goaway', (code: number) => ok(code)));
      const closed = new Promise((ok) => attacker.once('close', ok));
      for (let i = 0; i < 200 && !attacker.closed && !attacker.destroyed; i++) {
        resetOne(attacker);
        if (i % 10 === 9) await sleep(5);
      }
      expect(await goaway).toBe(h2.NGHTTP2_ENHANCE_YOUR_CALM);
      await closed;
      // The legitimate client on its own connection keeps getting answers.
      for (let i = 0; i < 5; i++) expect(await h2get(legit, '/v1/items')).toBe(200);
      legit.close();
    });

    it('refuses a source that keeps reconnecting to reset streams', async () => {
      let refused = false;
      for (let round = 0; round < 8; round++) {
        const attacker = h2session('127.0.0.7');
        attacker.on('error', () => undefined);
        const closed = new Promise((ok) => attacker.once('close', ok));
        const connected = await Promise.race([
          once(attacker, 'remoteSettings').then(() => true),
          closed.then(() => false),
        ]);
        if (!connected) {
          refused = true;
          break;
        }
        for (let i = 0; i < 30 && !attacker.closed && !attacker.destroyed; i++) {
          resetOne(attacker);
          if (i % 10 === 9) await sleep(5);
        }
        await closed;
      }
      expect(refused).toBe(true);
      // Another source is still served.
      const other = h2session('127.0.0.8');
      expect(await h2get(other, '/v1/items')).toBe(200);
      other.close();
    });

    it('answers 408 to a stream whose body does not arrive within requestMs', async () => {
      const session = h2session('127.0.0.4');
      const started = Date.now();
      const status = await new Promise<number>((ok, fail) => {
        const req = session.request({
          ':method': 'POST',
          ':path': '/v1/items',
          ':authority': 'localhost',
          'content-type': 'application/json',
        });
        req.write('{"name":');
        req.on('response', (h) => {
          ok(Number(h[':status']));
        });
        req.on('error', fail);
        req.resume();
      });
      expect(status).toBe(408);
      expect(Date.now() - started).toBeLessThan(3_000);
      session.close();
    });
  });

  describe('slow clients', () => {
    it('closes a connection whose headers never finish within 1.5× headersMs', async () => {
      const socket = tlsConnect({
        host: '127.0.0.1',
        port: portOf(gw.p.gatewayUrl),
        ca,
        servername: 'localhost',
        ALPNProtocols: ['http/1.1'],
      });
      await once(socket, 'secureConnect');
      const started = Date.now();
      socket.write('GET /v1/items HTTP/1.1\r\nHost: localhost\r\nX-Slow: 1\r\n');
      let received = '';
      socket.on('data', (c: Buffer) => (received += c.toString('utf8')));
      await Promise.race([once(socket, 'close'), sleep(10_000)]);
      const elapsed = Date.now() - started;
      socket.destroy();
      expect(statusOf(received)).toBe(408);
      expect(elapsed).toBeGreaterThanOrEqual(1_900);
      expect(elapsed).toBeLessThan(3_000);
    });
  });

  describe('strict HTTP/1.1 framing and Host', () => {
    const send = (text: string) => rawHttps(gw.p.gatewayUrl, ca, text, 5_000);

    it('serves a well-formed request naming the public host or the address connected to', async () => {
      expect(
        statusOf(await send('GET /v1/items HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n')),
      ).toBe(200);
      expect(
        statusOf(await send('GET /v1/items HTTP/1.1\r\nHost: 127.0.0.1:1234\r\nConnection: close\r\n\r\n')),
      ).toBe(200);
    });

    it('refuses two Host headers', async () => {
      const raw = await send(
        'GET /v1/items HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\nConnection: close\r\n\r\n',
      );
      expect(statusOf(raw)).toBe(400);
    });

    it('refuses a missing or malformed Host', async () => {
      expect(statusOf(await send('GET /v1/items HTTP/1.1\r\nConnection: close\r\n\r\n'))).toBe(400);
      expect(statusOf(await send('GET /v1/items HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n'))).toBe(
        400,
      );
    });

    it('answers 421 to a Host this gateway does not serve', async () => {
      const raw = await send('GET /v1/items HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n');
      expect(statusOf(raw)).toBe(421);
      expect(raw).toContain('urn:portcullis:problem:misdirected-request');
    });

    it('refuses an HTTP/0.9-style request line with headers', async () => {
      const raw = await send('GET /v1/items\r\nHost: localhost\r\nConnection: close\r\n\r\n');
      expect(statusOf(raw)).toBe(400);
    });

    it('refuses HTTP/2.0 on an HTTP/1.1 connection', async () => {
      const raw = await send('GET /v1/items HTTP/2.0\r\nHost: localhost\r\nConnection: close\r\n\r\n');
      expect(statusOf(raw)).toBe(400);
    });

    it('checks :authority on HTTP/2', async () => {
      const session = h2connect(gw.p.gatewayUrl, { ca, servername: 'localhost' });
      const status = (authority: string) =>
        new Promise<number>((ok, fail) => {
          const req = session.request({ ':path': '/v1/items', ':authority': authority });
          req.on('response', (h) => {
            ok(Number(h[':status']));
          });
          req.on('error', fail);
          req.resume();
          req.end();
        });
      expect(await status('localhost')).toBe(200);
      expect(await status('evil.example')).toBe(421);
      session.close();
    });
  });
});

describe('admin listener', () => {
  it('has its own, smaller per-source cap', async () => {
    const gw = await startTestGateway({ apis: apis() });
    try {
      const admin = gw.p.adminUrl ?? '';
      const flood = await openSilent(portOf(admin), '127.0.0.8', 40);
      await sleep(300);
      expect(flood.filter((s) => s.closedAt !== undefined).length).toBe(8);
      for (const s of flood) s.socket.destroy();
    } finally {
      await gw.close();
    }
  });
});
