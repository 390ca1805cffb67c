/**
 * Alerting over the audit event stream. Rules count matching events per group (source IP,
 * OAuth client or API key, or all events) over a sliding window; a rule fires when `threshold`
 * events arrived within `windowSeconds`, and then at most once per window per group. An alert
 * is itself audited (`audit` / `alert-fired`), counted, and delivered to a webhook as JSON whose
 * body is signed with HMAC-SHA-256:
 *
 *   X-Portcullis-Signature: t=<unix seconds>,v1=<hex HMAC-SHA-256(secret, "<t>.<body>")>
 *
 * The timestamp is inside the signed bytes, so a receiver can refuse replays of old deliveries
 * ({@link verifyAlertSignature} is the reference verifier). Delivery runs off the request path:
 * `observe` only counts and queues; a failed delivery (network error, 408, 429, 5xx) is retried
 * with exponential backoff, a delivery that finally fails or does not fit the bounded queue is
 * an audit event and a metric, never silent.
 *
 * Alert bodies carry rule settings, the group value, counts and a few identifying fields of the
 * last matching events (ids, times, actions, reasons, correlation ids), all of which passed the
 * audit event builder's credential guard. Never the webhook secret, never request content.
 */
import { createHmac, randomUUID, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Counter, Registry } from 'prom-client';
import { Agent, request } from 'undici';
import type { Dispatcher } from 'undici';
import { buildAuditEvent } from './event.ts';
import type { AuditCategory, AuditEvent, AuditEventInput, AuditOutcome } from './event.ts';
import type { AuditListener } from './log.ts';

export const ALERT_SEVERITIES = ['low', 'medium', 'high', 'critical'] as const;
export type AlertSeverity = (typeof ALERT_SEVERITIES)[number];

/** Event fields a rule may count per value of. */
export const ALERT_GROUP_FIELDS = ['client.ip', 'portcullis.client_id', 'portcullis.api_key_id'] as const;
export type AlertGroupBy = (typeof ALERT_GROUP_FIELDS)[number] | null;

export interface AlertRule {
  /** Stable id: lower-case words joined by `-`. */
  readonly id: string;
  readonly when: {
    readonly category: AuditCategory;
    readonly action?: string | undefined;
    readonly outcome?: AuditOutcome | undefined;
  };
  /** Count per value of this field (events without it do not count); null: all events together. */
  readonly groupBy: AlertGroupBy;
  readonly threshold: number;
  readonly windowSeconds: number;
  readonly severity: AlertSeverity;
  /** Who must acknowledge the alert (a team, rota or person). */
  readonly ackTarget: string;
}

/** The header carrying the signature. */
export const ALERT_SIGNATURE_HEADER = 'x-portcullis-signature';
/** Default replay window of {@link verifyAlertSignature}. */
export const DEFAULT_SIGNATURE_TOLERANCE_SECONDS = 300;
/** Shortest webhook secret accepted (bytes of UTF-8). */
export const MIN_ALERT_SECRET_BYTES = 32;

/** Actions of the alert engine's own events: never counted by rules (no feedback loops). */
const OWN_ACTIONS: ReadonlySet<string> = new Set(['alert-fired', 'alert-delivery-failed', 'alert-dropped']);

/**
 * The built-in rules (on unless `alerts.defaults: false`; a configured rule with the same id
 * replaces one). `ackTarget` is the configuration's `alerts.ackTarget`.
 */
