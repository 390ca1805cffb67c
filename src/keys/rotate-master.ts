/**
 * Master-key rotation (`portcullis keys rotate-master`): every secret the master key wraps —
 * signing keys, audit-checkpoint keys, peppers, users' TOTP seeds — is unwrapped and wrapped
 * again under a new master key, then the new key becomes current. No restart: other processes
 * unwrap with whichever key the envelope names (retired keys are kept) and switch to the new key
 * for new wraps when they see the key-set generation move.
 *
 * Resumable: the journal row (`master_key_rotations`, keyed by the new key's id) is written
 * before the first secret moves, and each secret is moved in its own transaction together with
 * the journal's count; what is done is visible in the envelope itself (it names the new key), so
 * a rerun after a crash skips it and finishes. Keys on an HSM (`pkcs11:` references) are not
 * wrapped and are left alone.
 */
import { sql } from 'kysely';
import type { Kysely } from 'kysely';
import type { Database, Store } from '../store/index.ts';
import { envelopeKeyId, KmsError } from './kms.ts';
import type { KeyRing } from './kms.ts';

export interface RotateMasterOptions {
  readonly store: Store;
  readonly kms: KeyRing;
  readonly now?: () => Date;
  /**
   * Called after each secret is moved (count so far). The CLI's test hook uses it to stop the
   * process part-way (`PORTCULLIS_TEST_ROTATE_MASTER_EXIT_AFTER`).
   */
  readonly onProgress?: (rewrapped: number) => void;
  /**
   * Migration instead of rotation (`keys rotate-master --to pkcs11`): no new key is made; every
   * secret not yet under the ring's current key (the HSM's KEK) — those the local master key
   * wrapped — is moved to it. Resumable the same way.
   */
  readonly migrate?: boolean;
}

export interface RotateMasterResult {
  readonly from: string;
  readonly to: string;
  /** Secrets moved by this run (a resumed run counts only its own). */
  readonly rewrapped: number;
  /** Whether this run finished a rotation an earlier run started. */
  readonly resumed: boolean;
}

/** One wrapped secret: where it lives and the additional data it is bound to. */
interface Wrapped {
  readonly table:
    'signing_keys' | 'audit_keys' | 'key_peppers' | 'key_peppers_previous' | 'data_keys' | 'users';
  readonly id: string;
  readonly aad: string;
  /** The stored text. */
  readonly stored: string;
  readonly envelope: Buffer;
  /** The stored text for a new envelope. */
  readonly encode: (envelope: Buffer) => string;
}

const HSM_REF = 'pkcs11:';

