/**
 * The key manager: token-signing keys and peppers, kept in the store with their secret parts
 * wrapped by a KMS provider, rotated on a schedule with an overlap so that no token breaks.
 *
 * Several processes may share one store. The key set carries a generation number in a one-row
 * table; every change (creation, rotation, expiry) happens in one write transaction that takes
 * that row's lock and bumps the generation, and `refresh()` re-reads when it moved.
 *
 * @example
 * ```ts
 * const keys = await openKeyManager({ store, dataDir: '.portcullis', config: config.oauth });
 * const jwks = keys.publicJwks();          // what /jwks publishes
 * const digest = keys.hmac('client-secret', presentedSecret);
 * keys.close();
 * ```
 */
import {
  constants as cryptoConstants,
  createHmac,
  createPrivateKey,
  randomBytes,
  sign as cryptoSign,
} from 'node:crypto';
import { sql } from 'kysely';
import type { Insertable, Kysely, Selectable } from 'kysely';
import type { JWK } from 'jose';
import type { KeysConfig, OAuthConfig } from '../config/schema.ts';
import type { Logger } from '../log/index.ts';
import { describeError } from '../log/index.ts';
import type { Database, Store } from '../store/index.ts';
import type { SigningKeysTable } from '../store/schema.ts';
import { PRIVATE_JWK_MEMBERS, generateSigningKey, isSigningAlg, publicPart, thumbprint } from './generate.ts';
import type { GeneratedKey } from './generate.ts';
import { openCustody } from './custody.ts';
import type { Custody } from './custody.ts';
import type { KeyRing } from './kms.ts';
import type { Hsm } from './pkcs11.ts';
import { openAuditKey, rotateAuditKey, storeAuditVerifier } from './audit-key.ts';
import type { KeyManager, KeyStatus, KeySummary, PepperPurpose, SigningAlg, TokenSigner } from './types.ts';

export type { KeyManager, KeyStatus, KeySummary, PepperPurpose, SigningAlg, TokenSigner } from './types.ts';
export type { KeyRing, KmsProvider } from './kms.ts';
export { KmsError, createLocalKms, loadLocalKek } from './kms.ts';
export { SIGNING_ALGS, generateSigningKey } from './generate.ts';
export { AUDIT_KEY_ALG, storeAuditVerifier } from './audit-key.ts';

export const PEPPER_PURPOSES: readonly PepperPurpose[] = ['client-secret', 'api-key'];

/** How often the scheduled rotation and expiry are checked by default (one hour). */
export const DEFAULT_CHECK_INTERVAL_MS = 60 * 60 * 1000;

const DAY_MS = 24 * 60 * 60 * 1000;
const PEPPER_BYTES = 32;
const STATE_ID = 1;

export type KeyManagerErrorCode = 'KEYS_INCONSISTENT' | 'KEYS_CORRUPT' | 'KEYS_CLOSED';

/** A key-set problem. Messages name kids and purposes, never key material. */
export class KeyManagerError extends Error {
  readonly code: KeyManagerErrorCode;
  constructor(code: KeyManagerErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'KeyManagerError';
    this.code = code;
  }
}

export interface OpenKeyManagerOptions {
  readonly store: Store;
  /** The data directory (where the local KMS keeps its key file). */
  readonly dataDir: string;
  readonly config: OAuthConfig;
  readonly logger?: Logger;
  /** The clock; injectable for tests. */
  readonly now?: () => Date;
  /** The KMS provider; default: the one `keys` (and `config.kms`) names. */
  readonly kms?: KeyRing;
  /** Key custody (`config.keys`); default local. */
  readonly keys?: KeysConfig;
  /** An opened custody (tests, the rotate-master command); default: opened from `keys`. */
  readonly custody?: Custody;
  /** Environment for the local KMS's key variable; default `process.env`. */
  readonly env?: NodeJS.ProcessEnv;
  /** How often the timer checks for a due rotation and expired keys; default one hour. */
  readonly checkIntervalMs?: number;
}

