/**
 * The configuration schema, built in code with TypeBox. Each field carries its bound and its
 * secure default beside it (DESIGN.md "Secure defaults"); Ajv fills the defaults, so a
 * configuration file only says what differs.
 */
import { Type } from '@sinclair/typebox';
import type { Static, TSchema } from '@sinclair/typebox';
import { AdminAuthProps, ApiInventoryProps, Entitlements, Roles } from './admin-schema.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

/** An object whose properties all have defaults, so it can itself default to `{}`. */
function Section<T extends Record<string, TSchema>>(props: T, description: string) {
  return Type.Object(props, { additionalProperties: false, default: {}, description });
}

const Milliseconds = (def: number, min: number, max: number, description: string) =>
  Type.Integer({ default: def, minimum: min, maximum: max, description });

const Port = (def: number) => Type.Integer({ minimum: 0, maximum: 65535, default: def });

const Host = (def: string) =>
  Type.String({ minLength: 1, maxLength: 253, pattern: '^[A-Za-z0-9.:_-]+$', default: def });

const Cidr = Type.String({
  pattern: '^([0-9.]+|[0-9A-Fa-f:.]+)(/[0-9]{1,3})?$',
  description: 'an IPv4 or IPv6 address or CIDR range',
});

export const CONTROLS = [
  'admin-loopback',
  'request-limits',
  'upstream-plaintext',
  'cors-credentials',
  'token-lifetime',
  'audit-request-events',
  'rate-limits',
  'internal-plaintext',
] as const;
export type Control = (typeof CONTROLS)[number];

const Limits = Type.Object(
  {
    bodyBytes: Type.Integer({
      minimum: 0,
      maximum: 64 * MiB,
      default: MiB,
      description: 'largest request body; above 1 MiB needs a request-limits exception',
    }),
    headerBytes: Type.Integer({
      minimum: 1 * KiB,
      maximum: 64 * KiB,
      default: 16 * KiB,
      description: 'largest request header block; above 16 KiB needs a request-limits exception',
    }),
    urlBytes: Type.Integer({
      minimum: 256,
      maximum: 64 * KiB,
      default: 8 * KiB,
      description: 'longest request target; above 8 KiB needs a request-limits exception',
    }),
    jsonValues: Type.Integer({
      minimum: 1,
      maximum: 1_000_000,
      default: 100_000,
      description:
        'most values (each scalar, array and object) in one JSON body or JSON parameter: the parsing work budget; more is a 400 (rule json-values)',
    }),
  },
  { additionalProperties: false, default: {} },
);

const Tls = Section(
  {
    certFile: Type.Optional(Type.String({ minLength: 1, description: 'PEM certificate chain' })),
    keyFile: Type.Optional(Type.String({ minLength: 1, description: 'PEM private key' })),
  },
  'certificate and key; both or neither (neither: a development certificate from the data directory)',
);

