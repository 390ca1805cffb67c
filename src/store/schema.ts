/**
 * Kysely table types for the Portcullis store. The same shapes hold on SQLite and
 * PostgreSQL: migrations only use column types that read back identically on both
 * (integer ids, text, ISO-8601 timestamps stored as text).
 */
import type { Generated, Insertable, Selectable } from 'kysely';

/** One configuration version the gateway applied (migration 001). */
export interface ConfigVersionsTable {
  /** Surrogate key, increasing in the order versions were recorded. */
  id: Generated<number>;
  /** Lower-case hex SHA-256 of the configuration text. */
  sha256: string;
  /** Where the configuration came from (file path or other source label). */
  source: string;
  /** When it was applied, ISO-8601 UTC with milliseconds (`2025-01-01T00:00:00.000Z`). */
  applied_at: string;
  /** Short human-readable summary of the version. */
  summary: string;
}

/** The key set's single state row (migration 002); `generation` changes with every change. */
export interface KeySetStateTable {
  /** Always 1. */
  id: number;
  generation: number;
  /** ISO-8601 UTC. */
  updated_at: string;
}

/** A token-signing key (migration 002). The private JWK is stored only wrapped by the KMS. */
export interface SigningKeysTable {
  /** RFC 7638 JWK thumbprint (SHA-256, base64url). */
  kid: string;
  /** 'ES256' | 'PS256' | 'EdDSA'. */
  alg: string;
  /** 'next' | 'current' | 'previous'. */
  status: string;
  /** The public JWK, JSON. */
  public_jwk: string;
  /** The private JWK wrapped by the KMS provider, base64url of the versioned envelope. */
  private_jwk_wrapped: string;
  /** Name of the KMS provider that wrapped it. */
  kms: string;
  /** ISO-8601 UTC timestamps; activated_at once current, retires_at once previous. */
  created_at: string;
  activated_at: string | null;
  retires_at: string | null;
}

/** A pepper for keyed hashes (migration 002), wrapped by the KMS. */
export interface KeyPeppersTable {
  /** 'client-secret' | 'api-key'. */
  purpose: string;
  wrapped: string;
  kms: string;
  created_at: string;
}

/** An end user of the authorization server (migration 004). */
export interface UsersTable {
  /** Account id (the `sub`): random for local users, `<issuer>|<sub>` for federated ones. */
  id: string;
  /** Unique login name (federated accounts: the same as the id). */
  username: string;
  /** `pbkdf2-sha256$<iterations>$<salt>$<hash>`; null for federated accounts. */
  password_hash: string | null;
  /** The TOTP secret, AES-256-GCM wrapped; null when the user has no second factor. */
  totp_secret_wrapped: string | null;
  /** The last accepted TOTP time step (replays of it and earlier steps are refused). */
  totp_last_step: number | null;
  federated_issuer: string | null;
  federated_subject: string | null;
  /** 0 or 1. */
  disabled: Generated<number>;
  /** ISO-8601 UTC timestamps. */
  created_at: string;
  password_changed_at: string | null;
  last_login_at: string | null;
}

/** Failed-login counters per account and per client IP (migration 004). */
export interface LoginThrottleTable {
  /** `account:<username>` or `ip:<address>`. */
  key: string;
  failures: number;
  /** ISO-8601 UTC: when the current counting window began. */
  window_start: string;
  /** ISO-8601 UTC: no attempt is evaluated before this. */
  blocked_until: string | null;
}

/**
 * One oidc-provider model instance (migration 003): sessions, grants, codes, tokens, … Since
 * migration 010 `id`, `grant_id`, `uid`, `user_code` and `account_id` hold keyed hashes and
 * `payload` is sealed (src/oauth/model-codec.ts).
 */
