import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { PROBLEMS } from '../src/gateway/problems.ts';

describe('docs', () => {
  it('docs/problems.md lists exactly the registered problem codes with their statuses', async () => {
    const text = await readFile(new URL('../docs/problems.md', import.meta.url), 'utf8');
    const rows = [...text.matchAll(/^\|\s*`([a-z-]+)`\s*\|\s*(\d{3})\s*\|/gm)].map((m) => [
      m[1],
      Number(m[2]),
    ]);
    expect(Object.fromEntries(rows)).toEqual(
      Object.fromEntries(Object.entries(PROBLEMS).map(([k, v]) => [k, v.status])),
    );
    expect(rows).toHaveLength(Object.keys(PROBLEMS).length);
  });
});

describe('configuration reference', () => {
  it('docs/configuration.md is generated from the current schema (run `npm run docs:config`)', async () => {
    const { renderConfigReference } = await import('../src/config/reference.ts');
    const text = await readFile(new URL('../docs/configuration.md', import.meta.url), 'utf8');
    expect(text).toBe(renderConfigReference());
  });
});
