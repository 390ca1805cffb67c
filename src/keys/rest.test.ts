/**
 * Pepper rotation and envelope encryption at rest in the key manager, on SQLite and PostgreSQL:
 * replaced peppers verify until their grace ends (another process sees the rotation on refresh),
 * then retire on maintenance; sealed values open only for their own row and purpose; a master-key
 * rotation re-wraps data keys and replaced peppers and everything still opens.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { parseConfig } from '../config/load.ts';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { testBackends } from '../oauth/test-backends.ts';
import { openStore } from '../store/index.ts';
import type { Store } from '../store/index.ts';
import { SealError, createSealers, openText, sealText } from './envelope.ts';
import { createLocalKms, envelopeKeyId, openLocalKeyRing } from './kms.ts';
import { openKeyManager } from './index.ts';
import type { StoreKeyManager } from './index.ts';
import { rotateMasterKey } from './rotate-master.ts';

const backends = testBackends();
const OAUTH = parseConfig('version: 1\n', join(backends.dir, 'portcullis.yaml')).config.oauth;
const DAY = 86_400_000;

const stores: Store[] = [];
const managers: StoreKeyManager[] = [];
afterEach(async () => {
  for (const m of managers.splice(0)) m.close();
  await Promise.all(stores.splice(0).map((s) => s.close()));
});
afterAll(async () => {
  await backends.cleanup();
});

describe.each(backends.names)('on %s', (name) => {
  it('rotates a pepper with a grace period, seen by another process, retired when it ends', async () => {
    const url = backends.fresh(name);
    const kms = createLocalKms(randomBytes(32));
    let now = new Date('2026-01-01T00:00:00Z');
    const open = async () => {
      const store = await openStore({ url, dataDir: backends.dir });
      stores.push(store);
      const m = await openKeyManager({ store, dataDir: backends.dir, config: OAUTH, kms, now: () => now });
      managers.push(m);
      return m;
    };
    const a = await open();
    const b = await open();
    const before = a.hmac('api-key', 'pcl_live_example');
    expect(a.hmacPrevious('api-key', 'pcl_live_example')).toEqual([]);
    const r = await a.rotatePepper('api-key', 2 * DAY);
    expect(r.previous).toMatch(/^[0-9a-f]{16}$/);
    expect(a.hmac('api-key', 'pcl_live_example')).not.toBe(before);
    expect(a.hmacPrevious('api-key', 'pcl_live_example')).toEqual([before]);
    // The client-secret pepper is untouched.
    expect(a.hmacPrevious('client-secret', 'x')).toEqual([]);
    // Another process: still the old pepper until it refreshes.
    expect(b.hmac('api-key', 'pcl_live_example')).toBe(before);
    await b.refresh();
    expect(b.hmac('api-key', 'pcl_live_example')).toBe(a.hmac('api-key', 'pcl_live_example'));
    expect(b.hmacPrevious('api-key', 'pcl_live_example')).toEqual([before]);
    // After the grace period it no longer verifies, and maintenance deletes it.
    now = new Date(now.getTime() + 2 * DAY + 1000);
    expect(a.hmacPrevious('api-key', 'pcl_live_example')).toEqual([]);
    await a.maintain();
    expect(a.previousPeppers()).toEqual([]);
    await b.refresh();
    expect(b.previousPeppers()).toEqual([]);
    await expect(a.rotatePepper('api-key', -1)).rejects.toThrow(/graceMs/);
  });

  it('seals values for their row only, and a master-key rotation keeps them readable', async () => {
    const dataDir = join(backends.dir, `rest-${name}-${randomBytes(4).toString('hex')}`);
    const store = await backends.open(name);
    stores.push(store);
    const ring = openLocalKeyRing({
      dataDir,
      masterKeyFile: 'master.key',
      masterKeyEnv: 'PORTCULLIS_NO_SUCH',
    });
    const m = await openKeyManager({ store, dataDir, config: OAUTH, kms: ring.kms });
    managers.push(m);
    await m.rotatePepper('client-secret', DAY);
    const sealers = createSealers({ db: store.db, kms: ring.kms });
    const idem = sealers.for('idempotency');
    const sealed = await idem.seal(Buffer.from('secret response'), 'record:a');
    expect(sealed).toMatch(/^e1\.[0-9a-f]{32}\./);
    expect(sealed).not.toContain('secret');
    expect((await idem.open(sealed, 'record:a')).toString()).toBe('secret response');
    await expect(idem.open(sealed, 'record:b')).rejects.toBeInstanceOf(SealError);
    await expect(sealers.for('oauth-model').open(sealed, 'record:a')).rejects.toBeInstanceOf(SealError);
    const flipped = sealed.slice(0, -3) + (sealed.endsWith('AAA') ? 'BBB' : 'AAA');
    await expect(idem.open(flipped, 'record:a')).rejects.toBeInstanceOf(SealError);
    // Text helpers: clear text is refused where a sealer is in force.
    const model = sealers.for('oauth-model');
    const text = await sealText(model, 'oauth-model:Session:1', '{"a":1}');
    expect(await openText(model, 'oauth-model:Session:1', text)).toBe('{"a":1}');
    await expect(openText(model, 'oauth-model:Session:1', '{"a":2}')).rejects.toBeInstanceOf(SealError);
    expect(await openText(undefined, 'x', '{"a":2}')).toBe('{"a":2}');

    const result = await rotateMasterKey({ store, kms: ring.kms });
    for (const d of await store.db.selectFrom('data_keys').select('wrapped').execute()) {
      expect(envelopeKeyId(Buffer.from(d.wrapped, 'base64url'))).toBe(result.to);
    }
    for (const p of await store.db.selectFrom('key_peppers_previous').select('wrapped').execute()) {
      expect(envelopeKeyId(Buffer.from(p.wrapped, 'base64url'))).toBe(result.to);
    }
    // A fresh process (new ring from the key files, new sealers, new key manager) reads it all.
    const fresh = openLocalKeyRing({
      dataDir,
      masterKeyFile: 'master.key',
      masterKeyEnv: 'PORTCULLIS_NO_SUCH',
    });
    const reopened = createSealers({ db: store.db, kms: fresh.kms }).for('idempotency');
    expect((await reopened.open(sealed, 'record:a')).toString()).toBe('secret response');
    const m2 = await openKeyManager({ store, dataDir, config: OAUTH, kms: fresh.kms });
    managers.push(m2);
    expect(m2.previousPeppers()).toHaveLength(1);
    expect(m2.hmac('client-secret', 'x')).toBe(m.hmac('client-secret', 'x'));
  });
});
