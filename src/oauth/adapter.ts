/**
 * oidc-provider's persistence on the Portcullis store: every model (sessions, interactions,
 * grants, codes, tokens, PAR requests, …) in one table, `oauth_models`, keyed by (model, id) and
 * indexed by grant id, uid, user code and expiry. Expired rows read as absent and are purged
 * periodically ({@link purgeExpired}). The `Client` model is not stored here: it is served from
 * `oauth_clients` through a lookup the caller supplies (see clients.ts).
 */
import type { Kysely } from 'kysely';
import type { Database } from '../store/schema.ts';
import { modelAad, openText, sealText } from '../keys/envelope.ts';
import type { Sealer } from '../keys/envelope.ts';

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
  /** Serves the `Client` model; without it no client exists. */
  readonly clients?: ClientLookup;
  /** The clock (tests); defaults to Date.now. */
  readonly now?: () => number;
  /**
   * Called when `consume` finds the row already consumed: two requests raced with the same
   * single-use artifact (code, refresh token, pushed request) and this one lost. The error it
   * returns is thrown, so the loser is refused instead of being served a second time.
   */
  readonly alreadyConsumed?: (model: string, grantId: string | undefined) => Promise<Error>;
  /** Encryption at rest of the payloads (src/keys/envelope.ts); without it they are stored in clear. */
  readonly sealer?: Sealer;
}

/** The longest id, uid or user code stored (the columns' bound); longer ones are refused. */
const MAX_KEY_LENGTH = 400;

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

function optionalString(value: unknown): string | null {
  return typeof value === 'string' && value.length > 0 && value.length <= MAX_KEY_LENGTH ? value : null;
}

function usableKey(value: string): boolean {
  return typeof value === 'string' && value.length > 0 && value.length <= MAX_KEY_LENGTH;
}

interface Row {
  id: string;
  payload: string;
  consumed_at: string | null;
}

async function toPayload(
  model: string,
  sealer: Sealer | undefined,
  row: Row | undefined,
): Promise<AdapterPayload | undefined> {
  if (row === undefined) return undefined;
  const payload = JSON.parse(await openText(sealer, modelAad(model, row.id), row.payload)) as AdapterPayload;
  if (row.consumed_at !== null) payload.consumed = Math.floor(Date.parse(row.consumed_at) / 1000);
  return payload;
}

class StoreAdapter implements OidcAdapter {
  readonly #db: Kysely<Database>;
  readonly #model: string;
  readonly #now: () => number;
  readonly #alreadyConsumed: AdapterOptions['alreadyConsumed'];
  readonly #sealer: Sealer | undefined;

  constructor(
    model: string,
    db: Kysely<Database>,
    now: () => number,
    alreadyConsumed?: AdapterOptions['alreadyConsumed'],
    sealer?: Sealer,
  ) {
    this.#sealer = sealer;
    this.#model = model;
    this.#db = db;
    this.#now = now;
    this.#alreadyConsumed = alreadyConsumed;
  }

  async upsert(id: string, payload: AdapterPayload, expiresIn?: number): Promise<void> {
    if (!usableKey(id)) throw new TypeError(`${this.#model} id is empty or too long`);
    const now = this.#now();
    const row = {
      model: this.#model,
      id,
      payload: await sealText(this.#sealer, modelAad(this.#model, id), JSON.stringify(payload)),
      grant_id: optionalString(payload.grantId),
      uid: optionalString(payload.uid),
      user_code: optionalString(payload.userCode),
      expires_at:
        typeof expiresIn === 'number' && Number.isFinite(expiresIn) ? iso(now + expiresIn * 1000) : null,
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
          expires_at: row.expires_at,
          consumed_at: null,
        }),
      )
      .execute();
  }

  #live() {
    const now = iso(this.#now());
    return this.#db
      .selectFrom('oauth_models')
      .select(['id', 'payload', 'consumed_at'])
      .where('model', '=', this.#model)
      .where((eb) => eb.or([eb('expires_at', 'is', null), eb('expires_at', '>', now)]));
  }

  async find(id: string): Promise<AdapterPayload | undefined> {
    if (!usableKey(id)) return undefined;
    return toPayload(this.#model, this.#sealer, await this.#live().where('id', '=', id).executeTakeFirst());
  }

  async findByUid(uid: string): Promise<AdapterPayload | undefined> {
    if (!usableKey(uid)) return undefined;
    return toPayload(this.#model, this.#sealer, await this.#live().where('uid', '=', uid).executeTakeFirst());
  }

  async findByUserCode(userCode: string): Promise<AdapterPayload | undefined> {
    if (!usableKey(userCode)) return undefined;
    return toPayload(
      this.#model,
      this.#sealer,
      await this.#live().where('user_code', '=', userCode).executeTakeFirst(),
    );
  }

  /** Marks the row consumed, atomically: of concurrent calls only one finds it unconsumed. */
  async consume(id: string): Promise<void> {
    if (!usableKey(id)) return;
    const result = await this.#db
      .updateTable('oauth_models')
      .set({ consumed_at: iso(this.#now()) })
      .where('model', '=', this.#model)
      .where('id', '=', id)
      .where('consumed_at', 'is', null)
      .executeTakeFirst();
    if (Number(result.numUpdatedRows) > 0 || this.#alreadyConsumed === undefined) return;
    const row = await this.#db
      .selectFrom('oauth_models')
      .select(['grant_id', 'consumed_at'])
      .where('model', '=', this.#model)
      .where('id', '=', id)
      .executeTakeFirst();
    if (row?.consumed_at === undefined || row.consumed_at === null) return; // no such row
    throw await this.#alreadyConsumed(this.#model, row.grant_id ?? undefined);
  }

  async destroy(id: string): Promise<void> {
    if (!usableKey(id)) return;
    await this.#db.deleteFrom('oauth_models').where('model', '=', this.#model).where('id', '=', id).execute();
  }

  async revokeByGrantId(grantId: string): Promise<void> {
    if (!usableKey(grantId)) return;
    await this.#db
      .deleteFrom('oauth_models')
      .where('model', '=', this.#model)
      .where('grant_id', '=', grantId)
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
 * new Provider(issuer, { adapter: createAdapterFactory({ db: store.db, clients }) });
 * ```
 */
export function createAdapterFactory(options: AdapterOptions): (model: string) => OidcAdapter {
  const now = options.now ?? Date.now;
  return (model: string) =>
    model === 'Client'
      ? new ClientAdapter(options.clients)
      : new StoreAdapter(model, options.db, now, options.alreadyConsumed, options.sealer);
}

/** Deletes expired model rows and revoked-token entries; returns how many rows went. */
export async function purgeExpired(db: Kysely<Database>, now: number = Date.now()): Promise<number> {
  const cutoff = iso(now);
  const models = await db.deleteFrom('oauth_models').where('expires_at', '<=', cutoff).executeTakeFirst();
  const revoked = await db.deleteFrom('revoked_tokens').where('expires_at', '<=', cutoff).executeTakeFirst();
  return Number(models.numDeletedRows) + Number(revoked.numDeletedRows);
}
