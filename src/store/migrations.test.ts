import { describe, expect, it } from 'vitest';
import { isTransient, MigrationError } from './migrations.ts';

describe('which migration failures are retried', () => {
  it('retries what a concurrent schema drop causes, deadlocks, serialization failures and lock timeouts', () => {
    for (const state of ['3F000', '42P01', '40001', '40P01', '55P03']) {
      expect(isTransient(new MigrationError('store migration failed', state, undefined))).toBe(true);
    }
  });

  it('does not retry real failures', () => {
    for (const state of ['42601', '42703', '23505', '28P01', undefined]) {
      expect(isTransient(new MigrationError('store migration failed', state, undefined))).toBe(false);
    }
    expect(isTransient(new Error('store migration failed'))).toBe(false);
  });
});