const Gateway = Section(
  {
    host: Host('127.0.0.1'),
    port: Port(8443),
    publicUrl: Type.String({
      pattern: '^https://[^/?#]+$',
      default: 'https://localhost:8443',
      description: 'the origin clients use; the OAuth issuer',
    }),
    http2: Type.Boolean({ default: true, description: 'offer HTTP/2 via ALPN beside HTTP/1.1' }),
    tls: Tls,
    timeouts: Section(
      {
        headersMs: Milliseconds(10_000, 1_000, 60_000, 'time to receive request headers'),
        requestMs: Milliseconds(30_000, 1_000, 300_000, 'time to receive the whole request'),
        keepAliveMs: Milliseconds(5_000, 1_000, 120_000, 'idle keep-alive before closing'),
      },
      'server timeouts against slow clients',
    ),
    limits: Limits,
    trustedProxies: Type.Array(Cidr, {
      default: [],
      maxItems: 256,
      description:
        'peers whose X-Forwarded-For / Forwarded / correlation headers are believed; everyone else’s are dropped',
    }),
    correlationHeader: Type.String({
      pattern: '^[a-z][a-z0-9-]{0,63}$',
      default: 'x-request-id',
      description: 'lower-case header carrying the correlation id',
    }),
    redirectHttp: Type.Optional(
      Type.Object(
        { host: Host('127.0.0.1'), port: Port(8080) },
        { additionalProperties: false, description: 'a plain-HTTP listener that only redirects to HTTPS' },
      ),
    ),
    shutdownGraceMs: Milliseconds(10_000, 0, 120_000, 'how long in-flight requests may drain on shutdown'),
    // Issue 12 (abuse resistance): connection caps, handshake timeout, HTTP/2 limits, Host check.
    connections: Section(
      {
        max: Type.Integer({
          minimum: 1,
          maximum: 1_000_000,
          default: 4096,
          description:
            'connections open at once on the gateway listener; the excess is closed at accept (also bounded by the open-files limit: see docs/deployment.md)',
        }),
        perIp: Type.Integer({
          minimum: 1,
          maximum: 1_000_000,
          default: 256,
          description: 'connections open at once from one source address (IPv6: one /64)',
        }),
        handshakeTimeoutMs: Milliseconds(
          10_000,
          1_000,
          60_000,
          'time from accept to a completed TLS handshake (a client that never sends a ClientHello included)',
        ),
        http2MaxConcurrentStreams: Type.Integer({
          minimum: 1,
          maximum: 1000,
          default: 100,
          description: 'SETTINGS_MAX_CONCURRENT_STREAMS advertised to HTTP/2 clients',
        }),
        http2MaxResets: Type.Integer({
          minimum: 10,
          maximum: 100_000,
          default: 100,
          description:
            'streams an HTTP/2 client may reset within 1 s of opening them (and more than it completed) before its connection is closed; 4× this from one source within 10 s refuses the source for 10 s',
        }),
      },
      'limits on client connections against floods (see docs/deployment.md, "Connection limits and hostile traffic")',
    ),
    hostAliases: Type.Array(
      Type.String({ minLength: 1, maxLength: 253, pattern: '^[A-Za-z0-9.:_\\[\\]-]+$' }),
      {
        default: [],
        maxItems: 64,
        description:
          'host names besides the host of publicUrl that requests may name in Host / :authority (others: 421)',
      },
    ),
    loadShedding: Section(
      {
        maxEventLoopDelayMs: Milliseconds(
          1_000,
          10,
          60_000,
          'event-loop delay (p99 over 0.5 s) above which requests are shed',
        ),
        maxHeapUsedPercent: Type.Integer({
          minimum: 1,
          maximum: 100,
          default: 90,
          description: 'share of the V8 heap limit in use above which requests are shed',
        }),
        maxRssBytes: Type.Integer({
          minimum: 0,
          maximum: 1024 * 1024 * MiB,
          default: 1536 * MiB,
          description:
            'resident memory above which requests are shed (default 1.5 GiB; with the connection caps a gateway stays far below); 0: no bound',
        }),
        retryAfterSeconds: Type.Integer({
          minimum: 1,
          maximum: 3600,
          default: 10,
          description: 'Retry-After on 503',
        }),
      },
      'while the process is saturated, new requests get 503 with Retry-After',
    ),
    mtls: Type.Optional(
      Type.Object(
        {
          caFiles: Type.Array(Type.String({ minLength: 1 }), {
            minItems: 1,
            maxItems: 20,
            description: 'PEM CA certificates client certificates must chain to',
          }),
          crlFiles: Type.Array(Type.String({ minLength: 1 }), {
            default: [],
            maxItems: 50,
            description: 'CRLs from those CAs; when set, a certificate whose status is unknown is refused',
          }),
        },
        {
          additionalProperties: false,
          description:
            'request client certificates (never required at the handshake); operations declaring a mutualTLS scheme, and certificate-bound tokens, verify them',
        },
      ),
    ),
    apiKeys: Section(
      {
        environment: Type.Union(
          ['live', 'test'].map((e) => Type.Literal(e)),
          { default: 'live', description: 'only API keys issued for this environment are accepted' },
        ),
      },
      'API keys (portcullis apikeys)',
    ),
    identity: Section(
      {
        header: Type.String({
          pattern: '^[a-z][a-z0-9-]{0,63}$',
          default: 'x-portcullis-identity',
          description: 'request header carrying the signed caller assertion to upstreams',
        }),
        ttlSeconds: Type.Integer({ default: 30, minimum: 5, maximum: 60, description: 'assertion lifetime' }),
      },
      'the short-lived assertion of the verified caller sent to upstreams instead of the credential',
    ),
  },
  'the public HTTPS listener',
);

const Admin = Section(
  {
    enabled: Type.Boolean({ default: true }),
    host: Host('127.0.0.1'),
    port: Port(9443),
    ...AdminAuthProps, // issue 15: admin authentication (src/config/admin-schema.ts)
  },
  'the admin listener; loopback only unless an admin-loopback exception says otherwise',
);

const Cors = Type.Object(
  {
    allowOrigins: Type.Array(
      Type.String({ pattern: '^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$', maxLength: 300 }),
      {
        minItems: 1,
        maxItems: 100,
        uniqueItems: true,
        description: 'exact origins; no wildcard, never null',
      },
    ),
    allowMethods: Type.Optional(
      Type.Array(Type.String({ pattern: '^[A-Z]+$' }), { maxItems: 10, uniqueItems: true }),
    ),
    allowHeaders: Type.Array(Type.String({ pattern: "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$" }), {
      default: ['authorization', 'content-type', 'dpop', 'idempotency-key'],
      maxItems: 50,
    }),
    exposeHeaders: Type.Array(Type.String({ pattern: "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$" }), {
      default: [],
      maxItems: 50,
    }),
    allowCredentials: Type.Boolean({
      default: false,
      description: 'needs a cors-credentials exception',
    }),
    maxAgeSeconds: Type.Integer({ minimum: 0, maximum: 7200, default: 600 }),
  },
  { additionalProperties: false },
);

