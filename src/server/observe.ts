/**
 * Observation: every decision the gateway, the authorization server and the control plane make
 * becomes one audit event and the matching metrics. Observers never decide and never throw into
 * the request path: an audit failure is logged and counted by the audit log itself.
 */
import { randomBytes } from 'node:crypto';
import { rateLimitKeyHasher, requestAuditFields } from '../audit/request-fields.ts';
import type { RateLimitKeyHasher } from '../audit/request-fields.ts';
import { oauthRoute } from '../admin/metrics.ts';
import type { Metrics } from '../admin/metrics.ts';
import type { AuditLog } from '../audit/index.ts';
import type { AuditCategory, AuditEventInput } from '../audit/event.ts';
import type { OperationInfo, Principal, RequestRecord } from '../gateway/context.ts';
import type { ProblemCode } from '../gateway/problems.ts';
import type { Logger } from '../log/index.ts';
import { describeError } from '../log/index.ts';

/** How one request ended (any door): the pipeline's record (src/gateway/context.ts). */
export type { RequestRecord };

/** What the authorization server reports (src/oauth/provider.ts `onEvent`). */
export interface OAuthEvent {
  readonly type: 'token-issued' | 'code-issued' | 'grant-revoked' | 'refused' | 'logout' | 'server-error';
  readonly clientId?: string | undefined;
  /** `logout`: the account whose session ended. */
  readonly accountId?: string | undefined;
  readonly grantType?: string | undefined;
  readonly endpoint?: string | undefined;
  readonly error?: string | undefined;
}

const CATEGORY_OF: Partial<Record<ProblemCode, { category: AuditCategory; action: string }>> = {
  unauthenticated: { category: 'authentication', action: 'authenticate' },
  forbidden: { category: 'authorization', action: 'authorize' },
  'origin-not-allowed': { category: 'authorization', action: 'cors' },
  'too-many-requests': { category: 'rate-limit', action: 'rate-limit' },
  'not-found': { category: 'validation', action: 'route' },
  'method-not-allowed': { category: 'validation', action: 'route' },
  'bad-gateway': { category: 'upstream', action: 'proxy' },
  'gateway-timeout': { category: 'upstream', action: 'proxy' },
  unavailable: { category: 'upstream', action: 'shed-or-circuit' },
  internal: { category: 'upstream', action: 'internal-error' },
  conflict: { category: 'validation', action: 'idempotency' },
  unprocessable: { category: 'validation', action: 'idempotency' },
  gone: { category: 'validation', action: 'retired-version' },
  'consent-required': { category: 'authorization', action: 'privacy' },
  'sale-sharing-opted-out': { category: 'authorization', action: 'privacy' },
  'sensitive-data-limited': { category: 'authorization', action: 'privacy' },
  'automation-opted-out': { category: 'authorization', action: 'privacy' },
};

/** An audit action is lower-case words joined by `-`. */
function actionWord(value: string): string {
  return (
    value
      .toLowerCase()
      .replace(/[^a-z0-9]+/g, '-')
      .replace(/^-|-$/g, '') || 'request'
  );
}

/** The scopes an operation requires, sorted: computed once per compiled operation. */
const REQUIRED = new WeakMap<OperationInfo, readonly string[]>();
const NO_SCOPES: readonly string[] = Object.freeze([]);
function requiredScopes(op: OperationInfo | undefined): readonly string[] {
  if (op === undefined) return NO_SCOPES;
  let scopes = REQUIRED.get(op);
  if (scopes === undefined) {
    const out = new Set<string>();
    for (const requirement of op.security)
      for (const s of Object.values(requirement)) for (const scope of s) out.add(scope);
    scopes = Object.freeze([...out].sort());
    REQUIRED.set(op, scopes);
  }
  return scopes;
}

/**
 * The caller's fields of an event, computed once per verified credential: keyed by the
 * principal's scope set, which the token verification cache hands out again for every request
 * with the same token (the principal object itself is new each time).
 */
const WHO = new WeakMap<
  ReadonlySet<string>,
  { readonly principal: Principal; readonly fields: Partial<AuditEventInput> }
>();
function who(principal: Principal | undefined): Partial<AuditEventInput> | undefined {
  if (principal === undefined) return undefined;
  const seen = WHO.get(principal.scopes);
  if (
    seen !== undefined &&
    seen.principal.scheme === principal.scheme &&
    seen.principal.subject === principal.subject &&
    seen.principal.clientId === principal.clientId
  ) {
    return seen.fields;
  }
  let fields: Partial<AuditEventInput>;
  if (principal.scheme !== '' && principal.subject === principal.clientId && principal.scopes.size === 0) {
    // API keys and client certificates: the credential id is the client.
    fields = { 'portcullis.api_key_id': principal.clientId };
  } else {
    fields = {
      'portcullis.client_id': principal.clientId,
      ...(principal.subject !== principal.clientId ? { 'user.id': principal.subject } : {}),
      'portcullis.scopes.granted': [...principal.scopes].sort(),
    };
  }
  WHO.set(principal.scopes, { principal, fields });
  return fields;
}

