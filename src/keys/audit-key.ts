/**
 * The audit-checkpoint key: an ES256 key the key manager creates once per store and keeps in
 * `audit_keys` (migration 007) with its private JWK wrapped by the KMS (additional data
 * `audit-key:<kid>`), exactly like the token-signing keys. It signs the audit trail's
 * checkpoints (src/audit/chain.ts); rows are never deleted, so every checkpoint ever signed
 * keeps verifying.
 *
 * Verification needs only the public JWKs: {@link storeAuditVerifier} reads them from the store
 * without the KMS (so `portcullis audit verify` works on a copy of the store without the master
 * key), and re-reads them when it meets a kid it does not know yet.
 */
import { createPrivateKey, createPublicKey } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import type { JWK } from 'jose';
import type { Kysely } from 'kysely';
import { es256Signer, es256Verifier } from '../audit/chain.ts';
import type { CheckpointSigner, CheckpointVerifier } from '../audit/chain.ts';
import type { Database } from '../store/index.ts';
import { generateSigningKey, publicPart, thumbprint } from './generate.ts';
import type { KmsProvider } from './kms.ts';
import type { Hsm } from './pkcs11.ts';

/** `private_jwk_wrapped` of a key generated on the HSM: a reference to it, not the key. */
const HSM_REF_PREFIX = 'pkcs11:';

export const AUDIT_KEY_ALG = 'ES256';

function aad(kid: string): string {
  return `audit-key:${kid}`;
}

/** Loads the public keys of `audit_keys`, checking each against its kid. */
async function readPublicKeys(db: Kysely<Database>): Promise<Map<string, KeyObject>> {
  const rows = await db.selectFrom('audit_keys').select(['kid', 'alg', 'public_jwk']).execute();
  const out = new Map<string, KeyObject>();
  for (const row of rows) {
    if (row.alg !== AUDIT_KEY_ALG) continue;
    let jwk: JWK;
    try {
      jwk = publicPart(JSON.parse(row.public_jwk) as JWK);
    } catch {
      continue;
    }
    // A row whose public key does not match its kid vouches for nothing.
    if ((await thumbprint(jwk)) !== row.kid) continue;
    out.set(row.kid, createPublicKey({ key: jwk, format: 'jwk' }));
  }
  return out;
}

/**
 * A verifier over every audit-checkpoint key in the store. Unknown kids trigger one re-read
 * (a key created by another process since); still unknown, they verify as false.
 */
export function storeAuditVerifier(db: Kysely<Database>): CheckpointVerifier {
  let keys: Promise<CheckpointVerifier & { has(kid: string): boolean }> | undefined;
  const load = () =>
    (keys = readPublicKeys(db).then((map) => ({
      ...es256Verifier(map),
      has: (kid: string) => map.has(kid),
    })));
  return {
    async verify(kid, data, signature) {
      let known = await (keys ?? load());
      if (!known.has(kid)) known = await load();
      return known.verify(kid, data, signature);
    },
  };
}

export interface AuditKeyOptions {
  readonly db: Kysely<Database>;
  readonly kms: KmsProvider;
  /** Runs `fn` in the key manager's write transaction (key-set lock held). */
  readonly transact: <T>(fn: (db: Kysely<Database>) => Promise<T>) => Promise<T>;
  readonly now: () => Date;
  /** When set, a new key is generated on this HSM and signs there. */
  readonly hsm?: Hsm | undefined;
}

interface NewAuditKeyRow {
  kid: string;
  alg: string;
  public_jwk: string;
  private_jwk_wrapped: string;
  kms: string;
  created_at: string;
  retired_at: null;
}

async function newAuditKeyRow(options: AuditKeyOptions): Promise<NewAuditKeyRow> {
  const { kms, hsm } = options;
  const created_at = options.now().toISOString();
  if (hsm !== undefined) {
    const made = await hsm.generateEcKey('portcullis-audit-checkpoint');
    return {
      kid: made.kid,
      alg: AUDIT_KEY_ALG,
      public_jwk: JSON.stringify(made.publicJwk),
      private_jwk_wrapped: `${HSM_REF_PREFIX}${made.ref}`,
      kms: 'pkcs11',
      created_at,
      retired_at: null,
    };
  }
  const key = await generateSigningKey(AUDIT_KEY_ALG);
  const plaintext = Buffer.from(JSON.stringify(key.privateJwk), 'utf8');
  let wrapped: string;
  try {
    wrapped = (await kms.wrap(plaintext, aad(key.kid))).toString('base64url');
  } finally {
    plaintext.fill(0);
  }
  return {
    kid: key.kid,
    alg: AUDIT_KEY_ALG,
    public_jwk: JSON.stringify(key.publicJwk),
    private_jwk_wrapped: wrapped,
    kms: kms.name,
    created_at,
    retired_at: null,
  };
}

