/**
 * `portcullis clients create|list|show|delete|rotate-secret`: OAuth clients of the built-in authorization
 * server. `create --json` prints exactly `{"client_id": …, "client_secret": …}` (the secret is
 * shown this once and never stored); other output never contains a secret.
 */
import { cliActor } from '../admin/actor.ts';
import { clientDelete } from '../admin/service/clients.ts';
import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import type { JWK } from 'jose';
import {
  CLIENT_AUTH_METHODS,
  CLIENT_GRANTS,
  ClientRegistrationError,
  createClient,
  getClient,
  listClients,
} from '../oauth/clients.ts';
import type { ClientAuthMethod, ClientGrant, ClientRecord } from '../oauth/clients.ts';
import { parseDurationSeconds, rotateClientSecret } from '../oauth/client-secrets.ts';
import { common, fail, formatTable } from './common.ts';
import type { CommonOptions } from './common.ts';
import { withCliContext } from './context.ts';

interface JsonOption extends CommonOptions {
  json?: boolean;
}

interface CreateOptions extends JsonOption {
  name: string;
  grant: string[];
  scope: string;
  redirectUri: string[];
  postLogoutRedirectUri: string[];
  backchannelLogoutUri?: string;
  authMethod?: string;
  native?: boolean;
  jwks?: string;
  tlsSubjectDn?: string;
  requirePar?: boolean;
  resource: string[];
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/** The JSON shape of a client in list/show output: metadata, never a secret or its hash. */
export function clientToJson(c: ClientRecord): Record<string, unknown> {
  return { client_id: c.clientId, created_at: c.createdAt, has_secret: c.hasSecret, ...c.metadata };
}

function describe(c: ClientRecord): string {
  const m = c.metadata;
  return [
    `client_id      ${c.clientId}`,
    `name           ${m.client_name}`,
    `grants         ${m.grant_types.join(', ')}`,
    `scope          ${m.scope}`,
    `auth method    ${m.token_endpoint_auth_method}`,
    `application    ${m.application_type}`,
    ...m.redirect_uris.map((u) => `redirect URI   ${u}`),
    ...(m.require_pushed_authorization_requests === true ? ['PAR            required'] : []),
    `resources      ${m.resources?.join(', ') ?? '(the APIs of its scopes)'}`,
    `created        ${c.createdAt}`,
    '',
  ].join('\n');
}

export function registerClientsCommands(program: Command): void {
  const clients = program
    .command('clients')
    .description('OAuth clients of the built-in authorization server');

  common(clients.command('create').description('register a client; its secret is shown once'))
    .requiredOption('--name <name>', 'a name people recognise')
    .option('--grant <grant>', `${CLIENT_GRANTS.join(' or ')} (repeatable)`, collect, [])
    .requiredOption('--scope <scopes>', 'space-separated scopes the client may obtain')
    .option(
      '--redirect-uri <uri>',
      'exact redirect URI (repeatable; https, or loopback http with --native)',
      collect,
      [],
    )
    .option('--post-logout-redirect-uri <uri>', 'exact post-logout redirect URI (repeatable)', collect, [])
    .option('--backchannel-logout-uri <uri>', 'https URL receiving OpenID Connect back-channel logout tokens')
    .option('--auth-method <method>', `token endpoint authentication: ${CLIENT_AUTH_METHODS.join(', ')}`)
    .option('--native', 'a native app (loopback redirects; may be public with --auth-method none)')
    .option('--jwks <file>', 'private_key_jwt: a JSON file with the client’s public JWKS')
    .option('--tls-subject-dn <dn>', 'tls_client_auth: the client certificate’s subject DN')
    .option('--require-par', 'authorization requests must be pushed first (RFC 9126 PAR)')
    .option(
      '--resource <api>',
      'an API (name or audience) the client may get tokens for (repeatable; default: the APIs of its scopes)',
      collect,
      [],
    )
    .option('--json', 'print {"client_id", "client_secret"} as JSON')
    .action(async (opts: CreateOptions) => {
      const json = opts.json === true;
      try {
        const grants = opts.grant.length > 0 ? opts.grant : ['client_credentials'];
        const jwks =
          opts.jwks === undefined
            ? undefined
            : (JSON.parse(await readFile(opts.jwks, 'utf8')) as { keys: JWK[] });
        const created = await withCliContext(opts, (ctx) => {
          const { config } = ctx.loaded;
          const known = config.apis.flatMap((a) => [
            a.name,
            a.audience ?? `${config.gateway.publicUrl}${a.basePath}`,
          ]);
          const unknown = opts.resource.find((r) => !known.includes(r));
          if (unknown !== undefined) {
            throw new ClientRegistrationError(
              `--resource ${unknown}: not an API of the configuration (APIs: ${config.apis.map((a) => a.name).join(', ') || 'none'})`,
            );
          }
          return ctx.audited(
            'credential-lifecycle',
            'client-create',
            () =>
              createClient(ctx.store.db, ctx.keys, {
                name: opts.name,
                grantTypes: grants as ClientGrant[],
                scope: opts.scope,
                redirectUris: opts.redirectUri,
                postLogoutRedirectUris: opts.postLogoutRedirectUri,
                ...(opts.backchannelLogoutUri === undefined
                  ? {}
                  : { backchannelLogoutUri: opts.backchannelLogoutUri }),
                ...(opts.authMethod === undefined ? {} : { authMethod: opts.authMethod as ClientAuthMethod }),
                applicationType: opts.native === true ? 'native' : 'web',
                ...(jwks === undefined ? {} : { jwks }),
                ...(opts.tlsSubjectDn === undefined ? {} : { tlsSubjectDn: opts.tlsSubjectDn }),
                ...(opts.requirePar === true ? { requirePushedAuthorizationRequests: true } : {}),
                ...(opts.resource.length > 0 ? { resources: opts.resource } : {}),
              }),
            (c) => ({ 'portcullis.client_id': c.client.clientId, 'portcullis.credential.type': 'client' }),
            { 'portcullis.credential.type': 'client' },
          );
        });
        const secret = created.clientSecret ?? null;
        if (json) {
          process.stdout.write(
            JSON.stringify({ client_id: created.client.clientId, client_secret: secret }) + '\n',
          );
          return;
        }
        process.stdout.write(describe(created.client));
        if (secret !== null) {
          process.stdout.write(`client_secret  ${secret}\n`);
          process.stderr.write('\nStore the secret now: it is not kept and cannot be shown again.\n');
        }
      } catch (err) {
        fail(err, json);
      }
    });

  common(clients.command('list').description('list the registered clients'))
    .option('--json', 'machine-readable output')
    .action(async (opts: JsonOption) => {
      const json = opts.json === true;
      try {
        const all = await withCliContext(opts, (ctx) => listClients(ctx.store.db));
        if (json) {
          process.stdout.write(JSON.stringify({ clients: all.map(clientToJson) }, null, 2) + '\n');
          return;
        }
        process.stdout.write(
          formatTable(
            ['CLIENT ID', 'GRANTS', 'NAME'],
            all.map((c) => [c.clientId, c.metadata.grant_types.join(','), c.metadata.client_name]),
          ),
        );
      } catch (err) {
        fail(err, json);
      }
    });

  common(clients.command('show').description('show one client').argument('<client_id>'))
    .option('--json', 'machine-readable output')
    .action(async (clientId: string, opts: JsonOption) => {
      const json = opts.json === true;
      try {
        const c = await withCliContext(opts, (ctx) => getClient(ctx.store.db, clientId));
        if (c === undefined) throw new Error('no such client');
        process.stdout.write(json ? JSON.stringify(clientToJson(c), null, 2) + '\n' : describe(c));
      } catch (err) {
        fail(err, json);
      }
    });

  common(
    clients
      .command('delete')
      .description('delete a client; its tokens stop working at the token endpoint')
      .argument('<client_id>'),
  )
    .option('--json', 'machine-readable output')
    .action(async (clientId: string, opts: JsonOption) => {
      const json = opts.json === true;
      try {
        await withCliContext(opts, (ctx) =>
          clientDelete(
            { db: ctx.store.db, config: () => ctx.loaded.config, audit: ctx.audit },
            cliActor(),
            clientId,
          ),
        );
        if (json) process.stdout.write(JSON.stringify({ client_id: clientId, deleted: true }) + '\n');
        else process.stderr.write(`deleted ${clientId}\n`);
      } catch (err) {
        fail(err, json);
      }
    });

  // issue 13: rotation with a grace period, and secret expiry.
  common(
    clients
      .command('rotate-secret')
      .description(
        'issue a new client secret (shown once); the old one stays valid for the grace period, then is refused',
      )
      .argument('<client_id>'),
  )
    .option('--grace <duration>', 'how long the old secret stays valid: 0, 15m, 24h, 7d (at most 30d)', '24h')
    .option(
      '--expires <duration>',
      'the new secret expires after this (e.g. 90d; at most 366d); alerts warn before',
    )
    .option('--json', 'machine-readable output')
    .action(async (clientId: string, opts: JsonOption & { grace: string; expires?: string }) => {
      const json = opts.json === true;
      try {
        const graceSeconds = parseDurationSeconds(opts.grace);
        const expiresInSeconds = opts.expires === undefined ? undefined : parseDurationSeconds(opts.expires);
        const rotated = await withCliContext(opts, async (ctx) => {
          const ids = { 'portcullis.client_id': clientId, 'portcullis.credential.type': 'client' } as const;
          const result = await ctx.audited(
            'credential-lifecycle',
            'client-secret-rotate',
            () => rotateClientSecret(ctx.store.db, ctx.keys, clientId, { graceSeconds, expiresInSeconds }),
            (r) => ({ ...ids, 'event.reason': `new secret; expires ${r.expiresAt ?? 'never'}` }),
            ids,
          );
          await ctx.audit.emitDurable({
            ...ids,
            'portcullis.listener': 'cli',
            'event.category': 'credential-lifecycle',
            'event.action': 'client-secret-retire',
            'event.outcome': 'success',
            'event.reason':
              result.previousValidUntil === null
                ? 'previous secret refused from now on'
                : `previous secret valid until ${result.previousValidUntil}`,
          });
          return result;
        });
        if (json) {
          process.stdout.write(
            JSON.stringify({
              client_id: rotated.clientId,
              client_secret: rotated.clientSecret,
              client_secret_expires_at: rotated.expiresAt,
              previous_secret_valid_until: rotated.previousValidUntil,
            }) + '\n',
          );
        } else {
          process.stderr.write(
            `new secret for ${rotated.clientId} (shown once; store it now)` +
              (rotated.expiresAt === null ? '' : `, expires ${rotated.expiresAt}`) +
              `; previous secret ${rotated.previousValidUntil === null ? 'refused from now on' : `valid until ${rotated.previousValidUntil}`}\n`,
          );
          process.stdout.write(`${rotated.clientSecret}\n`);
        }
      } catch (err) {
        fail(err, json);
      }
    });
}
