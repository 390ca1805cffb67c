/**
 * oidc-provider's persistence on the Portcullis store: every model (sessions, interactions,
 * grants, codes, tokens, PAR requests, …) in one table, `oauth_models`, keyed by (model, id) and
 * indexed by grant id, uid, user code, account and expiry. Expired rows read as absent and are
 * purged periodically ({@link purgeExpired}). The `Client` model is not stored here: it is served
 * from `oauth_clients` through a lookup the caller supplies (see clients.ts).
 *
 * Nothing rests in the clear (model-codec.ts): ids, grant ids, uids, user codes and account ids
 * are stored as keyed hashes and looked up by hash; payloads are sealed with AES-256-GCM.
 * Sessions also end after `sessionIdleSeconds` without use, beside their absolute lifetime.
 */
import type { Kysely } from 'kysely';
import type { Database } from '../store/schema.ts';
import type { ModelCodec } from './model-codec.ts';

/** A model payload as oidc-provider hands it over; only a few members matter here. */
export type AdapterPayload = Record<string, unknown>;

/** The adapter contract of oidc-provider v9 (its types are loose; this is the narrow shape). */
export interface OidcAdapter {
  upsert(id: string, payload: AdapterPayload, expiresIn?: number): Promise<void>;
  find(id: string): Promise<AdapterPayload | undefined>;
  findByUid(uid: string): Promise<AdapterPayload | undefined>;
  findByUserCode(userCode: string): Promise<AdapterPayload | undefined>;
  consume(id: string): Promise<void>;
  destroy(id: string): Promise<void>;
  revokeByGrantId(grantId: string): Promise<void>;
}

/** Reads a client's metadata for oidc-provider; undefined when there is no such client. */
export type ClientLookup = (clientId: string) => Promise<AdapterPayload | undefined>;

export interface AdapterOptions {
  readonly db: Kysely<Database>;
  /** Hashes identifiers and seals payloads (model-codec.ts). */
  readonly codec: ModelCodec;
  /** Serves the `Client` model; without it no client exists. */
  readonly clients?: ClientLookup;
  /** The clock (tests); defaults to Date.now. */
  readonly now?: () => number;
  /**
   * Seconds a session may go unused before it ends (`oauth.session.idleTimeoutSeconds`); read
   * on every use, so a reload applies to live sessions. Without it sessions have no idle limit.
   */
  readonly sessionIdleSeconds?: () => number;
  /**
   * Called when `consume` finds the row already consumed: two requests raced with the same
   * single-use artifact (code, refresh token, pushed request) and this one lost. The error it
   * returns is thrown, so the loser is refused instead of being served a second time.
   */
  readonly alreadyConsumed?: (model: string, grantId: string | undefined) => Promise<Error>;
}

/** The longest id, uid or user code accepted (the columns once held them raw); longer ones are refused. */
const MAX_KEY_LENGTH = 400;

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

function usableKey(value: unknown): value is string {
  return typeof value === 'string' && value.length > 0 && value.length <= MAX_KEY_LENGTH;
}

interface Row {
  id: string;
  payload: string;
  consumed_at: string | null;
  idle_expires_at: string | null;
}

class StoreAdapter implements OidcAdapter {
  readonly #db: Kysely<Database>;
  readonly #model: string;
  readonly #codec: ModelCodec;
  readonly #now: () => number;
  readonly #idle: (() => number) | undefined;
  readonly #alreadyConsumed: AdapterOptions['alreadyConsumed'];

  constructor(model: string, options: AdapterOptions) {
    this.#model = model;
    this.#db = options.db;
    this.#codec = options.codec;
    this.#now = options.now ?? Date.now;
    this.#idle = model === 'Session' ? options.sessionIdleSeconds : undefined;
    this.#alreadyConsumed = options.alreadyConsumed;
  }