export interface OAuthModelsTable {
  /** oidc-provider model name, e.g. 'Session', 'AuthorizationCode'. */
  model: string;
  id: string;
  /** The model's payload, JSON. */
  payload: string;
  grant_id: string | null;
  uid: string | null;
  user_code: string | null;
  /** ISO-8601 UTC; null: no expiry. Expired rows count as absent and are purged. */
  expires_at: string | null;
  /** ISO-8601 UTC when consumed (codes, rotated refresh tokens); null while unused. */
  consumed_at: string | null;
  /** Keyed hash of the payload's accountId (migration 010): a user's rows, for per-user revocation. */
  account_id: string | null;
  /** ISO-8601 UTC (migration 010): a session unused until then ends (idle timeout); null: none. */
  idle_expires_at: string | null;
}

/** A registered OAuth client (migration 003). */
export interface OAuthClientsTable {
  client_id: string;
  /** Client metadata (RFC 7591 names), JSON, without any secret. */
  metadata: string;
  /** HMAC-SHA-256 of the client secret under the key manager's pepper; null: no secret. */
  secret_hash: string | null;
  created_at: string;
  /** ISO-8601 UTC (migration 011): the current secret is refused from then on; null: no expiry. */
  secret_expires_at: string | null;
  /** HMAC of the secret before the last rotation (migration 011), valid until the next column. */
  previous_secret_hash: string | null;
  previous_secret_expires_at: string | null;
}

/** A revoked JWT access token (migration 003), kept until it would have expired. */
export interface RevokedTokensTable {
  jti: string;
  client_id: string;
  /** ISO-8601 UTC: the token's own expiry; the row is purged after it. */
  expires_at: string;
  revoked_at: string;
}

/** One hash-chained audit record (migration 005); `id` is the insertion order. */
export interface AuditEventsTable {
  id: Generated<number>;
  /** Position in the chain, from 1. */
  seq: number;
  /** The event's `event.id` (deduplicates a redelivery after a crash). */
  event_id: string;
  /** `@timestamp`, ISO-8601 UTC with milliseconds. */
  ts: string;
  category: string;
  outcome: string;
  client_id: string | null;
  /** The correlation id. */
  trace_id: string | null;
  /** Hash of the previous record and of this one (hex SHA-256). */
  prev: string;
  hash: string;
  /** The event, JSON (without the chain fields). */
  event: string;
}

/** A signed checkpoint over the audit chain (migration 005). */
export interface AuditCheckpointsTable {
  seq: number;
  hash: string;
  /** ISO-8601 UTC. */
  at: string;
  kid: string;
  /** base64url signature. */
  sig: string;
}

/** An API key (migration 006), stored only as a keyed hash; restrictions are JSON arrays. */
export interface ApiKeysTable {
  /** `ak_` + 22 base62 characters; not derived from the key. */
  id: string;
  name: string;
  /** HMAC-SHA-256 of the whole key under the key manager's `api-key` pepper, base64url. */
  key_hash: string;
  /** 'live' | 'test'. */
  env: string;
  /** JSON array of API names the key may call (at least one). */
  apis: string;
  /** JSON array of operationIds it may call; empty: every operation of those APIs. */
  operations: string;
  /** JSON array of source CIDRs; empty: any source. */
  cidrs: string;
  /** ISO-8601 UTC timestamps. Rotation moves expires_at to the end of the grace period. */
  created_at: string;
  expires_at: string;
  revoked_at: string | null;
  /** The id of the key that replaced this one (rotation). */
  replaced_by: string | null;
  use_count: Generated<number>;
  last_used_at: string | null;
  /** The last source network (IPv4 /24, IPv6 /64), e.g. `192.0.2.0/24`. */
  last_source_network: string | null;
}

/** A source network an API key was used from (migration 006). */
export interface ApiKeyNetworksTable {
  key_id: string;
  network: string;
  first_seen_at: string;
}

/**
 * An idempotency record (migration 008, `idempotency.backend: store`): a lock while the first
 * request is in flight (`state` p), then its response (`state` d) until `expires_at`.
 */
export interface IdempotencyRecordsTable {
  /** SHA-256 of API, operation, caller and Idempotency-Key (base64url). */
  record_key: string;
  fingerprint: string;
  state: 'p' | 'd';
  /** The stored response as JSON (status, headers, base64 body); null while in flight. */
  response: string | null;
  /** ISO-8601 UTC. */
  expires_at: string;
}

