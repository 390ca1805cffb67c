/**
 * One hostile flood against a gateway, for bench/floods.ts, in its own process so that its work
 * never delays the legitimate client's measurements. Loopback only, bounded in count and time:
 * it stops by itself after `durationS` and prints one JSON line of counters on stdout.
 *
 *   node bench/flood.ts '<json FloodSpec>'
 *
 * Kinds:
 * - `connections`: up to `count` TCP connections at once, spread over `sources`, that never send
 *   a byte (no ClientHello); one closed by the gateway is reopened after 10 ms.
 * - `rapid-reset`: per source one HTTP/2 session (TLS, ALPN h2) that opens streams
 *   (`GET /v1/status`) and cancels each at once (RST_STREAM), in batches, as fast as the
 *   session's write buffer drains; a session the gateway closes is reopened after 50 ms.
 * - `slow-headers`: up to `count` TLS connections that send a request line and then one header
 *   line every `intervalMs`, never ending the header block (slowloris).
 * - `slow-bodies`: up to `count` TLS connections that send complete headers for a 64 KiB JSON
 *   body (`POST /v1/patients`) and then one body byte every `intervalMs`.
 * For the slow kinds a connection the gateway closes is reopened after 10 ms; `heldMs` is how
 * long the gateway kept it open.
 */
