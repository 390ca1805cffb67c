/**
 * `portcullis keys list|rotate`: the signing keys' public facts (kid, alg, status, dates) and a
 * manual rotation. Never prints key material.
 */
import type { Command } from 'commander';
import type { KeySummary } from '../keys/types.ts';
import { common, fail } from './common.ts';
import type { CommonOptions } from './common.ts';
import { withCliContext } from './context.ts';
import { rotateMasterKey } from '../keys/rotate-master.ts';

/** Test hook: stop the process after this many secrets were moved (a crash mid-rotation). */
const EXIT_AFTER_ENV = 'PORTCULLIS_TEST_ROTATE_MASTER_EXIT_AFTER';

interface KeysOptions extends CommonOptions {
  json?: boolean;
}

interface RotateOptions extends KeysOptions {
  reason: string;
}

/** The JSON shape of one key: ISO-8601 dates, `null` when not set. */
export interface KeyJson {
  kid: string;
  alg: string;
  status: string;
  createdAt: string;
  activatedAt: string | null;
  retiresAt: string | null;
}

export function keyToJson(key: KeySummary): KeyJson {
  return {
    kid: key.kid,
    alg: key.alg,
    status: key.status,
    createdAt: key.createdAt.toISOString(),
    activatedAt: key.activatedAt?.toISOString() ?? null,
    retiresAt: key.retiresAt?.toISOString() ?? null,
  };
}

function table(keys: readonly KeySummary[]): string {
  const rows = [
    ['STATUS', 'ALG', 'KID', 'CREATED', 'ACTIVATED', 'RETIRES'],
    ...keys.map((k) => {
      const j = keyToJson(k);
      return [j.status, j.alg, j.kid, j.createdAt, j.activatedAt ?? '-', j.retiresAt ?? '-'];
    }),
  ];
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  return (
    rows
      .map((r) =>
        r
          .map((c, i) => c.padEnd(widths[i] ?? 0))
          .join('  ')
          .trimEnd(),
      )
      .join('\n') + '\n'
  );
}

function print(keys: readonly KeySummary[], json: boolean): void {
  if (json) process.stdout.write(JSON.stringify({ keys: keys.map(keyToJson) }, null, 2) + '\n');
  else process.stdout.write(table(keys));
}

const PICKUP = {
  sent: 'running gateways were told and switch now',
  'no-redis': 'running gateways pick it up within 30 s',
  failed: 'Redis is unreachable: running gateways pick it up within 30 s',
} as const;

export function registerKeysCommands(program: Command): void {
  const keys = program.command('keys').description('token-signing keys (public facts only)');

  common(keys.command('list').description('list the signing keys: next, current and previous'))
    .option('--json', 'machine-readable output')
    .action(async (opts: KeysOptions) => {
      const json = opts.json === true;
      try {
        await withCliContext(opts, async (ctx) => {
          print(ctx.keys.list(), json);
        });
      } catch (err) {
        fail(err, json);
      }
    });

  common(
    keys
      .command('rotate')
      .description(
        'rotate now: next becomes current, current stays published until the overlap ends, a new next is made',
      ),
  )
    .option('--json', 'machine-readable output')
    .option('--reason <text>', 'why (recorded in the log)', 'manual rotation (CLI)')
    .action(async (opts: RotateOptions) => {
      const json = opts.json === true;
      try {
        await withCliContext(opts, async (ctx) => {
          const listed = await ctx.audited(
            'key-lifecycle',
            'key-rotate',
            () => ctx.keys.rotate(opts.reason),
            () => ({ 'portcullis.key.kid': ctx.keys.current().kid, 'event.reason': opts.reason }),
            { 'event.reason': opts.reason },
          );
          print(listed, json);
          const announced = await ctx.announce({ kind: 'keys-changed' });
          if (!json) {
            process.stderr.write(
              `rotated: tokens are now signed with ${ctx.keys.current().kid}; ${PICKUP[announced]}\n`,
            );
          }
        });
      } catch (err) {
        fail(err, json);
      }
    });

  common(
    keys
      .command('rotate-audit')
      .description('replace the audit-checkpoint key; checkpoints signed by the old one keep verifying'),
  )
    .option('--json', 'machine-readable output')
    .action(async (opts: KeysOptions) => {
      const json = opts.json === true;
      try {
        await withCliContext(opts, async (ctx) => {
          const result = await ctx.audited(
            'key-lifecycle',
            'audit-key-rotate',
            () => ctx.keys.rotateAuditKey(),
            (r) => ({
              'portcullis.key.kid': r.kid,
              'event.reason': `audit-checkpoint key ${r.retired ?? '-'} -> ${r.kid}`,
            }),
          );
          if (json) process.stdout.write(JSON.stringify(result) + '\n');
          else process.stderr.write(`audit checkpoints are now signed with ${result.kid}\n`);
        });
      } catch (err) {
        fail(err, json);
      }
    });

  common(
    keys
      .command('rotate-master')
      .description(
        're-wrap every wrapped key under a new master key (local key file or PKCS#11); resumes an interrupted run',
      ),
  )
    .option(
      '--to <provider>',
      'pkcs11: migrate instead (keys.provider is pkcs11 and the local master key is still present): move what the local master key wrapped to the HSM key',
    )
    .option('--json', 'machine-readable output')
    .action(async (opts: KeysOptions & { to?: string }) => {
      const json = opts.json === true;
      if (opts.to !== undefined && opts.to !== 'pkcs11') {
        fail(new Error(`--to: expected pkcs11, not "${opts.to}"`), json);
      }
      const migrate = opts.to === 'pkcs11';
      const exitAfter = Number(process.env[EXIT_AFTER_ENV] ?? '0');
      try {
        await withCliContext(opts, async (ctx) => {
          const result = await ctx.audited(
            'key-lifecycle',
            'master-key-rotate',
            () =>
              rotateMasterKey({
                store: ctx.store,
                kms: ctx.keys.kms,
                migrate,
                onProgress: (n) => {
                  if (!json) process.stderr.write(`re-wrapped ${String(n)}\n`);
                  if (exitAfter > 0 && n >= exitAfter) process.exit(75);
                },
              }),
            (r) => ({
              'portcullis.key.kid': r.to,
              'event.reason': `master key ${r.from} -> ${migrate ? 'pkcs11:' : ''}${r.to}${r.resumed ? ' (resumed)' : ''}`,
            }),
            {},
          );
          await ctx.announce({ kind: 'keys-changed' });
          if (json) process.stdout.write(JSON.stringify(result) + '\n');
          else
            process.stderr.write(
              `master key rotated: ${result.from} -> ${result.to}; ${String(result.rewrapped)} wrapped secrets moved${result.resumed ? ' (resumed an interrupted rotation)' : ''}\n`,
            );
        });
      } catch (err) {
        fail(err, json);
      }
    });
}