/** The audit-checkpoint signing key (migration 007); the private JWK only wrapped by the KMS. */
export interface AuditKeysTable {
  /** RFC 7638 JWK thumbprint (SHA-256, base64url). */
  kid: string;
  /** 'ES256'. */
  alg: string;
  /** The public JWK, JSON. */
  public_jwk: string;
  private_jwk_wrapped: string;
  kms: string;
  /** ISO-8601 UTC; retired_at: null while the key signs checkpoints. */
  created_at: string;
  retired_at: string | null;
}

/** Journal of master-key rotations (migration 009): progress survives a crash. */
export interface MasterKeyRotationsTable {
  /** Id of the new master key (hex). */
  to_key: string;
  from_key: string;
  /** `local` or `pkcs11`. */
  provider: string;
  /** Wrapped secrets moved to the new key so far. */
  rewrapped: number;
  started_at: string;
  finished_at: string | null;
}

/** Peppers replaced by a rotation, accepted until retires_at (migration 050). */
export interface KeyPeppersPreviousTable {
  id: string;
  purpose: string;
  wrapped: string;
  kms: string;
  created_at: string;
  retires_at: string;
}

/** Data keys of envelope encryption at rest, wrapped by the master key (migration 051). */
export interface DataKeysTable {
  id: string;
  /** What the key seals: `idempotency`, `oauth-model`. */
  purpose: string;
  wrapped: string;
  kms: string;
  created_at: string;
}

/**
 * A data subject's current choice (migration 030, issue 16): a consent to a purpose (`kind`
 * consent, `state` granted or withdrawn) or an opt-out (`kind` opt-out, `state` opted-out or
 * opted-in). Changes are audited; this row is only the current state.
 */
export interface PrivacyChoicesTable {
  subject: string;
  kind: 'consent' | 'opt-out';
  name: string;
  state: 'granted' | 'withdrawn' | 'opted-out' | 'opted-in';
  notice_version: string | null;
  /** subject, admin, cli or gpc. */
  source: string;
  /** ISO-8601 UTC. */
  updated_at: string;
}

export interface Database {
  privacy_choices: PrivacyChoicesTable;
  oauth_models: OAuthModelsTable;
  oauth_clients: OAuthClientsTable;
  revoked_tokens: RevokedTokensTable;
  users: UsersTable;
  login_throttle: LoginThrottleTable;
  key_set_state: KeySetStateTable;
  signing_keys: SigningKeysTable;
  key_peppers: KeyPeppersTable;
  config_versions: ConfigVersionsTable;
  audit_events: AuditEventsTable;
  audit_checkpoints: AuditCheckpointsTable;
  api_keys: ApiKeysTable;
  api_key_networks: ApiKeyNetworksTable;
  audit_keys: AuditKeysTable;
  idempotency_records: IdempotencyRecordsTable;
  master_key_rotations: MasterKeyRotationsTable;
  key_peppers_previous: KeyPeppersPreviousTable;
  data_keys: DataKeysTable;
  user_roles: UserRolesTable; // src/admin/migrations.ts
  admin_exceptions: AdminExceptionsTable;
}

/** The exceptions registry (021_exceptions). */
export interface AdminExceptionsTable {
  id: string;
  control: string;
  scope: string;
  rationale: string;
  /** JSON array of strings. */
  compensating_controls: string;
  owner: string;
  requested_by: string;
  approver: string | null;
  /** requested | approved | revoked */
  status: string;
  /** YYYY-MM-DD: in force until the end of that day (UTC), like the configuration's. */
  expires: string;
  created_at: string;
  updated_at: string;
  /** When the before-expiry warning was recorded (once per expiry date). */
  warned_at: string | null;
  /** When the expiry was recorded. */
  expired_at: string | null;
}

/** A role held by a user (020_user_roles). */
export interface UserRolesTable {
  user_id: string;
  role: string;
  granted_at: string;
  /** Who granted it: the administrator (or `cli:<os user>`). */
  granted_by: string;
}

export type ConfigVersionRow = Selectable<ConfigVersionsTable>;
export type NewConfigVersionRow = Insertable<ConfigVersionsTable>;