const Upstream = Type.Object(
  {
    url: Type.String({
      pattern: '^https?://[^/?#@]+(/[^?#]*)?$',
      description: 'origin (and optional path prefix) of the upstream service',
    }),
    timeouts: Section(
      {
        connectMs: Milliseconds(2_000, 100, 30_000, 'TCP/TLS connect'),
        headersMs: Milliseconds(10_000, 100, 300_000, 'time to the upstream response headers'),
        bodyMs: Milliseconds(30_000, 100, 300_000, 'idle time between upstream body chunks'),
      },
      'upstream timeouts',
    ),
    connections: Type.Integer({ minimum: 1, maximum: 4096, default: 128, description: 'pool size' }),
    caFile: Type.Optional(Type.String({ minLength: 1, description: 'CA bundle for an https upstream' })),
    circuitBreaker: Section(
      {
        errorThresholdPercentage: Type.Integer({
          minimum: 1,
          maximum: 100,
          default: 50,
          description: 'open the circuit when more than this share of attempts in the window failed',
        }),
        volumeThreshold: Type.Integer({
          minimum: 1,
          maximum: 100_000,
          default: 20,
          description: 'fewest attempts in the window before the circuit may open',
        }),
        windowMs: Milliseconds(10_000, 1_000, 600_000, 'rolling window over which failures are counted'),
        resetMs: Milliseconds(
          30_000,
          100,
          600_000,
          'time open (failing fast with 503) before a half-open probe',
        ),
      },
      'per-upstream circuit breaker: connection errors, time-outs and 5xx count as failures',
    ),
    retries: Section(
      {
        max: Type.Integer({
          minimum: 0,
          maximum: 2,
          default: 2,
          description: 'retries of idempotent methods after a connection error or 502/503/504',
        }),
        baseDelayMs: Milliseconds(50, 1, 10_000, 'backoff base; each wait is random up to base·2^attempt'),
        maxDelayMs: Milliseconds(1_000, 1, 30_000, 'longest wait between attempts'),
      },
      'bounded, jittered retries; POST and PATCH are never retried',
    ),
  },
  { additionalProperties: false },
);

const RateOverride = Type.Object(
  {
    points: Type.Integer({ minimum: 1, maximum: 1_000_000_000 }),
    seconds: Type.Integer({ minimum: 1, maximum: 86_400 }),
  },
  { additionalProperties: false },
);
const DimensionOverride = Type.Object(
  { burst: Type.Optional(RateOverride), sustained: Type.Optional(RateOverride) },
  { additionalProperties: false },
);

const Api = Type.Object(
  {
    name: Type.String({ pattern: '^[a-z][a-z0-9-]{0,62}$' }),
    ...ApiInventoryProps, // issue 15: owner, data classification, environment
    audience: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: 300,
        pattern: '^https://[^\\s#]+$',
        description:
          'the resource indicator (RFC 8707) and access-token audience of this API; default: publicUrl + basePath',
      }),
    ),
    openapi: Type.String({
      minLength: 1,
      description: 'the OpenAPI 3.0/3.1 document, relative to this file',
    }),
    basePath: Type.String({
      pattern: '^/v[0-9]+(\\.[0-9]+)?(/[a-z0-9][a-z0-9-]*)*$',
      description: 'versioned base path, e.g. /v1 or /v2/billing',
    }),
    upstream: Upstream,
    // Certificate entitlements of the API's mutualTLS scheme (issue 13): a CA alone is not authorisation.
    mtls: Type.Optional(
      Type.Object(
        {
          clients: Type.Array(
            Type.Object(
              {
                subject: Type.Optional(
                  Type.String({
                    minLength: 3,
                    maxLength: 1000,
                    description: 'the exact subject DN, e.g. "CN=billing, O=Example"',
                  }),
                ),
                san: Type.Optional(
                  Type.String({
                    minLength: 5,
                    maxLength: 1000,
                    description:
                      'one subject alternative name: dns:NAME, email:ADDR, uri:URI or ip:ADDR (no wildcards)',
                  }),
                ),
                principal: Type.Optional(
                  Type.String({
                    pattern: '^[\\x21-\\x7e]{1,200}$',
                    description: 'the principal name of a matching certificate (default: its subject DN)',
                  }),
                ),
              },
              { additionalProperties: false, description: 'exactly one of subject and san' },
            ),
            {
              minItems: 1,
              maxItems: 1000,
              description: 'the client certificates (verified against gateway.mtls) this API accepts',
            },
          ),
        },
        {
          additionalProperties: false,
          description:
            "entitlements of the API's mutualTLS scheme; required when its OpenAPI document declares one",
        },
      ),
    ),
    cors: Type.Optional(Cors),
    deprecation: Type.Optional(
      Type.Object(
        {
          deprecatedAt: Type.String({
            pattern: '^\\d{4}-\\d{2}-\\d{2}(T\\d{2}:\\d{2}:\\d{2}(\\.\\d+)?(Z|[+-]\\d{2}:\\d{2}))?$',
            description: 'YYYY-MM-DD (UTC midnight) or RFC 3339 date-time; sent as Deprecation (RFC 9745)',
          }),
          sunsetAt: Type.Optional(
            Type.String({
              pattern: '^\\d{4}-\\d{2}-\\d{2}(T\\d{2}:\\d{2}:\\d{2}(\\.\\d+)?(Z|[+-]\\d{2}:\\d{2}))?$',
              description: 'sent as Sunset (RFC 8594); from then on every operation answers 410',
            }),
          ),
          link: Type.String({
            pattern: '^https://[^\\s<>]+$',
            maxLength: 2000,
            description: 'migration notes, sent as Link rel="deprecation" (and rel="sunset")',
          }),
        },
        { additionalProperties: false, description: 'this API version is deprecated' },
      ),
    ),
    rateLimits: Type.Optional(
      Type.Object(
        {
          operations: Type.Record(
            Type.String({ pattern: '^[A-Za-z0-9._-]{1,128}$' }),
            Type.Object(
              {
                ip: Type.Optional(DimensionOverride),
                client: Type.Optional(DimensionOverride),
                apiKey: Type.Optional(DimensionOverride),
                user: Type.Optional(DimensionOverride),
              },
              { additionalProperties: false },
            ),
            { description: 'limits for one operation by operationId; replace the global ones for it' },
          ),
        },
        { additionalProperties: false, description: 'per-operation rate limits' },
      ),
    ),
  },
  { additionalProperties: false },
);

