/**
 * `portcullis audit verify|tail|search|prune`: check the hash chain and its signed checkpoints
 * (the live chain from a prune boundary, or an archive on its own), read the store sink, and
 * apply retention. `verify` exits 1 and names the first edited, deleted, reordered or truncated
 * record.
 */
import { controlPlaneActor } from '../audit/actor.ts';
import { InvalidArgumentError } from 'commander';
import type { Command } from 'commander';
import { loadConfig } from '../config/load.ts';
import { auditFilePath } from '../audit/index.ts';
import { verifyArchive, verifyPrunedChain } from '../audit/prune.ts';
import type { AuditRecord, VerifyResult } from '../audit/chain.ts';
import { AUDIT_CATEGORIES, AUDIT_OUTCOMES } from '../audit/event.ts';
import type { AuditCategory, AuditOutcome } from '../audit/event.ts';
import { anyCheckpointVerifier, fileCheckpointVerifier } from '../audit/signer.ts';
import { storeAuditVerifier } from '../keys/audit-key.ts';
import { AuditQueryError, parseQueryDate, parseQueryOneOf, recordView } from '../audit/query.ts';
import { readFileLog } from '../audit/sinks/file.ts';
import { MAX_QUERY_LIMIT, queryStoreLog, readStoreLog } from '../audit/sinks/store.ts';
import type { AuditQuery } from '../audit/sinks/store.ts';
import { openStore } from '../store/index.ts';
import type { Store } from '../store/index.ts';
import { common, fail } from './common.ts';
import { openCliContext } from './context.ts';
import type { CommonOptions } from './common.ts';

interface VerifyOptions extends CommonOptions {
  json?: boolean;
  source?: 'store' | 'file';
  archive?: string;
}

interface PruneCliOptions extends CommonOptions {
  json?: boolean;
  before?: string;
  dryRun?: boolean;
}

interface SearchOptions extends CommonOptions {
  json?: boolean;
  since?: string;
  until?: string;
  category?: AuditCategory;
  outcome?: AuditOutcome;
  client?: string;
  correlationId?: string;
  limit?: number;
}

interface TailOptions extends CommonOptions {
  json?: boolean;
  lines: number;
  follow?: boolean;
}

async function withStore<T>(opts: CommonOptions, fn: (store: Store) => Promise<T>): Promise<T> {
  const loaded = await loadConfig(opts.config);
  const store = await openStore({ url: loaded.config.store.url, dataDir: opts.dataDir });
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

function int(max: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1 || n > max)
      throw new InvalidArgumentError(`expected an integer 1..${String(max)}`);
    return n;
  };
}

/** The admin API's filter checks (src/audit/query.ts), as commander argument parsers. */
function cliArg<T>(parse: (v: string) => T) {
  return (v: string): T => {
    try {
      return parse(v);
    } catch (err) {
      if (err instanceof AuditQueryError) throw new InvalidArgumentError(err.message);
      throw err;
    }
  };
}

const date = cliArg((v) => parseQueryDate('time', v));

function oneOf<T extends string>(values: readonly T[]) {
  return cliArg((v) => parseQueryOneOf('value', v, values));
}

/** One human-readable line per record. */
export function formatRecord(r: AuditRecord): string {
  const e = r.event;
  return [
    String(r.seq).padStart(8),
    e['@timestamp'],
    `${e['event.category']}/${e['event.action']}`,
    e['event.outcome'],
    e['portcullis.client_id'] ?? e['user.id'] ?? '-',
    e['trace.id'] ?? '-',
    e['event.reason'] ?? '',
  ]
    .join('  ')
    .trimEnd();
}

function print(records: readonly AuditRecord[], json: boolean): void {
  const text = records.map((r) => (json ? JSON.stringify(recordView(r)) : formatRecord(r)));
  if (text.length > 0) process.stdout.write(text.join('\n') + '\n');
}

function report(result: VerifyResult, source: string, json: boolean): void {
  if (json) {
    process.stdout.write(JSON.stringify({ source, ...result }, null, 2) + '\n');
    return;
  }
  if (result.problem === undefined) {
    process.stderr.write(
      `audit log (${source}) verified: ${String(result.records)} records, ${String(result.checkpoints)} signed checkpoints ` +
        `(last at record ${String(result.checkpointedSeq)})\n`,
    );
  } else {
    process.stderr.write(
      `audit log (${source}) FAILED verification: ${result.problem.kind} at record ${String(result.problem.seq)}: ` +
        `${result.problem.message}\n`,
    );
  }
}