/**
 * Retires the audit-checkpoint key in use and creates the next one, in one transaction; the
 * old row stays (its public key keeps verifying the checkpoints it signed). Returns the kids.
 */
export async function rotateAuditKey(
  options: AuditKeyOptions,
): Promise<{ retired: string | undefined; kid: string }> {
  const fresh = await newAuditKeyRow(options);
  const retired = await options.transact(async (tx) => {
    const old = await tx
      .selectFrom('audit_keys')
      .select('kid')
      .where('retired_at', 'is', null)
      .executeTakeFirst();
    if (old !== undefined) {
      await tx
        .updateTable('audit_keys')
        .set({ retired_at: fresh.created_at })
        .where('kid', '=', old.kid)
        .execute();
    }
    await tx.insertInto('audit_keys').values(fresh).execute();
    return old?.kid;
  });
  return { retired, kid: fresh.kid };
}

async function signerFor(
  row: { kid: string; private_jwk_wrapped: string },
  options: AuditKeyOptions,
): Promise<CheckpointSigner> {
  if (row.private_jwk_wrapped.startsWith(HSM_REF_PREFIX)) {
    if (options.hsm === undefined) {
      throw new Error(`audit-checkpoint key ${row.kid} lives on an HSM: set keys.provider: pkcs11 to use it`);
    }
    const sign = options.hsm.es256Signer(row.private_jwk_wrapped.slice(HSM_REF_PREFIX.length), row.kid);
    return { kid: row.kid, sign: (data) => Promise.resolve(sign(data)) };
  }
  let plaintext: Buffer;
  try {
    plaintext = await options.kms.unwrap(Buffer.from(row.private_jwk_wrapped, 'base64url'), aad(row.kid));
  } catch (error) {
    const reason = error instanceof Error ? error.message : 'unknown error';
    throw new Error(`cannot decrypt audit-checkpoint key ${row.kid}: ${reason}`, { cause: error });
  }
  let privateKey: KeyObject;
  try {
    const jwk = JSON.parse(plaintext.toString('utf8')) as JWK;
    if ((await thumbprint(jwk)) !== row.kid) throw new Error('mismatch');
    privateKey = createPrivateKey({ key: jwk, format: 'jwk' });
  } catch {
    // No cause: it could quote the plaintext.
    throw new Error(`audit-checkpoint key ${row.kid} decrypted to malformed data or does not match its kid`);
  } finally {
    plaintext.fill(0);
  }
  return es256Signer(privateKey, row.kid);
}

/**
 * A signer that always signs with the key in use: after {@link rotateAuditKey} (here or in
 * another process) it switches at its next `sign` once `recheckMs` passed since it last looked.
 */
export function followingAuditSigner(
  initial: CheckpointSigner,
  options: AuditKeyOptions,
  recheckMs = 30_000,
): CheckpointSigner & { refresh(): Promise<void> } {
  let current = initial;
  let checkedAt = Date.now();
  const refresh = async () => {
    checkedAt = Date.now();
    const row = await options.db
      .selectFrom('audit_keys')
      .select(['kid', 'private_jwk_wrapped'])
      .where('retired_at', 'is', null)
      .executeTakeFirst();
    if (row !== undefined && row.kid !== current.kid) current = await signerFor(row, options);
  };
  return {
    get kid() {
      return current.kid;
    },
    async sign(data) {
      if (Date.now() - checkedAt >= recheckMs) await refresh();
      return current.sign(data);
    },
    refresh,
  };
}

/**
 * The key in use, created when the store has none; returns a signer that follows rotations
 * ({@link rotateAuditKey}, here or in another process) and whether the key was created.
 */
export async function openAuditKey(
  options: AuditKeyOptions,
): Promise<{ signer: CheckpointSigner & { refresh(): Promise<void> }; created: boolean }> {
  const { db } = options;
  const active = () =>
    db.selectFrom('audit_keys').selectAll().where('retired_at', 'is', null).executeTakeFirst();
  let row = await active();
  let created = false;
  if (row === undefined) {
    const fresh = await newAuditKeyRow(options);
    created = await options.transact(async (tx) => {
      const existing = await tx
        .selectFrom('audit_keys')
        .select('kid')
        .where('retired_at', 'is', null)
        .executeTakeFirst();
      if (existing !== undefined) return false;
      await tx.insertInto('audit_keys').values(fresh).execute();
      return true;
    });
    row = await active();
    if (row === undefined) throw new Error('the audit-checkpoint key was not created');
  }
  return { signer: followingAuditSigner(await signerFor(row, options), options), created };
}
