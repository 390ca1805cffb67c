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
}

/** The key in use, created when the store has none; returns its signer and whether it was created. */
export async function openAuditKey(
  options: AuditKeyOptions,
): Promise<{ signer: CheckpointSigner; created: boolean }> {
  const { db, kms } = options;
  const active = () =>
    db.selectFrom('audit_keys').selectAll().where('retired_at', 'is', null).executeTakeFirst();
  let row = await active();
  let created = false;
  if (row === undefined) {
    const key = await generateSigningKey(AUDIT_KEY_ALG);
    const plaintext = Buffer.from(JSON.stringify(key.privateJwk), 'utf8');
    let wrapped: string;
    try {
      wrapped = (await kms.wrap(plaintext, aad(key.kid))).toString('base64url');
    } finally {
      plaintext.fill(0);
    }
    const fresh = {
      kid: key.kid,
      alg: AUDIT_KEY_ALG,
      public_jwk: JSON.stringify(key.publicJwk),
      private_jwk_wrapped: wrapped,
      kms: kms.name,
      created_at: options.now().toISOString(),
      retired_at: null,
    };
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
  let plaintext: Buffer;
  try {
    plaintext = await kms.unwrap(Buffer.from(row.private_jwk_wrapped, 'base64url'), aad(row.kid));
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
  return { signer: es256Signer(privateKey, row.kid), created };
}
