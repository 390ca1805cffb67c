/**
 * The connection guard: what a listener admits before any TLS or HTTP work is done for a
 * connection (after Envoy's connection limits and overload manager).
 *
 * - a total cap and a per-source-IP cap on open connections, and a smaller per-source cap on
 *   unfinished TLS handshakes (a quarter of the per-source cap, at least 64); the excess is
 *   destroyed at accept, before the TLS handshake;
 * - under pressure (from the cap three-quarters full until it is below half, or descriptors
 *   short) an unfinished handshake
 *   gets 1 s instead of `handshakeTimeout` when its source holds more than its share of the cap,
 *   3 s otherwise: idle connections of the heaviest sources go first;
 * - under file-descriptor pressure (an `EMFILE`/`ENFILE` from accept, or open descriptors near the
 *   soft `RLIMIT_NOFILE`, sampled on a timer from `/proc/self/fd`) new connections are refused
 *   while the open ones are served; the total cap is itself bounded by the descriptor limit;
 * - a TLS handshake that fails or times out destroys its socket (Node's `handshakeTimeout` runs
 *   from accept, so a client that never sends a ClientHello is covered), never a plaintext answer;
 * - refusals are counted per connection (a metric) but reported once per window, with counts per
 *   reason and the busiest sources, never one log line or audit event per connection.
 *
 * Every callback here is total: nothing a client does can make it throw out of the process.
 *
 * @example
 * ```ts
 * const guard = guardConnections(server, { listener: 'gateway', maxConnections: 4096, perIp: 256 }, hooks);
 * // …on forced shutdown:
 * guard.destroyAll();
 * ```
 */
import { readdirSync, readFileSync } from 'node:fs';
import type { Server, Socket } from 'node:net';
import { Server as TlsServer } from 'node:tls';
import { canonicalIp } from '../gateway/forwarded.ts';

/** Why a connection was refused or dropped by the guard. */
export const CONNECTION_REFUSALS = [
  'connection-limit',
  'source-limit',
  'fd-pressure',
  'accept-failed',
  'handshake-failed',
  'handshake-evicted',
  'handshake-limit',
  'source-penalized',
] as const;
export type ConnectionRefusal = (typeof CONNECTION_REFUSALS)[number];

export interface ConnectionGuardOptions {
  /** A label for metrics and logs: `gateway`, `admin`, `redirect`. */
  readonly listener: string;
  /** Connections open at once on this listener (further bounded by the descriptor limit). */
  readonly maxConnections: number;
  /** Connections open at once from one source address. */
  readonly perIp: number;
  /** Refusals are summarised once per window (default 10 s). */
  readonly windowMs?: number;
  /**
   * The HTTP/1.1 timeout checker's period (Node's default is 30 s, so a 10 s `headersTimeout`
   * fired at up to 40 s). Set before `listen`; default 1 s.
   */
  readonly connectionsCheckingIntervalMs?: number;
}

/** A window's refusals: counts per reason and the sources refused most. */
export interface RefusalSummary {
  readonly listener: string;
  readonly windowMs: number;
  readonly total: number;
  readonly reasons: Partial<Record<ConnectionRefusal, number>>;
  /** Up to five sources with their refusal counts, most first. */
  readonly topSources: readonly { ip: string; count: number }[];
}

export interface ConnectionGuardHooks {
  /** One connection refused (cheap: a counter). */
  readonly refused?: (listener: string, reason: ConnectionRefusal) => void;
  /** At most once per window, when something was refused in it. */
  readonly summary?: (summary: RefusalSummary) => void;
  /** A server error that is not an accept failure (logged; never thrown). */
  readonly error?: (err: unknown) => void;
  /** True while new connections from `ip` are refused (e.g. after an HTTP/2 reset flood). */
  readonly penalized?: (ip: string) => boolean;
}

export interface ConnectionGuard {
  /** Connections open now. */
  readonly open: () => number;
  /** The total cap in force (the configured one, bounded by the descriptor limit). */
  readonly effectiveMax: number;
  /** Destroys every connection still open (forced shutdown). */
  destroyAll(): void;
  /** Stops the timers (the server's own close still closes connections). */
  stop(): void;
}

