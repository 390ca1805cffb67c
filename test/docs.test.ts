import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { PROBLEMS } from '../src/gateway/problems.ts';

describe('docs', () => {
  it('docs/problems.md lists exactly the registered problem codes with their statuses', async () => {
    const text = await readFile(new URL('../docs/problems.md', import.meta.url), 'utf8');
    const rows = [...text.matchAll(/^\| `([a-z-]+)` \| (\d{3}) \|/gm)].map((m) => [m[1], Number(m[2])]);
    expect(Object.fromEntries(rows)).toEqual(
      Object.fromEntries(Object.entries(PROBLEMS).map(([k, v]) => [k, v.status])),
    );
    expect(rows).toHaveLength(Object.keys(PROBLEMS).length);
  });
});