async function wrappedSecrets(
  db: Kysely<Database>,
  kmsName: string,
  legacyNames: readonly string[],
): Promise<Wrapped[]> {
  const out: Wrapped[] = [];
  const b64 = (e: Buffer) => e.toString('base64url');
  for (const r of await db.selectFrom('signing_keys').select(['kid', 'private_jwk_wrapped']).execute()) {
    if (r.private_jwk_wrapped.startsWith(HSM_REF)) continue;
    out.push({
      table: 'signing_keys',
      id: r.kid,
      aad: `signing-key:${r.kid}`,
      stored: r.private_jwk_wrapped,
      envelope: Buffer.from(r.private_jwk_wrapped, 'base64url'),
      encode: b64,
    });
  }
  for (const r of await db.selectFrom('audit_keys').select(['kid', 'private_jwk_wrapped']).execute()) {
    if (r.private_jwk_wrapped.startsWith(HSM_REF)) continue;
    out.push({
      table: 'audit_keys',
      id: r.kid,
      aad: `audit-key:${r.kid}`,
      stored: r.private_jwk_wrapped,
      envelope: Buffer.from(r.private_jwk_wrapped, 'base64url'),
      encode: b64,
    });
  }
  for (const r of await db.selectFrom('key_peppers').select(['purpose', 'wrapped']).execute()) {
    out.push({
      table: 'key_peppers',
      id: r.purpose,
      aad: `pepper:${r.purpose}`,
      stored: r.wrapped,
      envelope: Buffer.from(r.wrapped, 'base64url'),
      encode: b64,
    });
  }
  for (const r of await db.selectFrom('key_peppers_previous').select(['id', 'wrapped']).execute()) {
    out.push({
      table: 'key_peppers_previous',
      id: r.id,
      aad: `pepper-previous:${r.id}`,
      stored: r.wrapped,
      envelope: Buffer.from(r.wrapped, 'base64url'),
      encode: b64,
    });
  }
  // Data keys of encryption at rest (src/keys/envelope.ts).
  for (const r of await db.selectFrom('data_keys').select(['id', 'wrapped']).execute()) {
    out.push({
      table: 'data_keys',
      id: r.id,
      aad: `data-key:${r.id}`,
      stored: r.wrapped,
      envelope: Buffer.from(r.wrapped, 'base64url'),
      encode: b64,
    });
  }
  // TOTP seeds: `k1.<provider>.<envelope>` (src/oauth/users.ts kmsSecretWrapper).
  const users = await db
    .selectFrom('users')
    .select(['id', 'totp_secret_wrapped'])
    .where('totp_secret_wrapped', 'is not', null)
    .execute();
  for (const r of users) {
    const stored = r.totp_secret_wrapped ?? '';
    const [v, name, envelope = ''] = stored.split('.');
    if (v !== 'k1' || (name !== kmsName && !legacyNames.includes(name ?? ''))) continue;
    out.push({
      table: 'users',
      id: r.id,
      aad: `totp:${r.id}`,
      stored,
      envelope: Buffer.from(envelope, 'base64url'),
      encode: (e) => `k1.${kmsName}.${e.toString('base64url')}`,
    });
  }
  return out;
}

/** Replaces one stored envelope if it is still the one read (another writer may have moved it). */
async function replace(db: Kysely<Database>, w: Wrapped, value: string): Promise<boolean> {
  let n: bigint;
  switch (w.table) {
    case 'signing_keys':
    case 'audit_keys': {
      const r = await db
        .updateTable(w.table)
        .set({ private_jwk_wrapped: value })
        .where('kid', '=', w.id)
        .where('private_jwk_wrapped', '=', w.stored)
        .executeTakeFirst();
      n = r.numUpdatedRows;
      break;
    }
    case 'key_peppers': {
      const r = await db
        .updateTable('key_peppers')
        .set({ wrapped: value })
        .where('purpose', '=', w.id)
        .where('wrapped', '=', w.stored)
        .executeTakeFirst();
      n = r.numUpdatedRows;
      break;
    }
    case 'key_peppers_previous':
    case 'data_keys': {
      const r = await db
        .updateTable(w.table)
        .set({ wrapped: value })
        .where('id', '=', w.id)
        .where('wrapped', '=', w.stored)
        .executeTakeFirst();
      n = r.numUpdatedRows;
      break;
    }
    case 'users': {
      const r = await db
        .updateTable('users')
        .set({ totp_secret_wrapped: value })
        .where('id', '=', w.id)
        .where('totp_secret_wrapped', '=', w.stored)
        .executeTakeFirst();
      n = r.numUpdatedRows;
      break;
    }
  }
  return n > 0n;
}