export function defaultAlertRules(ackTarget: string): AlertRule[] {
  return [
    {
      id: 'auth-failures-per-source',
      when: { category: 'authentication', outcome: 'failure' },
      groupBy: 'client.ip',
      threshold: 10,
      windowSeconds: 60,
      severity: 'high',
      ackTarget,
    },
    {
      id: 'rate-limit-offender',
      when: { category: 'rate-limit' },
      groupBy: 'client.ip',
      threshold: 20,
      windowSeconds: 300,
      severity: 'medium',
      ackTarget,
    },
    // Issue 13: what the gateway really emits — an `api-key-anomaly` event (new source network,
    // use after revocation/expiry/rotation, volume spike) alerts at once; refused requests of a
    // known key carry its id, so repeated refusals of one key alert too.
    {
      id: 'api-key-anomaly',
      when: { category: 'authentication', action: 'api-key-anomaly' },
      groupBy: 'portcullis.api_key_id',
      threshold: 1,
      windowSeconds: 300,
      severity: 'high',
      ackTarget,
    },
    {
      id: 'api-key-failures',
      when: { category: 'authentication', outcome: 'failure' },
      groupBy: 'portcullis.api_key_id',
      threshold: 5,
      windowSeconds: 300,
      severity: 'high',
      ackTarget,
    },
    {
      id: 'configuration-change',
      when: { category: 'configuration' },
      groupBy: null,
      threshold: 1,
      windowSeconds: 1,
      severity: 'medium',
      ackTarget,
    },
    {
      id: 'key-change',
      when: { category: 'key-lifecycle' },
      groupBy: null,
      threshold: 1,
      windowSeconds: 1,
      severity: 'high',
      ackTarget,
    },
    {
      id: 'audit-disk-usage',
      when: { category: 'audit', action: 'disk-usage-high' },
      groupBy: null,
      threshold: 1,
      windowSeconds: 3600,
      severity: 'high',
      ackTarget,
    },
    // issue 13: a client secret expires soon (src/oauth/secret-expiry-watch.ts).
    {
      id: 'client-secret-expiry',
      when: { category: 'credential-lifecycle', action: 'client-secret-expiring' },
      groupBy: 'portcullis.client_id',
      threshold: 1,
      windowSeconds: 86_400,
      severity: 'medium',
      ackTarget,
    },
    {
      id: 'audit-sink-outage',
      when: { category: 'audit', outcome: 'failure' },
      groupBy: null,
      threshold: 1,
      windowSeconds: 300,
      severity: 'critical',
      ackTarget,
    },
  ];
}

// ---------------------------------------------------------------------------------------------
// Signatures

/** The `X-Portcullis-Signature` value for `body` at unix time `t` (seconds). */
export function signAlertBody(secret: string, body: string, t: number): string {
  const mac = createHmac('sha256', secret)
    .update(`${String(t)}.`)
    .update(body)
    .digest('hex');
  return `t=${String(t)},v1=${mac}`;
}

export interface VerifyAlertSignatureOptions {
  readonly secret: string;
  /** The raw request body, exactly as received. */
  readonly body: string | Buffer;
  /** The `X-Portcullis-Signature` header value. */
  readonly header: string | undefined;
  /** Unix seconds now (default: the clock). */
  readonly now?: number;
  /** Largest accepted age (and clock skew) in seconds; default 300. */
  readonly toleranceSeconds?: number;
}

/**
 * The reference receiver check: true only when the header is well formed, its timestamp is
 * within the tolerance of now, and one `v1` signature matches the HMAC of `<t>.<body>`
 * (compared in constant time).
 *
 * @example
 * ```ts
 * if (!verifyAlertSignature({ secret, body: rawBody, header: req.headers['x-portcullis-signature'] })) return reply(401);
 * ```
 */
export function verifyAlertSignature(o: VerifyAlertSignatureOptions): boolean {
  if (o.header === undefined || o.header.length > 1024) return false;
  let t: number | undefined;
  const sigs: Buffer[] = [];
  for (const part of o.header.split(',')) {
    const eq = part.indexOf('=');
    if (eq < 0) return false;
    const k = part.slice(0, eq).trim();
    const v = part.slice(eq + 1).trim();
    if (k === 't') {
      if (t !== undefined || !/^[0-9]{1,12}$/.test(v)) return false;
      t = Number(v);
    } else if (k === 'v1') {
      if (!/^[0-9a-f]{64}$/.test(v)) return false;
      sigs.push(Buffer.from(v, 'hex'));
    }
  }
  if (t === undefined || sigs.length === 0) return false;
  const now = o.now ?? Math.floor(Date.now() / 1000);
  if (Math.abs(now - t) > (o.toleranceSeconds ?? DEFAULT_SIGNATURE_TOLERANCE_SECONDS)) return false;
  const expected = createHmac('sha256', o.secret)
    .update(`${String(t)}.`)
    .update(o.body)
    .digest();
  let ok = false;
  for (const s of sigs) if (timingSafeEqual(s, expected)) ok = true;
  return ok;
}

