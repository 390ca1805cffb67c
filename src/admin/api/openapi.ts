/**
 * The admin API's own OpenAPI 3.1 document (served at `/admin/v1/openapi.json` to authenticated
 * administrators). Requests are validated against it by the gateway's validator
 * (src/gateway/stages/validate); each operation names the permission it needs in
 * `x-portcullis-permission`, which the route table reads (one source of truth).
 */
import { AUDIT_QUERY_PARAMS } from '../../audit/query.ts';
import type { Permission } from '../roles.ts';

const problem = { $ref: '#/components/responses/Problem' };
const common = {
  '400': problem,
  '401': problem,
  '403': problem,
  '404': problem,
  '429': problem,
};
const str = (extra: Record<string, unknown> = {}) => ({ type: 'string', ...extra });
const pathParam = (name: string, pattern: string) => ({
  name,
  in: 'path',
  required: true,
  schema: str({ pattern, maxLength: 300 }),
});
const USERNAME = pathParam('username', '^[A-Za-z0-9][A-Za-z0-9._@+|:/-]{0,299}$');
const ROLE = pathParam('role', '^[a-z][a-z0-9-]{0,62}$');
const CLIENT_ID = pathParam('clientId', '^[A-Za-z0-9_-]{1,128}$');
const EXCEPTION_ID = pathParam('id', '^[A-Za-z0-9._-]{1,64}$');
const jsonBody = (required: readonly string[], properties: Record<string, unknown>) => ({
  required: true,
  content: {
    'application/json': {
      schema: { type: 'object', additionalProperties: false, required, properties },
    },
  },
});
const ok = (description: string, schema: Record<string, unknown> = { type: 'object' }) => ({
  '200': { description, content: { 'application/json': { schema } } },
  ...common,
});
const security = [{ adminToken: [] }, { clientCertificate: [] }];

function op(
  operationId: string,
  permission: Permission,
  summary: string,
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    operationId,
    summary,
    'x-portcullis-permission': permission,
    security,
    responses: ok(summary),
    ...extra,
  };
}

const AUDIT_QUERY = AUDIT_QUERY_PARAMS.map((name) => ({
  name,
  in: 'query',
  required: false,
  schema: str({ maxLength: 300 }),
}));

export const ADMIN_OPENAPI = {
  openapi: '3.1.0',
  info: {
    title: 'Portcullis admin API',
    version: '1',
    description:
      'Administration of a Portcullis gateway on its admin listener. Every call is authenticated (an admin-API access token from the built-in authorization server, or a mapped client certificate), authorised by role, rate limited and audited.',
  },
  components: {
    securitySchemes: {
      adminToken: {
        type: 'http',
        scheme: 'bearer',
        bearerFormat: 'JWT',
        description:
          'an access token for the admin audience with the admin scope; the user needs an admin role and TOTP',
      },
      clientCertificate: {
        type: 'mutualTLS',
        description: 'a client certificate mapped in admin.clientCertificates',
      },
    },
    responses: {
      Problem: {
        description: 'an RFC 9457 problem',
        content: { 'application/problem+json': { schema: { type: 'object' } } },
      },
    },
  },
  paths: {
    '/openapi.json': { get: op('getOpenApi', 'apis:read', 'this document') },
    '/apis': {
      get: op('listApis', 'apis:read', 'the API inventory: owner, classification, environment, operations'),
    },
    '/clients': { get: op('listClients', 'clients:read', 'OAuth clients (never a secret)') },
    '/clients/{clientId}': {
      parameters: [CLIENT_ID],
      get: op('getClient', 'clients:read', 'one OAuth client'),
      delete: op('deleteClient', 'clients:write', 'delete an OAuth client'),
    },
    '/users': {
      get: op('listUsers', 'users:read', 'users and their roles'),
      post: op('createUser', 'users:write', 'create a user (with roles)', {
        requestBody: {
          required: true,
          content: {
            'application/json': {
              schema: {
                type: 'object',
                additionalProperties: false,
                required: ['username', 'password'],
                properties: {
                  username: str({ minLength: 1, maxLength: 64 }),
                  password: str({ minLength: 12, maxLength: 128 }),
                  totp: { type: 'boolean' },
                  roles: { type: 'array', maxItems: 20, items: str({ pattern: '^[a-z][a-z0-9-]{0,62}$' }) },
                },
              },
            },
          },
        },
      }),
    },
    '/users/{username}': {
      parameters: [USERNAME],
      get: op('getUser', 'users:read', 'one user and their roles'),
    },
    '/users/{username}/disable': {
      parameters: [USERNAME],
      post: op('disableUser', 'users:write', 'disable a user'),
    },
    '/users/{username}/roles/{role}': {
      parameters: [USERNAME, ROLE],
      put: op('grantRole', 'roles:write', 'grant a role (separation of duties applies)'),
      delete: op('revokeRole', 'roles:write', 'revoke a role'),
    },
    '/roles': { get: op('listRoles', 'users:read', 'the roles: built-in admin roles and configured ones') },
    '/api-keys': { get: op('listApiKeys', 'apikeys:read', 'API keys (metadata only)') },
    '/audit/events': {
      get: op('searchAudit', 'audit:read', 'search the audit trail', { parameters: AUDIT_QUERY }),
    },
    '/audit/verify': {
      post: op('verifyAudit', 'audit:verify', 'verify the hash chain and its signed checkpoints'),
    },
    '/config': { get: op('getConfig', 'config:read', 'the effective configuration, secrets masked') },
    '/config/reload': {
      post: op(
        'reloadConfig',
        'config:reload',
        'reload the configuration (as SIGHUP); a broken one is refused',
      ),
    },
    '/keys': { get: op('listSigningKeys', 'keys:read', 'signing keys (public parts and status)') },
    '/exceptions': {
      get: op('listExceptions', 'exceptions:read', 'the exceptions registry'),
      post: op(
        'requestException',
        'exceptions:write',
        'request an exception (another administrator approves)',
        {
          requestBody: jsonBody(
            ['id', 'control', 'scope', 'rationale', 'compensatingControls', 'owner', 'expires'],
            {
              id: str({ pattern: '^[A-Za-z0-9._-]{1,64}$' }),
              control: str({ maxLength: 64 }),
              scope: str({ minLength: 1, maxLength: 500 }),
              rationale: str({ minLength: 10, maxLength: 2000 }),
              compensatingControls: {
                type: 'array',
                minItems: 1,
                maxItems: 20,
                items: str({ minLength: 3, maxLength: 500 }),
              },
              owner: str({ minLength: 1, maxLength: 200 }),
              expires: str({ pattern: '^\\d{4}-\\d{2}-\\d{2}$' }),
            },
          ),
        },
      ),
    },
    '/exceptions/{id}/approve': {
      parameters: [EXCEPTION_ID],
      post: op('approveException', 'exceptions:write', 'approve (not by its requester)'),
    },
    '/exceptions/{id}/renew': {
      parameters: [EXCEPTION_ID],
      post: op('renewException', 'exceptions:write', 'a new expiry, to be approved again', {
        requestBody: jsonBody(['expires'], { expires: str({ pattern: '^\\d{4}-\\d{2}-\\d{2}$' }) }),
      }),
    },
    '/exceptions/{id}/revoke': {
      parameters: [EXCEPTION_ID],
      post: op('revokeException', 'exceptions:write', 'revoke: the control is back in force'),
    },
    '/alerts': { get: op('listAlerts', 'alerts:read', 'the alert rules in force') },
  },
} as const;
