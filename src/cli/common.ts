/**
 * Pieces every `portcullis` subcommand shares: the `--config` and `--data-dir` options and the
 * one way a command fails (a message on stderr, or `{"error": …}` on stdout with `--json`).
 */
import { Option } from 'commander';
import type { Command } from 'commander';
import { ConfigError, formatIssue } from '../config/load.ts';
import { resolvePaths } from './paths.ts';

export interface CommonOptions {
  /** The configuration file, absolute, as resolved by src/cli/paths.ts before the action runs. */
  config: string;
  /** The data directory, absolute, likewise. */
  dataDir: string;
  /** `--config` and `--data-dir` exactly as given (undefined when not given). */
  configArg?: string | undefined;
  dataDirArg?: string | undefined;
}

/**
 * Adds `-c, --config <file>` and `-d, --data-dir <dir>`, resolved before the action runs the same
 * way for every command wherever it is run from (src/cli/paths.ts). Only `start` may create a
 * data directory it was not given; `config` commands need none.
 */
export function common(cmd: Command, command: 'start' | 'config' | 'other' = 'other'): Command {
  return cmd
    .addOption(
      new Option('-c, --config <file>', 'configuration file (default: found as `portcullis start` used it)'),
    )
    .addOption(
      new Option(
        '-d, --data-dir <dir>',
        'data directory: keys, certificates, database (default: the one `portcullis start` used)',
      ),
    )
    .hook('preAction', (_self, action) => {
      const opts = action.opts<{ config?: string; dataDir?: string; json?: boolean }>();
      try {
        const paths = resolvePaths({ config: opts.config, dataDir: opts.dataDir, command });
        action.setOptionValue('configArg', opts.config);
        action.setOptionValue('dataDirArg', opts.dataDir);
        action.setOptionValue('config', paths.configFile);
        action.setOptionValue('dataDir', paths.dataDir);
      } catch (err) {
        fail(err, opts.json === true);
      }
    });
}

/** Reports `err` (configuration issues in full, otherwise its message) and exits with 1. */
export function fail(err: unknown, json: boolean): never {
  if (err instanceof ConfigError) {
    if (json) {
      process.stdout.write(
        JSON.stringify({ valid: false, file: err.file, issues: err.issues }, null, 2) + '\n',
      );
    } else {
      process.stderr.write(`portcullis: invalid configuration\n`);
      for (const issue of err.issues) process.stderr.write(`  ${formatIssue(err.file, issue)}\n`);
    }
    process.exit(1);
  }
  const message = err instanceof Error ? err.message : String(err);
  if (json) process.stdout.write(JSON.stringify({ error: message }) + '\n');
  else process.stderr.write(`portcullis: ${message}\n`);
  process.exit(1);
}

/** Rows under a header, in columns two spaces apart: what `list` commands print without --json. */
export function formatTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  return (
    all
      .map((r) =>
        r
          .map((c, i) => c.padEnd(widths[i] ?? 0))
          .join('  ')
          .trimEnd(),
      )
      .join('\n') + '\n'
  );
}