// ---------------------------------------------------------------------------------------------
// The engine

export interface AlertWebhook {
  /** `https://…` */
  readonly url: string;
  readonly secret: string;
  /** PEM CA bundle the receiver's certificate must chain to (default: the system store). */
  readonly ca?: string;
  /** Per attempt (default 10 s). */
  readonly timeoutMs?: number;
}

/** The JSON body delivered for one alert. */
export interface AlertBody {
  readonly type: 'portcullis.alert';
  readonly version: 1;
  readonly id: string;
  readonly firedAt: string;
  readonly rule: AlertRule;
  readonly severity: AlertSeverity;
  readonly ackTarget: string;
  readonly group: { readonly by: string; readonly value: string } | null;
  /** Matching events within the window when the rule fired. */
  readonly count: number;
  readonly summary: string;
  /** Identifying fields of the last (up to 5) matching events. */
  readonly events: readonly Record<string, unknown>[];
}

export interface AlertEngineOptions {
  readonly rules: readonly AlertRule[];
  readonly webhook?: AlertWebhook | undefined;
  /** Where `alert-fired` and delivery-failure events go. */
  readonly audit?: { emit(input: AuditEventInput): Promise<void> } | undefined;
  readonly registry?: Registry | undefined;
  /** Milliseconds since the epoch (tests inject a clock). */
  readonly now?: (() => number) | undefined;
  /** Delivery attempts per alert (default 8) and the backoff (default 1 s doubling to 60 s). */
  readonly maxAttempts?: number | undefined;
  readonly retryInitialMs?: number | undefined;
  readonly retryMaxMs?: number | undefined;
  /** Alerts waiting for delivery before new ones are dropped (default 1000). */
  readonly maxQueue?: number | undefined;
  /** Groups tracked per rule; the least recently seen are forgotten first (default 10 000). */
  readonly maxGroups?: number | undefined;
  /** Problems handled here (delivery failures), for the process logger. */
  readonly onError?: ((error: unknown, what: string) => void) | undefined;
}

interface GroupState {
  times: number[];
  firedAt: number | undefined;
  last: AuditEvent[];
}

interface CompiledRule {
  readonly rule: AlertRule;
  readonly windowMs: number;
  readonly groups: Map<string, GroupState>;
}

const RULE_ID = /^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$/;

function checkRules(rules: readonly AlertRule[]): void {
  const ids = new Set<string>();
  for (const r of rules) {
    if (!RULE_ID.test(r.id) || r.id.length > 64) throw new TypeError(`alerts: bad rule id "${r.id}"`);
    if (ids.has(r.id)) throw new TypeError(`alerts: duplicate rule id "${r.id}"`);
    ids.add(r.id);
    if (!Number.isSafeInteger(r.threshold) || r.threshold < 1)
      throw new TypeError(`alerts: rule ${r.id}: threshold must be a positive integer`);
    if (!Number.isSafeInteger(r.windowSeconds) || r.windowSeconds < 1)
      throw new TypeError(`alerts: rule ${r.id}: windowSeconds must be a positive integer`);
    if (!(ALERT_SEVERITIES as readonly string[]).includes(r.severity))
      throw new TypeError(`alerts: rule ${r.id}: unknown severity`);
    if (r.groupBy !== null && !(ALERT_GROUP_FIELDS as readonly string[]).includes(r.groupBy))
      throw new TypeError(`alerts: rule ${r.id}: unknown groupBy`);
  }
}

