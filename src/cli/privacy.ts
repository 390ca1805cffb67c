/**
 * `portcullis privacy …` (issue 16), the operator's side of privacy:
 *
 *   privacy map [--json]                                     records of processing per API
 *   privacy consent list  --subject ID|--username NAME       a subject's consents and opt-outs
 *   privacy consent grant --subject … --purpose P --notice V record a consent (e.g. given on paper)
 *   privacy consent withdraw --subject … --purpose P         record its withdrawal
 *   privacy opt-out add|remove --subject … --opt-out O       sale-sharing, sensitive-data, automated-decision
 *   privacy disclosures --subject … [--since T] [--json]     accounting of disclosures (audit trail)
 *
 * Changes go through the same service as the gateway's subject API and are audited durably
 * (`privacy` events, `portcullis.listener: cli`, `portcullis.privacy.source: cli`). Running
 * gateways drop their cached copies at once when there is Redis (`privacy-changed`), else
 * within their cache lifetime (5 s).
 */
import type { Command } from 'commander';
import { loadConfig } from '../config/load.ts';
import { parseQueryDate } from '../audit/query.ts';
import { accountDisclosures } from '../privacy/disclosures.ts';
import { formatDataMap, loadDataMap } from '../privacy/map.ts';
import { createPrivacyService, OPT_OUTS } from '../privacy/service.ts';
import type { ChoiceRecord, PrivacyService } from '../privacy/service.ts';
import { common, fail, formatTable } from './common.ts';
import type { CommonOptions } from './common.ts';
import { withCliContext } from './context.ts';
import type { CliContext } from './context.ts';

interface SubjectOptions extends CommonOptions {
  subject?: string;
  username?: string;
  json?: boolean;
}

/** The subject id: given, or the id of the user with that login name. */
async function subjectOf(ctx: CliContext, opts: SubjectOptions): Promise<string> {
  if ((opts.subject === undefined) === (opts.username === undefined)) {
    throw new Error('give exactly one of --subject <id> and --username <name>');
  }
  if (opts.subject !== undefined) return opts.subject;
  const row = await ctx.store.db
    .selectFrom('users')
    .select('id')
    .where('username', '=', opts.username ?? '')
    .executeTakeFirst();
  if (row === undefined) throw new Error('no such user');
  return row.id;
}

function serviceOf(ctx: CliContext): PrivacyService {
  return createPrivacyService({
    db: ctx.store.db,
    audit: ctx.audit,
    // Running gateways drop their cached copies at once when there is Redis, else within 5 s.
    onChange: () => {
      pending.push(ctx.announce({ kind: 'privacy-changed' }));
    },
  });
}

/** Announcements in flight; awaited before the command's context closes. */
const pending: Promise<unknown>[] = [];

function recordJson(r: ChoiceRecord) {
  return {
    kind: r.kind,
    name: r.name,
    state: r.state,
    noticeVersion: r.noticeVersion,
    source: r.source,
    updatedAt: r.updatedAt,
  };
}

function subjectOptions(cmd: Command): Command {
  return common(cmd)
    .option('--subject <id>', 'the data subject (the user id, the `sub` of their tokens)')
    .option('--username <name>', 'the data subject, by login name')
    .option('--json', 'machine-readable output');
}

function printRecord(r: ChoiceRecord, json: boolean): void {
  if (json) process.stdout.write(JSON.stringify(recordJson(r), null, 2) + '\n');
  else process.stderr.write(`${r.kind} ${r.name}: ${r.state} (${r.updatedAt})\n`);
}

const CLI_ACTOR = { listener: 'cli', source: 'cli' } as const;

/**
 * Runs a change; a refused one is recorded as a `privacy` failure event (as every CLI change is),
 * then rethrown. Successes are recorded by the service itself.
 */
async function change<T>(ctx: CliContext, action: string, choice: string, run: () => Promise<T>): Promise<T> {
  try {
    const result = await run();
    await Promise.allSettled(pending);
    return result;
  } catch (error) {
    await ctx.audit
      .emitDurable({
        'event.category': 'privacy',
        'event.action': action,
        'event.outcome': 'failure',
        'event.reason': error instanceof Error ? error.message.slice(0, 200) : 'error',
        'portcullis.listener': 'cli',
        'portcullis.privacy.source': 'cli',
        // Only a known purpose or opt-out name is recorded, never arbitrary input.
        ...(/^[a-z-]{1,32}$/.test(choice) ? { 'portcullis.privacy.choice': choice } : {}),
      })
      .catch(() => undefined);
    throw error;
  }
}