/** Rotates (or resumes rotating) the master key. Rejects with a message naming the setting. */
export async function rotateMasterKey(options: RotateMasterOptions): Promise<RotateMasterResult> {
  const { store, kms } = options;
  const now = options.now ?? (() => new Date());
  const db = store.db;
  if (options.migrate === true) return migrateToCurrent(options, now);
  const why = kms.canRotate();
  if (why !== undefined) throw new KmsError('KMS_PROVIDER', `cannot rotate the master key: ${why}`);

  const open = await db
    .selectFrom('master_key_rotations')
    .selectAll()
    .where('finished_at', 'is', null)
    .executeTakeFirst();
  let to: string;
  let from: string;
  const resumed = open !== undefined;
  if (open === undefined) {
    from = kms.currentKeyId();
    to = await kms.prepareNext();
    await db
      .insertInto('master_key_rotations')
      .values({
        to_key: to,
        from_key: from,
        provider: kms.name,
        rewrapped: 0,
        started_at: now().toISOString(),
        finished_at: null,
      })
      .execute();
  } else {
    ({ to_key: to, from_key: from } = open);
    if (kms.currentKeyId() !== to) {
      const next = await kms.prepareNext();
      if (next !== to) {
        throw new KmsError(
          'KMS_PROVIDER',
          `an unfinished master-key rotation to ${to} is journalled, but the next key present is ${next}`,
        );
      }
    }
  }

  const rewrapped = await moveAll(options, to);

  await kms.promoteNext(to);
  await finish(db, to, now().toISOString());
  return { from, to, rewrapped, resumed };
}

/** Moves every wrapped secret not yet under `to` (and its provider's name) to it; the count. */
async function moveAll(options: RotateMasterOptions, to: string): Promise<number> {
  const { store, kms } = options;
  const db = store.db;
  let rewrapped = 0;
  // Two passes: a process that wrapped something under the old key meanwhile is caught by the second.
  for (let pass = 0; pass < 2; pass++) {
    for (const w of await wrappedSecrets(db, kms.name, kms.legacyNames ?? [])) {
      const named = !w.stored.startsWith('k1.') || w.stored.startsWith(`k1.${kms.name}.`);
      if (envelopeKeyId(w.envelope) === to && named) continue;
      const plain = await kms.unwrap(w.envelope, w.aad);
      let value: string;
      try {
        value = w.encode(await kms.wrapUnder(to, plain, w.aad));
      } finally {
        plain.fill(0);
      }
      const moved = await store.db.transaction().execute(async (tx) => {
        if (!(await replace(tx, w, value))) return false;
        await tx
          .updateTable('master_key_rotations')
          .set({ rewrapped: sql<number>`rewrapped + 1` })
          .where('to_key', '=', to)
          .execute();
        return true;
      });
      if (moved) {
        rewrapped++;
        options.onProgress?.(rewrapped);
      }
    }
  }
  return rewrapped;
}

async function finish(db: Kysely<Database>, to: string, at: string): Promise<void> {
  await db.transaction().execute(async (tx) => {
    await tx.updateTable('master_key_rotations').set({ finished_at: at }).where('to_key', '=', to).execute();
    // Other processes re-read the ring when the key-set generation moves.
    await tx
      .updateTable('key_set_state')
      .set({ generation: sql<number>`generation + 1`, updated_at: at })
      .where('id', '=', 1)
      .execute();
  });
}

/** `--to pkcs11`: moves what the legacy (local) master key wrapped to the ring's current key. */
async function migrateToCurrent(options: RotateMasterOptions, now: () => Date): Promise<RotateMasterResult> {
  const { kms, store } = options;
  const db = store.db;
  const legacy = kms.legacyNames ?? [];
  if (legacy.length === 0) {
    throw new KmsError(
      'KMS_PROVIDER',
      'nothing to migrate from: keys.provider must be pkcs11 and the local master key (oauth.kms) must still be present',
    );
  }
  const to = kms.currentKeyId();
  const open = await db
    .selectFrom('master_key_rotations')
    .selectAll()
    .where('to_key', '=', to)
    .executeTakeFirst();
  const resumed = open !== undefined && open.finished_at === null;
  if (open === undefined) {
    await db
      .insertInto('master_key_rotations')
      .values({
        to_key: to,
        from_key: legacy.join(','),
        provider: kms.name,
        rewrapped: 0,
        started_at: now().toISOString(),
        finished_at: null,
      })
      .execute();
  } else if (open.finished_at !== null) {
    await db
      .updateTable('master_key_rotations')
      .set({ finished_at: null })
      .where('to_key', '=', to)
      .execute();
  }
  const rewrapped = await moveAll(options, to);
  await finish(db, to, now().toISOString());
  return { from: legacy.join(','), to, rewrapped, resumed };
}
