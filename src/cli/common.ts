/**
 * Pieces every `portcullis` subcommand shares: the `--config` and `--data-dir` options and the
 * one way a command fails (a message on stderr, or `{"error": …}` on stdout with `--json`).
 */
import { Option } from 'commander';
import type { Command } from 'commander';
import { ConfigError, formatIssue } from '../config/load.ts';

export interface CommonOptions {
  config: string;
  dataDir: string;
}

/** Adds `-c, --config <file>` and `-d, --data-dir <dir>` with their defaults. */
export function common(cmd: Command): Command {
  return cmd
    .addOption(new Option('-c, --config <file>', 'configuration file').default('portcullis.yaml'))
    .addOption(
      new Option('-d, --data-dir <dir>', 'data directory (keys, certificates, database)').default(
        '.portcullis',
      ),
    );
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