export function registerPrivacyCommands(program: Command): void {
  const privacy = program
    .command('privacy')
    .description('data map, consents, opt-outs and disclosures of data subjects');

  common(
    privacy.command('map').description('print the records of processing (GDPR Art. 30) per API'),
    'config',
  )
    .option('--json', 'machine-readable output')
    .action(async (opts: CommonOptions & { json?: boolean }) => {
      const json = opts.json === true;
      try {
        const map = await loadDataMap(await loadConfig(opts.config));
        if (json) process.stdout.write(JSON.stringify(map, null, 2) + '\n');
        else process.stdout.write(formatDataMap(map));
        for (const w of map.warnings) process.stderr.write(`warning: ${w}\n`);
      } catch (err) {
        fail(err, json);
      }
    });

  const consent = privacy.command('consent').description("a data subject's consents");
  subjectOptions(consent.command('list').description("list a subject's consents and opt-outs")).action(
    async (opts: SubjectOptions) => {
      const json = opts.json === true;
      try {
        const choices = await withCliContext(opts, async (ctx) =>
          serviceOf(ctx).choices(await subjectOf(ctx, opts)),
        );
        if (json) {
          process.stdout.write(
            JSON.stringify({ subject: choices.subject, choices: choices.records.map(recordJson) }, null, 2) +
              '\n',
          );
          return;
        }
        process.stdout.write(
          formatTable(
            ['KIND', 'NAME', 'STATE', 'NOTICE', 'SOURCE', 'UPDATED'],
            choices.records.map((r) => [
              r.kind,
              r.name,
              r.state,
              r.noticeVersion ?? '-',
              r.source,
              r.updatedAt,
            ]),
          ),
        );
      } catch (err) {
        fail(err, json);
      }
    },
  );
  subjectOptions(consent.command('grant').description('record a consent to a purpose'))
    .requiredOption(
      '--purpose <purpose>',
      'analytics, marketing, sale, sharing, targeted-advertising, profiling, automated-decision',
    )
    .requiredOption('--notice <version>', 'the version of the privacy notice the subject agreed to')
    .action(async (opts: SubjectOptions & { purpose: string; notice: string }) => {
      const json = opts.json === true;
      try {
        const r = await withCliContext(opts, async (ctx) =>
          change(ctx, 'consent-grant', opts.purpose, async () =>
            serviceOf(ctx).setConsent(
              await subjectOf(ctx, opts),
              { purpose: opts.purpose, granted: true, noticeVersion: opts.notice },
              CLI_ACTOR,
            ),
          ),
        );
        printRecord(r, json);
      } catch (err) {
        fail(err, json);
      }
    });
  subjectOptions(consent.command('withdraw').description('record the withdrawal of a consent'))
    .requiredOption('--purpose <purpose>', 'the purpose')
    .action(async (opts: SubjectOptions & { purpose: string }) => {
      const json = opts.json === true;
      try {
        const r = await withCliContext(opts, async (ctx) =>
          change(ctx, 'consent-withdraw', opts.purpose, async () =>
            serviceOf(ctx).setConsent(
              await subjectOf(ctx, opts),
              { purpose: opts.purpose, granted: false },
              CLI_ACTOR,
            ),
          ),
        );
        printRecord(r, json);
      } catch (err) {
        fail(err, json);
      }
    });

  const optOut = privacy.command('opt-out').description("a data subject's opt-outs");
  for (const [name, optedOut] of [
    ['add', true],
    ['remove', false],
  ] as const) {
    subjectOptions(
      optOut.command(name).description(optedOut ? 'record an opt-out' : 'opt the subject back in'),
    )
      .requiredOption('--opt-out <name>', OPT_OUTS.join(', '))
      .action(async (opts: SubjectOptions & { optOut: string }) => {
        const json = opts.json === true;
        try {
          const r = await withCliContext(opts, async (ctx) =>
            change(ctx, optedOut ? 'opt-out' : 'opt-in', opts.optOut, async () =>
              serviceOf(ctx).setOptOut(
                await subjectOf(ctx, opts),
                { optOut: opts.optOut, optedOut },
                CLI_ACTOR,
              ),
            ),
          );
          printRecord(r, json);
        } catch (err) {
          fail(err, json);
        }
      });
  }

  subjectOptions(
    privacy
      .command('disclosures')
      .description("accounting of disclosures: which clients read or changed a subject's records"),
  )
    .option('--since <time>', 'from (ISO-8601, or a time ago such as 30d); default six years')
    .option('--until <time>', 'until (ISO-8601, or a time ago)')
    .action(async (opts: SubjectOptions & { since?: string; until?: string }) => {
      const json = opts.json === true;
      try {
        const { subject, list } = await withCliContext(opts, async (ctx) => {
          const s = await subjectOf(ctx, opts);
          return {
            subject: s,
            list: await accountDisclosures(ctx.store.db, {
              subject: s,
              ...(opts.since === undefined ? {} : { since: parseQueryDate('since', opts.since) }),
              ...(opts.until === undefined ? {} : { until: parseQueryDate('until', opts.until) }),
            }),
          };
        });
        if (json) {
          process.stdout.write(JSON.stringify({ subject, disclosures: list }, null, 2) + '\n');
          return;
        }
        process.stdout.write(
          formatTable(
            ['WHEN', 'ACCESS', 'CLIENT', 'API', 'METHOD', 'ROUTE', 'SCOPES', 'STATUS'],
            list.map((d) => [
              d.at,
              d.access,
              d.clientId ?? '-',
              d.api ?? '-',
              d.method ?? '-',
              d.route ?? '-',
              d.scopes.join(' '),
              String(d.status ?? '-'),
            ]),
          ),
        );
      } catch (err) {
        fail(err, json);
      }
    });
}
