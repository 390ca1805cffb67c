/**
 * A TCP proxy to put in front of a shared server (PostgreSQL, Redis) so that a test can fail the
 * network between Portcullis and that server without stopping the server, which other tests use.
 *
 * - `forward` (the start and after `restore()`): bytes flow both ways.
 * - `cut('reset')`: every open connection is reset on both sides, and new ones are accepted and
 *   reset at once (the port stays bound, so `restore()` needs no new address).
 * - `cut('blackhole')`: a partition or a hung server. Open connections stop moving bytes (reads are
 *   paused, so TCP flow control stalls the sender; nothing is lost), new connections are accepted
 *   and held without reaching the target, and nothing is closed towards the client. `restore()`
 *   resumes the held bytes in order and connects the held clients to the target.
 */
import { once } from 'node:events';
import { connect, createServer } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';

export type CutMode = 'reset' | 'blackhole';
export type ProxyMode = 'forward' | CutMode;

export interface FaultProxy {
  readonly host: '127.0.0.1';
  readonly port: number;
  /** `127.0.0.1:PORT`, to put in a URL in place of the target's host and port. */
  readonly address: string;
  readonly target: { readonly host: string; readonly port: number };
  readonly mode: ProxyMode;
  /** Client connections open now. */
  readonly connections: number;
  /** Client connections accepted since the start (including those reset at once). */
  readonly accepted: number;
  /** Fails the path to the target (default `reset`); see the file comment. */
  cut(mode?: CutMode): void;
  /** Back to forwarding. */
  restore(): void;
  /** Destroys every connection and stops listening. */
  close(): Promise<void>;
}

interface Pair {
  readonly client: Socket;
  /** Undefined while a client accepted during a blackhole waits for `restore()`. */
  upstream: Socket | undefined;
  /** The target closed its side during a blackhole; the client learns at `restore()`. */
  upstreamGone: boolean;
}

export async function startFaultProxy(target: { host: string; port: number }): Promise<FaultProxy> {
  let mode: ProxyMode = 'forward';
  let accepted = 0;
  const pairs = new Set<Pair>();

  // resetAndDestroy() on a half-closed socket leaves Node 24 spinning: destroy those instead.
  const kill = (s: Socket) => (s.writableEnded ? s.destroy() : s.resetAndDestroy());
  const drop = (pair: Pair) => {
    pairs.delete(pair);
    kill(pair.client);
    if (pair.upstream !== undefined) kill(pair.upstream);
  };

  /** Copies `from` to `to` while forwarding, with backpressure; pauses otherwise. */
  const relay = (from: Socket, to: Socket) => {
    from.on('data', (chunk: Buffer) => {
      if (!to.write(chunk)) {
        from.pause();
        to.once('drain', () => {
          if (mode === 'forward') from.resume();
        });
      }
    });
    from.on('end', () => {
      if (!to.destroyed) to.end();
    });
  };

  const attach = (pair: Pair) => {
    const { client } = pair;
    const upstream = connect({ host: target.host, port: target.port });
    pair.upstream = upstream;
    upstream.on('error', () => undefined);
    upstream.on('close', (hadError) => {
      if (mode === 'blackhole') pair.upstreamGone = true;
      else if (hadError) drop(pair);
      else if (!client.destroyed) client.end(); // after the bytes already relayed
    });
    relay(client, upstream);
    relay(upstream, client);
    if (mode === 'blackhole') upstream.pause();
  };

  const server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (client) => {
    accepted += 1;
    client.on('error', () => undefined);
    if (mode === 'reset') {
      client.resetAndDestroy();
      return;
    }
    const pair: Pair = { client, upstream: undefined, upstreamGone: false };
    pairs.add(pair);
    client.on('close', (hadError) => {
      pairs.delete(pair);
      if (hadError && pair.upstream !== undefined) kill(pair.upstream);
      else pair.upstream?.end();
    });
    if (mode === 'forward') {
      attach(pair);
      client.resume();
    }
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;

  return {
    host: '127.0.0.1',
    port,
    address: `127.0.0.1:${String(port)}`,
    target: { host: target.host, port: target.port },
    get mode() {
      return mode;
    },
    get connections() {
      return pairs.size;
    },
    get accepted() {
      return accepted;
    },
    cut(next: CutMode = 'reset') {
      mode = next;
      for (const pair of [...pairs]) {
        if (next === 'reset') drop(pair);
        else {
          pair.client.pause();
          pair.upstream?.pause();
        }
      }
    },
    restore() {
      mode = 'forward';
      for (const pair of [...pairs]) {
        if (pair.upstreamGone) drop(pair);
        else {
          if (pair.upstream === undefined) attach(pair);
          pair.upstream?.resume();
          pair.client.resume();
        }
      }
    },
    close: async () => {
      mode = 'reset';
      for (const pair of [...pairs]) drop(pair);
      await new Promise<void>((ok) => server.close(() => ok()));
    },
  };
}
