import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { inspect } from 'node:util';
import { sql } from 'kysely';
import type { Kysely } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  MAX_LIST_LIMIT,
  listConfigVersions,
  openStore,
  parseStoreUrl,
  recordConfigVersion,
  SQLITE_BUSY_TIMEOUT_MS,
} from './index.ts';
import type { Store } from './index.ts';
import { ADVISORY_LOCK_CLASS, MIGRATION_TABLE, migrations } from './migrations.ts';

/** Every migration, in order: a fresh database gets all of them, once. */
// Applied in name order (Kysely sorts them), whatever order the object lists them in.
const ALL_MIGRATIONS = Object.keys(migrations('sqlite')).sort();

const PG_URL = process.env.PORTCULLIS_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const INDEX_TS = fileURLToPath(new URL('./index.ts', import.meta.url));
const SHA_A = 'a'.repeat(64);
const SHA_B = '0123456789abcdef'.repeat(4);

const tmp = mkdtempSync(join(tmpdir(), 'portcullis-store-'));
const pgSchemas: string[] = [];

afterAll(async () => {
  rmSync(tmp, { recursive: true, force: true });
  if (pgSchemas.length === 0) return;
  const client = new pg.Client({ connectionString: PG_URL });
  await client.connect();
  try {
    for (const schema of pgSchemas) {
      // Identifiers are generated below from hex digits only.
      await client.query(`drop schema if exists "${schema}" cascade`);
    }
  } finally {
    await client.end();
  }
});

interface Backend {
  readonly name: 'sqlite' | 'postgres';
  /** A URL for a database nobody has used yet. */
  fresh(): string;
}

let sqliteCounter = 0;
const backends: Backend[] = [
  {
    name: 'sqlite',
    fresh: () => `sqlite:db-${String(++sqliteCounter)}.sqlite`,
  },
  {
    name: 'postgres',
    fresh: () => {
      const schema = `portcullis_test_${randomBytes(8).toString('hex')}`;
      pgSchemas.push(schema);
      const url = new URL(PG_URL);
      url.searchParams.set('schema', schema);
      return url.href;
    },
  },
];

function open(url: string): Promise<Store> {
  return openStore({ url, dataDir: tmp });
}

async function migrationNames<DB>(db: Kysely<DB>): Promise<string[]> {
  const { rows } = await sql<{
    name: string;
  }>`select name from ${sql.table(MIGRATION_TABLE)} order by name`.execute(db);
  return rows.map((r) => r.name);
}

async function tableCount<DB>(db: Kysely<DB>): Promise<number> {
  const { rows } = await sql<{ n: number | string }>`select count(*) as n from config_versions`.execute(db);
  return Number(rows[0]?.n);
}

/** Runs `openStore` in `count` separate Node processes at once; resolves to their outputs. */
function openInProcesses(url: string, count: number): Promise<string[]> {
  const script = `
    const { openStore } = await import(${JSON.stringify(INDEX_TS)});
    const store = await openStore({ url: process.argv[1], dataDir: process.argv[2] });
    process.stdout.write(JSON.stringify(store.appliedMigrations));
    await store.close();
  `;
  const runs = Array.from(
    { length: count },
    () =>
      new Promise<string>((resolve, reject) => {
        const child = spawn(
          process.execPath,
          ['--disable-warning=ExperimentalWarning', '--input-type=module', '-e', script, url, tmp],
          { stdio: ['ignore', 'pipe', 'pipe'] },
        );
        let out = '';
        let err = '';
        child.stdout.on('data', (d: Buffer) => (out += d.toString()));
        child.stderr.on('data', (d: Buffer) => (err += d.toString()));
        child.on('error', reject);
        child.on('close', (code) => {
          if (code === 0) resolve(out);
          else reject(new Error(`child exited with ${String(code)}: ${err}`));
        });
      }),
  );
  return Promise.all(runs);
}

