/**
 * `portcullis users create|list|show|reset-password|disable|revoke`: end users of the authorization
 * server. Passwords are read from stdin (without echo on a terminal, one line from a pipe), never from the command line; the
 * TOTP provisioning URI is printed once, when `--totp` asks for a second factor.
 */
import type { Command } from 'commander';
import { cliActor } from '../admin/actor.ts';
import type { AdminServices } from '../admin/service/context.ts';
import { grantRole, revokeRole } from '../admin/service/roles.ts';
import { createUser, disableUser, listUsers } from '../admin/service/users.ts';
import { createUsers, kmsSecretWrapper } from '../oauth/users.ts';
import type { UserInfo, UserRecord, Users } from '../oauth/users.ts';
import { common, fail, formatTable } from './common.ts';
import type { CommonOptions } from './common.ts';
import { openCliContext, withCliContext } from './context.ts';
import { endSessionsOf } from './user-sessions.ts';
import type { EndedUserSessions } from '../oauth/user-sessions.ts';
import type { CliContext } from './context.ts';

interface UserOptions extends CommonOptions {
  username: string;
  json?: boolean;
}

interface CreateOptions extends UserOptions {
  totp?: boolean;
  role?: string[];
}

interface RoleOptions extends UserOptions {
  role: string;
}

/** The admin services of a CLI context: the same functions the admin API calls. */
function servicesOf(ctx: CliContext): AdminServices {
  return { db: ctx.store.db, config: () => ctx.loaded.config, audit: ctx.audit };
}

const collect = (value: string, previous: string[] = []) => [...previous, value];

