/**
 * The registry of audit event types: every `event.action` Portcullis emits, with the
 * `event.category` values it comes with and where it comes from. `docs/audit.md` ("Event types")
 * lists exactly these, and `test/audit-event-types.test.ts` fails when an action emitted in
 * `src/` is missing here or one listed here is no longer emitted (issue 13).
 *
 * Adding an event: emit it, add it here, add its row to the doc table.
 */
import type { AuditCategory } from './event.ts';

export interface AuditEventType {
  readonly action: string;
  readonly categories: readonly AuditCategory[];
  /** Who emits it (a path under src/). */
  readonly source: string;
  readonly description: string;
}

/** The categories a request refusal may carry (by its problem code; `src/server/observe.ts`). */
const REFUSAL: readonly AuditCategory[] = [
  'authentication',
  'authorization',
  'rate-limit',
  'validation',
  'upstream',
];

const stage = (action: string, what: string): AuditEventType => ({
  action,
  categories: REFUSAL,
  source: 'src/server/observe.ts',
  description: `A request refused at the ${what} step (the category follows the refusal's problem code).`,
});

const oauthRefused = (endpoint: string, what: string): AuditEventType => ({
  action: `oauth-${endpoint}-refused`,
  categories: ['authentication'],
  source: 'src/oauth/provider.ts',
  description: `The authorization server refused a ${what} request (\`event.reason\`: the OAuth error code).`,
});

const signIn = (action: string, description: string): AuditEventType => ({
  action,
  categories: ['authentication'],
  source: 'src/oauth/interactions',
  description,
});

const cli = (action: string, category: AuditCategory, description: string): AuditEventType => ({
  action,
  categories: [category],
  source: 'src/cli',
  description,
});

