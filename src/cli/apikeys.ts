/**
 * `portcullis apikeys issue|list|rotate|revoke`: API keys for the APIs that declare them.
 *
 * The key is printed once, by `issue` and `rotate`, and stored only as an HMAC; `list` shows
 * ids, names, restrictions, status and usage, never a key.
 */
import { Option } from 'commander';
import type { Command } from 'commander';
import {
  apiKeyStatus,
  ApiKeyError,
  DEFAULT_EXPIRES_IN_DAYS,
  DEFAULT_GRACE_HOURS,
  issueApiKey,
  listApiKeys,
  revokeApiKey,
  rotateApiKey,
} from '../tokens/api-keys.ts';
import type { ApiKeyEnv, ApiKeyRecord } from '../tokens/api-keys.ts';
import { common, fail, formatTable } from './common.ts';
import type { CommonOptions } from './common.ts';
import { withCliContext } from './context.ts';

interface JsonOption extends CommonOptions {
  json?: boolean;
}

interface IssueOptions extends JsonOption {
  name: string;
  api: string[];
  operation: string[];
  cidr: string[];
  env: ApiKeyEnv;
  expiresIn: string;
}

interface RotateOptions extends JsonOption {
  graceHours: string;
}

/** The JSON shape of one key (never the key itself): ISO-8601 dates, `null` when not set. */
export interface ApiKeyJson {
  id: string;
  name: string;
  env: string;
  status: string;
  apis: string[];
  operations: string[];
  cidrs: string[];
  createdAt: string;
  expiresAt: string;
  revokedAt: string | null;
  replacedBy: string | null;
  useCount: number;
  lastUsedAt: string | null;
  lastSourceNetwork: string | null;
}

export function apiKeyToJson(record: ApiKeyRecord, now: number = Date.now()): ApiKeyJson {
  return {
    id: record.id,
    name: record.name,
    env: record.env,
    status: apiKeyStatus(record, now),
    apis: [...record.apis],
    operations: [...record.operations],
    cidrs: [...record.cidrs],
    createdAt: record.createdAt.toISOString(),
    expiresAt: record.expiresAt.toISOString(),
    revokedAt: record.revokedAt?.toISOString() ?? null,
    replacedBy: record.replacedBy ?? null,
    useCount: record.useCount,
    lastUsedAt: record.lastUsedAt?.toISOString() ?? null,
    lastSourceNetwork: record.lastSourceNetwork ?? null,
  };
}

function table(records: readonly ApiKeyRecord[]): string {
  return formatTable(
    ['ID', 'NAME', 'ENV', 'STATUS', 'APIS', 'EXPIRES', 'USES', 'LAST USED'],
    records.map((r) => {
      const j = apiKeyToJson(r);
      return [
        j.id,
        j.name,
        j.env,
        j.status,
        j.apis.join(','),
        j.expiresAt,
        String(j.useCount),
        j.lastUsedAt ?? '-',
      ];
    }),
  );
}

/** `{"id": …, "key": …, …the rest}`: the documented shape, id and key first. */
function withKey(key: string, json: ApiKeyJson): Record<string, unknown> {
  const { id, ...rest } = json;
  return { id, key, ...rest };
}

const collect = (value: string, previous: string[]): string[] => [...previous, value];

function integer(text: string, what: string): number {
  if (!/^\d{1,6}$/.test(text)) {
    throw new ApiKeyError('API_KEY_INVALID_INPUT', `${what} must be a whole number`);
  }
  return Number(text);
}

