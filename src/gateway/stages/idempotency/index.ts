/**
 * Idempotency for unsafe operations that declare `x-portcullis-idempotency` (see ./config.ts):
 * the first response to an `Idempotency-Key` is stored and replayed for retries, a reused key
 * with a different request is 422 and a concurrent duplicate is 409, so that it never reaches
 * the upstream twice. Records live in memory (per process, bounded), in Redis
 * (`idempotency.backend: redis`) or in the store (`store`: SQLite or PostgreSQL, durable), the
 * last two shared by every gateway; an outage of either refuses keyed requests with 503 rather
 * than risking a duplicate.
 *
 * @example
 * ```ts
 * const idem = await compileIdempotency(loaded, backends);
 * const stage = idem.wrap(api.name, op, template, proxy); // proxy itself when not declared
 * ```
 */
import type { LoadedConfig } from '../../../config/load.ts';
import type { Stage } from '../../context.ts';
import type { OpenApiOperation } from '../../openapi.ts';
import type { LimitBackends } from '../rate-limit/backend.ts';
import { readDeclaration } from './config.ts';
import { idempotencyStage } from './stage.ts';
import {
  createMemoryIdempotencyStore,
  createRedisIdempotencyStore,
  createStoreIdempotencyStore,
} from './store.ts';
import type { IdempotencyStore } from './store.ts';
import { sealedIdempotencyStore } from './sealed.ts';
import type { Sealer } from '../../../keys/envelope.ts';
import type { Kysely } from 'kysely';
import type { Database } from '../../../store/schema.ts';

export { EXTENSION, IdempotencyDeclarationError } from './config.ts';
export type { IdempotencyDeclaration } from './config.ts';
export {
  createMemoryIdempotencyStore,
  createRedisIdempotencyStore,
  createStoreIdempotencyStore,
} from './store.ts';
export type { IdempotencyStore, StoredResponse } from './store.ts';
export { parseIdempotencyKey } from './stage.ts';

export interface CompiledIdempotency {
  /**
   * `next` wrapped with idempotency when the operation declares it, else `next` itself.
   * Throws IdempotencyDeclarationError for an unusable declaration.
   */
  wrap(apiName: string, op: OpenApiOperation, template: string, next: Stage): Promise<Stage>;
}

export function compileIdempotency(
  loaded: LoadedConfig,
  backends: LimitBackends,
  db?: Kysely<Database>,
  sealer?: Sealer,
): CompiledIdempotency {
  const config = loaded.config.idempotency;
  let opening: Promise<IdempotencyStore> | undefined;
  // Opened at the first declaring operation, so an unused Redis is never dialled.
  const openStore = async (): Promise<IdempotencyStore> => {
    if (config.backend === 'memory') {
      return backends.memo(`idempotency:memory:${String(config.memoryMaxBytes)}`, () =>
        createMemoryIdempotencyStore({ maxBytes: config.memoryMaxBytes }),
      );
    }
    if (config.backend === 'store') {
      // Without a store (`config validate` compiles without one) nothing is ever served.
      if (db === undefined) {
        const none = () => Promise.reject(new Error('idempotency.backend store: no store open'));
        return { begin: none, complete: none, release: none };
      }
      return sealedIdempotencyStore(createStoreIdempotencyStore(db), sealer);
    }
    const redis = loaded.config.redis;
    if (redis === undefined) throw new TypeError('idempotency.backend redis needs redis.url');
    return sealedIdempotencyStore(
      createRedisIdempotencyStore(await backends.redis.get(redis.url), redis.keyPrefix),
      sealer,
    );
  };
  return {
    async wrap(apiName, op, template, next) {
      const declaration = readDeclaration(op.method, op.definition, config);
      if (declaration === null) return next;
      opening ??= openStore();
      const store = await opening;
      return idempotencyStage(
        {
          declaration,
          scope: `${apiName}\0${op.operationId ?? `${op.method} ${template}`}`,
          store,
          lockMs: config.lockSeconds * 1000,
          maxResponseBytes: config.maxResponseBytes,
          logger: backends.logger,
        },
        next,
      );
    },
  };
}
