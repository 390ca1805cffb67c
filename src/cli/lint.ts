/**
 * `portcullis lint [FILE…] [--json]`: the contract lint of src/compliance/lint.ts over every API
 * document the configuration names (or the files given), with progress on stderr. Exit status 1
 * when any document has an error-level finding.
 */
import type { Command } from 'commander';
import { relative, resolve } from 'node:path';
import { loadConfig } from '../config/load.ts';
import { lintDocument, SATISFIED_BY_GATEWAY } from '../compliance/lint.ts';
import type { LintReport } from '../compliance/lint.ts';
import { fail, formatTable } from './common.ts';
import { resolvePaths } from './paths.ts';

interface LintOptions {
  config?: string;
  json?: boolean;
}

async function documents(opts: LintOptions, files: string[]): Promise<{ api: string; file: string }[]> {
  if (files.length > 0) return files.map((file) => ({ api: '', file: resolve(file) }));
  // No files: the configuration's APIs, found the way every command finds it (src/cli/paths.ts).
  const { configFile } = resolvePaths({ config: opts.config, dataDir: undefined, command: 'config' });
  const loaded = await loadConfig(configFile);
  return loaded.config.apis.map((api) => ({ api: api.name, file: loaded.resolvePath(api.openapi) }));
}

export function registerLintCommand(program: Command): void {
  program
    .command('lint')
    .argument('[files...]', 'OpenAPI documents (default: every API of the configuration)')
    .description(
      'lint OpenAPI contracts: Spectral OpenAPI and OWASP API Security 2023 rulesets plus Portcullis rules',
    )
    .option(
      '-c, --config <file>',
      'configuration whose APIs to lint (default: found as `portcullis start` used it)',
    )
    .option('--json', 'machine-readable output')
    .action(async (files: string[], opts: LintOptions) => {
      const json = opts.json === true;
      try {
        const docs = await documents(opts, files);
        const reports: (LintReport & { api: string })[] = [];
        for (const [i, doc] of docs.entries()) {
          process.stderr.write(`linting ${doc.file} (${String(i + 1)}/${String(docs.length)})\n`);
          reports.push({ api: doc.api, ...(await lintDocument(doc.file)) });
        }
        const errors = reports.reduce((n, r) => n + r.errors, 0);
        if (json) {
          process.stdout.write(
            JSON.stringify({ ok: errors === 0, reports, satisfiedByGateway: SATISFIED_BY_GATEWAY }, null, 2) +
              '\n',
          );
        } else {
          for (const r of reports) {
            const name = relative(process.cwd(), r.file) || r.file;
            process.stdout.write(
              `${name}${r.api === '' ? '' : ` (API ${r.api})`}: ${String(r.errors)} error(s), ${String(r.warnings)} warning(s)\n`,
            );
            if (r.findings.length === 0) continue;
            process.stdout.write(
              formatTable(
                ['LINE', 'SEVERITY', 'RULE', 'MESSAGE'],
                r.findings.map((f) => [
                  f.line === undefined ? '' : `${String(f.line)}:${String(f.column ?? 1)}`,
                  f.severity,
                  f.rule,
                  f.message,
                ]),
              ),
            );
          }
          process.stdout.write(
            `Not checked here because the gateway does it for every operation: ${Object.keys(SATISFIED_BY_GATEWAY).join(', ')} (--json says how).\n`,
          );
        }
        process.exitCode = errors === 0 ? 0 : 1;
      } catch (err) {
        fail(err, json);
      }
    });
}
