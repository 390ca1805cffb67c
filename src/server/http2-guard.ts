/**
 * HTTP/2 abuse limits (after nginx and Envoy's answers to CVE-2023-44487, "rapid reset"):
 *
 * - `SETTINGS_MAX_CONCURRENT_STREAMS` is advertised, so a client cannot open unbounded streams;
 * - a stream the client resets within a second of opening it is "premature" (Envoy's rule); a
 *   connection whose client reset `maxResets` streams prematurely, and more than it let complete,
 *   is closed with GOAWAY `ENHANCE_YOUR_CALM`; a source whose connections reset `4 × maxResets`
 *   streams prematurely within 10 s, or had two connections closed so, is refused new connections
 *   (destroyed at accept, before any TLS work) for 10 s, doubled for each repeat within a minute
 *   up to 5 minutes;
 * - no work is queued for a stream its client already reset: a new connection has at most 8
 *   streams in the request handler at once until it has completed 16, a connection whose
 *   premature resets are more than half its completed streams 2; further streams wait for the
 *   frames read with them to be processed (one `setImmediate`) and are dropped if reset
 *   meanwhile or if the connection is being closed. A connection within its allowance is
 *   dispatched at once, at no cost. Before, each reset stream ran the whole pipeline and an
 *   upstream request behind which legitimate requests queued (and the upstream pool grew by a
 *   connection for each);
 * - a stream whose client has not finished sending the request within `requestMs` is answered 408
 *   (or reset if the response had begun): HTTP/1.1's `requestTimeout` for HTTP/2.
 *
 * @example
 * ```ts
 * const h2 = guardHttp2(server, { maxConcurrentStreams: 100, maxResets: 100, requestMs: 30_000 }, hooks);
 * guardConnections(server, limits, { penalized: h2.penalized });
 * ```
 */
import { randomUUID } from 'node:crypto';
import { constants } from 'node:http2';
import type { Http2SecureServer, Http2Session, ServerHttp2Stream } from 'node:http2';
import { problemBody } from '../gateway/problems.ts';
import { securityHeaderObject } from '../gateway/stages/headers/index.ts';
import { sourceKey } from './connection-guard.ts';

export interface Http2GuardOptions {
  /** Streams a client may have open at once on one connection. */
  readonly maxConcurrentStreams: number;
  /** Premature resets after which a connection is closed (when they outnumber completed streams). */
  readonly maxResets: number;
  /** Time for a client to send a whole request on a stream. */
  readonly requestMs: number;
  /** How long a source stays refused after a reset flood (default 10 s). */
  readonly penaltyMs?: number;
  /** The correlation header the 408 answer carries. */
  readonly correlationHeader: () => string;
}

export interface Http2GuardHooks {
  /** A connection was closed for resetting streams; `source` began a penalty when true. */
  readonly resetFlood?: (ip: string, penalized: boolean) => void;
  /** A stream timed out waiting for its request body. */
  readonly streamTimeout?: () => void;
}

export interface Http2Guard {
  /** True while connections from this source are refused after a reset flood. */
  readonly penalized: (ip: string) => boolean;
  stop(): void;
}

/** A reset within this long of opening the stream is premature (Envoy's default). */
const PREMATURE_MS = 1_000;
const MAX_TRACKED_SOURCES = 4096;
/** Connections closed for resets from one source within the window before it is penalised. */
const CLOSED_SESSIONS_BUDGET = 2;
/** A repeat offence within this long doubles the penalty, up to `MAX_PENALTY_MS`. */
const REPEAT_MS = 60_000;
const MAX_PENALTY_MS = 300_000;
/** Streams of a suspect connection served at once. */
const SUSPECT_INFLIGHT = 2;
/** Streams of a connection served at once until it has completed `TRUSTED_AFTER` streams. */
const NEW_SESSION_INFLIGHT = 8;
const TRUSTED_AFTER = 16;

