/**
 * Internal links are encrypted: a PostgreSQL store or a Redis server on a host other than
 * loopback must be reached over TLS with the server's certificate and name verified
 * (`sslmode=verify-full`, with `sslrootcert=FILE` for a private CA; `rediss://`, whose certificate
 * ioredis verifies against the system CAs or `NODE_EXTRA_CA_CERTS`). Anything weaker needs a documented exception with
 * control `internal-plaintext`, as a plaintext upstream does.
 */
import type { Config, Control } from './schema.ts';

export type LinkPath = ReadonlyArray<string | number>;

function isLocalHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return (
    h === '' ||
    h.startsWith('/') || // a Unix socket folder (PostgreSQL)
    h === 'localhost' ||
    h === '::1' ||
    /^127\.\d+\.\d+\.\d+$/.test(h)
  );
}

/** Query parameters that would turn verification off in the Redis URL (ioredis copies them). */
const REDIS_WEAKENING = /tls|reject|servername|insecure/i;

/**
 * Reports the store and Redis URLs that leave loopback without verified TLS. `needs` raises the
 * error unless an unexpired exception names the control; `issue` raises it regardless.
 */
export function checkInternalLinks(
  config: Pick<Config, 'store' | 'redis'>,
  needs: (control: Control, path: LinkPath, what: string) => void,
  issue: (path: LinkPath, message: string) => void,
): void {
  const store = config.store.url;
  if (/^postgres(ql)?:\/\//i.test(store)) {
    let url: URL | undefined;
    try {
      url = new URL(store);
    } catch {
      issue(['store', 'url'], 'is not a valid postgres:// URL');
    }
    if (url !== undefined) {
      const hosts = [url.hostname, ...url.searchParams.getAll('host')];
      const remote = hosts.some((h) => h !== '' && !isLocalHost(h));
      const sslmode = url.searchParams.get('sslmode');
      if (remote && sslmode !== 'verify-full') {
        needs(
          'internal-plaintext',
          ['store', 'url'],
          `a PostgreSQL store off loopback without sslmode=verify-full (found ${sslmode === null ? 'no sslmode' : `sslmode=${sslmode}`})`,
        );
      }
    }
  }
  const redis = config.redis;
  if (redis !== undefined) {
    let url: URL | undefined;
    try {
      url = new URL(redis.url);
    } catch {
      issue(['redis', 'url'], 'is not a valid redis:// or rediss:// URL');
    }
    if (url !== undefined && !isLocalHost(url.hostname)) {
      if (url.protocol !== 'rediss:') {
        needs('internal-plaintext', ['redis', 'url'], 'a Redis server off loopback over redis:// (no TLS)');
      } else if ([...url.searchParams.keys()].some((k) => REDIS_WEAKENING.test(k))) {
        needs(
          'internal-plaintext',
          ['redis', 'url'],
          'TLS options in the Redis URL (certificate verification must stay on)',
        );
      }
    }
  }
}
