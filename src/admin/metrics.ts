/**
 * Prometheus metrics: one registry per process (per `startPortcullis`), served by the admin
 * listener at `GET /metrics`. The request path calls the small API below; the audit log and the
 * alert engine register their own metrics into the same registry.
 *
 * Every label value is bounded: routes are OpenAPI route TEMPLATES (never concrete paths),
 * reasons, grants and limit dimensions come from fixed sets (anything else counts as `other`),
 * and the number of distinct API/route pairs and upstreams is capped (beyond the cap: `other`).
 *
 * @example
 * ```ts
 * const metrics = createMetrics();
 * const audit = await openAuditLog({ config, dataDir, store, registry: metrics.registry });
 * metrics.observeRequest({ api: 'patients', route: '/v1/patients/{id}', method: 'GET', status: 200, durationMs: 3.2 });
 * metrics.authFailure('token-expired');
 * ```
 */
import { STAGE_NAMES } from '../gateway/context.ts';
import { PROBLEMS } from '../gateway/problems.ts';
import { AUTHORIZATION_SERVER_PATHS } from '../oauth/paths.ts';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

/** Route label of requests that matched no operation (404, 405, refused before routing). */
export const UNMATCHED = 'unmatched';
/** Label value for anything outside a fixed set or beyond a cardinality cap. */
export const OTHER = 'other';

const METHODS: ReadonlySet<string> = new Set([
  'GET',
  'HEAD',
  'POST',
  'PUT',
  'PATCH',
  'DELETE',
  'OPTIONS',
  'TRACE',
  'CONNECT',
]);

const TOKEN_REJECTIONS = [
  'malformed-authorization',
  'bad-signature',
  'wrong-algorithm',
  'wrong-type',
  'wrong-issuer',
  'wrong-audience',
  'expired',
  'not-yet-valid',
  'missing-claim',
  'revoked',
  'bound-token-without-proof',
  'unsupported-confirmation',
  'invalid',
  'dpop-bound-as-bearer',
  'not-dpop-bound',
  'certificate-bound-without-mtls',
  'certificate-mismatch',
] as const;
const API_KEY_REJECTIONS = [
  'malformed',
  'unknown',
  'wrong-environment',
  'revoked',
  'expired',
  'rotated',
  'api-not-allowed',
  'operation-not-allowed',
  'source-not-allowed',
  'in-query-refused',
  'in-cookie-refused',
  'in-header-refused',
] as const;
const DPOP_REJECTIONS = [
  'proof-missing',
  'malformed',
  'wrong-type',
  'wrong-algorithm',
  'bad-key',
  'bad-signature',
  'missing-claim',
  'wrong-method',
  'wrong-url',
  'iat-too-old',
  'iat-in-future',
  'wrong-ath',
  'key-mismatch',
  'replayed',
  'replay-cache-full',
  'replay-cache-unavailable',
] as const;
const CLIENT_CERT_REJECTIONS = [
  'certificate-missing',
  'malformed',
  'untrusted',
  'chain-too-long',
  'not-yet-valid',
  'expired',
  'ca-certificate',
  'wrong-key-usage',
  'wrong-extended-key-usage',
  'unsupported-critical-extension',
  'revoked',
  'revocation-unknown',
  'crl-expired',
] as const;

/**
 * Authentication failure reasons counted by name (the `reason` of the gateway's denials and of
 * the authorization server's refusals). Any other reason is counted as `other`.
 */
export const AUTH_FAILURE_REASONS: ReadonlySet<string> = new Set([
  'credential-missing',
  'credential-not-accepted',
  'no-verifier-for-scheme',
  'insufficient-scope',
  'token-malformed-authorization',
  'invalid-client',
  'invalid-grant',
  'login-failed',
  'login-throttled',
  ...TOKEN_REJECTIONS.map((r) => `token-${r}`),
  ...API_KEY_REJECTIONS.map((r) => `api-key-${r}`),
  ...DPOP_REJECTIONS.map((r) => `dpop-${r}`),
  ...CLIENT_CERT_REJECTIONS.map((r) => `client-certificate-${r}`),
]);

/**
 * Rate-limit dimensions (`portcullis.rate_limit.key` in audit events); `apiKey` (the configuration's
 * spelling) counts as `api-key`. `token` and `login` are the authorization server's limits.
 */
export const RATE_LIMIT_DIMENSIONS = ['client', 'api-key', 'user', 'ip', 'token', 'login'] as const;
/** Grant types counted by `tokenIssued`. */
export const GRANT_TYPES = [
  'authorization_code',
  'client_credentials',
  'refresh_token',
  'urn:ietf:params:oauth:grant-type:device_code',
  'urn:ietf:params:oauth:grant-type:token-exchange',
] as const;

/** Circuit-breaker states and the gauge value each one is exported as. */
export const CIRCUIT_STATES = { closed: 0, 'half-open': 1, open: 2 } as const;
export type CircuitState = keyof typeof CIRCUIT_STATES;

