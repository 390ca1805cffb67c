/**
 * The fault proxy against a local TCP echo server: it forwards; `reset` closes open connections on
 * both sides and refuses new ones on the same port; `blackhole` holds connections open while no
 * byte moves; `restore` brings forwarding back, delivering what a blackhole held.
 */
import { once } from 'node:events';
import { connect, createServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startFaultProxy } from './fault-proxy.ts';
import type { FaultProxy } from './fault-proxy.ts';

interface Client {
  readonly socket: Socket;
  /** Everything received so far. */
  text(): string;
  /** Resolves once the received text contains `s`; rejects after `ms`. */
  waitFor(s: string, ms?: number): Promise<void>;
  readonly closed: Promise<{ error: string | undefined }>;
  isClosed(): boolean;
}

async function dial(port: number): Promise<Client> {
  const socket = connect({ host: '127.0.0.1', port });
  let received = '';
  let error: string | undefined;
  let isClosed = false;
  socket.on('data', (c: Buffer) => (received += c.toString('utf8')));
  socket.on('error', (e: NodeJS.ErrnoException) => (error = e.code ?? e.message));
  const closed = new Promise<{ error: string | undefined }>((ok) =>
    socket.on('close', () => {
      isClosed = true;
      ok({ error });
    }),
  );
  await once(socket, 'connect');
  return {
    socket,
    text: () => received,
    closed,
    isClosed: () => isClosed,
    waitFor: async (s, ms = 2_000) => {
      const until = Date.now() + ms;
      while (!received.includes(s)) {
        if (Date.now() > until) throw new Error(`did not receive ${JSON.stringify(s)} in ${String(ms)} ms`);
        await sleep(10);
      }
    },
  };
}

let echo: Server;
let echoPort: number;
/** Sockets the echo server holds open now. */
const echoSockets = new Set<Socket>();
const clients: Client[] = [];
let proxy: FaultProxy;

const open = async (): Promise<Client> => {
  const c = await dial(proxy.port);
  clients.push(c);
  return c;
};

/** Waits until `check` holds (polling), or fails with `what`. */
async function eventually(check: () => boolean, what: string, ms = 2_000): Promise<void> {
  const until = Date.now() + ms;
  while (!check()) {
    if (Date.now() > until) throw new Error(`timed out waiting for: ${what}`);
    await sleep(10);
  }
}

beforeAll(async () => {
  echo = createServer((s) => {
    echoSockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => echoSockets.delete(s));
    s.pipe(s);
  });
  echo.listen(0, '127.0.0.1');
  await once(echo, 'listening');
  echoPort = (echo.address() as AddressInfo).port;
});

afterEach(async () => {
  for (const c of clients.splice(0)) c.socket.destroy();
  await proxy.close();
});

afterAll(async () => {
  for (const s of echoSockets) s.destroy();
  await new Promise<void>((ok) => echo.close(() => ok()));
});

describe('fault proxy', () => {
  it('forwards both ways and counts connections', async () => {
    proxy = await startFaultProxy({ host: '127.0.0.1', port: echoPort });
    expect(proxy.address).toBe(`127.0.0.1:${String(proxy.port)}`);
    expect(proxy.port).not.toBe(echoPort);
    const a = await open();
    const b = await open();
    a.socket.write('hello ');
    b.socket.write('other');
    a.socket.write('world');
    await a.waitFor('hello world');
    await b.waitFor('other');
    expect(a.text()).toBe('hello world');
    expect(b.text()).toBe('other');
    expect(proxy.mode).toBe('forward');
    expect(proxy.connections).toBe(2);
    expect(proxy.accepted).toBe(2);
    expect(echoSockets.size).toBe(2);
    // A client that closes closes its upstream connection too.
    a.socket.end();
    await a.closed;
    await eventually(() => proxy.connections === 1 && echoSockets.size === 1, 'one connection left');
  });

  it('reset: closes open connections on both sides and resets new ones on the same port', async () => {
    proxy = await startFaultProxy({ host: '127.0.0.1', port: echoPort });
    const a = await open();
    a.socket.write('ping');
    await a.waitFor('ping');
    expect(echoSockets.size).toBe(1);

    proxy.cut('reset');
    expect(proxy.mode).toBe('reset');
    expect((await a.closed).error).toBe('ECONNRESET');
    await eventually(() => echoSockets.size === 0, 'the upstream side closed');
    expect(proxy.connections).toBe(0);

    // A new connection is accepted and reset at once; nothing reaches the target.
    const before = proxy.accepted;
    const b = await dial(proxy.port).then(
      (c) => {
        clients.push(c);
        c.socket.write('lost');
        return c.closed;
      },
      (err: unknown) => ({ error: (err as NodeJS.ErrnoException).code }),
    );
    expect(b.error).toBe('ECONNRESET');
    expect(proxy.accepted).toBe(before + 1);
    expect(echoSockets.size).toBe(0);

    // Restored on the same port.
    proxy.restore();
    const c = await open();
    c.socket.write('back');
    await c.waitFor('back');
    expect(proxy.connections).toBe(1);
  });

  it('blackhole: holds connections open while nothing moves; restore delivers what was held', async () => {
    proxy = await startFaultProxy({ host: '127.0.0.1', port: echoPort });
    const a = await open();
    a.socket.write('one;');
    await a.waitFor('one;');

    proxy.cut('blackhole');
    expect(proxy.mode).toBe('blackhole');
    a.socket.write('two;');
    // A new connection is accepted but does not reach the target.
    const b = await open();
    b.socket.write('three;');
    await sleep(300);
    expect(a.text()).toBe('one;');
    expect(b.text()).toBe('');
    expect(a.isClosed()).toBe(false);
    expect(b.isClosed()).toBe(false);
    expect(proxy.connections).toBe(2);
    expect(echoSockets.size).toBe(1);

    proxy.restore();
    await a.waitFor('one;two;');
    await b.waitFor('three;');
    expect(a.text()).toBe('one;two;');
    expect(b.text()).toBe('three;');
    expect(echoSockets.size).toBe(2);
  });

  it('reset after a blackhole closes the held connections too', async () => {
    proxy = await startFaultProxy({ host: '127.0.0.1', port: echoPort });
    const a = await open();
    proxy.cut('blackhole');
    const b = await open();
    await eventually(() => proxy.connections === 2, 'two held connections');
    proxy.cut('reset');
    expect((await a.closed).error).toBe('ECONNRESET');
    expect((await b.closed).error).toBe('ECONNRESET');
    expect(proxy.connections).toBe(0);
  });

  it('close: ends every connection and frees the port', async () => {
    proxy = await startFaultProxy({ host: '127.0.0.1', port: echoPort });
    const a = await open();
    a.socket.write('x');
    await a.waitFor('x');
    await proxy.close();
    await a.closed;
    await expect(dial(proxy.port)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    proxy = await startFaultProxy({ host: '127.0.0.1', port: echoPort }); // for afterEach
  });
});