describe.each(backends)('store on $name', (backend) => {
  const url = backend.fresh();
  let opened: Store | undefined;
  const store = (): Store => {
    if (opened === undefined) throw new Error(`the ${backend.name} store did not open`);
    return opened;
  };

  beforeAll(async () => {
    opened = await open(url);
  });
  afterAll(async () => {
    await opened?.close();
  });

  it('applies migration 001 once and is idempotent on reopen', async () => {
    expect(store().kind).toBe(backend.name);
    expect(store().appliedMigrations).toEqual(ALL_MIGRATIONS);
    expect(await migrationNames(store().db)).toEqual(ALL_MIGRATIONS);

    const again = await open(url);
    try {
      expect(again.appliedMigrations).toEqual([]);
      expect(await migrationNames(again.db)).toEqual(ALL_MIGRATIONS);
    } finally {
      await again.close();
    }
  });

  it('round-trips config versions, newest first', async () => {
    const fresh = await open(backend.fresh());
    try {
      const t0 = new Date('2025-03-01T10:00:00.123Z');
      const first = await recordConfigVersion(fresh.db, {
        sha256: SHA_A,
        source: '/etc/portcullis/portcullis.yaml',
        summary: '2 APIs, 5 operations',
        appliedAt: t0,
      });
      expect(first).toEqual({
        id: expect.any(Number),
        sha256: SHA_A,
        source: '/etc/portcullis/portcullis.yaml',
        summary: '2 APIs, 5 operations',
        appliedAt: t0,
      });
      const second = await recordConfigVersion(fresh.db, {
        sha256: SHA_B.toUpperCase(),
        source: 'b.yaml',
        summary: 'second',
      });
      expect(second.sha256).toBe(SHA_B);
      expect(second.id).toBeGreaterThan(first.id);
      expect(second.appliedAt).toBeInstanceOf(Date);
      const third = await recordConfigVersion(fresh.db, {
        sha256: SHA_A,
        source: 'c.yaml',
        summary: '',
      });

      expect(await listConfigVersions(fresh.db, 10)).toEqual([third, second, first]);
      expect(await listConfigVersions(fresh.db, 2)).toEqual([third, second]);
      expect(await listConfigVersions(fresh.db, 1)).toEqual([third]);
    } finally {
      await fresh.close();
    }
  });

  it('stores hostile strings as data', async () => {
    const hostile = [
      "'); DROP TABLE config_versions; --",
      "x' OR '1'='1",
      '"; DELETE FROM config_versions; --',
      "Robert\\'); DROP TABLE students;-- $1 ? :name @p1 %s",
      '\u202e\u{1F600} ünïcödé \n\t\r',
    ];
    const before = await tableCount(store().db);
    for (const text of hostile) {
      const saved = await recordConfigVersion(store().db, { sha256: SHA_A, source: text, summary: text });
      expect(saved.source).toBe(text);
      expect(saved.summary).toBe(text);
    }
    const listed = await listConfigVersions(store().db, hostile.length);
    expect(listed.map((v) => v.source).reverse()).toEqual(hostile);
    expect(listed.map((v) => v.summary).reverse()).toEqual(hostile);
    // The table is still there, with exactly the rows inserted.
    expect(await tableCount(store().db)).toBe(before + hostile.length);
  });

  it('refuses bad input to the repository and accepts the bounds', async () => {
    const bad = ['a'.repeat(63), 'a'.repeat(65), 'g'.repeat(64), `${'a'.repeat(63)}'`, `${'a'.repeat(64)}\n`];
    for (const sha256 of bad) {
      await expect(recordConfigVersion(store().db, { sha256, source: 's', summary: 's' })).rejects.toThrow(
        /sha256 must be 64 hexadecimal digits/,
      );
    }
    await expect(
      recordConfigVersion(store().db, {
        sha256: SHA_A,
        source: 's',
        summary: 's',
        appliedAt: new Date(Number.NaN),
      }),
    ).rejects.toThrow(TypeError);
    for (const limit of [0, -1, 1.5, MAX_LIST_LIMIT + 1, Number.NaN]) {
      await expect(listConfigVersions(store().db, limit)).rejects.toThrow(/limit must be an integer/);
    }
    await expect(listConfigVersions(store().db, 1)).resolves.toHaveLength(1);
    await expect(listConfigVersions(store().db, MAX_LIST_LIMIT)).resolves.toBeInstanceOf(Array);
  });

  it('migrates exactly once when several processes open a fresh database together', async () => {
    const shared = backend.fresh();
    const outputs = await openInProcesses(shared, 3);
    const applied = outputs.map((o) => JSON.parse(o) as string[]);
    expect(applied.filter((a) => a.length > 0)).toEqual([ALL_MIGRATIONS]);
    const check = await open(shared);
    try {
      expect(check.appliedMigrations).toEqual([]);
      expect(await migrationNames(check.db)).toEqual(ALL_MIGRATIONS);
      expect(await tableCount(check.db)).toBe(0);
    } finally {
      await check.close();
    }
  });
});

