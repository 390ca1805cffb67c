import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'test/**/*.test.ts', 'examples/**/*.test.ts'],
    // Real sockets, real TLS and real databases: keep the 2-core machine from thrashing.
    pool: 'forks',
    maxWorkers: 2,
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // `portcullis start` records where it ran (src/cli/paths.ts); tests keep that out of $HOME.
    env: { PORTCULLIS_STATE_DIR: join(tmpdir(), `portcullis-test-state-${String(process.pid)}`) },
  },
});
