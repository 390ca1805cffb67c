/**
 * The `portcullis` command. Human-readable messages go to stderr; `--json` output and JSON logs
 * go to stdout.
 */
import { Command, Option } from 'commander';
import { relative } from 'node:path';
import { stringify } from 'yaml';
import { ConfigError, formatIssue, loadConfig, maskSecrets } from '../config/load.ts';
import { compileRuntime } from '../gateway/compile.ts';
import { startPortcullis } from '../server/lifecycle.ts';

interface CommonOptions {
  config: string;
  dataDir: string;
}

function common(cmd: Command): Command {
  return cmd
    .addOption(new Option('-c, --config <file>', 'configuration file').default('portcullis.yaml'))
    .addOption(
      new Option('-d, --data-dir <dir>', 'data directory (keys, certificates, database)').default(
        '.portcullis',
      ),
    );
}

function fail(err: unknown, json: boolean): never {
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

const program = new Command('portcullis')
  .description('Security-first API gateway with a built-in OAuth 2.1 / OpenID Connect authorization server')
  .showHelpAfterError()
  .configureOutput({ writeOut: (s) => process.stdout.write(s), writeErr: (s) => process.stderr.write(s) });

common(
  program.command('start').description('start the gateway (and the listeners the configuration names)'),
).action(async (opts: CommonOptions) => {
  try {
    const p = await startPortcullis({
      configFile: opts.config,
      dataDir: opts.dataDir,
      signals: true,
      watch: true,
    });
    const ca = p.tls.source === 'development' ? relative(process.cwd(), p.tls.caCertFile) : undefined;
    const lines = [
      '',
      `  Portcullis is running.`,
      `    gateway   ${p.gatewayUrl}  (public origin ${p.runtime().loaded.config.gateway.publicUrl})`,
      ...(p.adminUrl ? [`    admin     ${p.adminUrl}  (/healthz, /readyz)`] : []),
      ...(p.redirectUrl ? [`    redirect  ${p.redirectUrl} -> HTTPS`] : []),
      ...(p.demoUpstreamUrl
        ? [`    demo API  ${p.demoUpstreamUrl}  (reached through the gateway under /v1)`]
        : []),
      ...(ca ? [`    dev CA    ${ca}  (trust it for local HTTPS)`] : []),
      '',
      ...(ca && p.demoUpstreamUrl
        ? [
            `  Try:  curl --cacert ${ca} ${p.runtime().loaded.config.gateway.publicUrl}/v1/status`,
            `        curl --cacert ${ca} -i ${p.runtime().loaded.config.gateway.publicUrl}/v1/patients   # 401: a token is required`,
            '',
          ]
        : []),
      '  Reload: edit the configuration (or send SIGHUP). Stop: Ctrl-C.',
      '',
    ];
    process.stderr.write(lines.join('\n'));
  } catch (err) {
    fail(err, false);
  }
});

const configCmd = program.command('config').description('work with the configuration file');
common(
  configCmd
    .command('validate')
    .description('validate the configuration and print the effective configuration'),
)
  .option('--json', 'machine-readable output')
  .action(async (opts: CommonOptions & { json?: boolean }) => {
    const json = opts.json === true;
    try {
      const loaded = await loadConfig(opts.config);
      const runtime = await compileRuntime(loaded);
      await runtime.close();
      const effective = maskSecrets(loaded.config);
      const warnings = loaded.warnings.map((w) => formatIssue(loaded.file, w));
      if (json) {
        process.stdout.write(
          JSON.stringify(
            { valid: true, file: loaded.file, version: loaded.sha256, warnings, config: effective },
            null,
            2,
          ) + '\n',
        );
      } else {
        for (const w of warnings) process.stderr.write(`warning: ${w}\n`);
        process.stderr.write(`${loaded.file}: valid (version ${loaded.sha256.slice(0, 12)})\n`);
        process.stdout.write(stringify(effective));
      }
    } catch (err) {
      fail(err, json);
    }
  });

await program.parseAsync(process.argv);
