/**
 * HTTP/2 abuse limits (after nginx and Envoy's answers to CVE-2023-44487, "rapid reset"):
 *
 * - `SETTINGS_MAX_CONCURRENT_STREAMS` is advertised, so a client cannot open unbounded streams;
 * - a stream the client resets within a second of opening it is "premature" (Envoy's rule); a
 *   connection whose client reset `maxResets` streams prematurely, and more than it let complete,
 *   is closed with GOAWAY `ENHANCE_YOUR_CALM`; a source whose connections did so `4 × maxResets`
 *   times within 10 s is refused new connections for the next 10 s;
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

export function guardHttp2(
  server: Http2SecureServer,
  options: Http2GuardOptions,
  hooks: Http2GuardHooks = {},
): Http2Guard {
  const penaltyMs = options.penaltyMs ?? 10_000;
  const sourceBudget = options.maxResets * 4;
  /** Premature resets per source in the current window, and sources penalised until a time. */
  let resetsBySource = new Map<string, number>();
  const penalties = new Map<string, number>();

  server.updateSettings({ maxConcurrentStreams: options.maxConcurrentStreams });

  const penalized = (ip: string): boolean => {
    const until = penalties.get(ip);
    if (until === undefined) return false;
    if (until > Date.now()) return true;
    penalties.delete(ip);
    return false;
  };

  /** GOAWAY ENHANCE_YOUR_CALM (new streams refused from here on), then the connection ends. */
  const closeSession = (session: Http2Session) => {
    try {
      session.goaway(constants.NGHTTP2_ENHANCE_YOUR_CALM);
      setTimeout(() => {
        session.destroy();
      }, 100).unref();
    } catch {
      session.destroy();
    }
  };

  const onStream = (
    ip: string,
    session: Http2Session,
    counts: { premature: number; completed: number; closing: boolean },
  ) => {
    return (stream: ServerHttp2Stream) => {
      const opened = Date.now();
      let aborted = false;
      let timedOut = false;
      stream.once('aborted', () => {
        aborted = true;
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
        if (!aborted || stream.rstCode === constants.NGHTTP2_NO_ERROR) {
          counts.completed += 1;
          return;
        }
        if (Date.now() - opened >= PREMATURE_MS) return;
        counts.premature += 1;
        const bySource = (resetsBySource.get(ip) ?? 0) + 1;
        if (resetsBySource.has(ip) || resetsBySource.size < MAX_TRACKED_SOURCES)
          resetsBySource.set(ip, bySource);
        const overSource = bySource >= sourceBudget;
        if (overSource && !penalized(ip)) penalties.set(ip, Date.now() + penaltyMs);
        if ((counts.premature >= options.maxResets && counts.premature > counts.completed) || overSource) {
          if (!counts.closing && !session.destroyed) {
            counts.closing = true;
            hooks.resetFlood?.(ip, overSource);
            closeSession(session);
          }
        }
      };
    };
  };

  server.on('session', (session: Http2Session) => {
    const ip = sourceKey(session.socket.remoteAddress);
    if (penalized(ip)) {
      closeSession(session);
      return;
    }
    session.on('stream', onStream(ip, session, { premature: 0, completed: 0, closing: false }));
  });

  const window = setInterval(() => {
    resetsBySource = new Map();
    const now = Date.now();
    for (const [ip, until] of penalties) if (until <= now) penalties.delete(ip);
  }, penaltyMs);
  window.unref();

  return {
    penalized,
    stop() {
      clearInterval(window);
    },
  };
}