export interface RequestObservation {
  /** The API name from the configuration; null or undefined when no operation matched. */
  readonly api?: string | null;
  /** The operation's route TEMPLATE (`/v1/patients/{id}`), never the concrete path. */
  readonly route?: string | null;
  readonly method: string;
  readonly status: number;
  readonly durationMs: number;
}

export interface MetricsOptions {
  /** Register into this registry instead of a new one. */
  readonly registry?: Registry;
  /** Node.js process metrics (`process_*`, `nodejs_*`); default true. */
  readonly defaultMetrics?: boolean;
  /** Distinct API/route pairs before new ones count as `other` (default 5000). */
  readonly maxRoutes?: number;
  /** Distinct upstreams before new ones count as `other` (default 1000). */
  readonly maxUpstreams?: number;
}

/** The request-path API over the process registry. */
export interface Metrics {
  readonly registry: Registry;
  /** One request answered (any listener path the gateway routes, including refusals). */
  observeRequest(o: RequestObservation): void;
  /** An authentication failure; `reason` outside {@link AUTH_FAILURE_REASONS} counts as `other`. */
  authFailure(reason: string): void;
  /** A request refused by a rate limit; `dimension` is one of {@link RATE_LIMIT_DIMENSIONS}. */
  rateLimited(dimension: string): void;
  /** The circuit breaker of `upstream` changed state. */
  circuitState(upstream: string, state: CircuitState): void;
  /** The current state of every circuit reported so far (for `/readyz`). */
  circuits(): ReadonlyMap<string, CircuitState>;
  /** The authorization server issued an access token with this grant. */
  tokenIssued(grant: string): void;
  /** A request refused by `stage` (a name of `STAGE_NAMES`) with problem `code`. */
  denied(stage: string, code: string): void;
  /** A WebSocket upgrade accepted (101) or refused. */
  websocketUpgrade(outcome: 'accepted' | 'refused'): void;
  /**
   * A connection a listener refused or closed (src/server/connection-guard.ts, http2-guard.ts);
   * `listener` and `reason` come from fixed sets (anything else counts as `other`).
   */
  connectionRefused(listener: string, reason: string): void;
  /** Reports a listener's open connections at scrape time. */
  connectionsOpen(listener: string, count: () => number): void;
  /** The Prometheus text exposition. */
  text(): Promise<string>;
  readonly contentType: string;
}

/** `2xx`, `4xx`, …; anything out of range is `other`. */
export function statusClass(status: number): string {
  return Number.isInteger(status) && status >= 100 && status <= 599
    ? `${String(Math.floor(status / 100))}xx`
    : OTHER;
}

/**
 * The route template for a path the authorization server answers: its fixed endpoints as they
 * are, `/auth/{uid}`, `/interaction/{uid}` (and sub-paths), anything else `other`.
 */
export function oauthRoute(path: string): string {
  if (AUTHORIZATION_SERVER_PATHS.has(path)) return path;
  if (path.startsWith('/auth/')) return '/auth/{uid}';
  if (path.startsWith('/interaction/')) {
    const rest = path.slice('/interaction/'.length).split('/');
    const tail = rest[1];
    return tail === undefined || tail === ''
      ? '/interaction/{uid}'
      : `/interaction/{uid}/${boundedWord(tail)}`;
  }
  return OTHER;
}

function boundedWord(v: string): string {
  return /^[a-z][a-z-]{0,31}$/.test(v) ? v : OTHER;
}

