/**
 * Warns before client secrets expire: at start and then hourly, every client whose secret expires
 * within `oauth.clientSecrets.expiryWarningDays` gets a durable audit event
 * (`credential-lifecycle` / `client-secret-expiring`, with the client id and the expiry), at
 * most once a day per process. The built-in alert rule `client-secret-expiry` turns each into an
 * alert on the webhook.
 */
import type { Kysely } from 'kysely';
import type { AuditLog } from '../audit/log.ts';
import type { Database } from '../store/schema.ts';
import { secretsExpiringSoon } from './client-secrets.ts';

export interface SecretExpiryWatch {
  /** Runs one check now (also run at start); resolves the number of warnings recorded. */
  check(): Promise<number>;
  close(): void;
}

export function watchClientSecretExpiry(options: {
  readonly db: Kysely<Database>;
  readonly audit: Pick<AuditLog, 'emitDurable'>;
  /** Seconds before expiry from which to warn (read at every check: a reload applies). */
  readonly warnSeconds: () => number;
  readonly intervalMs?: number;
  readonly onError?: (error: unknown) => void;
  readonly now?: () => number;
}): SecretExpiryWatch {
  const now = options.now ?? Date.now;
  const warned = new Map<string, number>();
  const check = async (): Promise<number> => {
    const t = now();
    let count = 0;
    for (const { clientId, expiresAt } of await secretsExpiringSoon(options.db, options.warnSeconds(), t)) {
      const key = `${clientId}\n${expiresAt}`;
      if ((warned.get(key) ?? 0) > t - 86_400_000) continue;
      warned.set(key, t);
      const expired = Date.parse(expiresAt) <= t;
      await options.audit.emitDurable({
        'event.category': 'credential-lifecycle',
        'event.action': 'client-secret-expiring',
        'event.outcome': 'unknown',
        'event.reason': expired ? `secret expired at ${expiresAt}` : `secret expires at ${expiresAt}`,
        'portcullis.client_id': clientId,
        'portcullis.credential.type': 'client',
      });
      count++;
    }
    return count;
  };
  const run = () => {
    check().catch((err: unknown) => options.onError?.(err));
  };
  run();
  const timer = setInterval(run, options.intervalMs ?? 3_600_000);
  timer.unref();
  return {
    check,
    close: () => {
      clearInterval(timer);
    },
  };
}
