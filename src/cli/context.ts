/**
 * What a CLI command that works on state needs: the loaded configuration, the store and the key
 * manager, opened against one data directory and closed together.
 */
import { mkdir } from 'node:fs/promises';
import { loadConfig } from '../config/load.ts';
import type { LoadedConfig } from '../config/load.ts';
import { openKeyManager } from '../keys/index.ts';
import type { StoreKeyManager } from '../keys/index.ts';
import type { Logger } from '../server/logging.ts';
import { openStore } from '../store/index.ts';
import type { Store } from '../store/index.ts';

export interface CliContext {
  readonly loaded: LoadedConfig;
  readonly store: Store;
  readonly keys: StoreKeyManager;
  /** Stops the key manager and closes the store (idempotent). */
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
      ...(opts.logger === undefined ? {} : { logger: opts.logger }),
    });
  } catch (error) {
    await store.close();
    throw error;
  }
  let closing: Promise<void> | undefined;
  return {
    loaded,
    store,
    keys,
    close() {
      closing ??= (async () => {
        keys.close();
        await store.close();
      })();
      return closing;
    },
  };
}