import http2 from 'node:http2';
import type { ClientHttp2Session } from 'node:http2';
import { connect as netConnect } from 'node:net';
import type { Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import type { ConnectionOptions, TLSSocket } from 'node:tls';

export type FloodKind = 'connections' | 'rapid-reset' | 'slow-headers' | 'slow-bodies';

export interface FloodSpec {
  kind: FloodKind;
  host: string;
  port: number;
  servername: string;
  ca: string;
  /** Local addresses to connect from (127.0.0.x). */
  sources: string[];
  durationS: number;
  /** Connections at once (connections, slow kinds); streams per batch (rapid reset). */
  count: number;
  /** Slow kinds: milliseconds between bytes. */
  intervalMs: number;
}

export interface FloodStats {
  kind: FloodKind;
  /** Connections or sessions opened (reopened ones included). */
  opened: number;
  /** The most open at once. */
  peakOpen: number;
  /** Closed by the gateway (or the network) before the flood ended. */
  closedByPeer: number;
  /** Connect or TLS errors by code (EMFILE, ECONNRESET, ECONNREFUSED…). */
  errors: Record<string, number>;
  /** Rapid reset: streams opened and cancelled at once; GOAWAY frames received. */
  streams: number;
  goaways: number;
  /** Slow kinds: how long the gateway held the connections it closed (median and max, ms). */
  heldMedianMs: number | undefined;
  heldMaxMs: number | undefined;
}

const spec = JSON.parse(process.argv[2] ?? '{}') as FloodSpec;
const stats: FloodStats = {
  kind: spec.kind,
  opened: 0,
  peakOpen: 0,
  closedByPeer: 0,
  errors: {},
  streams: 0,
  goaways: 0,
  heldMedianMs: undefined,
  heldMaxMs: undefined,
};
const held: number[] = [];
const open = new Set<{ destroy(): void }>();
let stopping = false;
let next = 0;

const source = (): string => spec.sources[next++ % spec.sources.length] ?? '127.0.0.1';
const countError = (err: unknown) => {
  const code = (err as { code?: unknown }).code;
  const key = typeof code === 'string' ? code : 'other';
  stats.errors[key] = (stats.errors[key] ?? 0) + 1;
};
const opened = (c: { destroy(): void }) => {
  open.add(c);
  stats.opened++;
  stats.peakOpen = Math.max(stats.peakOpen, open.size);
};

/** A raw TCP connection that never speaks. */
function idleConnection(): void {
  let socket: Socket;
  try {
    socket = netConnect({ host: spec.host, port: spec.port, localAddress: source() });
  } catch (err) {
    countError(err);
    return;
  }
  opened(socket);
  socket.on('error', countError);
  socket.on('close', () => {
    open.delete(socket);
    if (stopping) return;
    stats.closedByPeer++;
    setTimeout(idleConnection, 10);
  });
}

/** A TLS connection to the gateway from a local address (tls.connect hands it to net). */
function tlsFrom(localAddress: string, alpn: string): TLSSocket {
  const options: ConnectionOptions & { localAddress: string } = {
    host: spec.host,
    port: spec.port,
    localAddress,
    servername: spec.servername,
    ca: spec.ca,
    ALPNProtocols: [alpn],
  };
  return tlsConnect(options);
}

/** A TLS connection that sends `head` and then one `drip` every intervalMs. */
function slowConnection(head: string, drip: string): void {
  const started = Date.now();
  const socket = tlsFrom(source(), 'http/1.1');
  opened(socket);
  let timer: NodeJS.Timeout | undefined;
  socket.on('secureConnect', () => {
    socket.write(head);
    timer = setInterval(() => socket.write(drip), spec.intervalMs);
  });
  socket.on('data', () => undefined); // an answer (408, 400…) is read and dropped
  socket.on('error', countError);
  socket.on('close', () => {
    clearInterval(timer);
    open.delete(socket);
    if (stopping) return;
    stats.closedByPeer++;
    held.push(Date.now() - started);
    setTimeout(() => slowConnection(head, drip), 10);
  });
}

/** One HTTP/2 session from `from` that opens and cancels streams as fast as it can write. */
function resetSession(from: string): void {
  const authority = `https://${spec.servername}:${String(spec.port)}`;
  let session: ClientHttp2Session;
  try {
    session = http2.connect(authority, {
      createConnection: () => tlsFrom(from, 'h2'),
    });
  } catch (err) {
    countError(err);
    return;
  }
  opened(session);
  session.on('error', countError);
  session.on('goaway', () => stats.goaways++);
  const loop = () => {
    if (stopping || session.closed || session.destroyed) return;
    // Back off while the socket's write buffer is full: the flood is bounded by the wire.
    if ((session.socket as Socket | undefined)?.writableNeedDrain === true) {
      setTimeout(loop, 1);
      return;
    }
    try {
      for (let i = 0; i < spec.count; i++) {
        const stream = session.request({ ':path': '/v1/status' }, { endStream: true });
        stream.on('error', () => undefined);
        stream.close(http2.constants.NGHTTP2_CANCEL);
        stats.streams++;
      }
    } catch (err) {
      countError(err);
      session.destroy();
      return;
    }
    setImmediate(loop);
  };
  session.on('connect', loop);
  session.on('close', () => {
    open.delete(session);
    if (stopping) return;
    stats.closedByPeer++;
    setTimeout(() => resetSession(from), 50);
  });
}

function start(): void {
  switch (spec.kind) {
    case 'connections': {
      // Open in steps so that the listen backlog is not the only thing measured.
      let left = spec.count;
      const step = () => {
        if (stopping) return;
        for (let i = 0; i < 200 && left > 0; i++, left--) idleConnection();
        if (left > 0) setTimeout(step, 20);
      };
      step();
      break;
    }
    case 'rapid-reset':
      for (const from of spec.sources) resetSession(from);
      break;
    case 'slow-headers':
    case 'slow-bodies': {
      const head =
        spec.kind === 'slow-headers'
          ? `GET /v1/status HTTP/1.1\r\nHost: ${spec.servername}\r\n`
          : `POST /v1/patients HTTP/1.1\r\nHost: ${spec.servername}\r\nContent-Type: application/json\r\n` +
            `Content-Length: 65536\r\n\r\n{`;
      const drip = spec.kind === 'slow-headers' ? 'X-Slow: 1\r\n' : ' ';
      let left = spec.count;
      const step = () => {
        if (stopping) return;
        for (let i = 0; i < 50 && left > 0; i++, left--) slowConnection(head, drip);
        if (left > 0) setTimeout(step, 20);
      };
      step();
      break;
    }
  }
}

function finish(): void {
  stopping = true;
  for (const c of open) c.destroy();
  const sorted = held.sort((a, b) => a - b);
  stats.heldMedianMs = sorted[Math.floor(sorted.length / 2)];
  stats.heldMaxMs = sorted.at(-1);
  process.stdout.write(JSON.stringify(stats) + '\n', () => process.exit(0));
}

// Errors are the gateway's answers here (resets, refusals), never a reason to stop early.
process.on('uncaughtException', countError);
process.on('SIGTERM', finish);
setTimeout(finish, spec.durationS * 1000);
start();