function pick(e: AuditEvent): Record<string, unknown> {
  const out: Record<string, unknown> = {
    'event.id': e['event.id'],
    '@timestamp': e['@timestamp'],
    'event.category': e['event.category'],
    'event.action': e['event.action'],
    'event.outcome': e['event.outcome'],
  };
  for (const k of [
    'event.reason',
    'trace.id',
    'portcullis.api',
    'url.path',
    'http.request.method',
    'http.response.status_code',
    'portcullis.audit.sink',
  ] as const) {
    const v = e[k];
    if (v !== undefined) out[k] = v;
  }
  return out;
}

function matches(rule: AlertRule, e: AuditEvent): boolean {
  const w = rule.when;
  return (
    e['event.category'] === w.category &&
    (w.action === undefined || e['event.action'] === w.action) &&
    (w.outcome === undefined || e['event.outcome'] === w.outcome)
  );
}

function positive(name: string, v: number | undefined, def: number): number {
  const n = v ?? def;
  if (!Number.isFinite(n) || n <= 0) throw new TypeError(`alerts: ${name} must be a positive number`);
  return n;
}

/**
 * Watches events and fires alerts. Attach it to the audit log with `engine.attach(audit)`.
 *
 * @example
 * ```ts
 * const alerts = new AlertEngine({ rules: defaultAlertRules('secops'), webhook: { url, secret }, audit, registry });
 * alerts.attach(audit);
 * ```
 */
export class AlertEngine {
  /** For `AuditLog.onEvent`. */
  readonly listener: AuditListener;
  readonly #rules: CompiledRule[];
  readonly #o: AlertEngineOptions;
  readonly #now: () => number;
  readonly #maxAttempts: number;
  readonly #retryInitialMs: number;
  readonly #retryMaxMs: number;
  readonly #maxQueue: number;
  readonly #maxGroups: number;
  readonly #dispatcher: Agent | undefined;
  readonly #queue: AlertBody[] = [];
  readonly #fired: Counter<'rule' | 'severity'>;
  readonly #deliveries: Counter<'outcome'>;
  #draining: Promise<void> | undefined;
  #closed = false;
  #wake: (() => void) | undefined;
  readonly #detach: (() => void)[] = [];

