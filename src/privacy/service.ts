/**
 * Consent and opt-out records of data subjects (issue 16): the service the gateway's privacy
 * stage, the subject API (`/privacy/v1/…`), the CLI and the admin side call.
 *
 * - A consent is per subject and purpose: granted (with the version of the notice the subject
 *   was shown) or withdrawn; the row keeps the current state, the audit trail every change
 *   (`privacy` / `consent-grant`, `consent-withdraw`, `opt-out`, `opt-in`, durable before the
 *   change is reported).
 * - An opt-out is per subject: of sale and sharing (CPRA; also recorded from `Sec-GPC: 1`), of
 *   the use of sensitive personal information beyond the service (CPRA "limit"), of automated
 *   decision-making (GDPR Art. 22, CPRA ADMT).
 *
 * Lookups are cached per subject for {@link CHOICES_CACHE_TTL_MS}: a change made through this
 * service drops the entry at once; a change made by another process (the CLI, another worker)
 * is seen when the entry expires, or at once when it announces it (`privacy-changed`, Redis).
 * `invalidate()` without a subject drops every entry (the signal carries no subject).
 */
import type { Kysely } from 'kysely';
import type { AuditEventInput } from '../audit/event.ts';
import type { Database, PrivacyChoicesTable } from '../store/schema.ts';
import { PURPOSES } from './annotations.ts';
import type { Purpose } from './annotations.ts';

export const OPT_OUTS = ['sale-sharing', 'sensitive-data', 'automated-decision'] as const;
export type OptOut = (typeof OPT_OUTS)[number];

/** Who records a choice: the subject (subject API), an administrator, the CLI, or the GPC signal. */
export type ChoiceSource = 'subject' | 'admin' | 'cli' | 'gpc';

/** How long a subject's choices are reused before the store is read again. */
export const CHOICES_CACHE_TTL_MS = 5_000;
/** Subjects whose choices are cached at most; past it the oldest entry is dropped. */
export const CHOICES_CACHE_MAX = 10_000;

const NOTICE_VERSION = /^[A-Za-z0-9._:-]{1,64}$/;
const MAX_SUBJECT = 1024;

export interface ChoiceRecord {
  readonly kind: 'consent' | 'opt-out';
  readonly name: string;
  readonly state: PrivacyChoicesTable['state'];
  readonly noticeVersion: string | null;
  readonly source: string;
  readonly updatedAt: string;
}

/** A subject's current choices. */
export interface SubjectChoices {
  readonly subject: string;
  readonly records: readonly ChoiceRecord[];
  /** Purposes with a granted consent. */
  readonly granted: ReadonlySet<Purpose>;
  /** Purposes whose consent was withdrawn (and not granted again). */
  readonly withdrawn: ReadonlySet<Purpose>;
  readonly optedOut: ReadonlySet<OptOut>;
  /** Changes whenever `granted` or `optedOut` changes: part of the identity assertion's cache key. */
  readonly version: string;
}

/** Who made a change, for its audit event. */
export interface ChangeActor {
  readonly listener: 'gateway' | 'admin' | 'cli';
  readonly source: ChoiceSource;
  readonly clientId?: string | undefined;
  readonly clientIp?: string | undefined;
  readonly traceId?: string | undefined;
}

/** A refused input (unknown purpose, bad notice version): the message names the field. */
export class PrivacyInputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PrivacyInputError';
  }
}

export interface PrivacyService {
  /** The subject's current choices (cached). */
  choices(subject: string): Promise<SubjectChoices>;
  /** Grants (with the notice version shown) or withdraws a consent. Audited, durably. */
  setConsent(
    subject: string,
    change: { purpose: string; granted: boolean; noticeVersion?: string | undefined },
    actor: ChangeActor,
  ): Promise<ChoiceRecord>;
  /** Opts out of (or back in to) one of {@link OPT_OUTS}. Audited, durably. */
  setOptOut(
    subject: string,
    change: { optOut: string; optedOut: boolean },
    actor: ChangeActor,
  ): Promise<ChoiceRecord>;
  /**
   * A request carried `Sec-GPC: 1`: records the opt-out of sale and sharing unless it is already
   * in force. Returns whether anything changed.
   */
  recordGpc(subject: string, actor: Omit<ChangeActor, 'source'>): Promise<boolean>;
  /** Drops cached choices (one subject, or all). */
  invalidate(subject?: string): void;
}

export interface PrivacyServiceOptions {
  readonly db: Kysely<Database>;
  readonly audit: { emitDurable(input: AuditEventInput): Promise<void> };
  readonly now?: () => number;
  readonly cacheTtlMs?: number;
  /** Called after each change made through this service (the gateway announces it to the others). */
  readonly onChange?: () => void;
}

export function isPurpose(value: string): value is Purpose {
  return (PURPOSES as readonly string[]).includes(value);
}

export function isOptOut(value: string): value is OptOut {
  return (OPT_OUTS as readonly string[]).includes(value);
}

function checkSubject(subject: string): void {
  if (subject.length === 0 || subject.length > MAX_SUBJECT || /\p{Cc}/u.test(subject)) {
    throw new PrivacyInputError('subject must be 1 to 1024 characters without control characters');
  }
}

function toRecord(row: PrivacyChoicesTable): ChoiceRecord {
  return {
    kind: row.kind,
    name: row.name,
    state: row.state,
    noticeVersion: row.notice_version,
    source: row.source,
    updatedAt: row.updated_at,
  };
}

