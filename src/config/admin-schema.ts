/**
 * Configuration of roles, end-user entitlements and the admin API's authentication (issue 13
 * "End-user entitlements", issue 15). Kept apart from schema.ts, which imports these pieces.
 */
import { Type } from '@sinclair/typebox';

/** The built-in administrative roles (src/admin/roles.ts says what each may do). */
export const ADMIN_ROLE_NAMES = ['auditor', 'operator', 'security-officer', 'key-custodian'] as const;

const Scope = Type.String({ pattern: '^[\\x21\\x23-\\x5B\\x5D-\\x7E]{1,128}$' });

export const RoleName = Type.String({
  pattern: '^[a-z][a-z0-9-]{0,62}$',
  description: 'a role name (lower-case letters, digits and -)',
});

/** `roles: { clinician: { scopes: [patients:read, patients:admin] } }`. */
export const Roles = Type.Record(
  Type.String({ pattern: '^[a-z][a-z0-9-]{0,62}$' }),
  Type.Object(
    {
      description: Type.Optional(Type.String({ maxLength: 500 })),
      scopes: Type.Array(Scope, {
        default: [],
        maxItems: 500,
        description:
          'the OAuth scopes a user holding this role is entitled to; the only way to a privileged scope',
      }),
    },
    { additionalProperties: false },
  ),
  {
    default: {},
    description:
      'end-user roles granting scopes (the built-in admin roles auditor, operator, security-officer and key-custodian may not be redefined)',
  },
);

export const Entitlements = Type.Object(
  {
    defaultScopes: Type.Array(Type.Union([Type.Literal('*'), Scope]), {
      default: ['*'],
      maxItems: 500,
      description:
        'scopes every active user is entitled to without a role; "*" means every scope that is not privileged. [] makes every scope need a role',
    }),
    privilegedScopes: Type.Array(Scope, {
      default: [],
      maxItems: 500,
      description:
        'scopes only a role may grant, beside every bypassScopes of an x-portcullis-owner binding and the admin scope',
    }),
  },
  {
    additionalProperties: false,
    default: {},
    description: 'which scopes a user may consent to: the consent page and the token carry only these',
  },
);

export const AdminPrincipal = Type.Object(
  {
    name: Type.String({
      pattern: '^[A-Za-z0-9._@-]{1,64}$',
      description: 'the administrator the audit trail names',
    }),
    subject: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: 300,
        description: 'the certificate subject common name (CN) that maps to this principal',
      }),
    ),
    san: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: 300,
        description: 'a subject alternative name (DNS, URI or e-mail value) that maps to this principal',
      }),
    ),
    roles: Type.Array(Type.Union(ADMIN_ROLE_NAMES.map((r) => Type.Literal(r))), { minItems: 1, maxItems: 4 }),
  },
  { additionalProperties: false },
);

/** Admin-listener authentication settings, spread into the `admin` section. */
export const AdminAuthProps = {
  audience: Type.Optional(
    Type.String({
      minLength: 1,
      maxLength: 300,
      pattern: '^https://[^\\s#]+$',
      description:
        'the resource indicator of the admin API at the built-in authorization server; default publicUrl + /admin',
    }),
  ),
  clientCertificates: Type.Optional(
    Type.Object(
      {
        caFiles: Type.Array(Type.String({ minLength: 1 }), {
          minItems: 1,
          maxItems: 10,
          description: 'CA certificates (PEM) that issue admin client certificates, relative to this file',
        }),
        principals: Type.Array(AdminPrincipal, {
          minItems: 1,
          maxItems: 100,
          description: 'certificate → administrator and roles; a certificate matching none is refused',
        }),
      },
      { additionalProperties: false, description: 'mTLS client certificates for automation' },
    ),
  ),
  rateLimit: Type.Object(
    {
      points: Type.Integer({ minimum: 1, maximum: 100_000, default: 120 }),
      seconds: Type.Integer({ minimum: 1, maximum: 3600, default: 60 }),
    },
    {
      additionalProperties: false,
      default: {},
      description: 'admin API requests per client address and window (/healthz and /readyz excepted)',
    },
  ),
} as const;

/** Inventory fields of an API (issue 15 "Inventory export"), spread into the API object. */
export const ApiInventoryProps = {
  owner: Type.Optional(
    Type.String({ minLength: 1, maxLength: 200, description: 'the team or person answerable for this API' }),
  ),
  dataClassification: Type.Optional(
    Type.Union(
      ['public', 'internal', 'confidential', 'restricted'].map((c) => Type.Literal(c)),
      { description: 'the most sensitive data the API handles' },
    ),
  ),
  environment: Type.Optional(
    Type.String({ pattern: '^[a-z][a-z0-9-]{0,31}$', description: 'e.g. production, staging' }),
  ),
} as const;