/** Creates the process registry and the request-path API over it. */
export function createMetrics(options: MetricsOptions = {}): Metrics {
  const registry = options.registry ?? new Registry();
  const registers = [registry];
  const maxRoutes = options.maxRoutes ?? 5000;
  const maxUpstreams = options.maxUpstreams ?? 1000;
  if (options.defaultMetrics !== false) collectDefaultMetrics({ register: registry });

  const labels = ['api', 'route', 'method', 'status_class'] as const;
  const requests = new Counter({
    name: 'portcullis_http_requests_total',
    help: 'Requests answered, by API, route template, method and status class',
    labelNames: labels,
    registers,
  });
  const duration = new Histogram({
    name: 'portcullis_http_request_duration_seconds',
    help: 'Time from receiving a request to answering it, by API, route template, method and status class',
    labelNames: labels,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers,
  });
  const authFailures = new Counter({
    name: 'portcullis_auth_failures_total',
    help: 'Authentication failures, by reason',
    labelNames: ['reason'],
    registers,
  });
  const rateLimited = new Counter({
    name: 'portcullis_rate_limited_total',
    help: 'Requests refused by a rate limit, by the limit that applied',
    labelNames: ['dimension'],
    registers,
  });
  const circuit = new Gauge({
    name: 'portcullis_upstream_circuit_state',
    help: 'Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open',
    labelNames: ['upstream'],
    registers,
    aggregator: 'max', // --workers: the worst worker's state
  });
  const tokens = new Counter({
    name: 'portcullis_tokens_issued_total',
    help: 'Access tokens issued by the authorization server, by grant type',
    labelNames: ['grant'],
    registers,
  });
  const denials = new Counter({
    name: 'portcullis_denials_total',
    help: 'Requests refused, by the stage that refused and the problem type sent',
    labelNames: ['stage', 'code'],
    registers,
  });
  const upgrades = new Counter({
    name: 'portcullis_websocket_upgrades_total',
    help: 'WebSocket upgrade requests, by outcome (accepted: 101 and a tunnel; refused: a problem)',
    labelNames: ['outcome'],
    registers,
  });
  upgrades.inc({ outcome: 'accepted' }, 0);
  upgrades.inc({ outcome: 'refused' }, 0);
  const stages: ReadonlySet<string> = new Set(STAGE_NAMES);
  // Issue 12: connection guard counters (reasons: CONNECTION_REFUSALS and `http2-reset-flood`).
  const connectionRefusals = new Counter({
    name: 'portcullis_connections_refused_total',
    help: 'Connections refused at accept or closed by a listener guard, by listener and reason',
    labelNames: ['listener', 'reason'],
    registers,
  });
  const openCounters = new Map<string, () => number>();
  new Gauge({
    name: 'portcullis_connections_open',
    help: 'Connections open now, by listener',
    labelNames: ['listener'],
    registers,
    collect() {
      for (const [listener, count] of openCounters) this.set({ listener }, count());
    },
  });
  const listenerNames: ReadonlySet<string> = new Set(['gateway', 'admin', 'redirect']);
  const refusalReasons: ReadonlySet<string> = new Set([
    'connection-limit',
    'source-limit',
    'fd-pressure',
    'accept-failed',
    'handshake-failed',
    'handshake-evicted',
    'handshake-limit',
    'source-penalized',
    'http2-reset-flood',
  ]);
  // Zero-valued series, so dashboards and alerts see the families before the first event.
  for (const d of RATE_LIMIT_DIMENSIONS) rateLimited.inc({ dimension: d }, 0);
  for (const g of GRANT_TYPES) tokens.inc({ grant: g }, 0);

  const routes = new Set<string>();
  const circuits = new Map<string, CircuitState>();
  const dimensions: ReadonlySet<string> = new Set(RATE_LIMIT_DIMENSIONS);
  const grants: ReadonlySet<string> = new Set(GRANT_TYPES);

  const routeLabels = (api: string, route: string): { api: string; route: string } => {
    const key = `${api}\u0000${route}`;
    if (routes.has(key)) return { api, route };
    if (routes.size >= maxRoutes) return { api: OTHER, route: OTHER };
    routes.add(key);
    return { api, route };
  };

  return {
    registry,
    contentType: registry.contentType,
    observeRequest(o) {
      const matched = o.api != null && o.api !== '' && o.route != null && o.route !== '';
      const { api, route } = matched ? routeLabels(o.api, o.route) : { api: UNMATCHED, route: UNMATCHED };
      const l = {
        api,
        route,
        method: METHODS.has(o.method) ? o.method : OTHER,
        status_class: statusClass(o.status),
      };
      requests.inc(l);
      if (Number.isFinite(o.durationMs) && o.durationMs >= 0) duration.observe(l, o.durationMs / 1000);
    },
    authFailure(reason) {
      authFailures.inc({ reason: AUTH_FAILURE_REASONS.has(reason) ? reason : OTHER });
    },
    rateLimited(dimension) {
      const d = dimension === 'apiKey' ? 'api-key' : dimension;
      rateLimited.inc({ dimension: dimensions.has(d) ? d : OTHER });
    },
    circuitState(upstream, state) {
      if (!Object.hasOwn(CIRCUIT_STATES, state)) throw new TypeError(`metrics: unknown circuit state`);
      const name = circuits.has(upstream) || circuits.size < maxUpstreams ? upstream : OTHER;
      circuits.set(name, state);
      circuit.set({ upstream: name }, CIRCUIT_STATES[state]);
    },
    circuits: () => circuits,
    tokenIssued(grant) {
      tokens.inc({ grant: grants.has(grant) ? grant : OTHER });
    },
    denied(stage, code) {
      denials.inc({
        stage: stages.has(stage) ? stage : OTHER,
        code: Object.hasOwn(PROBLEMS, code) ? code : OTHER,
      });
    },
    websocketUpgrade(outcome) {
      upgrades.inc({ outcome });
    },
    connectionRefused(listener, reason) {
      connectionRefusals.inc({
        listener: listenerNames.has(listener) ? listener : OTHER,
        reason: refusalReasons.has(reason) ? reason : OTHER,
      });
    },
    connectionsOpen(listener, count) {
      openCounters.set(listenerNames.has(listener) ? listener : OTHER, count);
    },
    text: () => registry.metrics(),
  };
}