export const AUDIT_EVENT_TYPES: readonly AuditEventType[] = [
  // --- requests (one per request, src/server/observe.ts) ---
  {
    action: 'allow',
    categories: ['authorization'],
    source: 'src/server/observe.ts',
    description: 'An API request allowed and answered (outcome failure when the answer is a 5xx).',
  },
  {
    action: 'websocket-upgrade',
    categories: ['authorization'],
    source: 'src/server/observe.ts',
    description: 'A WebSocket upgrade accepted.',
  },
  {
    action: 'authorization-server',
    categories: REFUSAL,
    source: 'src/server/observe.ts',
    description:
      'A request the authorization server answered (outcome failure for a 4xx/5xx), or one refused before it (its own rate limits).',
  },
  stage('framing', 'request framing'),
  stage('limits', 'size limits'),
  stage('load-shedding', 'load shedding'),
  stage('route', 'routing'),
  stage('cors', 'CORS'),
  stage('csrf', 'CSRF'),
  stage('deprecation', 'API version retirement'),
  stage('rate-limit', 'rate limit (`portcullis.rate_limit.key` / `.retry_after` name the counter)'),
  stage('authenticate', 'authentication (`portcullis.api_key_id` names a known API key that was refused)'),
  stage('authorize', 'authorization'),
  stage('validate', 'request validation'),
  stage('idempotency', 'idempotency'),
  stage('proxy', 'upstream call'),
  stage('response', 'response filtering'),
  stage('scan', 'upload scan (clamd)'),
  stage('privacy', 'privacy (consent and opt-outs)'),
  stage('websocket', 'WebSocket handshake'),
  stage('shed-or-circuit', 'load shedding or circuit breaker (fallback when no step is known)'),
  stage('internal-error', 'unexpected error (fallback when no step is known)'),
  stage('retired-version', 'retired API version (fallback when no step is known)'),
  // --- the authorization server (src/oauth/provider.ts via the observer) ---
  {
    action: 'oauth-token-issued',
    categories: ['credential-lifecycle'],
    source: 'src/oauth/provider.ts',
    description: 'Tokens issued at the token endpoint.',
  },
  {
    action: 'oauth-code-issued',
    categories: ['credential-lifecycle'],
    source: 'src/oauth/provider.ts',
    description: 'An authorization code issued.',
  },
  {
    action: 'oauth-grant-revoked',
    categories: ['credential-lifecycle'],
    source: 'src/oauth/provider.ts',
    description: 'A grant revoked.',
  },
  oauthRefused('grant', 'token'),
  oauthRefused('authorization', 'authorization'),
  oauthRefused('pushed-authorization-request', 'pushed authorization'),
  oauthRefused('introspection', 'introspection'),
  oauthRefused('revocation', 'revocation'),
  oauthRefused('userinfo', 'userinfo'),
  oauthRefused('end-session', 'logout'),
  oauthRefused('end-session-confirm', 'logout confirmation'),
  oauthRefused('discovery', 'discovery'),
  oauthRefused('jwks', 'JWKS'),
  {
    action: 'logout',
    categories: ['authentication'],
    source: 'src/oauth/provider.ts',
    description: 'An end-user session ended by RP-initiated logout (`user.id`, `portcullis.client_id`).',
  },
  {
    action: 'oauth-server-error',
    categories: ['authentication'],
    source: 'src/oauth/provider.ts',
    description:
      'The authorization server failed (`event.reason`: `server_error`, or `dependency-unavailable` when the store or Redis was down).',
  },
  // --- sign-in (src/oauth/interactions/audit.ts) ---
  signIn(
    'login',
    'A sign-in ended: success (`event.reason`: the methods, e.g. `pwd`, `pwd+otp+mfa`) or a failed password (`bad-password`, `unknown-user` — without `user.id` —, `disabled`, `no-password`).',
  ),
  signIn(
    'login-first-factor',
    'The password was right; the second factor is asked next (`second-factor-required`).',
  ),
  {
    action: 'login-throttled',
    categories: ['rate-limit'],
    source: 'src/oauth/interactions',
    description:
      'A sign-in attempt refused because its source is throttled (`login-throttled` / `second-factor-throttled`, `portcullis.rate_limit.retry_after`).',
  },
  signIn(
    'second-factor',
    'A TOTP code: success (`totp`) or failure (`bad-code`, `replayed-code`, `disabled`, `no-second-factor`).',
  ),
  signIn(
    'consent',
    'Consent given (`all-scopes-granted` / `some-scopes-declined`; `portcullis.scopes.granted` and the requested ones in `.required`) or refused (`consent-refused`).',
  ),
  signIn('interaction-abort', 'The user cancelled the sign-in (`aborted-at-login`).'),
  signIn(
    'interaction-refused',
    'A sign-in page or form refused (`event.reason`: the refusal code, e.g. `csrf-token`, `interaction-not-found`).',
  ),
  signIn('interaction-error', 'A sign-in page failed unexpectedly (`internal-error`).'),
  signIn(
    'federated-login',
    'Sign-in through the upstream identity provider: success (`fed`) or failure (`federation-state`, `federation-failed`, `federated-account-refused`, `federation-not-expected`).',
  ),
  // --- the gateway process (src/server) ---
  {
    action: 'config-load',
    categories: ['configuration'],
    source: 'src/server/lifecycle.ts',
    description: 'The configuration a process started with.',
  },
  {
    action: 'config-reload',
    categories: ['configuration'],
    source: 'src/server/lifecycle.ts',
    description: 'A configuration reload applied (success) or refused (failure).',
  },
  {
    action: 'key-set-changed',
    categories: ['key-lifecycle'],
    source: 'src/server/lifecycle.ts',
    description: 'The signing key set changed under a running process.',
  },
  {
    action: 'limiter-degraded',
    categories: ['rate-limit'],
    source: 'src/server/lifecycle.ts',
    description: 'Rate limits fell back to per-process counters (Redis unreachable).',
  },
  {
    action: 'limiter-restored',
    categories: ['rate-limit'],
    source: 'src/server/lifecycle.ts',
    description: 'Rate limits use the shared counters again.',
  },
  {
    action: 'api-key-anomaly',
    categories: ['authentication'],
    source: 'src/server/lifecycle.ts',
    description:
      'An API key anomaly (`event.reason`: `new-source-network`, `volume-spike` — outcome success —, `used-after-revocation`, `used-after-expiry`, `used-after-rotation` — outcome failure).',
  },
  {
    action: 'circuit-open',
    categories: ['upstream'],
    source: 'src/server/lifecycle.ts',
    description: "An upstream's circuit breaker opened.",
  },
  {
    action: 'circuit-half-open',
    categories: ['upstream'],
    source: 'src/server/lifecycle.ts',
    description: "An upstream's circuit breaker lets a trial request through.",
  },
  {
    action: 'circuit-closed',
    categories: ['upstream'],
    source: 'src/server/lifecycle.ts',
    description: "An upstream's circuit breaker closed again.",
  },
  {
    action: 'connections-refused',
    categories: ['rate-limit'],
    source: 'src/server/protect-listeners.ts',
    description: 'Connections a listener refused in a window (caps, fd pressure, evictions), summarised.',
  },
  {
    action: 'tls-handshake-failed',
    categories: ['validation'],
    source: 'src/server/tls-failures.ts',
    description:
      'Failed TLS handshakes of one source with one reason in a window (`portcullis.aggregate.count`, `event.start` / `.end`).',
  },
  // --- admin API ---
  {
    action: 'audit-search',
    categories: ['admin'],
    source: 'src/admin/routes.ts',
    description: 'A search of the audit trail on the admin listener.',
  },
  // --- the CLI (src/cli; `portcullis.listener: cli`, with the actor fields) ---
  cli('client-create', 'credential-lifecycle', '`clients create`.'),
  cli('client-delete', 'credential-lifecycle', '`clients delete`.'),
  cli('user-create', 'credential-lifecycle', '`users create`.'),
  cli('user-disable', 'credential-lifecycle', '`users disable`.'),
  cli('user-reset-password', 'credential-lifecycle', '`users reset-password`.'),
  cli('apikey-issue', 'credential-lifecycle', '`apikeys issue`.'),
  cli('apikey-rotate', 'credential-lifecycle', '`apikeys rotate`.'),
  cli('apikey-revoke', 'credential-lifecycle', '`apikeys revoke`.'),
  cli('key-rotate', 'key-lifecycle', '`keys rotate`.'),
  cli('audit-key-rotate', 'key-lifecycle', '`keys rotate-audit`.'),
  cli('master-key-rotate', 'key-lifecycle', '`keys rotate-master`.'),
  // --- the audit trail itself (src/audit) ---
  {
    action: 'prune',
    categories: ['audit'],
    source: 'src/audit/log.ts',
    description: 'Records archived and removed by retention (`portcullis.audit.boundary.*`).',
  },
  {
    action: 'disk-usage-high',
    categories: ['audit'],
    source: 'src/audit/log.ts',
    description: 'The audit data exceeds `audit.disk.alertBytes`.',
  },
  {
    action: 'spool-overflow',
    categories: ['audit'],
    source: 'src/audit/log.ts',
    description: 'A full spool dropped events (`portcullis.audit.dropped`).',
  },
  {
    action: 'sink-error',
    categories: ['audit'],
    source: 'src/audit/alerts.ts',
    description: 'An audit sink failed (reported by the log to the alert engine).',
  },
  {
    action: 'alert-fired',
    categories: ['audit'],
    source: 'src/audit/alerts.ts',
    description: 'An alert rule fired (`portcullis.alert.rule`, `.severity`, the group field).',
  },
  {
    action: 'alert-dropped',
    categories: ['audit'],
    source: 'src/audit/alerts.ts',
    description: 'An alert did not fit the delivery queue.',
  },
  {
    action: 'alert-delivery-failed',
    categories: ['audit'],
    source: 'src/audit/alerts.ts',
    description: 'An alert could not be delivered to the webhook after its retries.',
  },
  {
    action: 'client-secret-rotate',
    categories: ['credential-lifecycle'],
    source: 'src/cli',
    description: '`clients rotate-secret`: a new secret issued (its expiry in `event.reason`).',
  },
  {
    action: 'client-secret-retire',
    categories: ['credential-lifecycle'],
    source: 'src/cli',
    description: '`clients rotate-secret`: until when the old secret stays accepted.',
  },
  {
    action: 'client-secret-expiring',
    categories: ['credential-lifecycle'],
    source: 'src/oauth/secret-expiry-watch.ts',
    description:
      'A client secret expires within `oauth.clientSecrets.expiryWarningDays` (at start and daily).',
  },
  {
    action: 'user-sessions-revoke',
    categories: ['credential-lifecycle'],
    source: 'src/cli',
    description: "`users revoke`: the user's sessions, grants and tokens ended.",
  },
  {
    action: 'pepper-rotate',
    categories: ['key-lifecycle'],
    source: 'src/cli',
    description: '`keys rotate-pepper`: a new pepper; the old one verifies until the grace period ends.',
  },
  {
    action: 'pepper-retire',
    categories: ['key-lifecycle'],
    source: 'src/cli',
    description: '`keys retire-peppers`: replaced peppers past their grace period retired.',
  },
  {
    action: 'consent-grant',
    categories: ['privacy'],
    source: 'src/privacy/service.ts',
    description:
      "A subject's consent to a purpose granted (subject API, CLI or admin; `portcullis.privacy.*`).",
  },
  {
    action: 'consent-withdraw',
    categories: ['privacy'],
    source: 'src/privacy/service.ts',
    description: "A subject's consent to a purpose withdrawn.",
  },
  {
    action: 'opt-out',
    categories: ['privacy'],
    source: 'src/privacy/service.ts',
    description:
      'A subject opted out (sale and sharing, also from `Sec-GPC: 1`; sensitive data; automated decisions).',
  },
  {
    action: 'opt-in',
    categories: ['privacy'],
    source: 'src/privacy/service.ts',
    description: 'A subject withdrew an opt-out.',
  },
  {
    action: 'admin-authenticate',
    categories: ['authentication'],
    source: 'src/admin/api/index.ts',
    description:
      'The admin API refused a caller: 401 without valid credentials, 403 for a user without an admin role or TOTP.',
  },
  {
    action: 'admin-rate-limit',
    categories: ['rate-limit'],
    source: 'src/admin/api/index.ts',
    description: "The admin API's rate limit refused an address (the first refusal of a window).",
  },
  {
    action: 'audit-modify',
    categories: ['admin'],
    source: 'src/admin/api/index.ts',
    description: 'An attempt to change or delete audit records through the admin API (always a failure).',
  },
  {
    action: 'exception-expiring',
    categories: ['configuration'],
    source: 'src/admin/service/exceptions.ts',
    description: 'A registry exception expires within 14 days (once per exception).',
  },
  {
    action: 'exception-expired',
    categories: ['configuration'],
    source: 'src/admin/service/exceptions.ts',
    description: 'A registry exception expired; its control is back in force.',
  },
  {
    action: 'role-grant',
    categories: ['admin'],
    source: 'src/admin/service/roles.ts',
    description:
      'A role granted to a user (CLI `users grant-role`, `users create --role`, or the admin API).',
  },
  {
    action: 'role-revoke',
    categories: ['admin'],
    source: 'src/admin/service/roles.ts',
    description: 'A role revoked from a user.',
  },
  {
    action: 'users-list',
    categories: ['admin'],
    source: 'src/admin/service/users.ts',
    description: 'An administrator listed users.',
  },
  {
    action: 'user-show',
    categories: ['admin'],
    source: 'src/admin/service/users.ts',
    description: 'An administrator read one user.',
  },
  {
    action: 'apis-list',
    categories: ['admin'],
    source: 'src/admin/service/reads.ts',
    description: 'An administrator read the API inventory.',
  },
  {
    action: 'clients-list',
    categories: ['admin'],
    source: 'src/admin/service/clients.ts',
    description: 'An administrator listed OAuth clients.',
  },
  {
    action: 'client-show',
    categories: ['admin'],
    source: 'src/admin/service/clients.ts',
    description: 'An administrator read one OAuth client.',
  },
  {
    action: 'api-keys-list',
    categories: ['admin'],
    source: 'src/admin/service/reads.ts',
    description: 'An administrator listed API keys (metadata only).',
  },
  {
    action: 'config-read',
    categories: ['admin'],
    source: 'src/admin/service/reads.ts',
    description: 'An administrator read the effective configuration (secrets masked).',
  },
  {
    action: 'keys-list',
    categories: ['admin'],
    source: 'src/admin/service/reads.ts',
    description: 'An administrator listed signing keys (public parts).',
  },
  {
    action: 'alerts-read',
    categories: ['admin'],
    source: 'src/admin/service/reads.ts',
    description: 'An administrator read the alert configuration.',
  },
  {
    action: 'roles-list',
    categories: ['admin'],
    source: 'src/admin/api/index.ts',
    description: 'An administrator listed roles.',
  },
  {
    action: 'openapi-read',
    categories: ['admin'],
    source: 'src/admin/api/index.ts',
    description: "An administrator read the admin API's OpenAPI document.",
  },
  {
    action: 'exceptions-list',
    categories: ['admin'],
    source: 'src/admin/service/exceptions.ts',
    description: 'An administrator listed the exceptions registry.',
  },
  {
    action: 'metrics-read',
    categories: ['admin'],
    source: 'src/admin/api/index.ts',
    description: '`/metrics` refused a caller (refusals only).',
  },
  {
    action: 'config-reload-request',
    categories: ['configuration'],
    source: 'src/admin/api/index.ts',
    description: 'An administrator asked for a configuration reload.',
  },
  {
    action: 'exception-request',
    categories: ['configuration'],
    source: 'src/admin/service/exceptions.ts',
    description: 'An exception requested (owner, rationale, compensating controls, expiry).',
  },
  {
    action: 'exception-approve',
    categories: ['configuration'],
    source: 'src/admin/service/exceptions.ts',
    description: 'An exception approved (never by its requester).',
  },
  {
    action: 'exception-renew',
    categories: ['configuration'],
    source: 'src/admin/service/exceptions.ts',
    description: 'An exception renewed (needs a new approval).',
  },
  {
    action: 'exception-revoke',
    categories: ['configuration'],
    source: 'src/admin/service/exceptions.ts',
    description: 'An exception revoked.',
  },
  {
    action: 'audit-verify',
    categories: ['audit'],
    source: 'src/admin/service/reads.ts',
    description: 'An administrator verified the audit chain through the admin API.',
  },
];