describe('store on postgres (in-process)', () => {
  it('two stores opening a fresh schema concurrently both succeed with one migration record', async () => {
    const url = backends[1]!.fresh();
    const stores = await Promise.all([open(url), open(url)]);
    try {
      expect(stores.map((s) => s.appliedMigrations).sort()).toEqual([[], ALL_MIGRATIONS]);
      for (const s of stores) {
        expect(await migrationNames(s.db)).toEqual(ALL_MIGRATIONS);
      }
      await recordConfigVersion(stores[0].db, { sha256: SHA_A, source: 'x', summary: 'y' });
      expect(await listConfigVersions(stores[1].db, 5)).toHaveLength(1);
    } finally {
      await Promise.all(stores.map((s) => s.close()));
    }
  });

  it('waits for the advisory lock before migrating', async () => {
    const url = backends[1]!.fresh();
    const schema = new URL(url).searchParams.get('schema')!;
    const holder = new pg.Client({ connectionString: PG_URL });
    await holder.connect();
    let opening: Promise<Store> | undefined;
    try {
      await holder.query('select pg_advisory_lock($1, hashtext($2))', [ADVISORY_LOCK_CLASS, schema]);
      let settled = false;
      opening = open(url);
      opening.then(
        () => (settled = true),
        () => (settled = true),
      );
      // Wait until the store's connection is queued on our lock; opening must not finish first.
      for (;;) {
        const { rows } = await holder.query<{ n: string }>(
          `select count(*) as n from pg_locks
            where locktype = 'advisory' and not granted and classid = $1::bigint::oid`,
          [ADVISORY_LOCK_CLASS],
        );
        if (rows[0]?.n !== '0') break;
        expect(settled, 'openStore finished while the migration lock was held').toBe(false);
        await new Promise((r) => setTimeout(r, 20));
      }
      // Nothing was created while the lock was held.
      const { rows } = await holder.query('select 1 from pg_namespace where nspname = $1', [schema]);
      expect(rows).toHaveLength(0);
    } finally {
      await holder.query('select pg_advisory_unlock($1, hashtext($2))', [ADVISORY_LOCK_CLASS, schema]);
      await holder.end();
    }
    const store = await opening;
    try {
      expect(store.appliedMigrations).toEqual(ALL_MIGRATIONS);
    } finally {
      await store.close();
    }
  });

  it('accepts a URL with a password and keeps the schema parameter out of the connection string', async () => {
    const url = new URL(backends[1]!.fresh());
    url.password = 'trust-auth-ignores-this';
    const parsed = parseStoreUrl(url.href, tmp);
    expect(parsed).toMatchObject({ kind: 'postgres', schema: url.searchParams.get('schema') });
    expect(parsed.kind === 'postgres' && parsed.connectionString.includes('schema=')).toBe(false);
    const store = await open(url.href);
    await store.close();
  });

  it("without a schema parameter, migrates the connection's current schema", async () => {
    const schema = new URL(backends[1]!.fresh()).searchParams.get('schema')!;
    const url = new URL(PG_URL);
    url.searchParams.set('options', `-c search_path=${schema}`);
    // The search_path names a schema that does not exist yet: refused, nothing created.
    await expect(open(url.href)).rejects.toThrow(/no schema in the search_path exists/);
    const admin = new pg.Client({ connectionString: PG_URL });
    await admin.connect();
    try {
      await admin.query(`create schema "${schema}"`);
      const store = await open(url.href);
      try {
        expect(store.appliedMigrations).toEqual(ALL_MIGRATIONS);
      } finally {
        await store.close();
      }
      const { rows } = await admin.query(
        `select table_name from information_schema.tables
          where table_schema = $1 order by table_name`,
        [schema],
      );
      // The migrations' tables (each migration adds some) all landed in the current schema.
      expect(rows.map((r: { table_name: string }) => r.table_name)).toEqual(
        expect.arrayContaining(['config_versions', 'portcullis_migration', 'portcullis_migration_lock']),
      );
    } finally {
      await admin.end();
    }
  });

  it('does not leak the password when the server is unreachable', async () => {
    const secret = 'hunter2-unreachable-Secret';
    const error: unknown = await open(`postgres://postgres:${secret}@127.0.0.1:1/test`).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(Error);
    expect(inspect(error, { depth: 10 })).not.toContain(secret);
  });
});

