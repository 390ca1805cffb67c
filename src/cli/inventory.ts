/**
 * `portcullis inventory [--json|--csv]`: every API and operation with owner, data
 * classification, environment, authentication, scopes and the documented exceptions, from the
 * configuration and the contracts (the same inventory as `GET /admin/v1/apis`). Read-only; reads
 * nothing but the files, so it needs no data directory.
 */
import type { Command } from 'commander';
import { inventory } from '../admin/service/reads.ts';
import { loadConfig } from '../config/load.ts';
import { loadOpenApi } from '../gateway/openapi.ts';
import type { OpenApiDocument } from '../gateway/openapi.ts';
import { common, fail, formatTable } from './common.ts';
import type { CommonOptions } from './common.ts';

/** RFC 4180: quote a field when it holds a comma, quote or line break; a leading =+-@ is defused. */
function csvField(value: string): string {
  const safe = /^[=+\-@]/.test(value) ? `'${value}` : value;
  return /[",\r\n]/.test(safe) ? `"${safe.replaceAll('"', '""')}"` : safe;
}

export function registerInventoryCommand(program: Command): void {
  common(
    program.command('inventory').description('the API inventory: owner, classification, operations'),
    'config',
  )
    .option('--json', 'JSON output')
    .option('--csv', 'CSV output, one row per operation')
    .action(async (opts: CommonOptions & { json?: boolean; csv?: boolean }) => {
      const json = opts.json === true;
      try {
        const loaded = await loadConfig(opts.config);
        const documents = new Map<string, OpenApiDocument>();
        for (const api of loaded.config.apis) {
          documents.set(api.name, await loadOpenApi(loaded.resolvePath(api.openapi)));
        }
        const apis = inventory(loaded.config, documents);
        if (json) {
          process.stdout.write(JSON.stringify({ apis }, null, 2) + '\n');
          return;
        }
        const header = [
          'api',
          'owner',
          'dataClassification',
          'environment',
          'method',
          'path',
          'operationId',
          'authentication',
          'scopes',
          'exceptions',
        ];
        const rows = apis.flatMap((a) =>
          a.operations.map((o) => [
            a.name,
            a.owner ?? '',
            a.dataClassification ?? '',
            a.environment ?? '',
            o.method,
            o.path,
            o.operationId ?? '',
            o.authentication.join(' '),
            o.scopes.join(' '),
            a.exceptions.join('; '),
          ]),
        );
        if (opts.csv === true) {
          process.stdout.write([header, ...rows].map((r) => r.map(csvField).join(',')).join('\r\n') + '\r\n');
          return;
        }
        process.stdout.write(
          formatTable(
            ['API', 'OWNER', 'CLASS', 'ENV', 'METHOD', 'PATH', 'AUTH', 'SCOPES'],
            rows.map((r) =>
              [r[0], r[1] || '-', r[2] || '-', r[3] || '-', r[4], r[5], r[7], r[8] || '-'].map(String),
            ),
          ),
        );
      } catch (err) {
        fail(err, json);
      }
    });
}