/** Reads the password: hidden input on a TTY (asked twice), else the first line of stdin. */
export async function readPassword(input: NodeJS.ReadStream = process.stdin): Promise<string> {
  if (input.isTTY) {
    const first = await promptHidden(input, 'Password: ');
    const second = await promptHidden(input, 'Repeat password: ');
    if (first !== second) throw new Error('the passwords do not match');
    return first;
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of input) {
    const b = Buffer.isBuffer(chunk) ? chunk : Buffer.from(String(chunk));
    size += b.length;
    if (size > 64 * 1024) throw new Error('password input is too long');
    chunks.push(b);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  const line = text.split(/\r?\n/)[0] ?? '';
  if (line.length === 0) throw new Error('no password on stdin');
  return line;
}

function promptHidden(input: NodeJS.ReadStream, prompt: string): Promise<string> {
  return new Promise((resolve, reject) => {
    process.stderr.write(prompt);
    let value = '';
    input.setRawMode(true);
    input.resume();
    const done = (err?: Error) => {
      input.setRawMode(false);
      input.pause();
      input.off('data', onData);
      process.stderr.write('\n');
      if (err) reject(err);
      else resolve(value);
    };
    const onData = (data: Buffer) => {
      for (const ch of data.toString('utf8')) {
        if (ch === '\r' || ch === '\n') {
          done();
          return;
        }
        if (ch === '\u0003') {
          done(new Error('cancelled'));
          return;
        }
        if (ch === '\u007f' || ch === '\b') value = value.slice(0, -1);
        else value += ch;
      }
    };
    input.on('data', onData);
  });
}

function usersOf(ctx: CliContext): Users {
  const { config } = ctx.loaded;
  return createUsers({
    db: ctx.store.db,
    wrapper: kmsSecretWrapper(ctx.keys.kms),
    login: config.oauth.login,
    issuerName: new URL(config.gateway.publicUrl).host,
  });
}

function endedText(e: EndedUserSessions): string {
  return `ended ${String(e.sessions)} session(s) and ${String(e.grants)} grant(s), revoked ${String(e.accessTokens)} access token(s)`;
}

function userJson(u: UserInfo) {
  return { id: u.id, username: u.username, disabled: u.disabled, totp: u.hasTotp, createdAt: u.createdAt };
}

function recordJson(u: UserRecord) {
  return {
    ...userJson(u),
    federated: u.federated,
    lastLoginAt: u.lastLoginAt,
    passwordChangedAt: u.passwordChangedAt,
  };
}

/** Runs `fn` with the user directory of a CLI context opened for it. */
function withUsers<T>(opts: CommonOptions, fn: (users: Users, ctx: CliContext) => Promise<T>): Promise<T> {
  return withCliContext(opts, (ctx) => fn(usersOf(ctx), ctx));
}

export function registerUsersCommands(program: Command): void {
  const users = program.command('users').description('end users of the authorization server');

  common(users.command('create').description('create a user; the password is read from stdin'))
    .requiredOption('--username <name>', 'login name (letters, digits, . _ @ + -)')
    .option('--totp', 'require a TOTP second factor (prints the provisioning URI once)')
    .option('--role <role>', 'grant a role (repeatable): one under roles:, or an admin role', collect)
    .option('--json', 'machine-readable output')
    .action(async (opts: CreateOptions) => {
      const json = opts.json === true;
      try {
        const password = await readPassword();
        const ctx = await openCliContext(opts);
        try {
          const created = await createUser(servicesOf(ctx), usersOf(ctx), cliActor(), {
            username: opts.username,
            password,
            totp: opts.totp === true,
            roles: opts.role ?? [],
          });
          if (json) {
            process.stdout.write(
              JSON.stringify(
                {
                  ...userJson(created.user),
                  roles: created.roles,
                  ...(created.totpUri === undefined ? {} : { totpUri: created.totpUri }),
                },
                null,
                2,
              ) + '\n',
            );
          } else {
            process.stderr.write(`created user ${created.user.username} (${created.user.id})\n`);
            if (created.totpUri !== undefined) {
              process.stderr.write('Add this to an authenticator app now; it is not shown again:\n');
              process.stdout.write(`${created.totpUri}\n`);
            }
          }
        } finally {
          await ctx.close();
        }
      } catch (err) {
        fail(err, json);
      }
    });

  common(
    users
      .command('disable')
      .description('disable a user: sign-in refused from now on, and their sessions, grants and tokens end'),
  )
    .requiredOption('--username <name>', 'login name')
    .option('--json', 'machine-readable output')
    .action(async (opts: UserOptions) => {
      const json = opts.json === true;
      try {
        const ctx = await openCliContext(opts);
        try {
          const user = await disableUser(servicesOf(ctx), usersOf(ctx), cliActor(), opts.username);
          // Disabling also ends the user's sessions, grants and tokens at once (issue 13).
          const ended = await endSessionsOf(ctx, user.id);
          if (json)
            process.stdout.write(
              JSON.stringify(
                {
                  id: user.id,
                  username: user.username,
                  disabled: user.disabled,
                  totp: user.totp,
                  createdAt: user.createdAt,
                  revoked: ended,
                },
                null,
                2,
              ) + '\n',
            );
          else process.stderr.write(`disabled user ${user.username}; ${endedText(ended)}\n`);
        } finally {
          await ctx.close();
        }
      } catch (err) {
        fail(err, json);
      }
    });

  common(
    users
      .command('revoke')
      .argument('[username]', 'login name (or --username)')
      .description(
        "end a user's sessions, grants and tokens at once (the gateway refuses their access tokens from now on); the account stays usable",
      ),
  )
    .option('--username <name>', 'login name')
    .option('--json', 'machine-readable output')
    .action(async (positional: string | undefined, opts: Partial<UserOptions> & CommonOptions) => {
      const json = opts.json === true;
      try {
        const username = positional ?? opts.username;
        if (username === undefined || username === '')
          throw new Error('name the user: users revoke <username>');
        const ctx = await openCliContext(opts);
        try {
          const { user, ended } = await ctx.audited(
            'credential-lifecycle',
            'user-sessions-revoke',
            async () => {
              const record = await usersOf(ctx).show(username);
              return { user: record, ended: await endSessionsOf(ctx, record.id) };
            },
            (r) => ({ 'user.id': r.user.id, 'portcullis.credential.type': 'user' }),
            { 'portcullis.credential.type': 'user' },
          );
          if (json)
            process.stdout.write(JSON.stringify({ ...userJson(user), revoked: ended }, null, 2) + '\n');
          else process.stderr.write(`${user.username}: ${endedText(ended)}\n`);
        } finally {
          await ctx.close();
        }
      } catch (err) {
        fail(err, json);
      }
    });

  common(users.command('list').description('list the users (never a password or second-factor secret)'))
    .option('--json', 'machine-readable output')
    .action(async (opts: CommonOptions & { json?: boolean }) => {
      const json = opts.json === true;
      try {
        const all = await withCliContext(opts, (ctx) => listUsers(servicesOf(ctx), usersOf(ctx), cliActor()));
        if (json) {
          process.stdout.write(
            JSON.stringify(
              {
                users: all.map((u) => ({
                  id: u.id,
                  username: u.username,
                  disabled: u.disabled,
                  totp: u.totp,
                  createdAt: u.createdAt,
                  federated: u.federated,
                  lastLoginAt: u.lastLoginAt,
                  roles: u.roles,
                })),
              },
              null,
              2,
            ) + '\n',
          );
          return;
        }
        process.stdout.write(
          formatTable(
            ['USERNAME', 'ID', 'STATUS', 'TOTP', 'ROLES', 'CREATED', 'LAST LOGIN'],
            all.map((u) => [
              u.username,
              u.id,
              u.disabled ? 'disabled' : 'active',
              u.totp ? 'yes' : 'no',
              u.roles.join(',') || '-',
              u.createdAt,
              u.lastLoginAt ?? '-',
            ]),
          ),
        );
      } catch (err) {
        fail(err, json);
      }
    });

  for (const [name, verb, fn] of [
    ['grant-role', 'grant', grantRole],
    ['revoke-role', 'revoke', revokeRole],
  ] as const) {
    common(users.command(name).description(`${verb} a role (audited; separation of duties applies)`))
      .requiredOption('--username <name>', 'login name')
      .requiredOption(
        '--role <role>',
        'a role under roles:, or auditor, operator, security-officer, key-custodian',
      )
      .option('--json', 'machine-readable output')
      .action(async (opts: RoleOptions) => {
        const json = opts.json === true;
        try {
          const change = await withCliContext(opts, (ctx) =>
            fn(servicesOf(ctx), cliActor(), { username: opts.username, role: opts.role }),
          );
          if (json) {
            process.stdout.write(
              JSON.stringify(
                {
                  username: change.username,
                  role: change.role,
                  changed: change.changed,
                  roles: change.roles,
                },
                null,
                2,
              ) + '\n',
            );
          } else {
            process.stderr.write(
              `${change.changed ? (verb === 'grant' ? 'granted' : 'revoked') : 'unchanged:'} ${change.role} ${verb === 'grant' ? 'to' : 'from'} ${change.username}; roles now: ${change.roles.join(', ') || '-'}\n`,
            );
          }
        } catch (err) {
          fail(err, json);
        }
      });
  }

  common(users.command('show').description('show one user'))
    .requiredOption('--username <name>', 'login name')
    .option('--json', 'machine-readable output')
    .action(async (opts: UserOptions) => {
      const json = opts.json === true;
      try {
        const u = await withUsers(opts, (users) => users.show(opts.username));
        if (json) {
          process.stdout.write(JSON.stringify(recordJson(u), null, 2) + '\n');
          return;
        }
        const j = recordJson(u);
        process.stdout.write(
          formatTable(
            ['FIELD', 'VALUE'],
            Object.entries(j).map(([k, v]) => [k, v === null ? '-' : String(v)]),
          ),
        );
      } catch (err) {
        fail(err, json);
      }
    });

  common(
    users
      .command('reset-password')
      .description('set a new password (read from stdin) and clear the sign-in throttle of the account'),
  )
    .requiredOption('--username <name>', 'login name')
    .option('--json', 'machine-readable output')
    .action(async (opts: UserOptions) => {
      const json = opts.json === true;
      try {
        const password = await readPassword();
        const u = await withUsers(opts, (users, ctx) =>
          ctx.audited(
            'credential-lifecycle',
            'user-reset-password',
            () => users.resetPassword(opts.username, password),
            (r) => ({ 'user.id': r.id, 'portcullis.credential.type': 'user' }),
            { 'portcullis.credential.type': 'user' },
          ),
        );
        if (json) process.stdout.write(JSON.stringify(recordJson(u), null, 2) + '\n');
        else process.stderr.write(`password of ${u.username} changed\n`);
      } catch (err) {
        fail(err, json);
      }
    });
}
