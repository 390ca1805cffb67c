/**
 * The one audit event schema. Field names follow the Elastic Common Schema (ECS) where ECS has
 * one; Portcullis-specific fields live under `portcullis.*`. Events are flat objects with dotted
 * keys (`"event.outcome": "failure"`), which Elasticsearch, OpenSearch and ECS-aware pipelines
 * expand into nested objects.
 *
 * Events are built only from typed fields ({@link buildAuditEvent}); every string passes the
 * credential guard in `redact.ts` on the way in. `docs/audit.md` documents every field, and a
 * test checks that it lists exactly {@link AUDIT_FIELDS}.
 */
import { randomUUID } from 'node:crypto';
import { mustRedact, REDACTED } from './redact.ts';
import type { FieldKind } from './redact.ts';

/** What kind of security decision or change an event records (`event.category`). */
export const AUDIT_CATEGORIES = [
  'authentication',
  'authorization',
  'rate-limit',
  'validation',
  'upstream',
  'configuration',
  'admin',
  'key-lifecycle',
  'credential-lifecycle',
  'audit',
  'privacy',
] as const;
export type AuditCategory = (typeof AUDIT_CATEGORIES)[number];

/** ECS `event.outcome` values. */
export const AUDIT_OUTCOMES = ['success', 'failure', 'unknown'] as const;
export type AuditOutcome = (typeof AUDIT_OUTCOMES)[number];

/**
 * Categories whose events must be durable before the operation they record reports success
 * (`AuditLog.emitDurable`): configuration, admin and key/credential lifecycle.
 */
export const DURABLE_CATEGORIES: ReadonlySet<AuditCategory> = new Set([
  'configuration',
  'admin',
  'key-lifecycle',
  'credential-lifecycle',
  'privacy',
]);

/** The type of a field's value. */
export type FieldType = 'string' | 'integer' | 'string[]';

export interface FieldSpec {
  readonly type: FieldType;
  /** How the credential guard treats the value (see `redact.ts`). */
  readonly kind: FieldKind;
  /** Present on every event. */
  readonly always?: true;
  readonly description: string;
}

/**
 * Every field an event may carry, with its type. The chain fields (`portcullis.audit.seq`,
 * `.prev`, `.hash`) are added by the sink that chains the event, not by the builder.
 */