function summarise(subject: string, records: readonly ChoiceRecord[]): SubjectChoices {
  const granted = new Set<Purpose>();
  const withdrawn = new Set<Purpose>();
  const optedOut = new Set<OptOut>();
  for (const r of records) {
    if (r.kind === 'consent' && isPurpose(r.name)) {
      if (r.state === 'granted') granted.add(r.name);
      else withdrawn.add(r.name);
    } else if (r.kind === 'opt-out' && isOptOut(r.name) && r.state === 'opted-out') optedOut.add(r.name);
  }
  const version = `c:${[...granted].sort().join(',')}|o:${[...optedOut].sort().join(',')}`;
  return { subject, records, granted, withdrawn, optedOut, version };
}

interface Cached {
  readonly value: Promise<SubjectChoices>;
  readonly until: number;
}

export function createPrivacyService(options: PrivacyServiceOptions): PrivacyService {
  const { db, audit } = options;
  const now = options.now ?? (() => Date.now());
  const ttl = options.cacheTtlMs ?? CHOICES_CACHE_TTL_MS;
  const cache = new Map<string, Cached>();

  const load = async (subject: string): Promise<SubjectChoices> => {
    const rows = await db
      .selectFrom('privacy_choices')
      .selectAll()
      .where('subject', '=', subject)
      .orderBy('kind')
      .orderBy('name')
      .execute();
    return summarise(subject, rows.map(toRecord));
  };

  const choices = (subject: string): Promise<SubjectChoices> => {
    const at = now();
    const hit = cache.get(subject);
    if (hit !== undefined && at < hit.until) return hit.value;
    const value = load(subject);
    if (hit !== undefined) cache.delete(subject);
    else if (cache.size >= CHOICES_CACHE_MAX) {
      const oldest = cache.keys().next();
      if (oldest.done !== true) cache.delete(oldest.value);
    }
    cache.set(subject, { value, until: at + ttl });
    // A failed read is not kept.
    value.catch(() => {
      if (cache.get(subject)?.value === value) cache.delete(subject);
    });
    return value;
  };

  const write = async (
    subject: string,
    row: Omit<PrivacyChoicesTable, 'subject' | 'updated_at'>,
    event: AuditEventInput,
  ): Promise<ChoiceRecord> => {
    const updatedAt = new Date(now()).toISOString();
    const full: PrivacyChoicesTable = { ...row, subject, updated_at: updatedAt };
    try {
      await db
        .insertInto('privacy_choices')
        .values(full)
        .onConflict((oc) =>
          oc.columns(['subject', 'kind', 'name']).doUpdateSet({
            state: full.state,
            notice_version: full.notice_version,
            source: full.source,
            updated_at: full.updated_at,
          }),
        )
        .execute();
    } finally {
      cache.delete(subject);
    }
    options.onChange?.();
    await audit.emitDurable({ ...event, '@timestamp': updatedAt });
    return toRecord(full);
  };

  const who = (subject: string, actor: Omit<ChangeActor, 'source'>) => ({
    'user.id': subject,
    'portcullis.listener': actor.listener,
    ...(actor.clientId === undefined ? {} : { 'portcullis.client_id': actor.clientId }),
    ...(actor.clientIp === undefined ? {} : { 'client.ip': actor.clientIp }),
    ...(actor.traceId === undefined ? {} : { 'trace.id': actor.traceId }),
  });

  const setOptOut: PrivacyService['setOptOut'] = async (subject, change, actor) => {
    checkSubject(subject);
    if (!isOptOut(change.optOut)) {
      throw new PrivacyInputError(`opt-out must be one of ${OPT_OUTS.join(', ')}`);
    }
    const state = change.optedOut ? 'opted-out' : 'opted-in';
    return write(
      subject,
      { kind: 'opt-out', name: change.optOut, state, notice_version: null, source: actor.source },
      {
        ...who(subject, actor),
        'event.category': 'privacy',
        'event.action': change.optedOut ? 'opt-out' : 'opt-in',
        'event.outcome': 'success',
        'portcullis.privacy.choice': change.optOut,
        'portcullis.privacy.source': actor.source,
      },
    );
  };

  return {
    choices(subject) {
      return choices(subject);
    },
    async setConsent(subject, change, actor) {
      checkSubject(subject);
      if (!isPurpose(change.purpose) || change.purpose === 'service') {
        throw new PrivacyInputError(
          `purpose must be one of ${PURPOSES.filter((p) => p !== 'service').join(', ')} (service needs no consent)`,
        );
      }
      const notice = change.noticeVersion;
      if (change.granted && (notice === undefined || !NOTICE_VERSION.test(notice))) {
        throw new PrivacyInputError(
          'noticeVersion is required to grant a consent: 1 to 64 of A-Z a-z 0-9 . _ : -',
        );
      }
      if (!change.granted && notice !== undefined && !NOTICE_VERSION.test(notice)) {
        throw new PrivacyInputError('noticeVersion: 1 to 64 of A-Z a-z 0-9 . _ : -');
      }
      return write(
        subject,
        {
          kind: 'consent',
          name: change.purpose,
          state: change.granted ? 'granted' : 'withdrawn',
          notice_version: notice ?? null,
          source: actor.source,
        },
        {
          ...who(subject, actor),
          'event.category': 'privacy',
          'event.action': change.granted ? 'consent-grant' : 'consent-withdraw',
          'event.outcome': 'success',
          'portcullis.privacy.choice': change.purpose,
          'portcullis.privacy.source': actor.source,
          ...(notice === undefined ? {} : { 'portcullis.privacy.notice': notice }),
        },
      );
    },
    setOptOut,
    async recordGpc(subject, actor) {
      const current = await choices(subject);
      if (current.optedOut.has('sale-sharing')) return false;
      await setOptOut(subject, { optOut: 'sale-sharing', optedOut: true }, { ...actor, source: 'gpc' });
      return true;
    },
    invalidate(subject) {
      if (subject === undefined) cache.clear();
      else cache.delete(subject);
    },
  };
}
