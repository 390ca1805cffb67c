/**
 * The configuration schema, built in code with TypeBox. Each field carries its bound and its
 * secure default beside it (DESIGN.md "Secure defaults"); Ajv fills the defaults, so a
 * configuration file only says what differs.
 */
import { Type } from '@sinclair/typebox';
import type { Static, TSchema } from '@sinclair/typebox';

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
  },
  'the public HTTPS listener',
);

const Admin = Section(
  {
    enabled: Type.Boolean({ default: true }),
    host: Host('127.0.0.1'),
    port: Port(9443),
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
  },
  { additionalProperties: false },
);

const Api = Type.Object(
  {
    name: Type.String({ pattern: '^[a-z][a-z0-9-]{0,62}$' }),
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
    cors: Type.Optional(Cors),
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
        reauthenticateAfterSeconds: Seconds(
          3_600,
          60,
          28_800,
          'privileged actions and prompt=login need a login newer than this',
        ),
      },
      'end-user sessions at the authorization server',
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
          description: 'failed logins per account or IP before delays grow',
        }),
        windowSeconds: Seconds(900, 60, 86_400, 'window in which failures count'),
        maxDelaySeconds: Seconds(300, 1, 3_600, 'longest throttling delay'),
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
          clientSecret: Type.String({ minLength: 16, maxLength: 500 }),
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
          description: 'sqlite:FILE (relative to the data directory) or postgres://…',
        }),
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
    audit: Audit,
    apis: Type.Array(Api, { default: [], maxItems: 1000 }),
    exceptions: Type.Array(Exception, { default: [], maxItems: 200 }),
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
export type AuditConfig = Config['audit'];

export const DEFAULT_LIMITS = { bodyBytes: MiB, headerBytes: 16 * KiB, urlBytes: 8 * KiB } as const;