const Exception = Type.Object(
  {
    id: Type.String({ pattern: '^[A-Za-z0-9._-]{1,64}$' }),
    control: Type.Union(
      CONTROLS.map((c) => Type.Literal(c)),
      { description: 'the control being weakened' },
    ),
    scope: Type.String({ minLength: 1, maxLength: 500, description: 'what the exception covers' }),
    rationale: Type.String({ minLength: 10, maxLength: 2000 }),
    compensatingControls: Type.Array(Type.String({ minLength: 3, maxLength: 500 }), { minItems: 1 }),
    owner: Type.String({ minLength: 1, maxLength: 200 }),
    approver: Type.String({ minLength: 1, maxLength: 200 }),
    expires: Type.String({
      format: 'date',
      description: 'YYYY-MM-DD; the exception stops applying after it',
    }),
  },
  { additionalProperties: false, description: 'a documented exception (seed 000 §15.13)' },
);

const Seconds = (def: number, min: number, max: number, description: string) =>
  Type.Integer({ default: def, minimum: min, maximum: max, description });

const OAuth = Section(
  {
    enabled: Type.Boolean({
      default: true,
      description: 'serve the built-in authorization server on the gateway listener',
    }),
    accessTokenTtlSeconds: Seconds(
      600,
      60,
      86_400,
      'access-token lifetime; above 1800 needs a token-lifetime exception',
    ),
    authorizationCodeTtlSeconds: Seconds(60, 10, 60, 'authorization codes are single use and short'),
    idTokenTtlSeconds: Seconds(600, 60, 3_600, 'ID-token lifetime'),
    refreshTokens: Section(
      {
        enabled: Type.Boolean({
          default: false,
          description: 'issue refresh tokens (rotated on every use; reuse revokes the grant)',
        }),
        absoluteTtlSeconds: Seconds(86_400, 3_600, 2_592_000, 'absolute lifetime of a refresh-token chain'),
      },
      'refresh tokens: off by default',
    ),
    session: Section(
      {
        maxAgeSeconds: Seconds(28_800, 300, 86_400, 'longest login session'),
        idleTimeoutSeconds: Seconds(
          1_800,
          60,
          86_400,
          'a session unused for this long ends (beside maxAgeSeconds); each authorization-server request with it counts as use',
        ),
        reauthenticateAfterSeconds: Seconds(
          3_600,
          60,
          28_800,
          'privileged actions and prompt=login need a login newer than this',
        ),
      },
      'end-user sessions at the authorization server',
    ),
    clientSecrets: Section(
      {
        expiryWarningDays: Type.Integer({
          default: 14,
          minimum: 1,
          maximum: 90,
          description:
            'a client secret expiring within this many days is audited daily (client-secret-expiring; built-in alert client-secret-expiry)',
        }),
      },
      'client secrets (portcullis clients rotate-secret --grace/--expires)',
    ),
    signing: Section(
      {
        alg: Type.Union(
          ['ES256', 'PS256', 'EdDSA'].map((a) => Type.Literal(a)),
          { default: 'ES256', description: 'signature algorithm of issued tokens' },
        ),
        rotationDays: Type.Integer({
          default: 30,
          minimum: 1,
          maximum: 365,
          description: 'scheduled key rotation',
        }),
        overlapDays: Type.Integer({
          default: 1,
          minimum: 1,
          maximum: 30,
          description: 'how long a retired key stays published, so tokens it signed still verify',
        }),
      },
      'token signing keys',
    ),
    kms: Section(
      {
        provider: Type.Literal('local', {
          default: 'local',
          description: 'where the key-encryption key comes from',
        }),
        masterKeyFile: Type.String({
          minLength: 1,
          default: 'master.key',
          description: 'local provider: 32-byte key file, mode 0600, relative to the data directory',
        }),
        masterKeyEnv: Type.String({
          pattern: '^[A-Z_][A-Z0-9_]*$',
          default: 'PORTCULLIS_MASTER_KEY',
          description: 'local provider: environment variable holding the key (base64url), used when set',
        }),
      },
      'key-encryption key provider',
    ),
    login: Section(
      {
        maxFailures: Type.Integer({
          default: 5,
          minimum: 1,
          maximum: 50,
          description:
            'failed logins per IP, or per username from one IP, before that source is blocked with growing delays; per username alone they only slow attempts (at most 3 s), never block',
        }),
        windowSeconds: Seconds(900, 60, 86_400, 'window in which failures count'),
        maxDelaySeconds: Seconds(300, 1, 3_600, 'longest block of a source'),
      },
      'login throttling',
    ),
    federation: Type.Optional(
      Type.Object(
        {
          name: Type.String({ minLength: 1, maxLength: 60, description: 'shown on the login page' }),
          issuer: Type.String({
            pattern: '^https://[^\\s#?]+$',
            description: 'the upstream OpenID Provider',
          }),
          clientId: Type.String({ minLength: 1, maxLength: 200 }),
          clientSecret: Type.String({
            minLength: 16,
            maxLength: 500,
            description:
              'the client secret at the upstream provider; ${env:NAME} or ${file:PATH} keeps it out of the file',
          }),
          scopes: Type.Array(Type.String({ pattern: '^[\\x21\\x23-\\x5b\\x5d-\\x7e]+$' }), {
            default: ['openid', 'email', 'profile'],
            maxItems: 20,
          }),
          caFile: Type.Optional(
            Type.String({ minLength: 1, description: 'CA bundle for the upstream provider' }),
          ),
        },
        {
          additionalProperties: false,
          description: 'sign-in through an upstream OpenID Connect provider (an approved identity service)',
        },
      ),
    ),
  },
  'the built-in OAuth 2.1 / OpenID Connect authorization server',
);

