import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Store } from '../store/index.ts';
import { purgeExpired } from './adapter.ts';
import { randomBytes } from 'node:crypto';
import { createModelCodec } from './model-codec.ts';
import { createGrantTokenTracker, ISSUED_JWT_MODEL, refreshTokenTtl } from './grant-tokens.ts';
import { createRevocationList } from './revocation.ts';
import { testBackends } from './test-backends.ts';

describe('refreshTokenTtl: the absolute lifetime of a refresh-token chain', () => {
  const DAY = 86_400;
  it('gives the first token the whole lifetime', () => {
    expect(refreshTokenTtl(1_000, 1_000, DAY)).toBe(DAY);
  });

  it('gives a rotated token only what is left of the chain', () => {
    expect(refreshTokenTtl(1_000, 1_000 + 3_600, DAY)).toBe(DAY - 3_600);
    expect(refreshTokenTtl(1_000, 1_000 + DAY - 1, DAY)).toBe(1);
  });

  it('never returns less than one second (oidc-provider needs a positive TTL)', () => {
    expect(refreshTokenTtl(1_000, 1_000 + DAY, DAY)).toBe(1);
    expect(refreshTokenTtl(1_000, 1_000 + 10 * DAY, DAY)).toBe(1);
  });

  it('starts the chain now when iiat is missing, in the future or not a number', () => {
    expect(refreshTokenTtl(undefined, 5_000, DAY)).toBe(DAY);
    expect(refreshTokenTtl(9_000, 5_000, DAY)).toBe(DAY);
    expect(refreshTokenTtl(Number.NaN, 5_000, DAY)).toBe(DAY);
  });
});

const codec = createModelCodec(randomBytes(32), randomBytes(32));
const backends = testBackends();
afterAll(() => backends.cleanup());

describe.each(backends.names)('the per-grant access-token tracker on %s', (name) => {
  let store: Store;
  let clock = Date.parse('2030-01-01T00:00:00.000Z');
  const now = () => clock;
  const sec = () => Math.floor(clock / 1000);
  beforeAll(async () => {
    store = await backends.open(name);
    return () => store.close();
  });

  it('revokes every unexpired token of the grant, and only that grant', async () => {
    const revocations = createRevocationList({ db: store.db, now, cacheTtlMs: 0 });
    const tracker = createGrantTokenTracker({ db: store.db, revocations, now, codec });
    await tracker.record({ grantId: 'g1', jti: 'a1', clientId: 'c', exp: sec() + 600 });
    await tracker.record({ grantId: 'g1', jti: 'a2', clientId: 'c', exp: sec() + 600 });
    await tracker.record({ grantId: 'g1', jti: 'old', clientId: 'c', exp: sec() - 1 });
    await tracker.record({ grantId: 'g2', jti: 'b1', clientId: 'c', exp: sec() + 600 });
    // Recording twice is harmless.
    await tracker.record({ grantId: 'g1', jti: 'a1', clientId: 'c', exp: sec() + 600 });

    expect(await tracker.revokeGrant('g1')).toBe(2);
    expect(await revocations.isRevoked('a1')).toBe(true);
    expect(await revocations.isRevoked('a2')).toBe(true);
    expect(await revocations.isRevoked('b1')).toBe(false);
    const left = await store.db
      .selectFrom('oauth_models')
      .select('id')
      .where('model', '=', ISSUED_JWT_MODEL)
      .execute();
    expect(left.map((r) => r.id)).toEqual([codec.hash('b1')]);
    // A second revocation of the same grant finds nothing.
    expect(await tracker.revokeGrant('g1')).toBe(0);
    expect(await tracker.revokeGrant('')).toBe(0);
  });

  it('ignores unusable records and is purged when the tokens expire', async () => {
    const revocations = createRevocationList({ db: store.db, now, cacheTtlMs: 0 });
    const tracker = createGrantTokenTracker({ db: store.db, revocations, now, codec });
    await tracker.record({ grantId: '', jti: 'x', clientId: 'c', exp: sec() + 60 });
    await tracker.record({ grantId: 'g3', jti: 'y'.repeat(401), clientId: 'c', exp: sec() + 60 });
    await tracker.record({ grantId: 'g3', jti: 'z', clientId: 'c', exp: Number.NaN });
    await tracker.record({ grantId: 'g4', jti: 'short', clientId: 'c', exp: sec() + 60 });
    const rows = () =>
      store.db
        .selectFrom('oauth_models')
        .select('id')
        .where('model', '=', ISSUED_JWT_MODEL)
        .where('grant_id', 'in', [codec.hash('g3'), codec.hash('g4')])
        .execute();
    expect((await rows()).map((r) => r.id)).toEqual([codec.hash('short')]);
    clock += 61_000;
    await purgeExpired(store.db, clock);
    expect(await rows()).toEqual([]);
    expect(await tracker.revokeGrant('g4')).toBe(0);
  });
});