/** The key manager plus operations for the process that owns it. */
export interface StoreKeyManager extends KeyManager {
  /** Name of the KMS provider in use. */
  readonly kmsName: string;
  /**
   * The key-encryption key ring: what other wrapped secrets (TOTP seeds) should be wrapped with,
   * and what `rotate-master` rotates.
   */
  readonly kms: KeyRing;
  /**
   * Retires the audit-checkpoint key and makes a new one (on the HSM when configured); the old
   * public key stays in the store, so checkpoints it signed keep verifying. Returns the kids.
   */
  rotateAuditKey(): Promise<{ retired: string | undefined; kid: string }>;
  /**
   * Replaces the pepper of `purpose` with a new one. The old one keeps verifying for `graceMs`
   * (see {@link KeyManager.hmacPrevious}; a secret verified with it is re-hashed under the new one),
   * then is retired. `graceMs` 0 retires it at once.
   */
  rotatePepper(
    purpose: PepperPurpose,
    graceMs: number,
  ): Promise<{ purpose: PepperPurpose; previous: string | undefined; retiresAt: Date }>;
  /** Retires the replaced peppers of `purpose` now, before their grace ends; returns their ids. */
  retirePeppers(purpose: PepperPurpose): Promise<string[]>;
  /** Replaced peppers still in their grace period (ids, purposes and when they retire). */
  previousPeppers(): { id: string; purpose: PepperPurpose; retiresAt: Date }[];
  /**
   * What the timer does: refreshes, rotates when the current key is older than
   * `rotationDays`, and removes previous keys past their overlap.
   */
  maintain(): Promise<void>;
}

interface LoadedKey {
  readonly summary: KeySummary;
  readonly publicJwk: JWK;
  /** Undefined for a key on the HSM: it never leaves it. */
  readonly privateJwk: JWK | undefined;
  readonly signer: TokenSigner;
}

/** What `private_jwk_wrapped` holds for a key generated on the HSM: a reference, not a key. */
export const HSM_REF_PREFIX = 'pkcs11:';

function localSign(alg: SigningAlg, jwk: JWK): (data: Buffer) => Buffer {
  const key = createPrivateKey({ key: jwk, format: 'jwk' });
  switch (alg) {
    case 'ES256':
      return (data) => cryptoSign('sha256', data, { key, dsaEncoding: 'ieee-p1363' });
    case 'PS256':
      return (data) =>
        cryptoSign('sha256', data, { key, padding: cryptoConstants.RSA_PKCS1_PSS_PADDING, saltLength: 32 });
    case 'EdDSA':
      return (data) => cryptoSign(null, data, key);
  }
}

interface KeySet {
  readonly generation: number;
  /** Current, next, then previous keys (newest first). */
  readonly keys: readonly LoadedKey[];
}

type SigningKeyRow = Selectable<SigningKeysTable>;
type KeyRow = Insertable<SigningKeysTable>;

function selectKeys(db: Kysely<Database>) {
  return db.selectFrom('signing_keys').selectAll().execute();
}

function iso(date: Date): string {
  return date.toISOString();
}

function keyAad(kid: string): string {
  return `signing-key:${kid}`;
}

function pepperAad(purpose: string): string {
  return `pepper:${purpose}`;
}

/** Additional data of a pepper a rotation replaced (row `key_peppers_previous.id`). */
export function previousPepperAad(id: string): string {
  return `pepper-previous:${id}`;
}

/** A pepper a rotation replaced: still accepted until `retiresAt` (ms since the epoch). */
interface PreviousPepper {
  readonly id: string;
  readonly purpose: PepperPurpose;
  readonly key: Buffer;
  readonly retiresAt: number;
}

function isStatus(value: string): value is KeyStatus {
  return value === 'next' || value === 'current' || value === 'previous';
}

const STATUS_ORDER: Record<KeyStatus, number> = { current: 0, next: 1, previous: 2 };

function optionalDate(value: string | null): Date | undefined {
  return value === null ? undefined : new Date(value);
}

/** Runs `fn` in a write transaction that other writers of the key set wait for. */
async function writeTransaction<T>(store: Store, fn: (db: Kysely<Database>) => Promise<T>): Promise<T> {
  if (store.kind === 'sqlite') {
    return store.db.connection().execute(async (conn) => {
      await sql`begin immediate`.execute(conn);
      let result: T;
      try {
        result = await fn(conn);
      } catch (error) {
        await sql`rollback`.execute(conn).catch(() => undefined);
        throw error;
      }
      await sql`commit`.execute(conn);
      return result;
    });
  }
  return store.db.transaction().execute(fn);
}

/** Locks the state row (PostgreSQL; SQLite's `begin immediate` already holds the write lock). */
async function lockState(db: Kysely<Database>, kind: Store['kind']): Promise<number | undefined> {
  let query = db.selectFrom('key_set_state').select('generation').where('id', '=', STATE_ID);
  if (kind === 'postgres') query = query.forUpdate();
  const row = await query.executeTakeFirst();
  return row?.generation;
}

async function bumpGeneration(db: Kysely<Database>, now: Date): Promise<void> {
  await db
    .updateTable('key_set_state')
    .set({ generation: sql<number>`generation + 1`, updated_at: iso(now) })
    .where('id', '=', STATE_ID)
    .execute();
}