export interface Observer {
  /**
   * One request through the front door (API, WebSocket upgrade or authorization server): its
   * metrics, one denial count naming the stage that refused, and one audit event.
   */
  request(r: RequestRecord): void;
  oauth(e: OAuthEvent, context: { clientIp?: string | undefined; correlationId?: string | undefined }): void;
  /** Durable: resolves once the event is safe (configuration, keys, credentials, admin). */
  durable(input: AuditEventInput): Promise<void>;
  event(input: AuditEventInput): void;
}

export function createObserver(
  audit: AuditLog,
  metrics: Metrics,
  logger: Logger,
  options: {
    readonly requestEvents: boolean;
    /** Issue 13: keyed hash for `portcullis.rate_limit.key` (default: a random per-process key). */
    readonly rateLimitKeyHash?: RateLimitKeyHasher;
  } = { requestEvents: true },
): Observer {
  const rateLimitHash = options.rateLimitKeyHash ?? rateLimitKeyHasher(randomBytes(32));
  const failed = (err: unknown) => {
    logger.warn({ event: 'audit-emit-failed', error: describeError(err) }, 'audit event not recorded');
  };
  // Observers never throw into the code they observe (a request, the authorization server).
  const emit = (input: AuditEventInput) => {
    try {
      audit.emit(input).catch(failed);
    } catch (err) {
      failed(err);
    }
  };
  return {
    request(r) {
      const op = r.op;
      const oauth = r.door === 'authorization-server';
      const route = oauth ? oauthRoute(r.rawPath) : (op?.template ?? null);
      metrics.observeRequest({
        api: oauth ? 'oauth' : (op?.api.name ?? null),
        route,
        method: r.method,
        status: r.status,
        durationMs: r.durationMs,
      });
      const denial = r.denial;
      if (denial !== undefined) metrics.denied(r.stage ?? 'route', denial.code);
      if (r.door === 'websocket') metrics.websocketUpgrade(denial === undefined ? 'accepted' : 'refused');
      const mapped = denial === undefined ? undefined : CATEGORY_OF[denial.code];
      if (denial?.code === 'unauthenticated') metrics.authFailure(denial.reason);
      // Turned off only under a documented exception (audit-request-events).
      if (!options.requestEvents) return;
      const fields: Record<string, unknown> = {
        'event.category': mapped?.category ?? (denial === undefined ? 'authorization' : 'validation'),
        // A refusal is named by the stage that refused; an answer is an `allow` (or an upgrade).
        'event.action':
          denial !== undefined
            ? (r.stage ?? mapped?.action ?? 'validate')
            : r.door === 'websocket'
              ? 'websocket-upgrade'
              : oauth
                ? 'authorization-server'
                : 'allow',
        'event.outcome': denial === undefined && r.status < (oauth ? 400 : 500) ? 'success' : 'failure',
        'event.duration': Math.round(r.durationMs * 1e6),
        'client.ip': r.clientIp,
        'http.request.method': r.method,
        'http.response.status_code': r.status,
        'portcullis.listener': oauth ? 'oauth' : 'gateway',
        'trace.id': r.correlationId,
        'url.path': route ?? undefined,
        'portcullis.api': op?.api.name,
        'http.request.body.bytes': r.body?.length,
        'event.reason':
          denial !== undefined
            ? denial.reason
            : oauth
              ? 'authorization-server-request'
              : op?.protected === true
                ? 'credential-accepted'
                : 'public-operation',
        'portcullis.scopes.required': requiredScopes(op),
      };
      const caller = who(r.principal);
      if (caller !== undefined) for (const key in caller) fields[key] = caller[key as keyof AuditEventInput];
      // Issue 13: response bytes, the refusing rate-limit counter (hashed), a refused key's id.
      const extra = requestAuditFields(r, rateLimitHash);
      for (const key in extra) fields[key] = extra[key as keyof typeof extra];
      const base = fields as unknown as AuditEventInput;
      emit(base);
    },
    oauth(e, context) {
      if (e.type === 'token-issued') metrics.tokenIssued(e.grantType ?? 'other');
      // Issue 13: logout and authorization-server errors are sign-in decisions (authentication).
      const signIn = e.type === 'logout' || e.type === 'server-error';
      emit({
        'event.category': e.type === 'refused' || signIn ? 'authentication' : 'credential-lifecycle',
        'event.action':
          e.type === 'refused'
            ? `oauth-${actionWord(e.endpoint ?? 'request')}-refused`
            : e.type === 'logout'
              ? 'logout'
              : `oauth-${e.type}`,
        'event.outcome': e.type === 'refused' || e.type === 'server-error' ? 'failure' : 'success',
        ...(e.accountId === undefined ? {} : { 'user.id': e.accountId }),
        'portcullis.listener': 'oauth',
        ...(e.error === undefined ? {} : { 'event.reason': e.error }),
        ...(e.clientId === undefined ? {} : { 'portcullis.client_id': e.clientId }),
        ...(e.type === 'token-issued' || e.type === 'code-issued'
          ? { 'portcullis.credential.type': 'token' }
          : {}),
        ...(context.clientIp === undefined ? {} : { 'client.ip': context.clientIp }),
        ...(context.correlationId === undefined ? {} : { 'trace.id': context.correlationId }),
      });
    },
    durable: (input) => audit.emitDurable(input),
    event: emit,
  };
}
