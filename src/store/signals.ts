/**
 * Signals between gateway processes: Redis pub/sub on one channel (`<keyPrefix>signals`).
 *
 * A process publishes what changed in the shared state (a token or API key revoked, signing keys
 * rotated, configuration applied) and every process drops what it
 * cached about it at once. Pub/sub delivers only to subscribers connected at that moment, so
 * a subscriber that lost its connection reports a *resync* when it is back: every cache must
 * then be treated as stale (a message may have been missed). The store stays the source of
 * truth; a signal only shortens the time a cache may be stale.
 *
 * Messages are small JSON documents, checked field by field on receipt; anything else on the
 * channel is ignored and counted. A message carries the publishing process's random id so that
 * a process can ignore its own.
 */
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';

export type Signal =
  /** An access token was revoked until `exp` (epoch seconds). */
  | { readonly kind: 'token-revoked'; readonly jti: string; readonly exp: number }
  /** An API key was revoked, rotated or changed. */
  | { readonly kind: 'api-key-changed'; readonly id: string }
  /** The signing-key set changed (rotation, expiry, algorithm change). */
  | { readonly kind: 'keys-changed' }
  /** A process applied configuration `version`; others re-read theirs. */
  | { readonly kind: 'config-applied'; readonly version: string }
  /** A data subject's consents or opt-outs changed (issue 16); others drop their cached copies. */
  | { readonly kind: 'privacy-changed' };

export type SignalKind = Signal['kind'];

export interface SignalBus {
  /** This process's id in messages (random per process). */
  readonly origin: string;
  /** Whether the subscription is live (signals from others arrive). */
  readonly subscribed: boolean;
  /**
   * Publishes `signal`; resolves false (never rejects) when Redis is unreachable, so that a
   * change already made in the store is not reported as failed.
   */
  publish(signal: Signal): Promise<boolean>;
  /** Calls `listener` for every signal from another process. Returns an unsubscribe function. */
  subscribe(listener: (signal: Signal) => void): () => void;
  /** Calls `listener` when the subscription came back after a gap: caches must be revalidated. */
  onResync(listener: () => void): () => void;
  close(): Promise<void>;
}

export interface SignalBusOptions {
  readonly url: string;
  readonly keyPrefix: string;
  /** Subscribe as well as publish (gateways do; a CLI command only publishes). Default true. */
  readonly subscribe?: boolean;
  /** The subscription was lost (`error`: a short code, never a secret) or is back. */
  readonly onState?: (state: 'down' | 'up', error?: string) => void;
  /** A message on the channel that is not a valid signal. */
  readonly onInvalid?: () => void;
  readonly connectTimeoutMs?: number;
  /** How often the subscription is pinged to notice a partition (default 1 s). */
  readonly pingIntervalMs?: number;
}

const MAX_MESSAGE = 2048;
const ID = /^[A-Za-z0-9._:~-]{1,400}$/;
const VERSION = /^[0-9a-f]{8,128}$/;

/** Checks a received message; undefined for anything that is not exactly a signal. */
export function parseSignal(text: string): { origin: string; signal: Signal } | undefined {
  if (text.length > MAX_MESSAGE) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return undefined;
  const m = value as Record<string, unknown>;
  const { origin, kind } = m;
  if (typeof origin !== 'string' || !ID.test(origin)) return undefined;
  const id = (key: string) => (typeof m[key] === 'string' && ID.test(m[key]) ? m[key] : undefined);
  let signal: Signal | undefined;
  switch (kind) {
    case 'token-revoked': {
      const jti = id('jti');
      const { exp } = m;
      if (jti !== undefined && typeof exp === 'number' && Number.isSafeInteger(exp) && exp > 0)
        signal = { kind, jti, exp };
      break;
    }
    case 'api-key-changed': {
      const v = id('id');
      if (v !== undefined) signal = { kind, id: v };
      break;
    }
    case 'keys-changed':
    case 'privacy-changed':
      signal = { kind };
      break;
    case 'config-applied':
      if (typeof m.version === 'string' && VERSION.test(m.version)) signal = { kind, version: m.version };
      break;
    default:
      break;
  }
  return signal === undefined ? undefined : { origin, signal };
}

