/**
 * The CLI side of ending a user's sessions (`users revoke`, `users disable`): the revocation list
 * the gateways check, written the way the authorization server writes it — the store, then (with
 * Redis) the shared denylist and a `token-revoked` signal per access token, so that running
 * gateways refuse the tokens at once.
 */
import { modelCodecFromKeys } from '../oauth/model-codec.ts';
import { createRevocationList } from '../oauth/revocation.ts';
import { endUserSessions } from '../oauth/user-sessions.ts';
import type { EndedUserSessions } from '../oauth/user-sessions.ts';
import { createRedisConnections } from '../store/redis.ts';
import { createSignalBus } from '../store/signals.ts';
import type { CliContext } from './context.ts';

export async function endSessionsOf(ctx: CliContext, userId: string): Promise<EndedUserSessions> {
  const codec = modelCodecFromKeys(ctx.keys);
  const redis = ctx.loaded.config.redis;
  if (redis === undefined) {
    return endUserSessions({
      db: ctx.store.db,
      codec,
      userId,
      revocations: createRevocationList({ db: ctx.store.db }),
    });
  }
  const connections = createRedisConnections();
  const bus = createSignalBus({ url: redis.url, keyPrefix: redis.keyPrefix, subscribe: false });
  try {
    const client = await connections.get(redis.url);
    const revocations = createRevocationList({
      db: ctx.store.db,
      denylist: { redis: client, keyPrefix: redis.keyPrefix },
      signals: { subscribed: false, publish: (signal) => bus.publish(signal) },
      onError: (what) => {
        process.stderr.write(
          `warning: a revocation is in the store but its ${what === 'denylist' ? 'Redis denylist entry' : 'signal'} failed; gateways see it within their cache time\n`,
        );
      },
    });
    return await endUserSessions({ db: ctx.store.db, codec, userId, revocations });
  } finally {
    await bus.close();
    await connections.close();
  }
}