const Audit = Section(
  {
    requestEvents: Type.Boolean({
      default: true,
      description:
        'one event per gateway request (allowed or refused); false needs an audit-request-events exception — control-plane, credential and key events are always recorded',
    }),
    durability: Type.Union([Type.Literal('batched'), Type.Literal('strict')], {
      default: 'batched',
      description:
        'batched: request events group-committed (loss bound on a crash: see docs/audit.md); strict: every event durable before the response. Configuration, admin and key events are always durable first.',
    }),
    batchMaxEvents: Type.Integer({
      minimum: 1,
      maximum: 10000,
      default: 256,
      description: 'group commit: events per batch',
    }),
    batchMaxDelayMs: Milliseconds(
      50,
      1,
      1000,
      'group commit: longest wait before a request event is committed',
    ),
    checkpointEvery: Type.Integer({
      minimum: 1,
      maximum: 1_000_000,
      default: 1000,
      description: 'sign a checkpoint after this many events',
    }),
    checkpointSeconds: Type.Integer({
      minimum: 1,
      maximum: 3600,
      default: 60,
      description: '…or this long after the last one',
    }),
    spoolMaxBytes: Type.Integer({
      minimum: MiB,
      maximum: 64 * 1024 * MiB,
      default: 64 * MiB,
      description:
        'per sink: disk spool under <dataDir>/audit/spool while the sink is down; an overflow is an audit event and a metric',
    }),
    queueMaxEvents: Type.Integer({
      minimum: 256,
      maximum: 1_000_000,
      default: 256,
      description:
        'per sink: events waiting in memory while a delivery runs (with batchMaxEvents, the crash loss bound); beyond it the oldest batch goes to the fsynced spool (portcullis_audit_queue_spilled_events_total)',
    }),
    store: Section(
      {
        enabled: Type.Boolean({
          default: true,
          description: 'audit_events in the store; the chain of record',
        }),
      },
      'the store sink',
    ),
    file: Section(
      {
        enabled: Type.Boolean({ default: false }),
        path: Type.String({
          minLength: 1,
          default: 'audit/audit.jsonl',
          description: 'JSON Lines, relative to the data directory',
        }),
        maxBytes: Type.Integer({
          minimum: 64 * KiB,
          maximum: 1024 * 1024 * MiB,
          default: 100 * MiB,
          description: 'rotate at this size',
        }),
      },
      'the JSON Lines file sink (mode 0600, rotated by size, chain kept across files)',
    ),
    stdout: Section({ enabled: Type.Boolean({ default: false }) }, 'one JSON line per event on stdout'),
    aggregation: Section(
      {
        enabled: Type.Boolean({
          default: true,
          description:
            'once a source is rate-limited (a 429), its refusals (429, 401, 404, …) are counted into one summary event per source, reason and status per window instead of one event each',
        }),
        windowSeconds: Type.Integer({
          minimum: 1,
          maximum: 3600,
          default: 60,
          description:
            'how long a source stays limited after its last 429, and the span of one summary event',
        }),
        maxSources: Type.Integer({
          minimum: 100,
          maximum: 1_000_000,
          default: 10_000,
          description:
            'limited sources (and open summaries) tracked at once; the oldest summary is flushed early beyond it',
        }),
      },
      'refusal aggregation: bounded audit volume from an offender (docs/audit.md)',
    ),
    retention: Section(
      {
        days: Type.Integer({
          minimum: 1,
          maximum: 36_500,
          default: 365,
          description:
            'records older than this are archived (gzip JSON Lines with their hashes) and removed from the store, the chain kept verifiable from a signed checkpoint',
        }),
        archiveDir: Type.String({
          minLength: 1,
          default: 'audit/archive',
          description: 'where pruned records are archived, relative to the data directory',
        }),
        schedule: Type.Boolean({
          default: true,
          description: 'prune on a schedule in the running gateway (on the audit worker thread)',
        }),
        intervalSeconds: Type.Integer({
          minimum: 1,
          maximum: 604_800,
          default: 86_400,
          description: 'how often the scheduled prune runs (the first run one minute after start at most)',
        }),
      },
      'retention of the store chain: checkpoint, archive, prune (portcullis audit prune)',
    ),
    disk: Section(
      {
        alertBytes: Type.Integer({
          minimum: MiB,
          maximum: 1024 * 1024 * 1024 * MiB,
          default: 10 * 1024 * MiB,
          description:
            'audit data on disk (store, spools, file sink, archives) above this records an audit/disk-usage-high event (built-in alert audit-disk-usage)',
        }),
        checkSeconds: Type.Integer({
          minimum: 1,
          maximum: 86_400,
          default: 300,
          description: 'how often disk usage is checked',
        }),
      },
      'disk usage of the audit data: portcullis_audit_disk_bytes{sink} and an alert',
    ),
    syslog: Type.Optional(
      Type.Object(
        {
          host: Host('127.0.0.1'),
          port: Type.Integer({ minimum: 1, maximum: 65535, default: 6514 }),
          caFile: Type.String({
            minLength: 1,
            description: 'CA bundle the collector certificate must chain to',
          }),
          serverName: Type.Optional(Type.String({ minLength: 1, maxLength: 253 })),
          certFile: Type.Optional(
            Type.String({ minLength: 1, description: 'client certificate (mutual TLS)' }),
          ),
          keyFile: Type.Optional(Type.String({ minLength: 1, description: 'client key (mutual TLS)' })),
          facility: Type.Integer({ minimum: 0, maximum: 23, default: 13 }),
        },
        { additionalProperties: false, description: 'syslog RFC 5424 over TLS (RFC 5425)' },
      ),
    ),
  },
  'the audit trail: hash-chained, signed checkpoints, sinks',
);

