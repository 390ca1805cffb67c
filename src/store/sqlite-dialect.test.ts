import { DatabaseSync } from 'node:sqlite';
import { Kysely, sql } from 'kysely';
import type { Generated } from 'kysely';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { adaptDatabaseSync, createNodeSqliteDialect } from './sqlite-dialect.ts';

interface Things {
  things: { id: Generated<number>; name: string; flag: number; blob: Uint8Array | null };
}

describe('node:sqlite Kysely dialect', () => {
  let raw: DatabaseSync;
  let db: Kysely<Things>;

  beforeEach(async () => {
    raw = new DatabaseSync(':memory:');
    db = new Kysely<Things>({ dialect: createNodeSqliteDialect({ database: raw }) });
    await db.schema
      .createTable('things')
      .addColumn('id', 'integer', (c) => c.primaryKey().autoIncrement())
      .addColumn('name', 'text', (c) => c.notNull())
      .addColumn('flag', 'integer', (c) => c.notNull())
      .addColumn('blob', 'blob')
      .execute();
  });
  afterEach(async () => {
    await db.destroy();
  });

  it('inserts, selects and reports insert ids and affected rows', async () => {
    const inserted = await db
      .insertInto('things')
      .values([
        { name: 'a', flag: 1, blob: null },
        { name: 'b', flag: 0, blob: Buffer.from([1, 2, 3]) },
      ])
      .executeTakeFirstOrThrow();
    expect(inserted.insertId).toBe(2n);
    const rows = await db.selectFrom('things').selectAll().orderBy('id').execute();
    expect(rows).toEqual([
      { id: 1, name: 'a', flag: 1, blob: null },
      { id: 2, name: 'b', flag: 0, blob: new Uint8Array([1, 2, 3]) },
    ]);
    // Ordinary objects, like the pg driver returns, not null-prototype ones.
    expect(Object.getPrototypeOf(rows[0])).toBe(Object.prototype);
    const updated = await db.updateTable('things').set({ flag: 5 }).executeTakeFirstOrThrow();
    expect(updated.numUpdatedRows).toBe(2n);
  });

  it('returns rows from RETURNING statements', async () => {
    const row = await db
      .insertInto('things')
      .values({ name: 'r', flag: 0, blob: null })
      .returning(['id', 'name'])
      .executeTakeFirstOrThrow();
    expect(row).toEqual({ id: 1, name: 'r' });
  });

  it('binds booleans as 0 and 1', async () => {
    const { rows } = await sql<{ t: number; f: number }>`select ${true} as t, ${false} as f`.execute(db);
    expect(rows).toEqual([{ t: 1, f: 0 }]);
  });

  it('refuses values SQLite cannot store instead of coercing them', async () => {
    await expect(sql`select ${new Date()} as d`.execute(db)).rejects.toThrow(/parameter 1 is a Date/);
    await expect(sql`select 1 as a, ${{ a: 1 }} as o`.execute(db)).rejects.toThrow(
      /parameter 1 has unsupported type object/,
    );
    await expect(sql`select ${'x'} as s, ${undefined} as u`.execute(db)).rejects.toThrow(
      /parameter 2 has unsupported type undefined/,
    );
    await expect(sql`select ${'x'} as s, ${1n} as b, ${1.5} as n`.execute(db)).resolves.toEqual({
      rows: [{ s: 'x', b: 1, n: 1.5 }],
    });
  });

  it('binds values as parameters, never as SQL', async () => {
    const hostile = "'); DROP TABLE things; --";
    await db.insertInto('things').values({ name: hostile, flag: 0, blob: null }).execute();
    const row = await db
      .selectFrom('things')
      .select('name')
      .where('name', '=', hostile)
      .executeTakeFirstOrThrow();
    expect(row.name).toBe(hostile);
    expect(await db.selectFrom('things').select('id').execute()).toHaveLength(1);
  });

  it('streams select results', async () => {
    await db
      .insertInto('things')
      .values([1, 2, 3].map((n) => ({ name: `n${String(n)}`, flag: n, blob: null })))
      .execute();
    const names: string[] = [];
    for await (const row of db.selectFrom('things').select('name').orderBy('id').stream()) {
      names.push(row.name);
    }
    expect(names).toEqual(['n1', 'n2', 'n3']);
  });

  it('commits and rolls back transactions', async () => {
    await db.transaction().execute(async (trx) => {
      await trx.insertInto('things').values({ name: 'kept', flag: 0, blob: null }).execute();
    });
    await expect(
      db.transaction().execute(async (trx) => {
        await trx.insertInto('things').values({ name: 'gone', flag: 0, blob: null }).execute();
        throw new Error('abort');
      }),
    ).rejects.toThrow('abort');
    const rows = await db.selectFrom('things').select('name').execute();
    expect(rows).toEqual([{ name: 'kept' }]);
  });

  it('closes the database on destroy, once', async () => {
    await db.selectFrom('things').selectAll().execute();
    await db.destroy();
    expect(raw.isOpen).toBe(false);
    const adapted = adaptDatabaseSync(raw);
    expect(() => adapted.close()).not.toThrow();
    // afterEach destroys again; a fresh instance keeps that harmless.
    raw = new DatabaseSync(':memory:');
    db = new Kysely<Things>({ dialect: createNodeSqliteDialect({ database: raw }) });
  });
});
