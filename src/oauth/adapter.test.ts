import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Store } from '../store/index.ts';
import { randomBytes } from 'node:crypto';
import { createAdapterFactory, purgeExpired } from './adapter.ts';
import { createModelCodec } from './model-codec.ts';
import { testBackends } from './test-backends.ts';

const codec = createModelCodec(randomBytes(32), randomBytes(32));
const backends = testBackends();
afterAll(() => backends.cleanup());

describe.each(backends.names)('oidc-provider adapter on %s', (name) => {
  let store: Store;
  let clock = Date.parse('2030-01-01T00:00:00.000Z');
  const now = () => clock;
  beforeAll(async () => {
    store = await backends.open(name);
    return () => store.close();
  });

  it('stores, finds and replaces a payload', async () => {
    const adapter = createAdapterFactory({ db: store.db, codec, now })('AccessToken');
    const payload = { jti: 'at-1', grantId: 'g-1', scope: 'read write', nested: { a: [1, 2] } };
    await adapter.upsert('at-1', payload, 60);
    expect(await adapter.find('at-1')).toEqual(payload);
    await adapter.upsert('at-1', { ...payload, scope: 'read' }, 60);
    expect(await adapter.find('at-1')).toEqual({ ...payload, scope: 'read' });
    expect(await adapter.find('missing')).toBeUndefined();
  });

  it('keeps models apart: the same id under another model is another row', async () => {
    const factory = createAdapterFactory({ db: store.db, codec, now });
    await factory('Session').upsert('same', { kind: 'Session', uid: 'u-same' }, 60);
    await factory('Interaction').upsert('same', { kind: 'Interaction' }, 60);
    expect(await factory('Session').find('same')).toEqual({ kind: 'Session', uid: 'u-same' });
    expect(await factory('Interaction').find('same')).toEqual({ kind: 'Interaction' });
  });

  it('treats expired rows as absent and purges them', async () => {
    const adapter = createAdapterFactory({ db: store.db, codec, now })('AuthorizationCode');
    await adapter.upsert('code-exp', { jti: 'code-exp' }, 30);
    await adapter.upsert('code-forever', { jti: 'code-forever' });
    clock += 29_000;
    expect(await adapter.find('code-exp')).toEqual({ jti: 'code-exp' });
    clock += 1_000;
    expect(await adapter.find('code-exp')).toBeUndefined();
    expect(await adapter.find('code-forever')).toEqual({ jti: 'code-forever' });
    expect(await purgeExpired(store.db, clock)).toBeGreaterThanOrEqual(1);
    const left = await store.db
      .selectFrom('oauth_models')
      .select('id')
      .where('id', 'in', [codec.hash('code-exp'), codec.hash('code-forever')])
      .execute();
    expect(left.map((r) => r.id)).toEqual([codec.hash('code-forever')]);
  });

  it('consume marks a payload consumed (epoch seconds); upsert clears it', async () => {
    const adapter = createAdapterFactory({ db: store.db, codec, now })('RefreshToken');
    await adapter.upsert('rt-1', { jti: 'rt-1' }, 600);
    expect((await adapter.find('rt-1'))?.consumed).toBeUndefined();
    await adapter.consume('rt-1');
    expect((await adapter.find('rt-1'))?.consumed).toBe(Math.floor(clock / 1000));
    await adapter.upsert('rt-1', { jti: 'rt-1' }, 600);
    expect((await adapter.find('rt-1'))?.consumed).toBeUndefined();
  });

  it('finds sessions by uid and device codes by user code', async () => {
    const factory = createAdapterFactory({ db: store.db, codec, now });
    await factory('Session').upsert('sess-1', { uid: 'uid-1', accountId: 'alice' }, 600);
    await factory('DeviceCode').upsert('dc-1', { userCode: 'ABCD-EFGH' }, 600);
    expect(await factory('Session').findByUid('uid-1')).toEqual({ uid: 'uid-1', accountId: 'alice' });
    expect(await factory('Session').findByUid('uid-2')).toBeUndefined();
    expect(await factory('DeviceCode').findByUserCode('ABCD-EFGH')).toEqual({ userCode: 'ABCD-EFGH' });
    expect(await factory('DeviceCode').findByUserCode('ABCD-XXXX')).toBeUndefined();
    clock += 601_000;
    expect(await factory('Session').findByUid('uid-1')).toBeUndefined();
  });

  it('destroy removes one row', async () => {
    const adapter = createAdapterFactory({ db: store.db, codec, now })('Grant');
    await adapter.upsert('grant-d', { jti: 'grant-d' }, 600);
    await adapter.destroy('grant-d');
    expect(await adapter.find('grant-d')).toBeUndefined();
  });

  it('revokeByGrantId removes the grant’s rows of that model only', async () => {
    const factory = createAdapterFactory({ db: store.db, codec, now });
    await factory('AccessToken').upsert('at-g1', { grantId: 'grant-x' }, 600);
    await factory('AccessToken').upsert('at-g2', { grantId: 'grant-y' }, 600);
    await factory('RefreshToken').upsert('rt-g1', { grantId: 'grant-x' }, 600);
    await factory('AccessToken').revokeByGrantId('grant-x');
    expect(await factory('AccessToken').find('at-g1')).toBeUndefined();
    expect(await factory('AccessToken').find('at-g2')).toEqual({ grantId: 'grant-y' });
    expect(await factory('RefreshToken').find('rt-g1')).toEqual({ grantId: 'grant-x' });
    await factory('RefreshToken').revokeByGrantId('grant-x');
    expect(await factory('RefreshToken').find('rt-g1')).toBeUndefined();
  });

  it('consume is atomic: of concurrent consumers one wins, the others get the alreadyConsumed error', async () => {
    const lost: [string, string | undefined][] = [];
    const adapter = createAdapterFactory({
      db: store.db,
      codec,
      now,
      alreadyConsumed: (model, grantId) => {
        lost.push([model, grantId]);
        return Promise.resolve(new Error('already used'));
      },
    })('RefreshToken');
    await adapter.upsert('rt-race', { jti: 'rt-race', grantId: 'grant-race' }, 600);
    const results = await Promise.allSettled(Array.from({ length: 5 }, () => adapter.consume('rt-race')));
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    expect(results.filter((r) => r.status === 'rejected')).toHaveLength(4);
    expect(lost).toEqual(Array.from({ length: 4 }, () => ['RefreshToken', 'grant-race']));
    // Sequentially, too; a missing row is not a race.
    await expect(adapter.consume('rt-race')).rejects.toThrow('already used');
    await adapter.consume('rt-missing');
    // Without the hook, consuming again is a no-op (the first consumption time stays).
    const plain = createAdapterFactory({ db: store.db, codec, now })('RefreshToken');
    const first = (await plain.find('rt-race'))?.consumed;
    clock += 5_000;
    await plain.consume('rt-race');
    expect((await plain.find('rt-race'))?.consumed).toBe(first);
  });

  it('serves the Client model from the lookup and refuses to write it', async () => {
    const factory = createAdapterFactory({
      db: store.db,
      codec,
      now,
      clients: (id) => Promise.resolve(id === 'c1' ? { client_id: 'c1' } : undefined),
    });
    expect(await factory('Client').find('c1')).toEqual({ client_id: 'c1' });
    expect(await factory('Client').find('c2')).toBeUndefined();
    await expect(factory('Client').upsert('c3', {})).rejects.toThrow(/portcullis clients/);
    expect(await createAdapterFactory({ db: store.db, codec })('Client').find('c1')).toBeUndefined();
  });

  it('refuses empty and oversized keys', async () => {
    const adapter = createAdapterFactory({ db: store.db, codec, now })('Interaction');
    await expect(adapter.upsert('', {})).rejects.toThrow(TypeError);
    await expect(adapter.upsert('x'.repeat(401), {})).rejects.toThrow(TypeError);
    expect(await adapter.find('x'.repeat(401))).toBeUndefined();
  });

  it('stores no identifier or payload in the clear, and a sealed row moved to another id does not open', async () => {
    const factory = createAdapterFactory({ db: store.db, codec, now });
    const secrets = [
      'code-secret-7f3a',
      'grant-secret-91bc',
      'uid-secret-55de',
      'user-secret-alice',
      'rt-secret-2a',
    ];
    await factory('AuthorizationCode').upsert(
      'code-secret-7f3a',
      { jti: 'code-secret-7f3a', grantId: 'grant-secret-91bc', accountId: 'user-secret-alice' },
      60,
    );
    await factory('Session').upsert(
      'sess-secret',
      {
        jti: 'sess-secret',
        uid: 'uid-secret-55de',
        accountId: 'user-secret-alice',
        authorizations: { c: { grantId: 'grant-secret-91bc' } },
      },
      600,
    );
    await factory('RefreshToken').upsert(
      'rt-secret-2a',
      { jti: 'rt-secret-2a', grantId: 'grant-secret-91bc' },
      600,
    );
    const rows = await store.db.selectFrom('oauth_models').selectAll().execute();
    const dump = JSON.stringify(rows);
    for (const secret of [...secrets, 'sess-secret']) expect(dump).not.toContain(secret);
    const code = rows.find((r) => r.model === 'AuthorizationCode' && r.id === codec.hash('code-secret-7f3a'));
    expect(code?.grant_id).toBe(codec.hash('grant-secret-91bc'));
    expect(code?.account_id).toBe(codec.hash('user-secret-alice'));
    expect(await factory('AuthorizationCode').find('code-secret-7f3a')).toMatchObject({
      grantId: 'grant-secret-91bc',
    });
    // A payload copied onto another row does not open (AEAD bound to model and id).
    await factory('AuthorizationCode').upsert('code-other', { jti: 'code-other' }, 60);
    await store.db
      .updateTable('oauth_models')
      .set({ payload: code!.payload })
      .where('model', '=', 'AuthorizationCode')
      .where('id', '=', codec.hash('code-other'))
      .execute();
    await expect(factory('AuthorizationCode').find('code-other')).rejects.toThrow();
  });

  it('ends a session unused for the idle timeout, and extends it on every use', async () => {
    const factory = createAdapterFactory({ db: store.db, codec, now, sessionIdleSeconds: () => 300 });
    await factory('Session').upsert('sess-idle', { uid: 'uid-idle', accountId: 'a' }, 3_600);
    clock += 299_000;
    expect(await factory('Session').find('sess-idle')).toMatchObject({ uid: 'uid-idle' }); // used: extended
    clock += 299_000;
    expect(await factory('Session').findByUid('uid-idle')).toMatchObject({ uid: 'uid-idle' });
    clock += 300_000;
    expect(await factory('Session').find('sess-idle')).toBeUndefined();
    // Ended means gone, not hidden: the row was deleted.
    const left = await store.db
      .selectFrom('oauth_models')
      .select('id')
      .where('id', '=', codec.hash('sess-idle'))
      .execute();
    expect(left).toEqual([]);
    // Other models have no idle limit.
    await factory('Grant').upsert('grant-idle', { jti: 'grant-idle' }, 3_600);
    clock += 1_000_000;
    expect(await factory('Grant').find('grant-idle')).toMatchObject({ jti: 'grant-idle' });
  });
});
