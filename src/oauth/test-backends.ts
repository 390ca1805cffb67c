/**
 * Test support: the two store backends (a SQLite file, a fresh PostgreSQL schema) that the
 * authorization-server tests run against. Not imported by production code.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { openStore } from '../store/index.ts';
import type { Store } from '../store/index.ts';

export const PG_URL = process.env.PORTCULLIS_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

export interface TestBackends {
  readonly names: readonly ('sqlite' | 'postgres')[];
  /** A URL for a database nobody has used yet. */
  fresh(name: 'sqlite' | 'postgres'): string;
  open(name: 'sqlite' | 'postgres'): Promise<Store>;
  /** Removes the temporary directory and drops the PostgreSQL schemas. */
  cleanup(): Promise<void>;
  readonly dir: string;
}

export function testBackends(): TestBackends {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-oauth-'));
  const schemas: string[] = [];
  let counter = 0;
  const fresh = (name: 'sqlite' | 'postgres'): string => {
    if (name === 'sqlite') return `sqlite:db-${String(++counter)}.sqlite`;
    const schema = `portcullis_test_${randomBytes(8).toString('hex')}`;
    schemas.push(schema);
    const url = new URL(PG_URL);
    url.searchParams.set('schema', schema);
    return url.href;
  };
  return {
    names: ['sqlite', 'postgres'],
    dir,
    fresh,
    open: (name) => openStore({ url: fresh(name), dataDir: dir }),
    cleanup: async () => {
      rmSync(dir, { recursive: true, force: true });
      if (schemas.length === 0) return;
      const client = new pg.Client({ connectionString: PG_URL });
      await client.connect();
      try {
        // Identifiers are generated above from hex digits only.
        for (const schema of schemas) await client.query(`drop schema if exists "${schema}" cascade`);
      } finally {
        await client.end();
      }
    },
  };
}
