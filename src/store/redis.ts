/**
 * Redis connections shared by the counters (rate limits) and the idempotency records: one
 * `ioredis` client per URL and process, created on first use and kept across configuration
 * reloads, so that a reload neither reconnects nor resets anything.
 *
 * Clients fail fast instead of queueing: no offline queue, one retry per command and a command
 * timeout, so that a Redis outage shows at once as an error the caller handles (the rate
 * limiter falls back to local limits, idempotency fails closed) rather than as requests that hang.
 */
import { Redis } from 'ioredis';

export interface RedisHealthListener {
  /** The connection was lost or could not be made; `error` is a short code, never a secret. */
  down(url: string, error: string): void;
  /** The connection is usable (again). */
  up(url: string): void;
}

export interface RedisConnections {
  /**
   * The client for `url`, connecting on first use. Resolves once the first connection attempt
   * settled (ready, or failed within `connectTimeoutMs`); a client that is not ready keeps
   * retrying in the background.
   */
  get(url: string): Promise<Redis>;
  close(): Promise<void>;
}

/** What a log line may show of a Redis URL: scheme, host and port, never a password. */
export function redactRedisUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}`;
  } catch {
    return 'redis://?';
  }
}

export function createRedisConnections(
  options: {
    listener?: RedisHealthListener;
    connectTimeoutMs?: number;
    commandTimeoutMs?: number;
    /** How often a ready connection is pinged to notice a partition (default 1 s). */
    pingIntervalMs?: number;
  } = {},
): RedisConnections {
  const clients = new Map<string, Promise<Redis>>();
  const watchdogs: NodeJS.Timeout[] = [];
  let closing = false;
  const connectTimeoutMs = options.connectTimeoutMs ?? 2_000;
  const open = async (url: string): Promise<Redis> => {
    const client = new Redis(url, {
      lazyConnect: true,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      connectTimeout: connectTimeoutMs,
      commandTimeout: options.commandTimeoutMs ?? 1_000,
      retryStrategy: (times) => Math.min(times * 200, 5_000),
      // Commands issued in the same tick (every limit window of a request, and the requests
      // in flight) go out in one write and come back in one read.
      enableAutoPipelining: true,
    });
    let healthy: boolean | undefined;
    const shown = redactRedisUrl(url);
    client.on('ready', () => {
      if (healthy !== true) options.listener?.up(shown);
      healthy = true;
    });
    client.on('error', (err: Error & { code?: string }) => {
      if (healthy !== false) options.listener?.down(shown, err.code ?? err.name);
      healthy = false;
    });
    client.on('end', () => {
      if (healthy === true && !closing) options.listener?.down(shown, 'connection-closed');
      healthy = false;
    });
    // A partition (packets dropped, no reset) leaves the socket open and every command timing
    // out, which ioredis does not treat as a lost connection. A ping that goes unanswered twice
    // drops the connection, so the outage is reported and handled like a refused one.
    let missed = 0;
    const watchdog = setInterval(() => {
      if (client.status !== 'ready') return;
      client.ping().then(
        () => (missed = 0),
        () => {
          if (++missed >= 2) {
            missed = 0;
            if (healthy !== false) options.listener?.down(shown, 'ETIMEDOUT');
            healthy = false;
            client.disconnect(true);
          }
        },
      );
    }, options.pingIntervalMs ?? 1_000);
    watchdog.unref();
    watchdogs.push(watchdog);
    await Promise.race([
      client.connect().catch(() => undefined),
      new Promise<void>((ok) => setTimeout(ok, connectTimeoutMs + 100).unref()),
    ]);
    return client;
  };
  return {
    get: (url) => {
      let client = clients.get(url);
      if (client === undefined) {
        client = open(url);
        clients.set(url, client);
      }
      return client;
    },
    close: async () => {
      closing = true;
      for (const w of watchdogs) clearInterval(w);
      const all = await Promise.all(clients.values());
      clients.clear();
      await Promise.all(
        all.map(async (c) => {
          if (c.status === 'ready') await c.quit().catch(() => c.disconnect());
          else c.disconnect();
        }),
      );
    },
  };
}
