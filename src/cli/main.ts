/**
 * The `portcullis` command. Human-readable messages go to stderr; `--json` output and JSON logs
 * go to stdout.
 */
import { Command, Option } from 'commander';
import { readFileSync } from 'node:fs';
import cluster from 'node:cluster';
import { stringify } from 'yaml';
import { formatIssue, loadConfig, maskSecrets } from '../config/load.ts';
import { compileRuntime } from '../gateway/compile.ts';
import { startPortcullis } from '../server/lifecycle.ts';
import { common, fail } from './common.ts';
import { recordStart } from './paths.ts';
import type { CommonOptions } from './common.ts';
import { registerClientsCommands } from './clients.ts';
import { registerKeysCommands } from './keys.ts';
import { registerAuditCommands } from './audit.ts';
import { registerApiKeysCommands } from './apikeys.ts';
import { registerUsersCommands } from './users.ts';
import { registerLintCommand } from './lint.ts';
import { registerProbeCommand } from './probe.ts';
import { registerPrivacyCommands } from './privacy.ts';
import { registerExceptionsCommands } from './exceptions.ts';
import { registerInventoryCommand } from './inventory.ts';
import { startBanner } from './banner.ts';
import { parseWorkerCount, runPrimary, runWorker } from './workers.ts';
import type { Role } from './workers.ts';

const { version } = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
  version: string;
};

const program = new Command('portcullis')
  .version(version, '-V, --version', 'print the version of Portcullis')
  .description('Security-first API gateway with a built-in OAuth 2.1 / OpenID Connect authorization server')
  .showHelpAfterError()
  .configureOutput({ writeOut: (s) => process.stdout.write(s), writeErr: (s) => process.stderr.write(s) });

common(
  program.command('start').description('start the gateway (and the listeners the configuration names)'),
  'start',
)
  .addOption(
    new Option('--role <role>', 'what to serve: APIs and the authorization server, or one of them')
      .choices(['all', 'gateway', 'authorization-server'])
      .default('all'),
  )
  .addOption(
    new Option('--workers <n>', 'processes on this host sharing its ports (counted in cluster.nodes)')
      .argParser(parseWorkerCount)
      .default(1),
  )
  .action(async (opts: CommonOptions & { role: Role; workers: number }) => {
    try {
      const forCluster = { configArg: opts.config, dataDirArg: opts.dataDir, role: opts.role };
      if (cluster.isWorker) return await runWorker(forCluster);
      if (opts.workers > 1) return await runPrimary({ ...forCluster, workers: opts.workers });
      const p = await startPortcullis({
        configFile: opts.config,
        dataDir: opts.dataDir,
        signals: true,
        watch: true,
        role: opts.role,
      });
      recordStart({ configFile: opts.config, dataDir: opts.dataDir });
      const { gatewayUrl, adminUrl, redirectUrl, demoUpstreamUrl, tls } = p;
      const banner = startBanner({
        gatewayUrl,
        adminUrl,
        redirectUrl,
        demoUpstreamUrl,
        tls,
        runtime: p.runtime(),
        role: opts.role,
        configFile: opts.config,
        dataDir: opts.dataDir,
      });
      process.stderr.write(banner.join('\n'));
    } catch (err) {
      fail(err, false);
    }
  });

const configCmd = program.command('config').description('work with the configuration file');
common(
  configCmd
    .command('validate')
    .description('validate the configuration and print the effective configuration'),
  'config',
)
  .option('--json', 'machine-readable output')
  .action(async (opts: CommonOptions & { json?: boolean }) => {
    const json = opts.json === true;
    try {
      const loaded = await loadConfig(opts.config);
      // Contract warnings too (issue 16: personal data returned without a category).
      const contractWarnings: string[] = [];
      const runtime = await compileRuntime(loaded, { onWarning: (m) => contractWarnings.push(m) });
      await runtime.close();
      const effective = maskSecrets(loaded.config);
      const warnings = [...loaded.warnings.map((w) => formatIssue(loaded.file, w)), ...contractWarnings];
      if (json) {
        process.stdout.write(
          JSON.stringify(
            { valid: true, file: loaded.file, version: runtime.version, warnings, config: effective },
            null,
            2,
          ) + '\n',
        );
      } else {
        for (const w of warnings) process.stderr.write(`warning: ${w}\n`);
        process.stderr.write(`${loaded.file}: valid (version ${runtime.version.slice(0, 12)})\n`);
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
registerLintCommand(program);
registerProbeCommand(program);
registerPrivacyCommands(program);
registerExceptionsCommands(program); // issue 15: the exceptions registry
registerInventoryCommand(program); // issue 15: the API inventory

await program.parseAsync(process.argv);