describe('store on sqlite (files)', () => {
  it('creates the database file, its WAL and its directory for the owner only', async () => {
    const store = await openStore({ url: 'sqlite:nested/dir/p.db', dataDir: tmp });
    try {
      await recordConfigVersion(store.db, { sha256: SHA_A, source: 's', summary: 's' });
      const file = join(tmp, 'nested/dir/p.db');
      expect(statSync(file).mode & 0o777).toBe(0o600);
      expect(existsSync(`${file}-wal`)).toBe(true);
      expect(statSync(`${file}-wal`).mode & 0o077).toBe(0);
      expect(statSync(join(tmp, 'nested/dir')).mode & 0o077).toBe(0);
    } finally {
      await store.close();
    }
  });

  it('tightens an existing world-readable database file to 0600', async () => {
    const file = join(tmp, 'loose.db');
    writeFileSync(file, '');
    chmodSync(file, 0o644);
    expect(statSync(file).mode & 0o777).toBe(0o644);
    const store = await openStore({ url: 'sqlite:loose.db', dataDir: tmp });
    await store.close();
    expect(statSync(file).mode & 0o777).toBe(0o600);
  });

  it('uses WAL, foreign keys and a busy timeout', async () => {
    const store = await openStore({ url: 'sqlite:pragmas.db', dataDir: tmp });
    try {
      const journal = await sql<{ journal_mode: string }>`pragma journal_mode`.execute(store.db);
      expect(journal.rows[0]?.journal_mode).toBe('wal');
      const fk = await sql<{ foreign_keys: number }>`pragma foreign_keys`.execute(store.db);
      expect(fk.rows[0]?.foreign_keys).toBe(1);
      const busy = await sql<{ timeout: number }>`pragma busy_timeout`.execute(store.db);
      expect(busy.rows[0]?.timeout).toBe(SQLITE_BUSY_TIMEOUT_MS);
      expect(SQLITE_BUSY_TIMEOUT_MS).toBeGreaterThan(0);
    } finally {
      await store.close();
    }
  });

  it('opens sqlite::memory: without touching the data directory', async () => {
    const dataDir = join(tmp, 'memory-only');
    const store = await openStore({ url: 'sqlite::memory:', dataDir });
    try {
      expect(store.appliedMigrations).toEqual(ALL_MIGRATIONS);
      await recordConfigVersion(store.db, { sha256: SHA_A, source: 'm', summary: 'm' });
      expect(await listConfigVersions(store.db, 5)).toHaveLength(1);
    } finally {
      await store.close();
    }
    expect(existsSync(dataDir)).toBe(false);
  });

  it('resolves relative files against dataDir and accepts absolute paths', () => {
    expect(parseStoreUrl('sqlite:a/b.db', '/data')).toEqual({ kind: 'sqlite', path: '/data/a/b.db' });
    expect(parseStoreUrl('sqlite:/var/lib/p.db', '/data')).toEqual({
      kind: 'sqlite',
      path: '/var/lib/p.db',
    });
  });
});

describe('store URLs', () => {
  const secret = 'hunter2-Very-Secret';
  const refused: [string, RegExp][] = [
    [`mysql://admin:${secret}@db.example/app`, /unsupported store URL scheme "mysql:"/],
    [`admin:${secret}@db.example/app`, /unsupported store URL scheme "admin:"/],
    [`//admin:${secret}@db.example/app`, /no scheme/],
    [`postgres://admin:${secret}@[::1/app`, /malformed/],
    [`postgres://admin:${secret}@db.example:99999/app`, /malformed/],
    [`postgresql://admin:${secret}@db.example/app?schema=a;drop`, /invalid schema parameter/],
    [`postgres://admin:${secret}@db.example/app?schema=pg_catalog`, /invalid schema parameter/],
    [`postgres://admin:${secret}@db.example/app?schema=1abc`, /invalid schema parameter/],
    [`postgres://admin:${secret}@db.example/app?schema=${'a'.repeat(64)}`, /invalid schema/],
    [`postgres://admin:${secret}@db.example/app?schema=a&schema=b`, /more than one schema/],
    ['sqlite:', /no file name/],
    ['sqlite://host/file.db', /sqlite:FILE/],
    ['sqlite:file.db?mode=ro', /no parameters/],
    ['', /non-empty string/],
  ];

  it.each(refused)('refuses %s without echoing the password', async (url, message) => {
    const error: unknown = await openStore({ url, dataDir: tmp }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Error);
    expect((error as Error).message).toMatch(message);
    expect(inspect(error, { depth: 10 })).not.toContain(secret);
    expect(JSON.stringify(error)).not.toContain(secret);
  });

  it('accepts well-formed URLs of every kind', () => {
    expect(parseStoreUrl('sqlite::memory:', '')).toEqual({ kind: 'sqlite', path: ':memory:' });
    expect(parseStoreUrl(`postgresql://u:${secret}@h:5432/d?schema=Ok_1&sslmode=require`, tmp)).toEqual({
      kind: 'postgres',
      connectionString: `postgresql://u:${secret}@h:5432/d?sslmode=require`,
      schema: 'Ok_1',
    });
    expect(parseStoreUrl('POSTGRES://h/d', tmp)).toMatchObject({ kind: 'postgres', schema: undefined });
  });

  it('requires a data directory for a SQLite file', () => {
    expect(() => parseStoreUrl('sqlite:p.db', '')).toThrow(/dataDir must be a non-empty string/);
  });
});