export const AUDIT_FIELDS = {
  '@timestamp': {
    type: 'string',
    kind: 'id',
    always: true,
    description: 'When the event happened: ISO-8601 UTC with milliseconds.',
  },
  'event.id': {
    type: 'string',
    kind: 'id',
    always: true,
    description: 'Unique id of the event (UUID v4); duplicates delivered after a crash share it.',
  },
  'event.kind': { type: 'string', kind: 'id', always: true, description: 'Always `event` (ECS).' },
  'event.category': {
    type: 'string',
    kind: 'id',
    always: true,
    description:
      'Kind of decision or change: authentication, authorization, rate-limit, validation, upstream, configuration, admin, key- or credential-lifecycle, audit and privacy.',
  },
  'event.action': {
    type: 'string',
    kind: 'id',
    always: true,
    description:
      'What happened, lower-case words joined by `-` (e.g. `token-verify`, `scope-check`, `config-reload`, `key-rotate`, `spool-overflow`).',
  },
  'event.outcome': {
    type: 'string',
    kind: 'id',
    always: true,
    description: 'success, failure or unknown (ECS).',
  },
  'event.reason': {
    type: 'string',
    kind: 'text',
    description: 'Why: the denial reason code or a short generic explanation; never request input.',
  },
  'event.duration': {
    type: 'integer',
    kind: 'id',
    description: 'How long the decision or request took, in nanoseconds (ECS).',
  },
  'event.start': {
    type: 'string',
    kind: 'id',
    description: 'Aggregated refusals: when the first one happened (ISO-8601 UTC, ECS).',
  },
  'event.end': {
    type: 'string',
    kind: 'id',
    description: 'Aggregated refusals: when the last one happened (ISO-8601 UTC, ECS).',
  },
  'portcullis.aggregate.count': {
    type: 'integer',
    kind: 'id',
    description:
      'Aggregated refusals: how many refusals from one limited source, with this reason and status, the event stands for.',
  },
  'client.ip': {
    type: 'string',
    kind: 'id',
    description: 'The client address as the gateway determined it.',
  },
  'user.id': { type: 'string', kind: 'id', description: 'The end user (token `sub` or admin user).' },
  'portcullis.client_id': { type: 'string', kind: 'id', description: 'The OAuth client id.' },
  'portcullis.api_key_id': {
    type: 'string',
    kind: 'id',
    description: 'The id of the API key used (never the key itself).',
  },
  'url.path': {
    type: 'string',
    kind: 'text',
    description: 'The route TEMPLATE of the operation (`/v1/patients/{id}`), never the concrete path.',
  },
  'http.request.method': { type: 'string', kind: 'id', description: 'The HTTP method.' },
  'http.response.status_code': { type: 'integer', kind: 'id', description: 'The response status sent.' },
  'http.request.body.bytes': { type: 'integer', kind: 'id', description: 'Request body size in bytes.' },
  'http.response.body.bytes': { type: 'integer', kind: 'id', description: 'Response body size in bytes.' },
  'portcullis.api': { type: 'string', kind: 'id', description: 'The API name from the configuration.' },
  'portcullis.listener': {
    type: 'string',
    kind: 'id',
    description: 'Which listener or component: gateway, oauth, admin, cli.',
  },
  'trace.id': {
    type: 'string',
    kind: 'id',
    description: 'The correlation id (the one the problem response and the access log carry).',
  },
  'portcullis.scopes.required': {
    type: 'string[]',
    kind: 'id',
    description: 'The scopes the operation requires.',
  },
  'portcullis.scopes.granted': {
    type: 'string[]',
    kind: 'id',
    description: 'The scopes the credential carried.',
  },
  'portcullis.rate_limit.key': {
    type: 'string',
    kind: 'id',
    description:
      'Which limit refused: `<dimension>:<hash>`, the dimension (client, api-key, user, token, ip, …) and a keyed hash (HMAC-SHA-256, 16 hex) of the counter key; never the raw key, address or token.',
  },
  'portcullis.rate_limit.retry_after': {
    type: 'integer',
    kind: 'id',
    description: 'Seconds until the caller may retry.',
  },
  'portcullis.config.version': {
    type: 'string',
    kind: 'id',
    description: 'SHA-256 of the configuration version applied.',
  },
  'portcullis.config.summary': {
    type: 'string',
    kind: 'text',
    description: 'What a configuration change changed (key paths and counts, never secret values).',
  },
  'portcullis.key.kid': {
    type: 'string',
    kind: 'id',
    description: 'The signing key concerned (public kid).',
  },
  'portcullis.credential.type': {
    type: 'string',
    kind: 'id',
    description: 'Credential lifecycle: client, api-key, user or password.',
  },
  // Admin plane (issue 15, src/admin): who acted, with which role, how, and on what.
  'portcullis.admin.principal': {
    type: 'string',
    kind: 'id',
    description:
      'The administrator who acted or was refused: a username, a client-certificate principal, or `<os user>@<host>` on the CLI.',
  },
  'portcullis.admin.role': {
    type: 'string',
    kind: 'id',
    description:
      'The admin role the action was allowed under; on a refusal, the roles held (`none` when none).',
  },
  'portcullis.admin.via': {
    type: 'string',
    kind: 'id',
    description:
      'How the administrator authenticated: oauth (admin-API token), mtls (client certificate), cli, none (a refused call without credentials), system (the exceptions sweep).',
  },
  'portcullis.admin.target': {
    type: 'string',
    kind: 'id',
    description: 'What an admin action changed: a username, client id, key id or exception id.',
  },
  'portcullis.role': {
    type: 'string',
    kind: 'id',
    description: 'The role granted or revoked (role-grant, role-revoke).',
  },
  'portcullis.audit.sink': {
    type: 'string',
    kind: 'id',
    description: 'Audit events about the audit trail: the sink concerned.',
  },
  'portcullis.audit.dropped': {
    type: 'integer',
    kind: 'id',
    description: 'Audit events about the audit trail: how many events a spool overflow dropped.',
  },
  'portcullis.audit.pruned': {
    type: 'integer',
    kind: 'id',
    description: 'Prune events (`audit` / `prune`): how many records were archived and removed.',
  },
  'portcullis.audit.boundary.seq': {
    type: 'integer',
    kind: 'id',
    description: 'Prune events: the last pruned record; the remaining chain starts after it.',
  },
  'portcullis.audit.boundary.hash': {
    type: 'string',
    kind: 'id',
    description: 'Prune events: the hash of the last pruned record (signed in a checkpoint).',
  },
  'portcullis.audit.archive': {
    type: 'string',
    kind: 'id',
    description: 'Prune events: the archive file (under the archive directory) holding the pruned records.',
  },
  'portcullis.audit.disk.bytes': {
    type: 'integer',
    kind: 'id',
    description: 'Disk-usage events (`audit` / `disk-usage-high`): bytes the audit data takes.',
  },
  'portcullis.audit.disk.limit': {
    type: 'integer',
    kind: 'id',
    description: 'Disk-usage events: the configured threshold (`audit.disk.alertBytes`).',
  },
  'portcullis.alert.rule': {
    type: 'string',
    kind: 'id',
    description: 'Alert events (`audit` / `alert-fired`): the id of the alert rule.',
  },
  'portcullis.alert.severity': {
    type: 'string',
    kind: 'id',
    description: 'Alert events: the rule severity (low, medium, high, critical).',
  },
  // --- issue 13: who made a control-plane change (src/audit/actor.ts) ---
  'user.name': {
    type: 'string',
    kind: 'id',
    description:
      'Control-plane changes: the operating-system account that ran the CLI command (`os.userInfo().username`).',
  },
  'host.name': {
    type: 'string',
    kind: 'id',
    description: 'Control-plane changes: the host the change was made on (`os.hostname()`).',
  },
  'portcullis.actor.sudo_user': {
    type: 'string',
    kind: 'id',
    description: 'Control-plane changes run through sudo: the account that invoked sudo (`SUDO_USER`).',
  },
  'portcullis.actor.admin': {
    type: 'string',
    kind: 'id',
    description: 'Control-plane changes made through the admin API: the authenticated admin identity.',
  },
  // --- end issue 13 ---
  'portcullis.privacy.choice': {
    type: 'string',
    kind: 'id',
    description:
      'Privacy events: the purpose of a consent (e.g. `analytics`) or the opt-out (`sale-sharing`, `sensitive-data`, `automated-decision`) concerned.',
  },
  'portcullis.privacy.source': {
    type: 'string',
    kind: 'id',
    description:
      'Privacy events: who recorded the choice: subject, admin, cli or gpc (the `Sec-GPC` signal).',
  },
  'portcullis.privacy.notice': {
    type: 'string',
    kind: 'id',
    description: 'Privacy events: the version of the privacy notice the consent was given under.',
  },
  'portcullis.redacted': {
    type: 'string[]',
    kind: 'id',
    description: 'Fields whose value the credential guard replaced with `[REDACTED]`.',
  },
} as const satisfies Record<string, FieldSpec>;