export function registerAuditCommands(program: Command): void {
  const audit = program.command('audit').description('the audit trail: verify, tail, search, prune');

  common(audit.command('verify').description('verify the hash chain and its signed checkpoints'))
    .option('--json', 'machine-readable output')
    .option(
      '--source <sink>',
      'store or file (default: the chain sink the configuration uses)',
      oneOf(['store', 'file'] as const),
    )
    .option('--archive <file>', 'verify a prune archive (audit-<from>-<through>.jsonl.gz) on its own')
    .action(async (opts: VerifyOptions) => {
      const json = opts.json === true;
      try {
        const loaded = await loadConfig(opts.config);
        const cfg = loaded.config.audit;
        if (opts.archive !== undefined) {
          const file = opts.archive;
          const result = await withStore(opts, (store) =>
            verifyArchive(
              file,
              anyCheckpointVerifier(storeAuditVerifier(store.db), fileCheckpointVerifier(opts.dataDir)),
            ),
          );
          report(result, 'archive', json);
          process.exitCode = result.ok ? 0 : 1;
          return;
        }
        const source = opts.source ?? (cfg.store.enabled ? 'store' : 'file');
        // Checkpoints are signed by the key manager's audit-checkpoint key (its public keys are in
        // the store; no KMS needed), or by the interim file key of logs written before it.
        const result = await withStore(opts, async (store) => {
          const log =
            source === 'store'
              ? await readStoreLog(store.db)
              : await readFileLog(auditFilePath(cfg, opts.dataDir));
          const verifier = anyCheckpointVerifier(
            storeAuditVerifier(store.db),
            fileCheckpointVerifier(opts.dataDir),
          );
          // After a prune the chain starts at the boundary a recorded prune event vouches for.
          return verifyPrunedChain(log.records, log.checkpoints, verifier);
        });
        report(result, source, json);
        process.exitCode = result.ok ? 0 : 1;
      } catch (err) {
        fail(err, json);
      }
    });

  common(
    audit
      .command('prune')
      .description(
        'archive records older than the retention (audit.retention.days) to a gzip JSON Lines file, keep the chain verifiable, then remove them',
      ),
  )
    .option(
      '--before <time>',
      'prune records before this time (ISO-8601; default: now minus audit.retention.days)',
      date,
    )
    .option('--dry-run', 'only say what would be pruned')
    .option('--json', 'machine-readable output')
    .action(async (opts: PruneCliOptions) => {
      const json = opts.json === true;
      try {
        const ctx = await openCliContext(opts);
        try {
          const days = ctx.loaded.config.audit.retention.days;
          const before = new Date(opts.before ?? Date.now() - days * 86_400_000);
          const result = await ctx.audit.prune({
            before,
            ...(opts.dryRun === true ? { dryRun: true } : {}),
            actor: controlPlaneActor(), // issue 13
            listener: 'cli',
            onProgress: (step, detail) => {
              if (!json) process.stderr.write(`audit prune: ${step} ${JSON.stringify(detail)}\n`);
            },
          });
          if (json)
            process.stdout.write(JSON.stringify({ before: before.toISOString(), ...result }, null, 2) + '\n');
          else
            process.stderr.write(
              result.records === 0
                ? `audit prune: nothing before ${before.toISOString()}\n`
                : `audit prune: ${result.dryRun ? 'would prune' : 'pruned'} ${String(result.records)} records ` +
                    `(${String(result.from)}..${String(result.through)})` +
                    (result.archive === undefined ? '' : `, archived to ${result.archive}`) +
                    '\n',
            );
        } finally {
          await ctx.close();
        }
      } catch (err) {
        fail(err, json);
      }
    });

  common(audit.command('tail').description('the latest audit events (store sink)'))
    .option('--json', 'one JSON object per line')
    .option('-n, --lines <n>', 'how many', int(MAX_QUERY_LIMIT), 20)
    .option('-f, --follow', 'keep printing new events')
    .action(async (opts: TailOptions) => {
      const json = opts.json === true;
      try {
        await withStore(opts, async (store) => {
          const first = await queryStoreLog(store.db, { limit: opts.lines });
          print(first, json);
          let after = first.at(-1)?.seq ?? 0;
          while (opts.follow === true) {
            await new Promise((r) => setTimeout(r, 1000));
            const more = await queryStoreLog(store.db, { afterSeq: after, limit: MAX_QUERY_LIMIT });
            print(more, json);
            after = more.at(-1)?.seq ?? after;
          }
        });
      } catch (err) {
        fail(err, json);
      }
    });

  common(audit.command('search').description('search audit events (store sink), oldest first'))
    .option('--json', 'one JSON object per line')
    .option('--since <time>', 'from (ISO-8601, or a time ago: 30m, 1h, 7d)', date)
    .option('--until <time>', 'to (ISO-8601, or a time ago: 30m, 1h, 7d)', date)
    .option('--category <category>', AUDIT_CATEGORIES.join('|'), oneOf(AUDIT_CATEGORIES))
    .option('--outcome <outcome>', AUDIT_OUTCOMES.join('|'), oneOf(AUDIT_OUTCOMES))
    .option('--client <id>', 'OAuth client id')
    .option('--correlation-id <id>', 'correlation id (trace.id)')
    .option('--limit <n>', 'at most this many (the most recent)', int(MAX_QUERY_LIMIT), 100)
    .action(async (opts: SearchOptions) => {
      const json = opts.json === true;
      try {
        const q: AuditQuery = {
          ...(opts.since === undefined ? {} : { since: opts.since }),
          ...(opts.until === undefined ? {} : { until: opts.until }),
          ...(opts.category === undefined ? {} : { category: opts.category }),
          ...(opts.outcome === undefined ? {} : { outcome: opts.outcome }),
          ...(opts.client === undefined ? {} : { clientId: opts.client }),
          ...(opts.correlationId === undefined ? {} : { correlationId: opts.correlationId }),
          ...(opts.limit === undefined ? {} : { limit: opts.limit }),
        };
        await withStore(opts, async (store) => {
          print(await queryStoreLog(store.db, q), json);
        });
      } catch (err) {
        fail(err, json);
      }
    });
}