export function createSignalBus(options: SignalBusOptions): SignalBus {
  const channel = `${options.keyPrefix}signals`;
  const origin = randomUUID();
  const connectTimeout = options.connectTimeoutMs ?? 2_000;
  const retryStrategy = (times: number) => Math.min(times * 200, 2_000);
  // Publishing fails fast (no queue): a change is never held back by Redis being down.
  const publisher = new Redis(options.url, {
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    connectTimeout: connectTimeout,
    commandTimeout: 1_000,
    retryStrategy,
  });
  publisher.on('error', () => undefined); // reported through publish() results and onState
  void publisher.connect().catch(() => undefined);

  const listeners = new Set<(signal: Signal) => void>();
  const resyncListeners = new Set<() => void>();
  let subscribed = false;
  let everSubscribed = false;
  let closing = false;
  let subscriber: Redis | undefined;
  let watchdog: NodeJS.Timeout | undefined;
  if (options.subscribe !== false) {
    const sub = new Redis(options.url, {
      lazyConnect: true,
      connectTimeout: connectTimeout,
      // The subscription is restored by hand on every (re)connection, below.
      autoResubscribe: false,
      maxRetriesPerRequest: null,
      retryStrategy,
    });
    subscriber = sub;
    let lastError = 'connection-closed';
    sub.on('error', (err: Error & { code?: string }) => {
      lastError = err.code ?? err.name;
    });
    sub.on('ready', () => {
      sub.subscribe(channel).then(
        () => {
          subscribed = true;
          options.onState?.('up');
          // Anything published while we were away is lost: caches revalidate.
          if (everSubscribed) for (const l of resyncListeners) l();
          everSubscribed = true;
        },
        (err: unknown) => {
          lastError = err instanceof Error ? err.name : 'error';
          sub.disconnect(true);
        },
      );
    });
    sub.on('close', () => {
      if (!subscribed) return;
      subscribed = false;
      if (!closing) options.onState?.('down', lastError);
    });
    sub.on('message', (ch: string, text: string) => {
      if (ch !== channel) return;
      const parsed = parseSignal(text);
      if (parsed === undefined) {
        options.onInvalid?.();
        return;
      }
      if (parsed.origin === origin) return;
      for (const l of listeners) {
        try {
          l(parsed.signal);
        } catch {
          // a listener's failure must not stop the others
        }
      }
    });
    // A partition leaves a subscriber waiting silently: ping it, and reconnect (then resync)
    // when two pings in a row go unanswered.
    let missed = 0;
    watchdog = setInterval(() => {
      if (sub.status !== 'ready') return;
      let timer: NodeJS.Timeout | undefined;
      Promise.race([
        sub.ping(),
        new Promise((_, fail) => {
          timer = setTimeout(() => fail(new Error('ping timeout')), 1_000);
        }),
      ]).then(
        () => {
          clearTimeout(timer);
          missed = 0;
        },
        () => {
          clearTimeout(timer);
          if (++missed < 2) return;
          missed = 0;
          lastError = 'ETIMEDOUT';
          sub.disconnect(true);
        },
      );
    }, options.pingIntervalMs ?? 1_000);
    watchdog.unref();
    void sub.connect().catch(() => undefined);
  }

  return {
    origin,
    get subscribed() {
      return subscribed;
    },
    async publish(signal) {
      if (publisher.status !== 'ready' && !closing) {
        // A fresh (CLI) or reconnecting client: wait briefly rather than drop the signal.
        await new Promise<void>((ok) => {
          const done = () => {
            clearTimeout(timer);
            publisher.off('ready', done);
            ok();
          };
          const timer = setTimeout(done, Math.min(connectTimeout, 1_500));
          publisher.once('ready', done);
        });
      }
      if (publisher.status !== 'ready') return false;
      try {
        await publisher.publish(channel, JSON.stringify({ origin, ...signal }));
        return true;
      } catch {
        return false;
      }
    },
    subscribe(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    onResync(listener) {
      resyncListeners.add(listener);
      return () => resyncListeners.delete(listener);
    },
    async close() {
      closing = true;
      clearInterval(watchdog);
      listeners.clear();
      resyncListeners.clear();
      const quit = async (c: Redis) => {
        if (c.status === 'ready') await c.quit().catch(() => c.disconnect());
        else c.disconnect();
      };
      await Promise.all([quit(publisher), ...(subscriber === undefined ? [] : [quit(subscriber)])]);
    },
  };
}

/** Waits until `bus` is subscribed, or `timeoutMs` passed (then resolves false). */
export async function waitSubscribed(bus: SignalBus, timeoutMs: number): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  while (!bus.subscribed && Date.now() < until) await new Promise((ok) => setTimeout(ok, 20));
  return bus.subscribed;
}