/**
 * Opens the key manager over `store`. On first open it creates the key set (a current and a
 * next key of `config.signing.alg`) and the peppers; when several processes open together,
 * exactly one set is created and all of them use it. Rotates at once when the current key is
 * already past `rotationDays`, and then checks every `checkIntervalMs` (timer unref'd).
 */
export async function openKeyManager(options: OpenKeyManagerOptions): Promise<StoreKeyManager> {
  const { store, config, logger } = options;
  const now = options.now ?? (() => new Date());
  const configuredAlg: string = config.signing.alg;
  if (!isSigningAlg(configuredAlg)) {
    throw new TypeError(`openKeyManager: unsupported signing alg "${configuredAlg}"`);
  }
  const alg: SigningAlg = configuredAlg;
  const rotationMs = config.signing.rotationDays * DAY_MS;
  const overlapMs = config.signing.overlapDays * DAY_MS;
  const checkIntervalMs = options.checkIntervalMs ?? DEFAULT_CHECK_INTERVAL_MS;
  if (!Number.isInteger(checkIntervalMs) || checkIntervalMs < 1) {
    throw new TypeError('openKeyManager: checkIntervalMs must be a positive integer');
  }
  let kms: KeyRing;
  let hsm: Hsm | undefined;
  let hsmSigning = false;
  if (options.kms) {
    kms = options.kms;
  } else {
    const opened =
      options.custody ??
      openCustody({
        keys: options.keys ?? { provider: 'local' },
        kms: config.kms,
        dataDir: options.dataDir,
        ...(options.env === undefined ? {} : { env: options.env }),
      });
    kms = opened.kms;
    hsm = opened.hsm;
    hsmSigning = opened.hsmSigning && alg === 'ES256';
    if (opened.source.startsWith('created:')) {
      logger?.info(
        { event: 'kms.master_key_created', file: opened.source.slice('created:'.length) },
        'master key created',
      );
    }
  }

  const unwrapped = new Map<string, JWK>();

  /** A new signing key: on the HSM when configured (ES256), else generated here. */
  async function generateKey(): Promise<{ row: Omit<KeyRow, 'created_at'> }> {
    if (hsm !== undefined && hsmSigning) {
      const made = await hsm.generateEcKey('portcullis-token-signing');
      return {
        row: {
          kid: made.kid,
          alg: 'ES256',
          status: 'next',
          public_jwk: JSON.stringify(made.publicJwk),
          private_jwk_wrapped: `${HSM_REF_PREFIX}${made.ref}`,
          kms: 'pkcs11',
          activated_at: null,
          retires_at: null,
        },
      };
    }
    const key = await generateSigningKey(alg);
    return {
      row: {
        kid: key.kid,
        alg: key.alg,
        status: 'next',
        public_jwk: JSON.stringify(key.publicJwk),
        private_jwk_wrapped: await wrapKey(key),
        kms: kms.name,
        activated_at: null,
        retires_at: null,
      },
    };
  }

  async function wrapKey(key: GeneratedKey): Promise<string> {
    const plaintext = Buffer.from(JSON.stringify(key.privateJwk), 'utf8');
    try {
      return (await kms.wrap(plaintext, keyAad(key.kid))).toString('base64url');
    } finally {
      plaintext.fill(0);
    }
  }

  async function unwrapKey(row: SigningKeyRow): Promise<JWK> {
    const cached = unwrapped.get(row.kid);
    if (cached) return cached;
    let plaintext: Buffer;
    try {
      plaintext = await kms.unwrap(Buffer.from(row.private_jwk_wrapped, 'base64url'), keyAad(row.kid));
    } catch (error) {
      const reason = error instanceof Error ? error.message : 'unknown error';
      throw new KeyManagerError('KEYS_CORRUPT', `cannot decrypt signing key ${row.kid}: ${reason}`);
    }
    let jwk: JWK;
    try {
      // No cause and no parser message: they could quote the plaintext.
      jwk = JSON.parse(plaintext.toString('utf8')) as JWK;
    } catch {
      throw new KeyManagerError('KEYS_CORRUPT', `signing key ${row.kid} decrypted to malformed data`);
    } finally {
      plaintext.fill(0);
    }
    if (typeof jwk !== 'object' || typeof jwk.d !== 'string' || (await thumbprint(jwk)) !== row.kid) {
      throw new KeyManagerError('KEYS_CORRUPT', `signing key ${row.kid} does not match its kid`);
    }
    const full: JWK = { ...jwk, kid: row.kid, alg: row.alg, use: 'sig' };
    unwrapped.set(row.kid, full);
    return full;
  }

  async function toLoadedKey(row: SigningKeyRow): Promise<LoadedKey> {
    if (!isSigningAlg(row.alg) || !isStatus(row.status)) {
      throw new KeyManagerError('KEYS_CORRUPT', `signing key ${row.kid} has an unknown alg or status`);
    }
    let stored: JWK;
    try {
      stored = JSON.parse(row.public_jwk) as JWK;
    } catch {
      throw new KeyManagerError('KEYS_CORRUPT', `signing key ${row.kid} has a malformed public JWK`);
    }
    const publicJwk: JWK = { ...publicPart(stored), kid: row.kid, alg: row.alg, use: 'sig' };
    if ((await thumbprint(publicJwk)) !== row.kid) {
      throw new KeyManagerError('KEYS_CORRUPT', `signing key ${row.kid} does not match its kid`);
    }
    let privateJwk: JWK | undefined;
    let sign: (data: Buffer) => Buffer;
    if (row.private_jwk_wrapped.startsWith(HSM_REF_PREFIX)) {
      if (hsm === undefined) {
        throw new KeyManagerError(
          'KEYS_CORRUPT',
          `signing key ${row.kid} lives on an HSM: set keys.provider: pkcs11 to use it`,
        );
      }
      try {
        sign = hsm.es256Signer(row.private_jwk_wrapped.slice(HSM_REF_PREFIX.length), row.kid);
      } catch (error) {
        const reason = error instanceof Error ? error.message : 'unknown error';
        throw new KeyManagerError('KEYS_CORRUPT', `signing key ${row.kid}: ${reason}`);
      }
    } else {
      privateJwk = await unwrapKey(row);
      sign = localSign(row.alg, privateJwk);
    }
    const signer: TokenSigner = Object.freeze({
      kid: row.kid,
      alg: row.alg,
      publicJwk,
      external: privateJwk === undefined,
      sign,
    });
    return {
      summary: Object.freeze({
        kid: row.kid,
        alg: row.alg,
        status: row.status,
        createdAt: new Date(row.created_at),
        activatedAt: optionalDate(row.activated_at),
        retiresAt: optionalDate(row.retires_at),
      }),
      publicJwk,
      privateJwk,
      signer,
    };
  }

  /** Reads generation first, then keys: a concurrent change at worst causes one more refresh. */
  async function readKeySet(): Promise<KeySet | undefined> {
    const state = await store.db
      .selectFrom('key_set_state')
      .select('generation')
      .where('id', '=', STATE_ID)
      .executeTakeFirst();
    if (state === undefined) return undefined;
    const rows = await selectKeys(store.db);
    const keys = await Promise.all(rows.map(toLoadedKey));
    keys.sort(
      (a, b) =>
        STATUS_ORDER[a.summary.status] - STATUS_ORDER[b.summary.status] ||
        (b.summary.activatedAt?.getTime() ?? 0) - (a.summary.activatedAt?.getTime() ?? 0),
    );
    const count = (s: KeyStatus) => keys.filter((k) => k.summary.status === s).length;
    if (count('current') !== 1 || count('next') !== 1) {
      throw new KeyManagerError(
        'KEYS_INCONSISTENT',
        `the stored key set has ${String(count('current'))} current and ${String(count('next'))} next keys; expected one of each`,
      );
    }
    for (const kid of unwrapped.keys()) {
      if (!keys.some((k) => k.summary.kid === kid)) unwrapped.delete(kid);
    }
    return { generation: state.generation, keys };
  }

  async function readPreviousPeppers(): Promise<PreviousPepper[]> {
    const rows = await store.db.selectFrom('key_peppers_previous').selectAll().execute();
    const out: PreviousPepper[] = [];
    for (const row of rows) {
      const purpose = PEPPER_PURPOSES.find((p) => p === row.purpose);
      if (purpose === undefined) continue;
      try {
        const key = await kms.unwrap(Buffer.from(row.wrapped, 'base64url'), previousPepperAad(row.id));
        out.push({ id: row.id, purpose, key, retiresAt: Date.parse(row.retires_at) });
      } catch (error) {
        const reason = error instanceof Error ? error.message : 'unknown error';
        throw new KeyManagerError(
          'KEYS_CORRUPT',
          `cannot decrypt replaced ${purpose} pepper ${row.id}: ${reason}`,
        );
      }
    }
    return out;
  }

  async function readPeppers(): Promise<Map<PepperPurpose, Buffer>> {
    const rows = await store.db.selectFrom('key_peppers').selectAll().execute();
    const out = new Map<PepperPurpose, Buffer>();
    for (const purpose of PEPPER_PURPOSES) {
      const row = rows.find((r) => r.purpose === purpose);
      if (row === undefined) continue;
      try {
        out.set(purpose, await kms.unwrap(Buffer.from(row.wrapped, 'base64url'), pepperAad(purpose)));
      } catch (error) {
        const reason = error instanceof Error ? error.message : 'unknown error';
        throw new KeyManagerError('KEYS_CORRUPT', `cannot decrypt the ${purpose} pepper: ${reason}`);
      }
    }
    return out;
  }

  async function newKeyRow(at: Date): Promise<KeyRow> {
    const { row } = await generateKey();
    return { ...row, created_at: iso(at) };
  }

  /** Creates what is missing: the key set (once, whoever wins) and any missing pepper. */
  async function initialise(): Promise<void> {
    const state = await store.db
      .selectFrom('key_set_state')
      .select('generation')
      .where('id', '=', STATE_ID)
      .executeTakeFirst();
    const existingPeppers = await store.db.selectFrom('key_peppers').select('purpose').execute();
    const missingPeppers = PEPPER_PURPOSES.filter((p) => !existingPeppers.some((r) => r.purpose === p));
    if (state !== undefined && missingPeppers.length === 0) return;

    const at = now();
    // Generate and wrap outside the transaction: RSA generation takes a while.
    let keyRows: { current: KeyRow; next: KeyRow } | undefined;
    if (state === undefined) {
      keyRows = { current: await newKeyRow(at), next: await newKeyRow(at) };
    }
    const pepperRows = await Promise.all(
      missingPeppers.map(async (purpose) => {
        const pepper = randomBytes(PEPPER_BYTES);
        try {
          const wrapped = await kms.wrap(pepper, pepperAad(purpose));
          return { purpose, wrapped: wrapped.toString('base64url'), kms: kms.name, created_at: iso(at) };
        } finally {
          pepper.fill(0);
        }
      }),
    );
    const created = await writeTransaction(store, async (db) => {
      let createdKeys = false;
      if (keyRows !== undefined) {
        const { current, next } = keyRows;
        const inserted = await db
          .insertInto('key_set_state')
          .values({ id: STATE_ID, generation: 1, updated_at: iso(at) })
          .onConflict((oc) => oc.column('id').doNothing())
          .returning('id')
          .executeTakeFirst();
        if (inserted !== undefined) {
          await db
            .insertInto('signing_keys')
            .values({ ...current, status: 'current', activated_at: iso(at) })
            .execute();
          await db.insertInto('signing_keys').values(next).execute();
          createdKeys = true;
        }
      }
      for (const row of pepperRows) {
        await db
          .insertInto('key_peppers')
          .values(row)
          .onConflict((oc) => oc.column('purpose').doNothing())
          .execute();
      }
      return createdKeys;
    });
    if (created) {
      logger?.info(
        { event: 'keys.created', alg, kids: [keyRows?.current.kid, keyRows?.next.kid], kms: kms.name },
        'signing keys created',
      );
    }
  }

  await initialise();
  const initial = await readKeySet();
  if (initial === undefined) {
    throw new KeyManagerError('KEYS_INCONSISTENT', 'the key set was not created');
  }
  let set: KeySet = initial;
  async function loadPeppers(): Promise<{ current: Map<PepperPurpose, Buffer>; previous: PreviousPepper[] }> {
    const current = await readPeppers();
    for (const purpose of PEPPER_PURPOSES) {
      if (!current.has(purpose)) {
        throw new KeyManagerError('KEYS_INCONSISTENT', `the ${purpose} pepper is missing`);
      }
    }
    return { current, previous: await readPreviousPeppers() };
  }
  let { current: peppers, previous: previousPeppers } = await loadPeppers();
  const replacePeppers = (fresh: { current: Map<PepperPurpose, Buffer>; previous: PreviousPepper[] }) => {
    for (const old of [...peppers.values(), ...previousPeppers.map((p) => p.key)]) {
      if (![...fresh.current.values(), ...fresh.previous.map((p) => p.key)].includes(old)) old.fill(0);
    }
    peppers = fresh.current;
    previousPeppers = fresh.previous;
  };

  // The audit-checkpoint key: created once, like the key set, under the key-set lock.
  const auditKeyOptions = {
    db: store.db,
    kms,
    hsm: hsmSigning ? hsm : undefined,
    now,
    transact: <T>(fn: (db: Kysely<Database>) => Promise<T>) =>
      writeTransaction(store, async (db) => {
        await lockState(db, store.kind);
        return fn(db);
      }),
  };
  const auditKey = await openAuditKey(auditKeyOptions);
  if (auditKey.created) {
    logger?.info(
      { event: 'keys.audit_key_created', kid: auditKey.signer.kid, kms: kms.name },
      'audit-checkpoint key created',
    );
  }
  const auditVerifier = storeAuditVerifier(store.db);

  const listeners = new Set<() => void>();
  let closed = false;
  let timer: NodeJS.Timeout | undefined;

  function emit(): void {
    for (const listener of [...listeners]) {
      try {
        listener();
      } catch (error) {
        logger?.error({ event: 'keys.listener_failed', err: describeError(error) }, 'key listener failed');
      }
    }
  }

  /** Keys still published at `at`: previous keys past `retiresAt` are left out. */
  function live(at: Date): LoadedKey[] {
    const t = at.getTime();
    return set.keys.filter((k) => k.summary.retiresAt === undefined || k.summary.retiresAt.getTime() > t);
  }

  function currentKey(): LoadedKey {
    const key = set.keys.find((k) => k.summary.status === 'current');
    if (!key) throw new KeyManagerError('KEYS_INCONSISTENT', 'no current signing key');
    return key;
  }

  async function reload(): Promise<boolean> {
    // The cheap question first: most refreshes find nothing changed.
    const state = await store.db
      .selectFrom('key_set_state')
      .select('generation')
      .where('id', '=', STATE_ID)
      .executeTakeFirst();
    if (state !== undefined && state.generation === set.generation) return false;
    // A master-key rotation elsewhere moves the generation too: new wraps use the new key.
    await kms.refresh();
    const fresh = await readKeySet();
    if (fresh === undefined) throw new KeyManagerError('KEYS_INCONSISTENT', 'the key set is gone');
    if (fresh.generation === set.generation) return false;
    // A pepper rotation or retirement moves the generation too.
    replacePeppers(await loadPeppers());
    set = fresh;
    emit();
    return true;
  }

  // One key-set operation at a time in this process (timer, CLI, admin API).
  let queue: Promise<unknown> = Promise.resolve();
  function serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = queue.then(fn, fn);
    queue = run.catch(() => undefined);
    return run;
  }

  function isDue(activatedAt: Date | undefined, at: Date): boolean {
    return activatedAt !== undefined && activatedAt.getTime() + rotationMs <= at.getTime();
  }

  /**
   * Rotates in one transaction. `scheduled`: only when the stored current key is due (another
   * process may have rotated already). Returns whether it rotated.
   */
  async function rotateNow(reason: string, scheduled: boolean): Promise<boolean> {
    if (closed) throw new KeyManagerError('KEYS_CLOSED', 'the key manager is closed');
    const at = now();
    const fresh = await newKeyRow(at);
    const outcome = await writeTransaction(store, async (db) => {
      const generation = await lockState(db, store.kind);
      if (generation === undefined) throw new KeyManagerError('KEYS_INCONSISTENT', 'the key set is gone');
      const rows = await selectKeys(db);
      const current = rows.find((r) => r.status === 'current');
      const next = rows.find((r) => r.status === 'next');
      if (!current || !next) {
        throw new KeyManagerError('KEYS_INCONSISTENT', 'the stored key set lacks a current or next key');
      }
      if (scheduled && !isDue(optionalDate(current.activated_at), at)) return undefined;
      const nowIso = iso(at);
      await db
        .updateTable('signing_keys')
        .set({ status: 'previous', retires_at: iso(new Date(at.getTime() + overlapMs)) })
        .where('kid', '=', current.kid)
        .execute();
      await db
        .updateTable('signing_keys')
        .set({ status: 'current', activated_at: nowIso })
        .where('kid', '=', next.kid)
        .execute();
      await db.insertInto('signing_keys').values(fresh).execute();
      const removed = await db
        .deleteFrom('signing_keys')
        .where('status', '=', 'previous')
        .where('retires_at', '<=', nowIso)
        .returning('kid')
        .execute();
      await bumpGeneration(db, at);
      return { retired: current.kid, current: next.kid, removed: removed.map((r) => r.kid) };
    });
    if (outcome === undefined) return false;
    logger?.info(
      {
        event: 'keys.rotated',
        reason,
        current: outcome.current,
        next: fresh.kid,
        previous: outcome.retired,
        removed: outcome.removed,
      },
      'signing keys rotated',
    );
    return true;
  }

  /** Removes previous keys past their overlap. Returns whether any was removed. */
  async function expire(): Promise<boolean> {
    const at = now();
    const removed = await writeTransaction(store, async (db) => {
      await lockState(db, store.kind);
      const rows = await db
        .deleteFrom('signing_keys')
        .where('status', '=', 'previous')
        .where('retires_at', '<=', iso(at))
        .returning('kid')
        .execute();
      if (rows.length > 0) await bumpGeneration(db, at);
      return rows.map((r) => r.kid);
    });
    if (removed.length === 0) return false;
    logger?.info({ event: 'keys.expired', removed }, 'retired signing keys removed');
    return true;
  }

  /** Deletes replaced peppers whose grace period is over (all of `purpose` when given). */
  async function retirePeppersNow(purpose: PepperPurpose | undefined): Promise<string[]> {
    const at = now();
    const retired = await writeTransaction(store, async (db) => {
      await lockState(db, store.kind);
      let q = db.selectFrom('key_peppers_previous').select(['id', 'purpose']);
      q = purpose === undefined ? q.where('retires_at', '<=', iso(at)) : q.where('purpose', '=', purpose);
      const rows = await q.execute();
      if (rows.length === 0) return [];
      await db
        .deleteFrom('key_peppers_previous')
        .where(
          'id',
          'in',
          rows.map((r) => r.id),
        )
        .execute();
      await bumpGeneration(db, at);
      return rows.map((r) => r.id);
    });
    if (retired.length > 0) {
      logger?.info({ event: 'keys.pepper_retired', ids: retired }, 'replaced peppers retired');
    }
    return retired;
  }

  async function rotatePepperNow(purpose: PepperPurpose, graceMs: number) {
    if (closed) throw new KeyManagerError('KEYS_CLOSED', 'the key manager is closed');
    const at = now();
    const id = randomBytes(8).toString('hex');
    const row = await store.db
      .selectFrom('key_peppers')
      .selectAll()
      .where('purpose', '=', purpose)
      .executeTakeFirst();
    if (row === undefined) throw new KeyManagerError('KEYS_INCONSISTENT', `the ${purpose} pepper is missing`);
    const fresh = randomBytes(PEPPER_BYTES);
    let wrappedNew: string;
    let wrappedOld: string;
    try {
      wrappedNew = (await kms.wrap(fresh, pepperAad(purpose))).toString('base64url');
      const old = await kms.unwrap(Buffer.from(row.wrapped, 'base64url'), pepperAad(purpose));
      try {
        wrappedOld = (await kms.wrap(old, previousPepperAad(id))).toString('base64url');
      } finally {
        old.fill(0);
      }
    } finally {
      fresh.fill(0);
    }
    const retiresAt = new Date(at.getTime() + graceMs);
    await writeTransaction(store, async (db) => {
      await lockState(db, store.kind);
      const updated = await db
        .updateTable('key_peppers')
        .set({ wrapped: wrappedNew, kms: kms.name, created_at: iso(at) })
        .where('purpose', '=', purpose)
        .where('wrapped', '=', row.wrapped)
        .executeTakeFirst();
      if (updated.numUpdatedRows === 0n) {
        throw new KeyManagerError('KEYS_INCONSISTENT', `the ${purpose} pepper changed meanwhile; run again`);
      }
      if (graceMs > 0) {
        await db
          .insertInto('key_peppers_previous')
          .values({
            id,
            purpose,
            wrapped: wrappedOld,
            kms: kms.name,
            created_at: row.created_at,
            retires_at: iso(retiresAt),
          })
          .execute();
      }
      await bumpGeneration(db, at);
    });
    logger?.info(
      {
        event: 'keys.pepper_rotated',
        purpose,
        previous: graceMs > 0 ? id : undefined,
        retiresAt: iso(retiresAt),
      },
      'pepper rotated',
    );
    return { purpose, previous: graceMs > 0 ? id : undefined, retiresAt };
  }

  async function maintainNow(): Promise<void> {
    await reload();
    if (previousPeppers.some((p) => p.retiresAt <= now().getTime())) await retirePeppersNow(undefined);
    const at = now();
    if (isDue(currentKey().summary.activatedAt, at)) {
      await rotateNow(`scheduled: current key older than ${String(config.signing.rotationDays)} days`, true);
    } else if (set.keys.some((k) => k.summary.retiresAt !== undefined && k.summary.retiresAt <= at)) {
      await expire();
    }
    await reload();
  }

  /**
   * After `signing.alg` changed: replaces the next key (published, never used to sign) with one
   * of the configured algorithm, so the change takes effect at the next rotation.
   */
  async function realignNext(): Promise<void> {
    const stale = set.keys.find((k) => k.summary.status === 'next' && k.summary.alg !== alg);
    if (stale === undefined) return;
    const at = now();
    const fresh = await newKeyRow(at);
    const replaced = await writeTransaction(store, async (db) => {
      await lockState(db, store.kind);
      const next = await db
        .selectFrom('signing_keys')
        .select(['kid', 'alg'])
        .where('status', '=', 'next')
        .executeTakeFirst();
      if (next === undefined || next.alg === alg) return undefined;
      await db.deleteFrom('signing_keys').where('kid', '=', next.kid).execute();
      await db.insertInto('signing_keys').values(fresh).execute();
      await bumpGeneration(db, at);
      return next;
    });
    if (replaced === undefined) return;
    logger?.info(
      { event: 'keys.next_replaced', removed: replaced.kid, from: replaced.alg, next: fresh.kid, alg },
      'next signing key replaced: the configured algorithm changed',
    );
  }

  await maintainNow();
  await realignNext();
  await reload();

  timer = setInterval(() => {
    serial(maintainNow).catch((error: unknown) => {
      logger?.error(
        { event: 'keys.maintenance_failed', err: describeError(error) },
        'key maintenance failed',
      );
    });
  }, checkIntervalMs);
  timer.unref();

  const manager: StoreKeyManager = {
    kmsName: kms.name,
    kms,
    signingJwks() {
      const keys: JWK[] = [];
      for (const k of live(now())) if (k.privateJwk !== undefined) keys.push({ ...k.privateJwk });
      return { keys };
    },
    signers() {
      return live(now()).map((k) => k.signer);
    },
    publicJwks() {
      return { keys: live(now()).map((k) => ({ ...k.publicJwk })) };
    },
    current() {
      return currentKey().summary;
    },
    list() {
      return live(now()).map((k) => k.summary);
    },
    rotate(reason) {
      if (typeof reason !== 'string' || reason.length === 0 || reason.length > 200) {
        return Promise.reject(new TypeError('rotate: reason must be a string of 1 to 200 characters'));
      }
      return serial(async () => {
        await rotateNow(reason, false);
        await reload();
        return manager.list();
      });
    },
    refresh() {
      return serial(reload);
    },
    auditCheckpointSigner() {
      return auditKey.signer;
    },
    async rotateAuditKey() {
      const rotated = await rotateAuditKey(auditKeyOptions);
      await auditKey.signer.refresh();
      logger?.info({ event: 'keys.audit_key_rotated', ...rotated }, 'audit-checkpoint key rotated');
      return rotated;
    },
    auditCheckpointVerifier() {
      return auditVerifier;
    },
    rotatePepper(purpose, graceMs) {
      if (!PEPPER_PURPOSES.includes(purpose))
        return Promise.reject(new TypeError('rotatePepper: unknown purpose'));
      if (!Number.isInteger(graceMs) || graceMs < 0) {
        return Promise.reject(new TypeError('rotatePepper: graceMs must be a non-negative integer'));
      }
      return serial(async () => {
        const r = await rotatePepperNow(purpose, graceMs);
        await reload();
        return r;
      });
    },
    retirePeppers(purpose) {
      return serial(async () => {
        const r = await retirePeppersNow(purpose);
        await reload();
        return r;
      });
    },
    previousPeppers() {
      return previousPeppers.map((p) => ({ id: p.id, purpose: p.purpose, retiresAt: new Date(p.retiresAt) }));
    },
    hmacPrevious(purpose, value) {
      if (previousPeppers.length === 0) return [];
      if (typeof value !== 'string') throw new TypeError('hmac: value must be a string');
      const at = now().getTime();
      const out: string[] = [];
      for (const p of previousPeppers) {
        if (p.purpose === purpose && p.retiresAt > at) {
          out.push(createHmac('sha256', p.key).update(value, 'utf8').digest('base64url'));
        }
      }
      return out;
    },
    hmac(purpose, value) {
      const pepper = peppers.get(purpose);
      if (pepper === undefined) throw new TypeError('hmac: unknown pepper purpose');
      if (typeof value !== 'string') throw new TypeError('hmac: value must be a string');
      return createHmac('sha256', pepper).update(value, 'utf8').digest('base64url');
    },
    onChange(listener) {
      listeners.add(listener);
      return () => {
        listeners.delete(listener);
      };
    },
    maintain() {
      return serial(maintainNow);
    },
    close() {
      closed = true;
      if (options.kms === undefined && options.custody === undefined) hsm?.close();
      if (timer !== undefined) clearInterval(timer);
      timer = undefined;
      listeners.clear();
    },
  };
  return manager;
}

/** True when `jwk` has no private member (a defensive check for anything published). */
export function isPublicJwk(jwk: JWK): boolean {
  return PRIVATE_JWK_MEMBERS.every((m) => !(m in jwk));
}
