/**
 * The documentation names only files the repository contains: every relative link and every
 * repository path written in code spans of README.md, docs/ and bench/README.md exists.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '..');
const TOP_DIRS = ['src', 'docs', 'examples', 'bench', 'test', 'deploy', 'scripts', 'bin', '.ci'];

const pages = [
  'README.md',
  'bench/README.md',
  ...readdirSync(join(ROOT, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .map((f) => `docs/${f}`),
];

/** Relative link targets and repository paths in code spans, with the line they are on. */
export function referencedPaths(page: string, text: string): { line: number; path: string }[] {
  const out: { line: number; path: string }[] = [];
  const base = dirname(page);
  text.split('\n').forEach((line, i) => {
    for (const m of line.matchAll(/\]\(([^)\s]+)\)/g)) {
      const target = (m[1] ?? '').split('#')[0] ?? '';
      if (target === '' || /^[a-z][a-z0-9+.-]*:/i.test(target)) continue;
      out.push({ line: i + 1, path: join(base, decodeURIComponent(target)) });
    }
    for (const m of line.matchAll(/`([^`\s]+)`/g)) {
      const span = (m[1] ?? '').replace(/[:,.;)]+$/, '');
      const top = span.split('/')[0] ?? '';
      if (!TOP_DIRS.includes(top) || !span.includes('/') || /[*{}<>$]|\.\.\./.test(span)) continue;
      out.push({ line: i + 1, path: span.replace(/:\d+(-\d+)?$/, '') });
    }
  });
  return out;
}

describe('documentation references', () => {
  it.each(pages)('%s names only files that exist', (page) => {
    const text = readFileSync(join(ROOT, page), 'utf8');
    const missing = referencedPaths(page, text)
      .filter((r) => !existsSync(join(ROOT, r.path)))
      .map((r) => `${page}:${String(r.line)}: ${r.path}`);
    expect(missing).toEqual([]);
  });

  it('finds links and code-span paths (and only those)', () => {
    const found = referencedPaths(
      'docs/x.md',
      'see [a](../src/a.ts#L1), [b](https://example.org), `src/b.ts:12`, `npm test`, `src/**/x.ts`',
    );
    expect(found.map((f) => f.path)).toEqual(['src/a.ts', 'src/b.ts']);
  });
});
