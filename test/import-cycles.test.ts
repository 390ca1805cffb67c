/**
 * No import loop anywhere in src/: every `import … from`, `import type … from`, `export … from`,
 * side-effect `import '…'` and literal `import('…')` of every src/**\/*.ts is an edge; a cycle
 * fails the test and is named file by file. Types count: a type-only loop still ties the layers
 * together (the request context must sit below the compiler and the stages).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '..');
const SRC = join(ROOT, 'src');

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...sourceFiles(path));
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts')) out.push(path);
  }
  return out;
}

/** Relative specifiers a module imports or re-exports (comments removed first). */
export function importsOf(text: string): string[] {
  const code = text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '');
  const specs: string[] = [];
  const patterns = [
    /\b(?:import|export)\s+(?:type\s+)?[^'";]*?\bfrom\s*['"]([^'"]+)['"]/g,
    /\bimport\s*['"]([^'"]+)['"]/g,
    /\bimport\(\s*['"]([^'"]+)['"]\s*\)/g,
  ];
  for (const pattern of patterns) for (const m of code.matchAll(pattern)) specs.push(m[1] ?? '');
  return specs.filter((s) => s.startsWith('.'));
}

/** Every elementary cycle's smallest representative, found by depth-first search. */
export function findCycles(graph: ReadonlyMap<string, readonly string[]>): string[][] {
  const cycles = new Map<string, string[]>();
  const state = new Map<string, 'active' | 'done'>();
  const stack: string[] = [];
  const visit = (node: string) => {
    state.set(node, 'active');
    stack.push(node);
    for (const next of graph.get(node) ?? []) {
      const s = state.get(next);
      if (s === 'active') {
        const cycle = stack.slice(stack.indexOf(next));
        const key = [...cycle].sort().join('|');
        if (!cycles.has(key)) cycles.set(key, [...cycle, next]);
      } else if (s === undefined) visit(next);
    }
    stack.pop();
    state.set(node, 'done');
  };
  for (const node of [...graph.keys()].sort()) if (!state.has(node)) visit(node);
  return [...cycles.values()];
}

describe('import graph of src/', () => {
  it('finds a loop when there is one (the checker itself can fail)', () => {
    const graph = new Map([
      ['a.ts', ['b.ts']],
      ['b.ts', ['c.ts']],
      ['c.ts', ['a.ts']],
      ['d.ts', ['a.ts']],
    ]);
    expect(findCycles(graph)).toEqual([['a.ts', 'b.ts', 'c.ts', 'a.ts']]);
    expect(findCycles(new Map([['a.ts', ['b.ts']]]))).toEqual([]);
    expect(
      importsOf(
        "import type { A } from './a.ts';\nexport { b } from '../b.ts';\nimport './c.ts';\n" +
          "const d = await import('./d.ts');\nimport { e } from 'node:e';\n// import { f } from './f.ts';",
      ),
    ).toEqual(['./a.ts', '../b.ts', './c.ts', './d.ts']);
  });

  it('has no import loop', () => {
    const graph = new Map<string, string[]>();
    for (const file of sourceFiles(SRC)) {
      const edges = importsOf(readFileSync(file, 'utf8'))
        .map((spec) => resolve(dirname(file), spec))
        .filter((target) => target.startsWith(SRC))
        .map((target) => relative(ROOT, target));
      graph.set(relative(ROOT, file), edges);
    }
    expect(graph.size).toBeGreaterThan(100);
    const named = findCycles(graph).map((cycle) => cycle.join(' → '));
    expect(named).toEqual([]);
  });
});
