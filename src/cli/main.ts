/**
 * The `portcullis` command. Human-readable messages go to stderr; `--json` output and JSON logs
 * go to stdout.
 */
import { Command, Option } from 'commander';
import { relative } from 'node:path';
import { stringify } from 'yaml';
import { formatIssue, loadConfig, maskSecrets } from '../config/load.ts';
import { compileRuntime } from '../gateway/compile.ts';
import { startPortcullis } from '../server/lifecycle.ts';
import { common, fail } from './common.ts';
import type { CommonOptions } from './common.ts';
import { registerClientsCommands } from './clients.ts';
import { registerKeysCommands } from './keys.ts';
import { registerAuditCommands } from './audit.ts';
import { registerApiKeysCommands } from './apikeys.ts';
import { registerUsersCommands } from './users.ts';
import { tokenHowTo } from './banner.ts';

const program = new Command('portcullis')
  .description('Security-first API gateway with a built-in OAuth 2.1 / OpenID Connect authorization server')
  .showHelpAfterError()
  .configureOutput({ writeOut: (s) => process.stdout.write(s), writeErr: (s) => process.stderr.write(s) });

common(program.command('start').description('start the gateway (and the listeners the configuration names)'))
  .addOption(
    new Option('--role <role>', 'what to serve: APIs and the authorization server, or one of them')
      .choices(['all', 'gateway', 'authorization-server'])
      .default('all'),
  )
  .action(async (opts: CommonOptions & { role: 'all' | 'gateway' | 'authorization-server' }) => {
    try {
      const p = await startPortcullis({
        configFile: opts.config,
        dataDir: opts.dataDir,
        signals: true,
        watch: true,
        role: opts.role,
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
        ...tokenHowTo({
          runtime: p.runtime(),
          role: opts.role,
          configArg: opts.config,
          dataDirArg: opts.dataDir,
          caFile: p.tls.source === 'development' ? p.tls.caCertFile : undefined,
        }),
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

registerKeysCommands(program);
registerAuditCommands(program);
registerApiKeysCommands(program);
registerClientsCommands(program);
registerUsersCommands(program);

await program.parseAsync(process.argv);