interface SessionState {
  premature: number;
  completed: number;
  /** GOAWAY sent: nothing more is dispatched. */
  closing: boolean;
  /**
   * Streams reset within `PREMATURE_MS`, counted as the reset is read (before `close`). While
   * they are more than half the completed streams the connection is suspect: new streams wait in
   * `queue` until the read they came in was processed and fewer than `SUSPECT_INFLIGHT` of its
   * streams are being served. (A client that cancels a request now and then is not.)
   */
  earlyResets: number;
  /** Streams handed to the request handler and not closed yet. */
  inflight: number;
  queue: { stream: ServerHttp2Stream; rest: unknown[] }[];
  /** A `pump` is scheduled. */
  pumping: boolean;
}

type StreamListener = (stream: ServerHttp2Stream, ...rest: unknown[]) => void;

export function guardHttp2(
  server: Http2SecureServer,
  options: Http2GuardOptions,
  hooks: Http2GuardHooks = {},
): Http2Guard {
  const penaltyMs = options.penaltyMs ?? 10_000;
  const sourceBudget = options.maxResets * 4;
  /** Premature resets and connections closed for them per source in the current window. */
  let resetsBySource = new Map<string, number>();
  let closedBySource = new Map<string, number>();
  /** Sources refused until a time, and their last penalty (for repeat offences). */
  const penalties = new Map<string, number>();
  const lastPenalty = new Map<string, { at: number; ms: number }>();
  const sessions = new WeakMap<Http2Session, SessionState>();

  server.updateSettings({ maxConcurrentStreams: options.maxConcurrentStreams });

  const penalized = (ip: string): boolean => {
    const until = penalties.get(ip);
    if (until === undefined) return false;
    if (until > Date.now()) return true;
    penalties.delete(ip);
    return false;
  };

  const penalize = (ip: string) => {
    if (penalized(ip)) return;
    const now = Date.now();
    const last = lastPenalty.get(ip);
    const ms =
      last !== undefined && now - last.at < last.ms + REPEAT_MS
        ? Math.min(MAX_PENALTY_MS, last.ms * 2)
        : penaltyMs;
    if (penalties.size < MAX_TRACKED_SOURCES) penalties.set(ip, now + ms);
    if (lastPenalty.has(ip) || lastPenalty.size < MAX_TRACKED_SOURCES) lastPenalty.set(ip, { at: now, ms });
  };

  const bump = (map: Map<string, number>, ip: string): number => {
    const n = (map.get(ip) ?? 0) + 1;
    if (map.has(ip) || map.size < MAX_TRACKED_SOURCES) map.set(ip, n);
    return n;
  };

  /** GOAWAY ENHANCE_YOUR_CALM (new streams refused from here on), then the connection ends. */
  const closeSession = (session: Http2Session) => {
    try {
      session.goaway(constants.NGHTTP2_ENHANCE_YOUR_CALM);
      // Long enough for the GOAWAY to leave, short enough that the client's frames already in
      // flight are not read (each costs header decoding).
      setTimeout(() => {
        session.destroy();
      }, 20).unref();
    } catch {
      session.destroy();
    }
  };

  // The compatibility layer's `stream` listener (it makes the request and response objects and
  // emits `request`) runs only for streams still worth serving (see the module comment).
  const dispatch = server.listeners('stream') as StreamListener[];
  server.removeAllListeners('stream');
  const ignore = () => undefined;
  /** Hands a stream to the request handler, unless it was reset or its connection is closing. */
  const run = (stream: ServerHttp2Stream, rest: unknown[], state: SessionState | undefined): boolean => {
    try {
      if (stream.destroyed || stream.closed) return false;
      if (state?.closing === true) {
        stream.close(constants.NGHTTP2_REFUSED_STREAM);
        return false;
      }
      if (state !== undefined) {
        state.inflight += 1;
        stream.once('close', () => {
          state.inflight -= 1;
          schedule(state);
        });
      }
    } catch {
      stream.destroy();
      return false;
    }
    for (const listener of dispatch) listener.call(server, stream, ...rest);
    return true;
  };
  /** Streams a connection may have in the request handler at once (see the module comment). */
  const allowance = (state: SessionState): number =>
    state.earlyResets * 2 > state.completed
      ? SUSPECT_INFLIGHT
      : state.completed >= TRUSTED_AFTER
        ? Number.POSITIVE_INFINITY
        : NEW_SESSION_INFLIGHT;
  /** Dispatches queued streams (dropping those reset meanwhile) while the allowance lets it. */
  const pump = (state: SessionState) => {
    state.pumping = false;
    while (state.inflight < allowance(state)) {
      const next = state.queue.shift();
      if (next === undefined) return;
      run(next.stream, next.rest, state);
    }
  };
  const schedule = (state: SessionState) => {
    if (state.pumping || state.queue.length === 0) return;
    state.pumping = true;
    setImmediate(pump, state);
  };
  server.on('stream', (stream: ServerHttp2Stream, ...rest: unknown[]) => {
    // A stream that is never dispatched has no other listener: its reset must not throw.
    stream.on('error', ignore);
    const state = sessions.get(stream.session as Http2Session);
    if (state === undefined || (state.queue.length === 0 && state.inflight < allowance(state))) {
      run(stream, rest, state);
      return;
    }
    // At most maxConcurrentStreams wait (the protocol's own bound); they are served after the
    // read they came in was processed, so a reset read with them removes them first.
    state.queue.push({ stream, rest });
    schedule(state);
  });

  const onStream = (ip: string, session: Http2Session, counts: SessionState) => {
    return (stream: ServerHttp2Stream) => {
      const opened = Date.now();
      let aborted = false;
      let timedOut = false;
      stream.once('aborted', () => {
        aborted = true;
        // Emitted as the RST_STREAM is read, before `close`: the next stream read with it is
        // already deferred.
        if (Date.now() - opened < PREMATURE_MS) counts.earlyResets += 1;
      });
      const timer = setTimeout(() => {
        try {
          if (stream.destroyed || stream.state.remoteClose === 1) return;
          timedOut = true;
          hooks.streamTimeout?.();
          if (stream.headersSent) {
            stream.close(constants.NGHTTP2_CANCEL);
            return;
          }
          const id = randomUUID();
          const body = JSON.stringify(problemBody('request-timeout', id));
          stream.respond({
            ...securityHeaderObject({ authenticated: false, error: true }),
            ':status': 408,
            'content-type': 'application/problem+json',
            'content-length': String(Buffer.byteLength(body)),
            [options.correlationHeader()]: id,
          });
          stream.end(body, () => {
            stream.close(constants.NGHTTP2_NO_ERROR);
          });
        } catch {
          stream.destroy();
        }
      }, options.requestMs);
      timer.unref();
      stream.once('close', () => {
        clearTimeout(timer);
        try {
          countClose();
        } catch {
          // counting never takes the listener down
        }
      });
      const countClose = () => {
        if (timedOut) return;
        // `aborted`: closed by the client before the response ended (dispatched or not).
        if (!aborted || stream.rstCode === constants.NGHTTP2_NO_ERROR) {
          counts.completed += 1;
          return;
        }
        if (Date.now() - opened >= PREMATURE_MS) return;
        counts.premature += 1;
        const bySource = bump(resetsBySource, ip);
        let overSource = bySource >= sourceBudget;
        if ((counts.premature >= options.maxResets && counts.premature > counts.completed) || overSource) {
          if (!counts.closing && !session.destroyed) {
            counts.closing = true;
            if (bump(closedBySource, ip) >= CLOSED_SESSIONS_BUDGET) overSource = true;
            if (overSource) penalize(ip);
            hooks.resetFlood?.(ip, overSource);
            closeSession(session);
          }
        }
      };
    };
  };

  server.on('session', (session: Http2Session) => {
    const ip = sourceKey(session.socket.remoteAddress);
    const state: SessionState = {
      premature: 0,
      completed: 0,
      closing: false,
      earlyResets: 0,
      inflight: 0,
      queue: [],
      pumping: false,
    };
    sessions.set(session, state);
    if (penalized(ip)) {
      state.closing = true;
      closeSession(session);
      return;
    }
    session.on('stream', onStream(ip, session, state));
  });

  const window = setInterval(() => {
    resetsBySource = new Map();
    closedBySource = new Map();
    const now = Date.now();
    for (const [ip, until] of penalties) if (until <= now) penalties.delete(ip);
    for (const [ip, last] of lastPenalty) if (now - last.at > last.ms + REPEAT_MS) lastPenalty.delete(ip);
  }, penaltyMs);
  window.unref();

  return {
    penalized,
    stop() {
      clearInterval(window);
    },
  };
}