/** A limit: `points` requests per `seconds`. */
const Rate = (points: number, seconds: number, description: string) =>
  Type.Object(
    {
      points: Type.Integer({ minimum: 1, maximum: 1_000_000_000, default: points }),
      seconds: Type.Integer({ minimum: 1, maximum: 86_400, default: seconds }),
    },
    { additionalProperties: false, default: {}, description },
  );

/** A rate-limit dimension: a short burst window and a longer sustained window, both enforced. */
const RateDimension = (burst: [number, number], sustained: [number, number], description: string) =>
  Section(
    {
      burst: Rate(burst[0], burst[1], 'short window: absorbs spikes'),
      sustained: Rate(sustained[0], sustained[1], 'long window: caps the steady rate'),
    },
    description,
  );

const RateLimits = Section(
  {
    mode: Type.Union(
      ['enforce', 'shadow', 'off'].map((m) => Type.Literal(m)),
      {
        default: 'enforce',
        description:
          'shadow: count and log would-be refusals but let requests pass; shadow and off need a rate-limits exception',
      },
    ),
    backend: Type.Union([Type.Literal('memory'), Type.Literal('redis')], {
      default: 'memory',
      description:
        'memory: per process; redis: shared by every gateway on `redis.url`, falling back to per-process limits while Redis is unreachable',
    }),
    ip: RateDimension([50, 1], [1000, 60], 'per client IP (IPv6 per /64), checked before authentication'),
    client: RateDimension([100, 1], [3000, 60], 'per OAuth client id'),
    apiKey: RateDimension([100, 1], [3000, 60], 'per API key'),
    user: RateDimension([20, 1], [600, 60], 'per end user (token subject other than the client)'),
    tarpit: Section(
      {
        enabled: Type.Boolean({ default: true }),
        baseSeconds: Type.Integer({
          minimum: 1,
          maximum: 3_600,
          default: 1,
          description: 'block after the first violation; doubles with each further one',
        }),
        maxSeconds: Type.Integer({ minimum: 1, maximum: 86_400, default: 900, description: 'longest block' }),
        windowSeconds: Type.Integer({
          minimum: 60,
          maximum: 86_400,
          default: 3_600,
          description: 'violations within this window count as repeated',
        }),
      },
      'repeat offenders: each violation blocks the key for twice as long as the previous one',
    ),
    token: RateDimension([10, 1], [300, 60], 'authorization server token endpoint, per client IP'),
    login: RateDimension([5, 10], [30, 900], 'login form submissions, per client IP'),
  },
  'rate limits per client, API key, user and IP, each with a burst and a sustained window',
);

const Idempotency = Section(
  {
    backend: Type.Union([Type.Literal('memory'), Type.Literal('redis'), Type.Literal('store')], {
      default: 'memory',
      description:
        'where idempotency records live; redis: shared by every gateway on `redis.url`; store: in the database (shared on PostgreSQL, durable)',
    }),
    defaultTtlSeconds: Seconds(
      86_400,
      60,
      604_800,
      'how long a stored response is replayed, unless the operation says',
    ),
    maxTtlSeconds: Seconds(604_800, 60, 2_592_000, "upper bound for an operation's ttlSeconds"),
    lockSeconds: Seconds(60, 5, 600, 'how long a request in flight holds its key'),
    maxResponseBytes: Type.Integer({
      minimum: 0,
      maximum: 16 * MiB,
      default: MiB,
      description: 'larger responses are not stored (a retry then reaches the upstream again)',
    }),
    memoryMaxBytes: Type.Integer({
      minimum: MiB,
      maximum: 4096 * MiB,
      default: 64 * MiB,
      description: 'memory backend: most bytes of records kept per process; the oldest are dropped first',
    }),
  },
  'Idempotency-Key handling for operations declaring x-portcullis-idempotency',
);

const RedisSection = Type.Optional(
  Type.Object(
    {
      url: Type.String({
        pattern: '^rediss?://',
        maxLength: 2000,
        description:
          'redis://[user:password@]host:port[/db], or rediss:// for TLS (required off loopback, certificate verified); ${env:NAME} and ${file:PATH} insert a secret',
      }),
      keyPrefix: Type.String({
        pattern: '^[A-Za-z0-9:._-]{1,64}$',
        default: 'portcullis:',
        description: 'prefix of every key Portcullis writes',
      }),
    },
    { additionalProperties: false, description: 'shared counters and records for several gateway processes' },
  ),
);

const Cluster = Section(
  {
    nodes: Type.Integer({
      minimum: 1,
      maximum: 1024,
      default: 1,
      description:
        'how many gateway processes serve this configuration, on every host and counting each --workers process; above 1 it needs PostgreSQL, Redis and the redis backends, and while Redis is unreachable each process enforces 1/nodes of every rate limit',
    }),
  },
  'several gateway processes on one PostgreSQL and one Redis (see docs/deployment.md)',
);

