/**
 * What a CLI command that works on state needs: the loaded configuration, the store, the key
 * manager and the audit log, opened against one data directory and closed together.
 *
 * Control-plane changes made from the CLI are audited like the gateway's: {@link CliContext.audited}
 * runs the change and records a durable event (`portcullis.listener: cli`) before the command
 * reports success; a change that fails is recorded as a failure.
 */
import { mkdir } from 'node:fs/promises';
import { controlPlaneActor } from '../audit/actor.ts';
import { openAuditLog } from '../audit/index.ts';
import type { AuditLog } from '../audit/index.ts';
import type { AuditCategory, AuditEventInput } from '../audit/event.ts';
import { loadConfig } from '../config/load.ts';
import type { LoadedConfig } from '../config/load.ts';
import { openKeyManager } from '../keys/index.ts';
import type { StoreKeyManager } from '../keys/index.ts';
import type { Logger } from '../log/index.ts';
import { describeError } from '../log/index.ts';
import { openStore } from '../store/index.ts';
import { createSignalBus } from '../store/signals.ts';
import type { Signal } from '../store/signals.ts';
import type { Store } from '../store/index.ts';

/** What a CLI change records: the category, the action and the ids (never a secret). */
export type CliAuditFields = Omit<
  AuditEventInput,
  'event.category' | 'event.action' | 'event.outcome' | 'portcullis.listener'
>;

export interface CliContext {
  readonly loaded: LoadedConfig;
  readonly store: Store;
  readonly keys: StoreKeyManager;
  /** The audit log of the configuration (the same sinks and chain as the gateway's). */
  readonly audit: AuditLog;
  /**
   * Runs `change`, then records a durable `category`/`action` event with the fields `describe`
   * derives from its result, and only then returns that result. When `change` throws, a
   * failure event (reason: the error's code or message) is recorded and the error rethrown.
   * When the event cannot be made durable, this rejects: the command must not report success.
   */
  audited<T>(
    category: AuditCategory,
    action: string,
    change: () => Promise<T>,
    describe: (result: T) => CliAuditFields,
    onFailure?: CliAuditFields,
  ): Promise<T>;
  /**
   * Tells running gateways about a change (Redis pub/sub, when the configuration has Redis), so
   * that they drop what they cached at once. `sent`, `no-redis` (they notice on their own within
   * their cache lifetimes) or `failed` (Redis unreachable; likewise, and they revalidate when it
   * is back). Never throws: the change itself is already made.
   */
  announce(signal: Signal): Promise<'sent' | 'no-redis' | 'failed'>;
  /** Closes the audit log (flushing it), stops the key manager and closes the store (idempotent). */
  close(): Promise<void>;
}

export interface CliContextOptions {
  /** Configuration file. */
  readonly config: string;
  /** Data directory; created with mode 0700 when missing. */
  readonly dataDir: string;
  readonly logger?: Logger;
}

/**
 * Loads the configuration, creates the data directory (0700), opens the store (migrating it)
 * and the key manager (creating keys on first use).
 */
export async function openCliContext(opts: CliContextOptions): Promise<CliContext> {
  const loaded = await loadConfig(opts.config);
  await mkdir(opts.dataDir, { recursive: true, mode: 0o700 });
  const store = await openStore({ url: loaded.config.store.url, dataDir: opts.dataDir });
  let keys: StoreKeyManager;
  try {
    keys = await openKeyManager({
      store,
      dataDir: opts.dataDir,
      config: loaded.config.oauth,
      keys: loaded.config.keys,
      ...(opts.logger === undefined ? {} : { logger: opts.logger }),
    });
  } catch (error) {
    await store.close();
    throw error;
  }
  let audit: AuditLog;
  try {
    audit = await openAuditLog({
      config: loaded.config.audit,
      dataDir: opts.dataDir,
      store,
      storeUrl: loaded.config.store.url,
      signer: keys.auditCheckpointSigner(),
      // stdout carries the commands' own output (`--json`); the stdout sink writes to stderr.
      stdout: process.stderr,
      ...(opts.logger === undefined
        ? {}
        : {
            onError: (err: unknown, sink: string) => {
              opts.logger?.warn(
                { event: 'audit-sink-error', sink, error: describeError(err) },
                'audit sink error',
              );
            },
          }),
    });
  } catch (error) {
    keys.close();
    await store.close();
    throw error;
  }
  // Issue 13: every CLI change names who made it and where (src/audit/actor.ts).
  const cli = { 'portcullis.listener': 'cli', ...controlPlaneActor() } as const;
  let closing: Promise<void> | undefined;
  return {
    loaded,
    store,
    keys,
    audit,
    async announce(signal) {
      const redis = loaded.config.redis;
      if (redis === undefined) return 'no-redis';
      const bus = createSignalBus({ url: redis.url, keyPrefix: redis.keyPrefix, subscribe: false });
      try {
        return (await bus.publish(signal)) ? 'sent' : 'failed';
      } finally {
        await bus.close();
      }
    },
    async audited(category, action, change, describe, onFailure) {
      let result: Awaited<ReturnType<typeof change>>;
      try {
        result = await change();
      } catch (error) {
        const code = (error as { code?: unknown } | null)?.code;
        const reason =
          typeof code === 'string' ? code : error instanceof Error ? error.message.slice(0, 200) : 'error';
        // Best effort: the command fails anyway, with the original error.
        await audit
          .emitDurable({
            ...onFailure,
            ...cli,
            'event.category': category,
            'event.action': action,
            'event.outcome': 'failure',
            'event.reason': reason,
          })
          .catch(() => undefined);
        throw error;
      }
      await audit.emitDurable({
        ...describe(result),
        ...cli,
        'event.category': category,
        'event.action': action,
        'event.outcome': 'success',
      });
      return result;
    },
    close() {
      closing ??= (async () => {
        try {
          await audit.close();
        } finally {
          keys.close();
          await store.close();
        }
      })();
      return closing;
    },
  };
}

/** Opens the CLI context, runs `fn` with it, and closes it whatever `fn` did. */
export async function withCliContext<T>(
  opts: CliContextOptions,
  fn: (ctx: CliContext) => Promise<T>,
): Promise<T> {
  const ctx = await openCliContext(opts);
  try {
    return await fn(ctx);
  } finally {
    await ctx.close();
  }
}