  constructor(options: AlertEngineOptions) {
    checkRules(options.rules);
    const hook = options.webhook;
    if (hook !== undefined) {
      if (!hook.url.startsWith('https://')) throw new TypeError('alerts: the webhook url must be https://');
      if (Buffer.byteLength(hook.secret) < MIN_ALERT_SECRET_BYTES)
        throw new TypeError(
          `alerts: the webhook secret must be at least ${String(MIN_ALERT_SECRET_BYTES)} bytes`,
        );
    }
    this.#o = options;
    this.#now = options.now ?? Date.now;
    this.#maxAttempts = positive('maxAttempts', options.maxAttempts, 8);
    this.#retryInitialMs = positive('retryInitialMs', options.retryInitialMs, 1000);
    this.#retryMaxMs = positive('retryMaxMs', options.retryMaxMs, 60_000);
    this.#maxQueue = positive('maxQueue', options.maxQueue, 1000);
    this.#maxGroups = positive('maxGroups', options.maxGroups, 10_000);
    this.#rules = options.rules.map((rule) => ({
      rule,
      windowMs: rule.windowSeconds * 1000,
      groups: new Map(),
    }));
    const timeout = hook?.timeoutMs ?? 10_000;
    this.#dispatcher =
      hook === undefined
        ? undefined
        : new Agent({
            connect: { ...(hook.ca === undefined ? {} : { ca: hook.ca }), timeout },
            headersTimeout: timeout,
            bodyTimeout: timeout,
          });
    const registers = [options.registry ?? new Registry()];
    this.#fired = new Counter({
      name: 'portcullis_alerts_fired_total',
      help: 'Alerts fired, by rule and severity',
      labelNames: ['rule', 'severity'],
      registers,
    });
    this.#deliveries = new Counter({
      name: 'portcullis_alert_deliveries_total',
      help: 'Alert webhook delivery attempts: delivered, retried, failed (gave up) or dropped (queue full)',
      labelNames: ['outcome'],
      registers,
    });
    this.listener = (record) => {
      this.observe(record.event);
    };
  }

  /** Subscribes to the log's committed events (`close` unsubscribes). */
  attach(log: { onEvent(listener: AuditListener): () => void }): void {
    this.#detach.push(log.onEvent(this.listener));
  }

  /** The rules in force. */
  get rules(): readonly AlertRule[] {
    return this.#rules.map((r) => r.rule);
  }

  /** Counts one event against every rule; fires (and queues delivery of) any alert due. */
  observe(event: AuditEvent): void {
    if (this.#closed) return;
    if (event['event.category'] === 'audit' && OWN_ACTIONS.has(event['event.action'])) return;
    const now = this.#now();
    for (const c of this.#rules) {
      if (!matches(c.rule, event)) continue;
      let key = '';
      if (c.rule.groupBy !== null) {
        const v = event[c.rule.groupBy];
        if (v === undefined || v === '') continue;
        key = v;
      }
      let g = c.groups.get(key);
      if (g === undefined) {
        g = { times: [], firedAt: undefined, last: [] };
        if (c.groups.size >= this.#maxGroups) {
          const oldest = c.groups.keys().next();
          if (oldest.done !== true) c.groups.delete(oldest.value);
        }
      } else {
        c.groups.delete(key); // re-inserted below: the map stays ordered by last use
      }
      c.groups.set(key, g);
      const from = now - c.windowMs;
      while (g.times.length > 0 && (g.times[0] ?? 0) <= from) g.times.shift();
      // A summary of aggregated refusals counts as the refusals it stands for.
      const weight = Math.min(event['portcullis.aggregate.count'] ?? 1, c.rule.threshold);
      for (let i = 0; i < weight; i++) g.times.push(now);
      while (g.times.length > c.rule.threshold) g.times.shift();
      g.last.push(event);
      if (g.last.length > 5) g.last.shift();
      if (g.times.length >= c.rule.threshold && (g.firedAt === undefined || now - g.firedAt >= c.windowMs)) {
        const count = g.times.length;
        g.firedAt = now;
        g.times = [];
        this.#fire(c.rule, key, count, g.last.map(pick), now);
      }
    }
  }

  /**
   * A sink failed (the audit log's `onError`): counts as an `audit` / `sink-error` failure event
   * without going through the log, since the log may be the thing that is down.
   */
  sinkError(sink: string): void {
    if (sink === 'listener') return;
    this.observe(
      buildAuditEvent({
        'event.category': 'audit',
        'event.action': 'sink-error',
        'event.outcome': 'failure',
        'event.reason': 'audit sink delivery failed; events are spooled and retried',
        'portcullis.audit.sink': sink,
      }),
    );
  }

  /** Resolves when every queued alert was delivered or given up. */
  async idle(): Promise<void> {
    while (this.#draining !== undefined) await this.#draining;
  }

  /** Stops counting; waits up to `graceMs` (default 2 s) for queued deliveries, then abandons them. */
  async close(graceMs = 2000): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const off of this.#detach) off();
    const timer = setTimeout(() => {
      this.#queue.length = 0;
      this.#wake?.();
    }, graceMs);
    try {
      await this.idle();
    } finally {
      clearTimeout(timer);
      await this.#dispatcher?.close();
    }
  }

  #fire(rule: AlertRule, key: string, count: number, events: Record<string, unknown>[], now: number): void {
    const firedAt = new Date(now).toISOString();
    const group = rule.groupBy === null ? null : { by: rule.groupBy, value: key };
    const what = [rule.when.category, rule.when.action, rule.when.outcome].filter((x) => x !== undefined);
    const body: AlertBody = {
      type: 'portcullis.alert',
      version: 1,
      id: randomUUID(),
      firedAt,
      rule,
      severity: rule.severity,
      ackTarget: rule.ackTarget,
      group,
      count,
      summary:
        `${rule.id}: ${String(count)} ${what.join('/')} event${count === 1 ? '' : 's'}` +
        (group === null ? '' : ` from ${group.by} ${group.value}`) +
        ` within ${String(rule.windowSeconds)} s`,
      events,
    };
    this.#fired.inc({ rule: rule.id, severity: rule.severity });
    this.#audit({
      'event.category': 'audit',
      'event.action': 'alert-fired',
      'event.outcome': 'success',
      'event.reason': body.summary,
      'portcullis.alert.rule': rule.id,
      'portcullis.alert.severity': rule.severity,
      ...(rule.groupBy === null ? {} : { [rule.groupBy]: key }),
    });
    if (this.#o.webhook === undefined) return;
    if (this.#queue.length >= this.#maxQueue) {
      this.#deliveries.inc({ outcome: 'dropped' });
      this.#audit({
        'event.category': 'audit',
        'event.action': 'alert-dropped',
        'event.outcome': 'failure',
        'event.reason': 'alert delivery queue full',
        'portcullis.alert.rule': rule.id,
        'portcullis.alert.severity': rule.severity,
      });
      return;
    }
    this.#queue.push(body);
    this.#draining ??= this.#drain().finally(() => {
      this.#draining = undefined;
    });
  }

  #audit(input: AuditEventInput): void {
    const audit = this.#o.audit;
    if (audit === undefined) return;
    try {
      audit.emit(input).catch((err: unknown) => this.#o.onError?.(err, 'audit'));
    } catch (err) {
      this.#o.onError?.(err, 'audit');
    }
  }

  async #drain(): Promise<void> {
    for (let body = this.#queue.shift(); body !== undefined; body = this.#queue.shift()) {
      await this.#deliver(body);
    }
  }

  async #deliver(body: AlertBody): Promise<void> {
    const hook = this.#o.webhook;
    if (hook === undefined) return;
    const json = JSON.stringify(body);
    let delay = this.#retryInitialMs;
    let lastProblem = 'unknown';
    for (let attempt = 1; attempt <= this.#maxAttempts; attempt++) {
      const status = await this.#post(hook, json);
      if (status !== undefined && status >= 200 && status < 300) {
        this.#deliveries.inc({ outcome: 'delivered' });
        return;
      }
      lastProblem = status === undefined ? 'unreachable' : `HTTP ${String(status)}`;
      const retriable = status === undefined || status === 408 || status === 429 || status >= 500;
      if (!retriable || attempt === this.#maxAttempts || this.#closed) break;
      this.#deliveries.inc({ outcome: 'retried' });
      await new Promise<void>((ok) => {
        const t = setTimeout(ok, delay);
        t.unref();
        this.#wake = () => {
          clearTimeout(t);
          ok();
        };
      });
      this.#wake = undefined;
      delay = Math.min(delay * 2, this.#retryMaxMs);
    }
    this.#deliveries.inc({ outcome: 'failed' });
    this.#o.onError?.(new Error(`alert webhook delivery failed: ${lastProblem}`), 'webhook');
    this.#audit({
      'event.category': 'audit',
      'event.action': 'alert-delivery-failed',
      'event.outcome': 'failure',
      'event.reason': `alert webhook delivery failed (${lastProblem})`,
      'portcullis.alert.rule': body.rule.id,
      'portcullis.alert.severity': body.severity,
    });
  }

  /** One attempt: the status, or undefined when no answer came. */
  async #post(hook: AlertWebhook, json: string): Promise<number | undefined> {
    const t = Math.floor(this.#now() / 1000);
    try {
      const res = await request(hook.url, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'user-agent': 'portcullis-alerts/1',
          [ALERT_SIGNATURE_HEADER]: signAlertBody(hook.secret, json, t),
        },
        body: json,
        dispatcher: this.#dispatcher as Dispatcher,
      });
      await res.body.dump();
      return res.statusCode;
    } catch (err) {
      this.#o.onError?.(err, 'webhook');
      return undefined;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// From the configuration

/** The `alerts` configuration section (see src/config/schema.ts). */
export interface AlertsSettings {
  readonly defaults: boolean;
  readonly ackTarget: string;
  readonly rules: readonly {
    readonly id: string;
    readonly when: { readonly category: string; readonly action?: string; readonly outcome?: string };
    readonly groupBy: string | null;
    readonly threshold: number;
    readonly windowSeconds: number;
    readonly severity: string;
    readonly ackTarget: string;
  }[];
  readonly webhook?: {
    readonly url: string;
    readonly secretEnv?: string;
    readonly secret?: string;
    readonly caFile?: string;
  };
}

/** The rules a configuration puts in force: the built-in ones (unless off), then its own by id. */
export function alertRulesFromConfig(config: AlertsSettings): AlertRule[] {
  const byId = new Map<string, AlertRule>();
  if (config.defaults) for (const r of defaultAlertRules(config.ackTarget)) byId.set(r.id, r);
  for (const r of config.rules) byId.set(r.id, r as AlertRule);
  const rules = [...byId.values()];
  checkRules(rules);
  return rules;
}

/**
 * The webhook a configuration names, its secret resolved (from `secretEnv` or `secret`) and its
 * CA read. Throws naming the key (never the value) when the secret is missing or short.
 */
export function alertWebhookFromConfig(
  config: AlertsSettings,
  options: { env?: NodeJS.ProcessEnv; readFile: (path: string) => string },
): AlertWebhook | undefined {
  const w = config.webhook;
  if (w === undefined) return undefined;
  if ((w.secret === undefined) === (w.secretEnv === undefined))
    throw new Error('alerts.webhook: set exactly one of secretEnv and secret');
  const secret = w.secret ?? (options.env ?? process.env)[w.secretEnv ?? ''];
  if (secret === undefined || secret === '')
    throw new Error(`alerts.webhook.secretEnv: the environment variable ${String(w.secretEnv)} is not set`);
  if (Buffer.byteLength(secret) < MIN_ALERT_SECRET_BYTES)
    throw new Error(
      `alerts.webhook: the secret must be at least ${String(MIN_ALERT_SECRET_BYTES)} bytes (generate one with: openssl rand -hex 32)`,
    );
  return {
    url: w.url,
    secret,
    ...(w.caFile === undefined ? {} : { ca: options.readFile(w.caFile) }),
  };
}

/**
 * Builds the engine the configuration describes and attaches it to the audit log: what the
 * process start calls once the log is open. Rules apply from start (a reload does not change them).
 *
 * @example
 * ```ts
 * const alerts = startAlerting({ config: config.alerts, audit, registry: metrics.registry, resolvePath: loaded.resolvePath });
 * cleanups.push(() => alerts.close());
 * ```
 */
export function startAlerting(options: {
  readonly config: AlertsSettings;
  readonly audit: { emit(input: AuditEventInput): Promise<void>; onEvent(l: AuditListener): () => void };
  readonly registry?: Registry | undefined;
  readonly resolvePath: (file: string) => string;
  readonly env?: NodeJS.ProcessEnv | undefined;
  readonly onError?: ((error: unknown, what: string) => void) | undefined;
}): AlertEngine {
  const engine = new AlertEngine({
    rules: alertRulesFromConfig(options.config),
    webhook: alertWebhookFromConfig(options.config, {
      ...(options.env === undefined ? {} : { env: options.env }),
      readFile: (f) => readFileSync(options.resolvePath(f), 'utf8'),
    }),
    audit: options.audit,
    registry: options.registry,
    onError: options.onError,
  });
  engine.attach(options.audit);
  return engine;
}