const AlertRule = Type.Object(
  {
    id: Type.String({ pattern: '^[a-z][a-z0-9]*(-[a-z0-9]+)*$', maxLength: 64 }),
    when: Type.Object(
      {
        category: Type.Union(
          [
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
          ].map((c) => Type.Literal(c)),
        ),
        action: Type.Optional(Type.String({ pattern: '^[a-z][a-z0-9]*(-[a-z0-9]+)*$', maxLength: 64 })),
        outcome: Type.Optional(Type.Union(['success', 'failure', 'unknown'].map((o) => Type.Literal(o)))),
      },
      { additionalProperties: false, description: 'which audit events count' },
    ),
    groupBy: Type.Union(
      [
        ...['client.ip', 'portcullis.client_id', 'portcullis.api_key_id'].map((g) => Type.Literal(g)),
        Type.Null(),
      ],
      {
        default: null,
        description:
          'count per value of this event field (client.ip, portcullis.client_id, portcullis.api_key_id); null: all together',
      },
    ),
    threshold: Type.Integer({
      minimum: 1,
      maximum: 1_000_000,
      description: 'events within the window that fire the rule',
    }),
    windowSeconds: Type.Integer({
      minimum: 1,
      maximum: 86_400,
      description: 'sliding window; the rule fires at most once per window per group',
    }),
    severity: Type.Union(['low', 'medium', 'high', 'critical'].map((l) => Type.Literal(l))),
    ackTarget: Type.String({ minLength: 1, maxLength: 200, description: 'who must acknowledge the alert' }),
  },
  { additionalProperties: false },
);

const Alerts = Section(
  {
    defaults: Type.Boolean({
      default: true,
      description:
        'the built-in rules: authentication failures per source, rate-limit offenders, API-key anomalies, configuration and key changes, audit sink outage (see docs/audit.md)',
    }),
    ackTarget: Type.String({
      minLength: 1,
      maxLength: 200,
      default: 'security-operations',
      description: 'who acknowledges alerts of the built-in rules',
    }),
    rules: Type.Array(AlertRule, {
      default: [],
      maxItems: 200,
      description: "more rules; one with a built-in rule's id replaces it",
    }),
    webhook: Type.Optional(
      Type.Object(
        {
          url: Type.String({
            pattern: '^https://[^\\s]+$',
            maxLength: 2000,
            description: 'the receiver (https only)',
          }),
          secretEnv: Type.Optional(
            Type.String({
              pattern: '^[A-Z_][A-Z0-9_]{0,127}$',
              description: 'environment variable holding the HMAC secret (at least 32 bytes)',
            }),
          ),
          secret: Type.Optional(
            Type.String({
              minLength: 32,
              maxLength: 1024,
              description: 'the HMAC secret; ${env:NAME} or ${file:PATH} keeps it out of the file',
            }),
          ),
          caFile: Type.Optional(
            Type.String({
              minLength: 1,
              description: 'PEM CA bundle for the receiver (default: system CAs)',
            }),
          ),
        },
        {
          additionalProperties: false,
          description:
            'POST each alert as JSON signed with HMAC-SHA-256 (X-Portcullis-Signature: t=<unix>,v1=<hex>); exactly one of secretEnv and secret',
        },
      ),
    ),
  },
  'alert rules over the audit event stream, delivered to a signed webhook',
);

const Tokens = Section(
  {
    issuers: Type.Array(
      Type.Object(
        {
          issuer: Type.String({
            pattern: '^https://[^\\s#?]+$',
            maxLength: 300,
            description: 'the issuer identifier, compared exactly with the token iss',
          }),
          jwksUri: Type.String({
            pattern: '^https://[^\\s#]+$',
            maxLength: 2000,
            description: 'its published keys, fetched over TLS only',
          }),
          audience: Type.Optional(
            Type.String({
              minLength: 1,
              maxLength: 300,
              description: "the aud its tokens must carry; default: the API's audience",
            }),
          ),
          algorithms: Type.Array(
            Type.Union(['ES256', 'PS256', 'EdDSA', 'RS256'].map((a) => Type.Literal(a))),
            {
              minItems: 1,
              maxItems: 4,
              uniqueItems: true,
              default: ['ES256', 'PS256', 'EdDSA'],
              description: 'accepted signature algorithms (RS256 only when listed)',
            },
          ),
          caFile: Type.Optional(
            Type.String({ minLength: 1, description: "CA bundle for the issuer's TLS certificate" }),
          ),
          refreshMinIntervalSeconds: Type.Integer({
            default: 60,
            minimum: 1,
            maximum: 86_400,
            description: 'an unknown kid re-fetches the keys at most once per this interval',
          }),
          clockSkewSeconds: Type.Integer({
            default: 30,
            minimum: 0,
            maximum: 300,
            description: 'tolerance for exp, nbf and iat',
          }),
        },
        { additionalProperties: false },
      ),
      { default: [], maxItems: 20 },
    ),
  },
  'access tokens from external issuers, accepted beside the built-in authorization server',
);

