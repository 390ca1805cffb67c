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
import { PEPPER_PURPOSES } from '../keys/index.ts';
import type { PepperPurpose } from '../keys/types.ts';

/** `--grace`: `0`, or a count of days (`7d`) or hours (`12h`); milliseconds. */
export function parseGrace(text: string): number | undefined {
  if (text === '0') return 0;
  const m = /^([1-9][0-9]{0,3})([dh])$/.exec(text);
  if (m === null) return undefined;
  return Number(m[1]) * (m[2] === 'd' ? 86_400_000 : 3_600_000);
}

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
      .command('rotate-pepper')
      .description(
        'replace the peppers of client-secret and API-key hashes; the old ones stay valid for --grace (secrets used meanwhile are re-hashed), then retire',
      ),
  )
    .option('--purpose <purpose>', `only one pepper: ${PEPPER_PURPOSES.join(' or ')}`)
    .option('--grace <time>', 'how long the old pepper stays valid: 0, <n>d or <n>h', '7d')
    .option('--json', 'machine-readable output')
    .action(async (opts: KeysOptions & { purpose?: string; grace: string }) => {
      const json = opts.json === true;
      const graceMs = parseGrace(opts.grace);
      if (graceMs === undefined)
        fail(new Error(`--grace: expected 0, <n>d or <n>h, not "${opts.grace}"`), json);
      const purposes = PEPPER_PURPOSES.filter((p) => opts.purpose === undefined || p === opts.purpose);
      if (purposes.length === 0) {
        fail(
          new Error(`--purpose: expected ${PEPPER_PURPOSES.join(' or ')}, not "${opts.purpose ?? ''}"`),
          json,
        );
      }
      try {
        await withCliContext(opts, async (ctx) => {
          const results = [];
          for (const purpose of purposes) {
            results.push(
              await ctx.audited(
                'key-lifecycle',
                'pepper-rotate',
                () => ctx.keys.rotatePepper(purpose, graceMs),
                (r) => ({
                  'event.reason': `${r.purpose} pepper replaced; the old one ${r.previous === undefined ? 'retired at once' : `(${r.previous}) retires ${r.retiresAt.toISOString()}`}`,
                }),
                { 'event.reason': `${purpose} pepper` },
              ),
            );
          }
          const pickup = await ctx.announce({ kind: 'keys-changed' });
          const out = results.map((r) => ({
            purpose: r.purpose,
            previous: r.previous ?? null,
            retiresAt: r.retiresAt.toISOString(),
          }));
          if (json) process.stdout.write(JSON.stringify({ peppers: out }) + '\n');
          else {
            for (const r of out) {
              process.stderr.write(
                `${r.purpose} pepper rotated; ${r.previous === null ? 'the old one is retired' : `the old one is accepted until ${r.retiresAt}`}\n`,
              );
            }
            process.stderr.write(`${PICKUP[pickup]}\n`);
          }
        });
      } catch (err) {
        fail(err, json);
      }
    });

  common(
    keys.command('retire-peppers').description('retire replaced peppers now, before their grace period ends'),
  )
    .option('--purpose <purpose>', `only one pepper: ${PEPPER_PURPOSES.join(' or ')}`)
    .option('--json', 'machine-readable output')
    .action(async (opts: KeysOptions & { purpose?: string }) => {
      const json = opts.json === true;
      const purposes: PepperPurpose[] = PEPPER_PURPOSES.filter(
        (p) => opts.purpose === undefined || p === opts.purpose,
      );
      if (purposes.length === 0) {
        fail(
          new Error(`--purpose: expected ${PEPPER_PURPOSES.join(' or ')}, not "${opts.purpose ?? ''}"`),
          json,
        );
      }
      try {
        await withCliContext(opts, async (ctx) => {
          const retired: string[] = [];
          for (const purpose of purposes) {
            retired.push(
              ...(await ctx.audited(
                'key-lifecycle',
                'pepper-retire',
                () => ctx.keys.retirePeppers(purpose),
                (ids) => ({
                  'event.reason': `${purpose} peppers retired: ${ids.length === 0 ? 'none' : ids.join(', ')}`,
                }),
                { 'event.reason': `${purpose} pepper` },
              )),
            );
          }
          await ctx.announce({ kind: 'keys-changed' });
          if (json) process.stdout.write(JSON.stringify({ retired }) + '\n');
          else process.stderr.write(`${String(retired.length)} replaced peppers retired\n`);
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