/** The chain fields a chained record adds to the event (see `chain.ts`). */
export const CHAIN_FIELDS = {
  'portcullis.audit.seq': {
    type: 'integer',
    kind: 'id',
    always: true,
    description: 'Position in the hash chain, from 1, without gaps.',
  },
  'portcullis.audit.prev': {
    type: 'string',
    kind: 'id',
    always: true,
    description: 'Hash of the previous record (64 zeros for the first).',
  },
  'portcullis.audit.hash': {
    type: 'string',
    kind: 'id',
    always: true,
    description: 'SHA-256 hex of `prev` and the canonical JSON of the event with its seq.',
  },
} as const satisfies Record<string, FieldSpec>;

export type AuditFieldName = keyof typeof AUDIT_FIELDS;

type ValueOf<T extends FieldType> = T extends 'integer'
  ? number
  : T extends 'string[]'
    ? readonly string[]
    : string;

/** An audit event: every field typed, the always-present ones required. */
export type AuditEvent = {
  readonly [K in AuditFieldName as (typeof AUDIT_FIELDS)[K] extends { always: true } ? K : never]: ValueOf<
    (typeof AUDIT_FIELDS)[K]['type']
  >;
} & {
  readonly [K in AuditFieldName as (typeof AUDIT_FIELDS)[K] extends { always: true } ? never : K]?: ValueOf<
    (typeof AUDIT_FIELDS)[K]['type']
  >;
} & {
  readonly 'event.category': AuditCategory;
  readonly 'event.outcome': AuditOutcome;
};

/** What a caller supplies: the event without the fields the builder fills in. */
export type AuditEventInput = Omit<
  AuditEvent,
  '@timestamp' | 'event.id' | 'event.kind' | 'portcullis.redacted'
> & {
  /** Defaults to now. */
  readonly '@timestamp'?: string | Date;
};

const ACTION = /^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$/;
const MAX_STRING = 1024;
const MAX_ARRAY = 64;

/**
 * Builds an event from typed fields. Programmer mistakes (an unknown field, a value of the wrong
 * type, an unknown category or outcome, a malformed action) throw `TypeError`; a string that
 * looks like a credential is replaced by `[REDACTED]` and the field named in
 * `portcullis.redacted`; overlong strings are cut at 1024 characters and arrays at 64 items.
 *
 * @example
 * ```ts
 * const event = buildAuditEvent({
 *   'event.category': 'authorization',
 *   'event.action': 'scope-check',
 *   'event.outcome': 'failure',
 *   'event.reason': 'insufficient_scope',
 *   'portcullis.client_id': clientId,
 *   'portcullis.scopes.required': ['patients:write'],
 *   'portcullis.scopes.granted': ['patients:read'],
 *   'trace.id': correlationId,
 * });
 * ```
 */
