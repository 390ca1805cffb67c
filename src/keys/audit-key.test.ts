/**
 * The key manager's audit-checkpoint key, on SQLite and PostgreSQL: created once and shared by
 * every process, KMS-wrapped in the store, and the only key (besides the interim file key, for old
 * logs) whose checkpoints verify.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { checkpointPayload, es256Signer, signCheckpoint, verifyChain } from '../audit/chain.ts';
import { AuditLog } from '../audit/log.ts';
import { fileCheckpointSigner, fileCheckpointVerifier, anyCheckpointVerifier } from '../audit/signer.ts';
import { readStoreLog, storeSink } from '../audit/sinks/store.ts';
import { parseConfig } from '../config/load.ts';
import { openStore } from '../store/index.ts';
import type { Store } from '../store/index.ts';
import { createLocalKms, openKeyManager, storeAuditVerifier } from './index.ts';
import type { StoreKeyManager } from './index.ts';

const PG_URL = process.env.PORTCULLIS_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const tmp = mkdtempSync(join(tmpdir(), 'portcullis-audit-key-'));
const pgSchemas: string[] = [];
const stores: Store[] = [];
const managers: StoreKeyManager[] = [];
const OAUTH = parseConfig('version: 1\n', join(tmp, 'portcullis.yaml')).config.oauth;
const KEK = randomBytes(32);

afterEach(async () => {
  for (const m of managers.splice(0)) m.close();
  await Promise.all(stores.splice(0).map((s) => s.close()));
});

afterAll(async () => {
  rmSync(tmp, { recursive: true, force: true });
  if (pgSchemas.length === 0) return;
  const client = new pg.Client({ connectionString: PG_URL });
  await client.connect();
  try {
    for (const schema of pgSchemas) await client.query(`drop schema if exists "${schema}" cascade`);
  } finally {
    await client.end();
  }
});

const backends = [
  { name: 'sqlite', fresh: () => 'sqlite:keys.db' },
  {
    name: 'postgres',
    fresh: () => {
      const schema = `portcullis_audit_key_${randomBytes(8).toString('hex')}`;
      pgSchemas.push(schema);
      const url = new URL(PG_URL);
      url.searchParams.set('schema', schema);
      return url.href;
    },
  },
];

let counter = 0;

describe.each(backends)('the audit-checkpoint key on $name', (backend) => {
  const env = () => {
    const url = backend.fresh();
    const dataDir = join(tmp, `data-${String(++counter)}`);
    const store = async () => {
      const s = await openStore({ url, dataDir });
      stores.push(s);
      return s;
    };
    const manager = async (s?: Store) => {
      const m = await openKeyManager({
        store: s ?? (await store()),
        dataDir,
        config: OAUTH,
        kms: createLocalKms(KEK),
      });
      managers.push(m);
      return m;
    };
    return { dataDir, store, manager };
  };

  it('is created once, shared by every process, and stored only wrapped', async () => {
    const e = env();
    // Two processes at once (SQLite's synchronous driver blocks this one process while it waits
    // for the lock, so there they open one after the other).
    const [a, b] =
      backend.name === 'postgres'
        ? await Promise.all([e.manager(), e.manager()])
        : [await e.manager(), await e.manager()];
    const kid = a.auditCheckpointSigner().kid;
    expect(kid).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(b.auditCheckpointSigner().kid).toBe(kid);
    // Reopened: the same key.
    expect((await e.manager()).auditCheckpointSigner().kid).toBe(kid);

    const store = await e.store();
    const rows = await store.db.selectFrom('audit_keys').selectAll().execute();
    expect(rows).toHaveLength(1);
    const row = rows[0];
    expect(row?.kid).toBe(kid);
    expect(row?.alg).toBe('ES256');
    expect(row?.retired_at).toBeNull();
    expect(Object.keys(JSON.parse(row?.public_jwk ?? '{}') as object)).not.toContain('d');
    expect(row?.private_jwk_wrapped).not.toContain('"d"');
    // The signing keys' lifecycle does not touch it.
    await a.rotate('test');
    expect((await e.manager()).auditCheckpointSigner().kid).toBe(kid);
  });

  it("verifies the key manager's checkpoints and refuses any other key's", async () => {
    const e = env();
    const km = await e.manager();
    const signer = km.auditCheckpointSigner();
    const verifier = km.auditCheckpointVerifier();
    const head = { seq: 42, hash: 'a'.repeat(64) };
    const cp = await signCheckpoint(signer, head);
    const sig = Buffer.from(cp.sig, 'base64url');
    expect(await verifier.verify(cp.kid, checkpointPayload(cp), sig)).toBe(true);
    // From the store alone (what `audit verify` uses): no KMS needed.
    expect(await storeAuditVerifier((await e.store()).db).verify(cp.kid, checkpointPayload(cp), sig)).toBe(
      true,
    );

    // Another P-256 key claiming the same kid, or under its own kid: refused.
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const forged = await signCheckpoint(es256Signer(privateKey, signer.kid), head);
    expect(
      await verifier.verify(forged.kid, checkpointPayload(forged), Buffer.from(forged.sig, 'base64url')),
    ).toBe(false);
    const other = await signCheckpoint(es256Signer(privateKey, 'another-kid'), head);
    expect(
      await verifier.verify(other.kid, checkpointPayload(other), Buffer.from(other.sig, 'base64url')),
    ).toBe(false);
    // The right key over a different head: refused.
    expect(await verifier.verify(cp.kid, checkpointPayload({ ...cp, seq: 43 }), sig)).toBe(false);
    // The interim file key is not the key manager's.
    const fileCp = await signCheckpoint(fileCheckpointSigner(e.dataDir), head);
    expect(
      await verifier.verify(fileCp.kid, checkpointPayload(fileCp), Buffer.from(fileCp.sig, 'base64url')),
    ).toBe(false);
  });

  it('signs an audit log whose chain verifies with it, and with the file key as fallback for old logs', async () => {
    const e = env();
    const km = await e.manager();
    const store = await e.store();
    const emitAll = async (log: AuditLog, n: number) => {
      for (let i = 0; i < n; i++) {
        await log.emitDurable({
          'event.category': 'admin',
          'event.action': 'test',
          'event.outcome': 'success',
          'event.reason': `r${String(i)}`,
        });
      }
      await log.close();
    };
    // An old log: checkpoints by the interim file key…
    await emitAll(
      await AuditLog.open({
        chain: storeSink(store),
        signer: fileCheckpointSigner(e.dataDir),
        spoolDir: join(e.dataDir, 'audit', 'spool'),
        checkpointEvery: 3,
      }),
      7,
    );
    // …continued with the key manager's key.
    await emitAll(
      await AuditLog.open({
        chain: storeSink(store),
        signer: km.auditCheckpointSigner(),
        spoolDir: join(e.dataDir, 'audit', 'spool'),
        checkpointEvery: 3,
      }),
      7,
    );
    const { records, checkpoints } = await readStoreLog(store.db);
    expect(records).toHaveLength(14);
    const kids = new Set(checkpoints.map((c) => c.kid));
    expect(kids).toContain(km.auditCheckpointSigner().kid);
    expect(kids.size).toBe(2);

    const both = anyCheckpointVerifier(km.auditCheckpointVerifier(), fileCheckpointVerifier(e.dataDir));
    const ok = await verifyChain(records, checkpoints, both);
    expect(ok).toMatchObject({ ok: true, records: 14, checkpointedSeq: 14 });
    expect(ok.checkpoints).toBe(checkpoints.length);

    // Without the key manager's key, its checkpoints do not verify.
    const fileOnly = await verifyChain(records, checkpoints, fileCheckpointVerifier(e.dataDir));
    expect(fileOnly.ok).toBe(false);
    expect(fileOnly.problem?.kind).toBe('bad-checkpoint');
  });
});