export function registerApiKeysCommands(program: Command): void {
  const apikeys = program.command('apikeys').description('API keys for the APIs that declare them');

  common(apikeys.command('issue').description('issue an API key (printed once, stored only as an HMAC)'))
    .requiredOption('--name <name>', 'who or what the key is for')
    .requiredOption('--api <name>', 'an API the key may call (repeatable)', collect, [])
    .option(
      '--operation <operationId>',
      'an operation the key may call (repeatable; default: all)',
      collect,
      [],
    )
    .option(
      '--cidr <network>',
      'a source network the key may be used from (repeatable; default: any)',
      collect,
      [],
    )
    .addOption(new Option('--env <env>', 'environment').choices(['live', 'test']).default('live'))
    .option('--expires-in <days>', 'lifetime in days', String(DEFAULT_EXPIRES_IN_DAYS))
    .option('--json', 'machine-readable output')
    .action(async (opts: IssueOptions) => {
      const json = opts.json === true;
      try {
        const issued = await withCliContext(opts, (ctx) =>
          ctx.audited(
            'credential-lifecycle',
            'apikey-issue',
            async () => {
              const known = new Set(ctx.loaded.config.apis.map((a) => a.name));
              for (const api of opts.api) {
                if (!known.has(api)) {
                  throw new ApiKeyError(
                    'API_KEY_INVALID_INPUT',
                    `no API named "${api.slice(0, 63)}" in the configuration`,
                  );
                }
              }
              return issueApiKey(ctx.store, ctx.keys, {
                name: opts.name,
                apis: opts.api,
                operations: opts.operation,
                cidrs: opts.cidr,
                env: opts.env,
                expiresInDays: integer(opts.expiresIn, '--expires-in'),
              });
            },
            (i) => ({ 'portcullis.api_key_id': i.id, 'portcullis.credential.type': 'api-key' }),
            { 'portcullis.credential.type': 'api-key' },
          ),
        );
        if (json) {
          process.stdout.write(
            JSON.stringify(withKey(issued.key, apiKeyToJson(issued.record)), null, 2) + '\n',
          );
        } else {
          process.stdout.write(`${issued.key}\n`);
          process.stderr.write(
            `issued API key ${issued.id} (expires ${issued.record.expiresAt.toISOString()}); ` +
              'the key above is shown only this once\n',
          );
        }
      } catch (err) {
        fail(err, json);
      }
    });

  common(apikeys.command('list').description('list API keys (ids, restrictions, status, usage; never keys)'))
    .option('--json', 'machine-readable output')
    .action(async (opts: JsonOption) => {
      const json = opts.json === true;
      try {
        const records = await withCliContext(opts, (ctx) => listApiKeys(ctx.store));
        if (json)
          process.stdout.write(
            JSON.stringify({ apikeys: records.map((r) => apiKeyToJson(r)) }, null, 2) + '\n',
          );
        else process.stdout.write(table(records));
      } catch (err) {
        fail(err, json);
      }
    });

  common(
    apikeys
      .command('rotate')
      .argument('<id>', 'the key to replace')
      .description('issue a successor; the old key keeps working for the grace period'),
  )
    .option('--grace-hours <hours>', 'how long the old key keeps working', String(DEFAULT_GRACE_HOURS))
    .option('--json', 'machine-readable output')
    .action(async (id: string, opts: RotateOptions) => {
      const json = opts.json === true;
      try {
        const rotated = await withCliContext(opts, (ctx) =>
          ctx
            .audited(
              'credential-lifecycle',
              'apikey-rotate',
              () =>
                rotateApiKey(ctx.store, ctx.keys, id, {
                  graceHours: integer(opts.graceHours, '--grace-hours'),
                }),
              (r) => ({
                'portcullis.api_key_id': r.id,
                'portcullis.credential.type': 'api-key',
                'event.reason': `replaces ${r.previous.id}`,
              }),
              { 'portcullis.api_key_id': id, 'portcullis.credential.type': 'api-key' },
            )
            .then(async (r) => {
              await ctx.announce({ kind: 'api-key-changed', id: r.previous.id });
              return r;
            }),
        );
        if (json) {
          process.stdout.write(
            JSON.stringify(
              {
                ...withKey(rotated.key, apiKeyToJson(rotated.record)),
                previous: apiKeyToJson(rotated.previous),
              },
              null,
              2,
            ) + '\n',
          );
        } else {
          process.stdout.write(`${rotated.key}\n`);
          process.stderr.write(
            `issued API key ${rotated.id} replacing ${rotated.previous.id}, which works until ` +
              `${rotated.previous.expiresAt.toISOString()}; the key above is shown only this once\n`,
          );
        }
      } catch (err) {
        fail(err, json);
      }
    });

  common(
    apikeys
      .command('revoke')
      .argument('<id>', 'the key to revoke')
      .description('revoke an API key (gateways sharing Redis refuse it at once; others within 5 s)'),
  )
    .option('--json', 'machine-readable output')
    .action(async (id: string, opts: JsonOption) => {
      const json = opts.json === true;
      try {
        const record = await withCliContext(opts, (ctx) =>
          ctx
            .audited(
              'credential-lifecycle',
              'apikey-revoke',
              () => revokeApiKey(ctx.store, id),
              (r) => ({ 'portcullis.api_key_id': r.id, 'portcullis.credential.type': 'api-key' }),
              { 'portcullis.api_key_id': id, 'portcullis.credential.type': 'api-key' },
            )
            .then(async (r) => ({ r, announced: await ctx.announce({ kind: 'api-key-changed', id: r.id }) })),
        );
        if (json) process.stdout.write(JSON.stringify(apiKeyToJson(record.r), null, 2) + '\n');
        else
          process.stderr.write(
            `revoked API key ${record.r.id}; ${
              record.announced === 'sent'
                ? 'running gateways were told and refuse it now'
                : 'running gateways refuse it once their cached copy is older than 5 s'
            }\n`,
          );
      } catch (err) {
        fail(err, json);
      }
    });
}