const MAX_TRACKED_SOURCES = 1024;
/** Under pressure: how long an unfinished handshake may last (source above its share, others). */
const PRESSURE_HANDSHAKE_MS = 1_000;
const PRESSURE_HANDSHAKE_FAIR_MS = 3_000;
/** The listen backlog the listeners ask for (the kernel caps it at `net.core.somaxconn`). */
export const LISTEN_BACKLOG = 4096;

/** Unfinished TLS handshakes one source may hold: all of a small per-source cap, else a quarter. */
export function pendingPerSource(perIp: number): number {
  return Math.min(perIp, Math.max(64, Math.floor(perIp / 4)));
}
/** Unfinished handshakes looked at, oldest first, for one to evict at the cap. */
const EVICTION_SCAN = 64;

/**
 * The key a source is counted under: an IPv4 address, or the /64 of an IPv6 address (one
 * subscriber usually holds a whole /64).
 */
export function sourceKey(remoteAddress: string | undefined): string {
  const ip = canonicalIp(remoteAddress ?? '');
  if (!ip.includes(':')) return ip;
  const [head = '', tail] = ip.toLowerCase().split('::', 2);
  const left = head === '' ? [] : head.split(':');
  const right = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups =
    tail === undefined
      ? left
      : [...left, ...Array<string>(Math.max(0, 8 - left.length - right.length)).fill('0'), ...right];
  return `${groups
    .slice(0, 4)
    .map((g) => g.replace(/^0+(?=.)/, ''))
    .join(':')}::/64`;
}

/** The soft open-files limit from /proc/self/limits, or undefined off Linux. */
export function openFileLimit(): number | undefined {
  try {
    const text = readFileSync('/proc/self/limits', 'utf8');
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(text);
    if (m?.[1] === undefined || m[1] === 'unlimited') return undefined;
    return Number(m[1]);
  } catch {
    return undefined;
  }
}

/** Open descriptors of this process, or undefined when it cannot be read (EMFILE counts as full). */
function openFileCount(): number | 'exhausted' | undefined {
  try {
    return readdirSync('/proc/self/fd').length;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === 'EMFILE' || code === 'ENFILE' ? 'exhausted' : undefined;
  }
}

/**
 * Descriptors kept back from connections: the store, the audit files, upstream sockets (each
 * proxied request may hold one), the process's own. A connection is counted as two descriptors.
 */
export function descriptorBound(limit: number | undefined): { maxConnections: number; headroom: number } {
  if (limit === undefined) return { maxConnections: Number.MAX_SAFE_INTEGER, headroom: 0 };
  const headroom = Math.max(32, Math.floor(limit / 16));
  return { maxConnections: Math.max(16, Math.floor((limit - 2 * headroom) / 2)), headroom };
}

/** One sampler per process, shared by every guarded listener. */
let fdState: { pressure: boolean; users: number; timer: NodeJS.Timeout | undefined } = {
  pressure: false,
  users: 0,
  timer: undefined,
};

function startFdSampler(limit: number | undefined, headroom: number): void {
  fdState.users += 1;
  if (fdState.timer !== undefined || limit === undefined) return;
  const sample = () => {
    try {
      const count = openFileCount();
      fdState.pressure = count === 'exhausted' || (count !== undefined && count >= limit - headroom);
    } catch {
      fdState.pressure = true;
    }
  };
  sample();
  fdState.timer = setInterval(sample, 1_000);
  fdState.timer.unref();
}

function stopFdSampler(): void {
  fdState.users -= 1;
  if (fdState.users <= 0 && fdState.timer !== undefined) {
    clearInterval(fdState.timer);
    fdState = { pressure: false, users: 0, timer: undefined };
  }
}

/** True while the process is short of file descriptors (read by tests and the load shedder). */
export function underFdPressure(): boolean {
  return fdState.pressure;
}

/**
 * Attaches the guard to a listening-to-be server (net, tls, https, http2 secure). It takes over
 * the server's `connection` listeners so that a refused connection never reaches them.
 */