export function buildAuditEvent(input: AuditEventInput): AuditEvent {
  const out: Record<string, unknown> = {};
  let redacted: string[] | undefined;
  const ts = input['@timestamp'];
  if (ts === undefined) out['@timestamp'] = nowIso();
  else {
    const at = typeof ts === 'string' ? new Date(ts) : ts;
    if (Number.isNaN(at.getTime())) throw new TypeError('audit event: @timestamp is not a valid date');
    out['@timestamp'] = at.toISOString();
  }
  out['event.id'] = randomUUID();
  out['event.kind'] = 'event';
  const fields = input as Record<string, unknown>;
  for (const key in fields) {
    const value = fields[key];
    if (key === '@timestamp' || value === undefined) continue;
    const spec: FieldSpec | undefined = SPECS.get(key);
    if (spec === undefined) throw new TypeError(`audit event: unknown field "${key}"`);
    switch (spec.type) {
      case 'integer':
        if (typeof value !== 'number' || !Number.isSafeInteger(value)) {
          throw new TypeError(`audit event: ${key} must be a safe integer`);
        }
        out[key] = value;
        break;
      case 'string': {
        if (typeof value !== 'string') throw new TypeError(`audit event: ${key} must be a string`);
        const v = value.length > MAX_STRING ? value.slice(0, MAX_STRING) : value;
        if (mustRedact(v, spec.kind)) {
          (redacted ??= []).push(key);
          out[key] = REDACTED;
        } else out[key] = v;
        break;
      }
      case 'string[]':
        out[key] = checkArray(key, spec, value, (redacted ??= []));
        break;
    }
  }
  const category = out['event.category'];
  const outcome = out['event.outcome'];
  const action = out['event.action'];
  if (typeof category !== 'string' || !CATEGORY_SET.has(category)) {
    throw new TypeError('audit event: event.category must be one of ' + AUDIT_CATEGORIES.join(', '));
  }
  if (typeof outcome !== 'string' || !OUTCOME_SET.has(outcome)) {
    throw new TypeError('audit event: event.outcome must be success, failure or unknown');
  }
  if (typeof action !== 'string' || action.length > 64 || !ACTION.test(action)) {
    throw new TypeError('audit event: event.action must be lower-case words joined by "-"');
  }
  if (redacted !== undefined && redacted.length > 0) out['portcullis.redacted'] = redacted;
  return out as AuditEvent;
}

/** The fields a caller may set (the builder sets `event.id`, `event.kind`, `portcullis.redacted`). */
const SPECS: ReadonlyMap<string, FieldSpec> = new Map(
  Object.entries(AUDIT_FIELDS as Record<string, FieldSpec>).filter(
    ([key]) => key !== 'event.id' && key !== 'event.kind' && key !== 'portcullis.redacted',
  ),
);
const CATEGORY_SET: ReadonlySet<string> = new Set(AUDIT_CATEGORIES);
const OUTCOME_SET: ReadonlySet<string> = new Set(AUDIT_OUTCOMES);

/** `new Date().toISOString()`, formatted once per millisecond. */
let isoAt = -1;
let isoText = '';
function nowIso(): string {
  const now = Date.now();
  if (now !== isoAt) {
    isoAt = now;
    isoText = new Date(now).toISOString();
  }
  return isoText;
}

function checkArray(key: string, spec: FieldSpec, value: unknown, redacted: string[]): string[] {
  if (!Array.isArray(value) || !value.every((v) => typeof v === 'string')) {
    throw new TypeError(`audit event: ${key} must be an array of strings`);
  }
  const items: string[] = [];
  let cleaned = 0;
  const n = Math.min(value.length, MAX_ARRAY);
  for (let i = 0; i < n; i++) {
    const raw = value[i] as string;
    const v = raw.length > MAX_STRING ? raw.slice(0, MAX_STRING) : raw;
    if (mustRedact(v, spec.kind)) {
      cleaned++;
      items.push(REDACTED);
    } else items.push(v);
  }
  if (cleaned > 0) redacted.push(key);
  return items;
}

/** Whether events of this category must be emitted with `emitDurable`. */
export function isDurableCategory(category: AuditCategory): boolean {
  return DURABLE_CATEGORIES.has(category);
}