  #hash(value: unknown): string | null {
    return usableKey(value) ? this.#codec.hash(value) : null;
  }

  #idleUntil(now: number): string | null {
    return this.#idle === undefined ? null : iso(now + this.#idle() * 1000);
  }

  async upsert(id: string, payload: AdapterPayload, expiresIn?: number): Promise<void> {
    if (!usableKey(id)) throw new TypeError(`${this.#model} id is empty or too long`);
    const now = this.#now();
    const hashed = this.#codec.hash(id);
    const row = {
      model: this.#model,
      id: hashed,
      payload: this.#codec.seal(this.#model, hashed, payload),
      grant_id: this.#hash(payload.grantId),
      uid: this.#hash(payload.uid),
      user_code: this.#hash(payload.userCode),
      account_id: this.#hash(payload.accountId),
      expires_at:
        typeof expiresIn === 'number' && Number.isFinite(expiresIn) ? iso(now + expiresIn * 1000) : null,
      idle_expires_at: this.#idleUntil(now),
      consumed_at: null,
    };
    await this.#db
      .insertInto('oauth_models')
      .values(row)
      .onConflict((oc) =>
        oc.columns(['model', 'id']).doUpdateSet({
          payload: row.payload,
          grant_id: row.grant_id,
          uid: row.uid,
          user_code: row.user_code,
          account_id: row.account_id,
          expires_at: row.expires_at,
          idle_expires_at: row.idle_expires_at,
          consumed_at: null,
        }),
      )
      .execute();
  }

  #live() {
    const now = iso(this.#now());
    return this.#db
      .selectFrom('oauth_models')
      .select(['id', 'payload', 'consumed_at', 'idle_expires_at'])
      .where('model', '=', this.#model)
      .where((eb) => eb.or([eb('expires_at', 'is', null), eb('expires_at', '>', now)]));
  }

  /** Opens a row; a session idle too long is deleted and absent, a live one is marked used. */
  async #payload(row: Row | undefined): Promise<AdapterPayload | undefined> {
    if (row === undefined) return undefined;
    if (this.#idle !== undefined) {
      const now = this.#now();
      if (row.idle_expires_at !== null && row.idle_expires_at <= iso(now)) {
        await this.#db
          .deleteFrom('oauth_models')
          .where('model', '=', this.#model)
          .where('id', '=', row.id)
          .execute();
        return undefined;
      }
      await this.#db
        .updateTable('oauth_models')
        .set({ idle_expires_at: this.#idleUntil(now) })
        .where('model', '=', this.#model)
        .where('id', '=', row.id)
        .execute();
    }
    const payload = this.#codec.open(this.#model, row.id, row.payload) as AdapterPayload;
    if (row.consumed_at !== null) payload.consumed = Math.floor(Date.parse(row.consumed_at) / 1000);
    return payload;
  }

  async find(id: string): Promise<AdapterPayload | undefined> {
    if (!usableKey(id)) return undefined;
    return this.#payload(await this.#live().where('id', '=', this.#codec.hash(id)).executeTakeFirst());
  }

  async findByUid(uid: string): Promise<AdapterPayload | undefined> {
    if (!usableKey(uid)) return undefined;
    return this.#payload(await this.#live().where('uid', '=', this.#codec.hash(uid)).executeTakeFirst());
  }

  async findByUserCode(userCode: string): Promise<AdapterPayload | undefined> {
    if (!usableKey(userCode)) return undefined;
    return this.#payload(
      await this.#live().where('user_code', '=', this.#codec.hash(userCode)).executeTakeFirst(),
    );
  }

  /** Marks the row consumed, atomically: of concurrent calls only one finds it unconsumed. */
  async consume(id: string): Promise<void> {
    if (!usableKey(id)) return;
    const hashed = this.#codec.hash(id);
    const result = await this.#db
      .updateTable('oauth_models')
      .set({ consumed_at: iso(this.#now()) })
      .where('model', '=', this.#model)
      .where('id', '=', hashed)
      .where('consumed_at', 'is', null)
      .executeTakeFirst();
    if (Number(result.numUpdatedRows) > 0 || this.#alreadyConsumed === undefined) return;
    const row = await this.#db
      .selectFrom('oauth_models')
      .select(['payload', 'consumed_at'])
      .where('model', '=', this.#model)
      .where('id', '=', hashed)
      .executeTakeFirst();
    if (row?.consumed_at === undefined || row.consumed_at === null) return; // no such row
    // The raw grant id is only in the sealed payload: the caller revokes the grant by it.
    const payload = this.#codec.open(this.#model, hashed, row.payload) as AdapterPayload;
    throw await this.#alreadyConsumed(this.#model, usableKey(payload.grantId) ? payload.grantId : undefined);
  }

  async destroy(id: string): Promise<void> {
    if (!usableKey(id)) return;
    await this.#db
      .deleteFrom('oauth_models')
      .where('model', '=', this.#model)
      .where('id', '=', this.#codec.hash(id))
      .execute();
  }

  async revokeByGrantId(grantId: string): Promise<void> {
    if (!usableKey(grantId)) return;
    await this.#db
      .deleteFrom('oauth_models')
      .where('model', '=', this.#model)
      .where('grant_id', '=', this.#codec.hash(grantId))
      .execute();
  }
}

/** The `Client` model: read-only, served by the client registry. */
class ClientAdapter implements OidcAdapter {
  readonly #lookup: ClientLookup | undefined;

  constructor(lookup: ClientLookup | undefined) {
    this.#lookup = lookup;
  }

  async find(id: string): Promise<AdapterPayload | undefined> {
    if (this.#lookup === undefined || !usableKey(id)) return undefined;
    return this.#lookup(id);
  }

  upsert(): Promise<void> {
    return Promise.reject(new Error('clients are managed with `portcullis clients`, not by the provider'));
  }

  findByUid(): Promise<undefined> {
    return Promise.resolve(undefined);
  }

  findByUserCode(): Promise<undefined> {
    return Promise.resolve(undefined);
  }

  consume(): Promise<void> {
    return Promise.resolve();
  }

  destroy(): Promise<void> {
    return this.upsert();
  }

  revokeByGrantId(): Promise<void> {
    return Promise.resolve();
  }
}

/**
 * An adapter factory for oidc-provider's `adapter` option: one adapter per model name.
 *
 * @example
 * ```ts
 * new Provider(issuer, { adapter: createAdapterFactory({ db: store.db, codec, clients }) });
 * ```
 */
export function createAdapterFactory(options: AdapterOptions): (model: string) => OidcAdapter {
  return (model: string) =>
    model === 'Client' ? new ClientAdapter(options.clients) : new StoreAdapter(model, options);
}

/** Deletes expired (and idle-expired) model rows and revoked-token entries; returns how many rows went. */
export async function purgeExpired(db: Kysely<Database>, now: number = Date.now()): Promise<number> {
  const cutoff = iso(now);
  const models = await db
    .deleteFrom('oauth_models')
    .where((eb) => eb.or([eb('expires_at', '<=', cutoff), eb('idle_expires_at', '<=', cutoff)]))
    .executeTakeFirst();
  const revoked = await db.deleteFrom('revoked_tokens').where('expires_at', '<=', cutoff).executeTakeFirst();
  return Number(models.numDeletedRows) + Number(revoked.numDeletedRows);
}