export function guardConnections(
  server: Server,
  options: ConnectionGuardOptions,
  hooks: ConnectionGuardHooks = {},
): ConnectionGuard {
  const limit = openFileLimit();
  const bound = descriptorBound(limit);
  const effectiveMax = Math.min(options.maxConnections, bound.maxConnections);
  // One source never holds more than a quarter of the total cap (which the descriptor limit may
  // have lowered), so a few sources cannot take every slot.
  const perIp = Math.max(1, Math.min(options.perIp, Math.floor(effectiveMax / 4)));
  const pendingPerIp = pendingPerSource(perIp);
  const windowMs = options.windowMs ?? 10_000;
  startFdSampler(limit, bound.headroom);

  /** Open connections (insertion order) with their source. */
  const sockets = new Map<Socket, string>();
  const perSource = new Map<string, number>();
  let reasons: Partial<Record<ConnectionRefusal, number>> = {};
  let refusedTotal = 0;
  let refusedBySource = new Map<string, number>();

  const refuse = (reason: ConnectionRefusal, ip: string | undefined) => {
    refusedTotal += 1;
    reasons[reason] = (reasons[reason] ?? 0) + 1;
    if (ip !== undefined) {
      const key = refusedBySource.has(ip) || refusedBySource.size < MAX_TRACKED_SOURCES ? ip : 'other';
      refusedBySource.set(key, (refusedBySource.get(key) ?? 0) + 1);
    }
    try {
      hooks.refused?.(options.listener, reason);
    } catch {
      // a hook never takes the listener down
    }
  };

  const release = (socket: Socket) => {
    const ip = sockets.get(socket);
    settle(socket);
    if (ip === undefined || !sockets.delete(socket)) return;
    const n = (perSource.get(ip) ?? 1) - 1;
    if (n <= 0) perSource.delete(ip);
    else perSource.set(ip, n);
  };

  /**
   * TLS connections whose handshake has not completed, oldest first. At the cap (or under fd
   * pressure) a connection from a source holding less than its fair share (the cap divided among
   * the sources connected) takes the place of the oldest unfinished handshake of a source holding
   * more: a flood of silent connections from a few sources cannot keep out everyone else, and a
   * connection that completed its handshake is never evicted.
   */
  const pending = new Map<Socket, number>();
  const pendingBySource = new Map<string, number>();
  const evicted = new WeakSet<Socket>();
  /** The handshake ended (completed, failed, or the socket closed). */
  const settle = (socket: Socket) => {
    if (!pending.delete(socket)) return;
    const ip = sockets.get(socket);
    if (ip === undefined) return;
    const n = (pendingBySource.get(ip) ?? 1) - 1;
    if (n <= 0) pendingBySource.delete(ip);
    else pendingBySource.set(ip, n);
  };
  const evict = (socket: Socket, owner: string) => {
    release(socket);
    evicted.add(socket);
    refuse('handshake-evicted', owner);
    socket.destroy();
  };
  const isTls = server instanceof TlsServer;
  const evictForFairShare = (ip: string): boolean => {
    const sources = perSource.size + (perSource.has(ip) ? 0 : 1);
    const fair = Math.max(1, Math.floor(effectiveMax / sources));
    if ((perSource.get(ip) ?? 0) >= fair) return false;
    let looked = 0;
    for (const socket of pending.keys()) {
      if (++looked > EVICTION_SCAN) break;
      const owner = sockets.get(socket);
      if (owner === undefined || (perSource.get(owner) ?? 0) <= fair) continue;
      evict(socket, owner);
      return true;
    }
    return false;
  };
  /** Under pressure, unfinished handshakes past the shorter deadlines end, oldest first. */
  let pressed = false;
  const sweep = () => {
    // Pressure begins at three-quarters of the cap and lasts until below half (no flapping).
    pressed = fdState.pressure || sockets.size >= (pressed ? effectiveMax / 2 : (effectiveMax * 3) / 4);
    if (pending.size === 0 || !pressed) return;
    const now = Date.now();
    const fair = Math.max(1, Math.floor(effectiveMax / Math.max(1, perSource.size)));
    for (const [socket, acceptedAt] of pending) {
      const age = now - acceptedAt;
      if (age < PRESSURE_HANDSHAKE_MS) break; // oldest first: the rest are younger
      const owner = sockets.get(socket);
      if (owner === undefined) continue;
      if ((perSource.get(owner) ?? 0) > fair || age >= PRESSURE_HANDSHAKE_FAIR_MS) evict(socket, owner);
    }
  };
  if (isTls) {
    server.on('secureConnection', (tlsSocket: Socket & { _parent?: Socket }) => {
      // Node keeps the accepted socket as `_parent` of the TLS socket.
      if (tlsSocket._parent !== undefined) settle(tlsSocket._parent);
    });
  }

  const admission = (ip: string): ConnectionRefusal | undefined => {
    if ((perSource.get(ip) ?? 0) >= perIp) return 'source-limit';
    if (isTls && (pendingBySource.get(ip) ?? 0) >= pendingPerIp) return 'handshake-limit';
    if (hooks.penalized?.(ip) === true) return 'source-penalized';
    const full = sockets.size >= effectiveMax;
    if ((full || fdState.pressure) && !evictForFairShare(ip))
      return full ? 'connection-limit' : 'fd-pressure';
    return undefined;
  };

  const original = server.listeners('connection') as ((socket: Socket) => void)[];
  server.removeAllListeners('connection');
  server.on('connection', (socket: Socket) => {
    const ip = sourceKey(socket.remoteAddress);
    const reason = admission(ip);
    if (reason !== undefined) {
      refuse(reason, ip);
      socket.on('error', () => undefined);
      socket.destroy();
      return;
    }
    sockets.set(socket, ip);
    if (isTls) {
      pending.set(socket, Date.now());
      pendingBySource.set(ip, (pendingBySource.get(ip) ?? 0) + 1);
    }
    perSource.set(ip, (perSource.get(ip) ?? 0) + 1);
    socket.once('close', () => {
      release(socket);
    });
    for (const listener of original) listener.call(server, socket);
  });

  // A failed or timed-out handshake: destroy, before any `clientError` handler could try to
  // answer in plaintext on a socket that never became TLS (it would stay in CLOSE-WAIT).
  server.prependListener('tlsClientError', (_err: unknown, socket: Socket & { _parent?: Socket }) => {
    if (socket._parent === undefined || !evicted.has(socket._parent)) {
      refuse('handshake-failed', sourceKey(socket.remoteAddress));
    }
    socket.destroy();
  });

  // accept(2) failing (EMFILE, ENFILE, ENOBUFS) is emitted as a server 'error': without a
  // listener it would end the process.
  server.on('error', (err: NodeJS.ErrnoException) => {
    if (err.syscall === 'accept') {
      if (err.code === 'EMFILE' || err.code === 'ENFILE') fdState.pressure = true;
      refuse('accept-failed', undefined);
      return;
    }
    try {
      hooks.error?.(err);
    } catch {
      // never thrown out of an event
    }
  });

  // Node checks HTTP/1.1 headers/request timeouts every `connectionsCheckingInterval` (30 s by
  // default), which made a 10 s setting fire at up to 40 s.
  const checking = server as unknown as { connectionsCheckingInterval?: number };
  checking.connectionsCheckingInterval = options.connectionsCheckingIntervalMs ?? 1_000;

  const sweeper = setInterval(() => {
    try {
      sweep();
    } catch {
      // a sweep that fails is tried again on the next tick
    }
  }, 250);
  sweeper.unref();

  const timer = setInterval(() => {
    try {
      if (refusedTotal === 0) return;
      const topSources = [...refusedBySource.entries()]
        .sort((a, b) => b[1] - a[1])
        .slice(0, 5)
        .map(([ip, count]) => ({ ip, count }));
      const summary: RefusalSummary = {
        listener: options.listener,
        windowMs,
        total: refusedTotal,
        reasons,
        topSources,
      };
      reasons = {};
      refusedTotal = 0;
      refusedBySource = new Map();
      hooks.summary?.(summary);
    } catch {
      // a summary that cannot be written is dropped, the listener keeps serving
    }
  }, windowMs);
  timer.unref();

  let stopped = false;
  return {
    open: () => sockets.size,
    effectiveMax,
    destroyAll() {
      for (const socket of sockets.keys()) socket.destroy();
    },
    stop() {
      if (stopped) return;
      stopped = true;
      clearInterval(timer);
      clearInterval(sweeper);
      stopFdSampler();
    },
  };
}