const Keys = Section(
  {
    provider: Type.Union([Type.Literal('local'), Type.Literal('pkcs11')], {
      default: 'local',
      description:
        'local: the master key is oauth.kms (file or environment); pkcs11: the master key (and the signing keys) live in an HSM',
    }),
    pkcs11: Type.Optional(
      Type.Object(
        {
          module: Type.String({
            minLength: 1,
            maxLength: 4096,
            description: 'path of the PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so',
          }),
          tokenLabel: Type.String({ minLength: 1, maxLength: 32, description: 'label of the token' }),
          pin: Type.String({
            minLength: 1,
            maxLength: 4096,
            pattern: '^\\$\\{(env:[A-Za-z_][A-Za-z0-9_]*|file:[^}]+)\\}$',
            description:
              'user PIN as ${env:NAME} or ${file:PATH} (relative to the data directory); never the PIN itself',
          }),
          kekLabel: Type.String({
            minLength: 1,
            maxLength: 64,
            default: 'portcullis-kek',
            description: 'label of the AES-256 master key on the token (created when absent)',
          }),
          signingKeys: Type.Boolean({
            default: true,
            description:
              'generate the token-signing (ES256) and audit-checkpoint keys on the token; they sign there and never leave it',
          }),
        },
        { additionalProperties: false, description: 'the HSM (keys.provider: pkcs11)' },
      ),
    ),
  },
  'key custody: where the master key and the signing keys live',
);

const Uploads = Section(
  {
    apis: Type.Array(Type.String({ minLength: 1, maxLength: 64 }), {
      default: [],
      maxItems: 1000,
      description:
        'APIs whose every operation with a request body is scanned by ClamAV; an operation can also opt in or out with x-portcullis-scan: true|false',
    }),
    clamd: Type.Optional(
      Type.Object(
        {
          socket: Type.Optional(
            Type.String({ minLength: 1, maxLength: 4096, description: "clamd's unix socket (LocalSocket)" }),
          ),
          host: Type.Optional(
            Type.String({ minLength: 1, maxLength: 253, description: "clamd's TCP address" }),
          ),
          port: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535, description: "clamd's TCP port" })),
          timeoutMs: Type.Integer({
            minimum: 100,
            maximum: 120000,
            default: 10000,
            description: 'how long a scan may take before the scanner counts as unavailable',
          }),
        },
        { additionalProperties: false, description: 'the ClamAV daemon: socket, or host and port' },
      ),
    ),
    onScannerUnavailable: Type.Union([Type.Literal('refuse'), Type.Literal('allow')], {
      default: 'refuse',
      description:
        'refuse: 503 when clamd cannot be reached (fail closed); allow: pass the upload unscanned (logged)',
    }),
  },
  'upload scanning with ClamAV (src/gateway/stages/scan)',
);

const Crypto = Section(
  {
    fips: Type.Union([Type.Literal('required'), Type.Literal('preferred'), Type.Literal('off')], {
      default: 'off',
      description:
        'FIPS 140 mode. required: refuse to start unless the OpenSSL FIPS provider is active; preferred: FIPS mode when it is, a warning when not; off. In FIPS mode JOSE algorithms are ES256/PS256 and TLS uses AES-GCM suites on P-256/P-384 only',
    }),
  },
  'cryptographic module policy (src/keys/fips.ts)',
);

export const ConfigSchema = Type.Object(
  {
    version: Type.Literal(1, { default: 1 }),
    gateway: Gateway,
    admin: Admin,
    store: Section(
      {
        url: Type.String({
          minLength: 1,
          default: 'sqlite:portcullis.db',
          description:
            'sqlite:FILE (relative to the data directory) or postgres://… (off loopback: sslmode=verify-full); ${env:NAME} and ${file:PATH} insert a secret',
        }),
        connectTimeoutMs: Milliseconds(
          1_500,
          100,
          30_000,
          'PostgreSQL: how long a request waits for a pooled connection before it is refused (503); CLI commands wait 5 s',
        ),
        queryTimeoutMs: Milliseconds(
          1_500,
          100,
          300_000,
          'PostgreSQL: how long a request waits for a query, also on a connection that went silent in a partition, before it is refused (503); CLI commands wait 30 s',
        ),
      },
      'where state lives',
    ),
    logging: Section(
      {
        level: Type.Union(
          ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l)),
          { default: 'info' },
        ),
        accessLog: Type.Boolean({ default: true }),
      },
      'JSON logs on stdout',
    ),
    oauth: OAuth,
    keys: Keys,
    crypto: Crypto,
    uploads: Uploads,
    tokens: Tokens,
    audit: Audit,
    alerts: Alerts,
    apis: Type.Array(Api, { default: [], maxItems: 1000 }),
    rateLimits: RateLimits,
    idempotency: Idempotency,
    redis: RedisSection,
    cluster: Cluster,
    exceptions: Type.Array(Exception, { default: [], maxItems: 200 }),
    roles: Roles, // issues 13 and 15 (src/config/admin-schema.ts)
    entitlements: Entitlements,
    demoUpstream: Type.Optional(
      Type.Object(
        { host: Host('127.0.0.1'), port: Port(4010) },
        {
          additionalProperties: false,
          description: 'start the example patients API in-process (quickstart only)',
        },
      ),
    ),
  },
  { additionalProperties: false },
);

export type Config = Static<typeof ConfigSchema>;
export type ApiConfig = Config['apis'][number];
export type ExceptionConfig = Config['exceptions'][number];
export type CorsConfig = NonNullable<ApiConfig['cors']>;
export type LimitsConfig = Config['gateway']['limits'];
export type OAuthConfig = Config['oauth'];
export type KeysConfig = Config['keys'];
export type AuditConfig = Config['audit'];
export type AlertsConfig = Config['alerts'];
export type RateLimitsConfig = Config['rateLimits'];
export type IdempotencyConfig = Config['idempotency'];
export type RedisConfig = NonNullable<Config['redis']>;
export type ClusterConfig = Config['cluster'];

export const DEFAULT_LIMITS = { bodyBytes: MiB, headerBytes: 16 * KiB, urlBytes: 8 * KiB } as const;
