/**
 * `portcullis exceptions request|approve|renew|revoke|list`: the exceptions registry from the
 * host (src/admin/service/exceptions.ts, the functions the admin API calls). The administrator is
 * the OS user and host; the one who requested an exception cannot approve it.
 */
import type { Command } from 'commander';
import { cliActor } from '../admin/actor.ts';
import {
  approveException,
  listExceptions,
  renewException,
  requestException,
  revokeException,
} from '../admin/service/exceptions.ts';
import type { ExceptionView } from '../admin/service/exceptions.ts';
import { common, fail, formatTable } from './common.ts';
import type { CommonOptions } from './common.ts';
import { withCliContext } from './context.ts';
import type { CliContext } from './context.ts';

interface JsonOption extends CommonOptions {
  json?: boolean;
}

const services = (ctx: CliContext) => ({
  db: ctx.store.db,
  config: () => ctx.loaded.config,
  audit: ctx.audit,
});
const collect = (value: string, previous: string[] = []) => [...previous, value];

function print(e: ExceptionView, json: boolean, verb: string): void {
  if (json) process.stdout.write(JSON.stringify(e, null, 2) + '\n');
  else process.stderr.write(`${verb} exception ${e.id} (${e.control}, ${e.status}, expires ${e.expires})\n`);
}

export function registerExceptionsCommands(program: Command): void {
  const ex = program
    .command('exceptions')
    .description('the exceptions registry: request, approve (by someone else), renew, revoke');

  common(ex.command('request').description('request an exception to a control'))
    .requiredOption('--id <id>', 'exception id')
    .requiredOption('--control <control>', 'the control weakened (e.g. upstream-plaintext)')
    .requiredOption('--scope <text>', 'what it covers')
    .requiredOption('--rationale <text>', 'why (at least 10 characters)')
    .requiredOption('--compensating <text>', 'a compensating control (repeatable)', collect)
    .requiredOption('--owner <name>', 'who answers for it')
    .requiredOption('--expires <date>', 'YYYY-MM-DD (at most a year ahead)')
    .option('--json', 'machine-readable output')
    .action(
      async (
        opts: JsonOption & {
          id: string;
          control: string;
          scope: string;
          rationale: string;
          compensating: string[];
          owner: string;
          expires: string;
        },
      ) => {
        const json = opts.json === true;
        try {
          const e = await withCliContext(opts, (ctx) =>
            requestException(services(ctx), cliActor(), {
              id: opts.id,
              control: opts.control,
              scope: opts.scope,
              rationale: opts.rationale,
              compensatingControls: opts.compensating,
              owner: opts.owner,
              expires: opts.expires,
            }),
          );
          print(e, json, 'requested');
        } catch (err) {
          fail(err, json);
        }
      },
    );

  for (const [name, verb, run] of [
    ['approve', 'approved', approveException],
    ['revoke', 'revoked', revokeException],
  ] as const) {
    common(ex.command(name).description(`${name} an exception`))
      .requiredOption('--id <id>', 'exception id')
      .option('--json', 'machine-readable output')
      .action(async (opts: JsonOption & { id: string }) => {
        const json = opts.json === true;
        try {
          print(await withCliContext(opts, (ctx) => run(services(ctx), cliActor(), opts.id)), json, verb);
        } catch (err) {
          fail(err, json);
        }
      });
  }

  common(ex.command('renew').description('set a new expiry; it must be approved again'))
    .requiredOption('--id <id>', 'exception id')
    .requiredOption('--expires <date>', 'YYYY-MM-DD')
    .option('--json', 'machine-readable output')
    .action(async (opts: JsonOption & { id: string; expires: string }) => {
      const json = opts.json === true;
      try {
        const e = await withCliContext(opts, (ctx) =>
          renewException(services(ctx), cliActor(), opts.id, opts.expires),
        );
        print(e, json, 'renewed');
      } catch (err) {
        fail(err, json);
      }
    });

  common(ex.command('list').description('the registry (exceptions in the configuration file are not listed)'))
    .option('--json', 'machine-readable output')
    .action(async (opts: JsonOption) => {
      const json = opts.json === true;
      try {
        const all = await withCliContext(opts, (ctx) => listExceptions(services(ctx), cliActor()));
        if (json) {
          process.stdout.write(JSON.stringify({ exceptions: all }, null, 2) + '\n');
          return;
        }
        process.stdout.write(
          formatTable(
            ['ID', 'CONTROL', 'STATUS', 'EXPIRES', 'OWNER', 'REQUESTED BY', 'APPROVER'],
            all.map((e) => [e.id, e.control, e.status, e.expires, e.owner, e.requestedBy, e.approver ?? '-']),
          ),
        );
      } catch (err) {
        fail(err, json);
      }
    });
}
