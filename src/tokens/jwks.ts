/**
 * The published keys (JWKS) of an external token issuer, fetched and cached.
 *
 * - Fetched over TLS only (`https:`), with undici and the configured CA bundle (or the default
 *   trust store); redirects are not followed, the answer is size-bounded and time-bounded.
 * - A key set carrying private or symmetric key material (`d`, `p`, `q`, `dp`, `dq`, `qi`, `oth`,
 *   `k`) is refused whole: an issuer that publishes its private key is not trusted at all.
 *   Encryption keys (`use: enc`) are dropped.
 * - Re-fetched when a token names an unknown `kid` (key rotation), or in the background once the
 *   set is older than `maxAgeSeconds`, but never more than once per `refreshMinIntervalSeconds`
 *   however many tokens ask: forged `kid`s cannot turn the gateway against the issuer.
 * - When a fetch fails (issuer down, bad answer), the last good keys stay in use.
 */
import { Agent, request } from 'undici';
import type { JSONWebKeySet, JWK } from 'jose';

export interface JwksCacheOptions {
  /** The issuer's `jwks_uri`; must be https. */
  readonly uri: string;
  /** PEM CA bundle that the issuer's certificate must chain to; default: the system's roots. */
  readonly ca?: string;
  readonly refreshMinIntervalSeconds: number;
  /** After this, the next use refreshes in the background (default 600 s). */
  readonly maxAgeSeconds?: number;
  /** Largest accepted answer (default 64 KiB). */
  readonly maxBytes?: number;
  /** Most keys accepted in one set (default 50). */
  readonly maxKeys?: number;
  /** Deadline for one fetch (default 5 s). */
  readonly timeoutMs?: number;
  readonly now?: () => number;
  /** Told when a fetch fails; the previous keys remain. */
  readonly onError?: (error: Error) => void;
}

export interface JwksCache {
  /** The last good key set (empty before the first successful fetch). */
  current(): JSONWebKeySet;
  /**
   * Makes the set ready for a token naming `kid`: fetches when there are no keys yet or the kid
   * is unknown, at most once per refresh interval. Never throws; a failure keeps the old keys.
   */
  ensure(kid: string | undefined): Promise<void>;
  /** How many fetches were started (observability and tests). */
  fetchCount(): number;
  close(): Promise<void>;
}

const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'] as const;
const KEY_TYPES = new Set(['EC', 'RSA', 'OKP']);

export class JwksError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'JwksError';
  }
}

/** Validates a fetched key set: public asymmetric signing keys only, at most `maxKeys`. */
export function parseJwks(value: unknown, maxKeys: number): JSONWebKeySet {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new JwksError('the JWKS is not an object');
  }
  const keys: unknown = (value as { keys?: unknown }).keys;
  if (!Array.isArray(keys)) throw new JwksError('the JWKS has no keys array');
  if (keys.length > maxKeys) throw new JwksError(`the JWKS has more than ${String(maxKeys)} keys`);
  const accepted: JWK[] = [];
  for (const key of keys as unknown[]) {
    if (typeof key !== 'object' || key === null || Array.isArray(key)) {
      throw new JwksError('a JWKS member is not an object');
    }
    const jwk = key as Record<string, unknown>;
    if (PRIVATE_MEMBERS.some((m) => Object.hasOwn(jwk, m))) {
      throw new JwksError('the JWKS carries private or symmetric key material');
    }
    if (typeof jwk.kty !== 'string' || !KEY_TYPES.has(jwk.kty)) continue;
    if (jwk.use !== undefined && jwk.use !== 'sig') continue;
    if (jwk.kid !== undefined && typeof jwk.kid !== 'string') continue;
    accepted.push(jwk);
  }
  return { keys: accepted };
}

export function createJwksCache(options: JwksCacheOptions): JwksCache {
  const url = new URL(options.uri);
  if (url.protocol !== 'https:') throw new TypeError('a JWKS is fetched over https only');
  const now = options.now ?? (() => Date.now());
  const intervalMs = options.refreshMinIntervalSeconds * 1000;
  const maxAgeMs = (options.maxAgeSeconds ?? 600) * 1000;
  const maxBytes = options.maxBytes ?? 64 * 1024;
  const maxKeys = options.maxKeys ?? 50;
  const timeoutMs = options.timeoutMs ?? 5000;
  const agent = new Agent({
    connect: { ...(options.ca === undefined ? {} : { ca: options.ca }), rejectUnauthorized: true },
    connections: 2,
    headersTimeout: timeoutMs,
    bodyTimeout: timeoutMs,
  });

  let keys: JSONWebKeySet = { keys: [] };
  let fetchedAt: number | undefined;
  let lastAttempt: number | undefined;
  let inFlight: Promise<void> | undefined;
  let fetches = 0;

  const download = async (): Promise<JSONWebKeySet> => {
    const deadline = new AbortController();
    const timer = setTimeout(() => {
      deadline.abort(new JwksError('the JWKS fetch timed out'));
    }, timeoutMs);
    timer.unref();
    let res;
    try {
      res = await request(url, {
        method: 'GET',
        dispatcher: agent,
        headers: { accept: 'application/jwk-set+json, application/json' },
        signal: deadline.signal,
      });
    } catch (err) {
      clearTimeout(timer);
      throw err;
    }
    const body = res.body;
    body.on('error', () => undefined); // reported through the iteration below
    try {
      if (res.statusCode !== 200) throw new JwksError(`the JWKS answered ${String(res.statusCode)}`);
      const declared = Number(res.headers['content-length'] ?? 0);
      if (declared > maxBytes) throw new JwksError('the JWKS is too large');
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const chunk of body) {
        const buf = chunk as Buffer;
        size += buf.length;
        if (size > maxBytes) throw new JwksError('the JWKS is too large');
        chunks.push(buf);
      }
      let parsed: unknown;
      try {
        parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch (err) {
        throw new JwksError('the JWKS is not JSON', { cause: err });
      }
      return parseJwks(parsed, maxKeys);
    } finally {
      clearTimeout(timer);
      body.destroy();
    }
  };

  const refresh = (): Promise<void> => {
    inFlight ??= (async () => {
      lastAttempt = now();
      fetches++;
      try {
        keys = await download();
        fetchedAt = now();
      } catch (err) {
        options.onError?.(err instanceof Error ? err : new Error(String(err)));
      } finally {
        inFlight = undefined;
      }
    })();
    return inFlight;
  };
  const mayFetch = () => lastAttempt === undefined || now() - lastAttempt >= intervalMs;

  return {
    current: () => keys,
    async ensure(kid) {
      const known = kid === undefined ? keys.keys.length > 0 : keys.keys.some((k) => k.kid === kid);
      if (known) {
        if (fetchedAt !== undefined && now() - fetchedAt >= maxAgeMs && mayFetch()) void refresh();
        return;
      }
      if (inFlight !== undefined) return inFlight;
      if (mayFetch()) await refresh();
    },
    fetchCount: () => fetches,
    close: () => agent.close(),
  };
}
