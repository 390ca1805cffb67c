/**
 * Issue 13: `docs/audit.md` lists exactly the audit events emitted. The registry
 * (`AUDIT_EVENT_TYPES`) must equal the doc's "Event types" table, and a scan of `src/` must find
 * every action the registry lists and no action the registry lacks. The scan reads the places an
 * action is written: `'event.action': …` expressions (string literals and the `${…}` templates
 * below), CLI changes (`ctx.audited('<category>', '<action>', …)`), the request refusal map
 * (`{ category: …, action: … }`), the sign-in actions (`SIGN_IN_ACTIONS`) and the refusal step
 * names (`STAGE_NAMES`).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { AUDIT_EVENT_TYPES } from '../src/audit/event-types.ts';
import { STAGE_NAMES } from '../src/gateway/context.ts';
import { SIGN_IN_ACTIONS } from '../src/oauth/interactions/audit.ts';

const ROOT = resolve(import.meta.dirname, '..');
const ACTION = /^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$/;

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) {
      if (entry.name !== 'testdata' && entry.name !== 'testing') out.push(...sources(path));
    } else if (
      entry.name.endsWith('.ts') &&
      !entry.name.endsWith('.test.ts') &&
      !entry.name.endsWith('.d.ts')
    ) {
      out.push(path);
    }
  }
  return out;
}

const read = (path: string) => readFileSync(join(ROOT, path), 'utf8');

/** `${…}` action templates and the values they take (each read from the code that sets them). */
function templateValues(template: string): string[] {
  if (template === 'circuit-${change.to}') {
    const union =
      /export type CircuitState = ([^;]+);/.exec(read('src/gateway/resilience/guard.ts'))?.[1] ?? '';
    return [...union.matchAll(/'([a-z-]+)'/g)].map((m) => `circuit-${m[1] ?? ''}`);
  }
  if (template === "oauth-${actionWord(e.endpoint ?? 'request')}-refused") {
    // The endpoints are the names of the `<endpoint>.error` events the provider listens to.
    const provider = read('src/oauth/provider.ts');
    return [...provider.matchAll(/^\s+'([a-z_]+)\.error',/gm)].map(
      (m) => `oauth-${(m[1] ?? '').replaceAll('_', '-')}-refused`,
    );
  }
  if (template === 'oauth-${e.type}') {
    // Every OAuthEvent type but `refused` and `logout` (named on their own).
    const union =
      /export interface OAuthEvent \{\s+readonly type: ([^;]+);/.exec(read('src/server/observe.ts'))?.[1] ??
      '';
    return [...union.matchAll(/'([a-z-]+)'/g)]
      .map((m) => m[1] ?? '')
      .filter((t) => t !== 'refused' && t !== 'logout')
      .map((t) => `oauth-${t}`);
  }
  throw new Error(
    `an event.action template the test does not know: \`${template}\` — teach templateValues()`,
  );
}

/** Every action the source writes, with the file it is in. */
function emittedActions(): Map<string, string> {
  const found = new Map<string, string>();
  const add = (action: string, file: string) => {
    expect(action, `${file}: "${action}" is not an action`).toMatch(ACTION);
    if (!found.has(action)) found.set(action, file);
  };
  for (const path of sources(join(ROOT, 'src'))) {
    const file = relative(ROOT, path);
    if (file === 'src/audit/event-types.ts') continue;
    const text = readFileSync(path, 'utf8').replace(/^\s*\*.*$/gm, ''); // not in doc comments
    // 'event.action': <expression> — up to the next field.
    for (const m of text.matchAll(/'event\.action':([\s\S]*?)(?=\n\s*(?:'event\.|\.\.\.|\}))/g)) {
      let expr = m[1] ?? '';
      // Copied from another event, passed in, or the field's own definition (src/audit/event.ts).
      if (/^\s*(?:e\['event\.action'\]|action,?\s*$|\{)/.test(expr)) continue;
      for (const t of expr.matchAll(/`([^`]*)`/g)) for (const a of templateValues(t[1] ?? '')) add(a, file);
      expr = expr.replace(/`[^`]*`/g, '');
      for (const l of expr.matchAll(/(?<![=!]== )'([a-z][a-z0-9-]*)'/g)) add(l[1] ?? '', file);
    }
    // CLI changes: ctx.audited('<category>', '<action>', …)
    for (const m of text.matchAll(/\.audited\(\s*'([a-z-]+)',\s*'([a-z0-9-]+)'/g)) add(m[2] ?? '', file);
    // The admin service (src/admin/service/context.ts): adminAction(svc, actor, { action: '…' }, …),
    // or a spec helper named after the action: spec('<action>', …).
    for (const m of text.matchAll(
      /adminAction(?:<[^>]*>)?\([\s\S]{0,300}?\{[\s\S]{0,400}?action: '([a-z0-9-]+)'/g,
    ))
      add(m[1] ?? '', file);
    for (const m of text.matchAll(/adminAction\(\s*svc,\s*actor,\s*spec\('([a-z0-9-]+)'/g))
      add(m[1] ?? '', file);
    // The request refusal map: { category: '…', action: '…' }
    for (const m of text.matchAll(/\{ category: '[a-z-]+', action: '([a-z0-9-]+)' \}/g))
      add(m[1] ?? '', file);
  }
  for (const a of SIGN_IN_ACTIONS) add(a, 'src/oauth/interactions/audit.ts');
  for (const a of STAGE_NAMES) add(a, 'src/gateway/context.ts (STAGE_NAMES)');
  return found;
}

describe('audit event types', () => {
  it('the registry has each action once, with known categories', () => {
    const actions = AUDIT_EVENT_TYPES.map((t) => t.action);
    expect(new Set(actions).size).toBe(actions.length);
    for (const t of AUDIT_EVENT_TYPES) {
      expect(t.action).toMatch(ACTION);
      expect(t.categories.length).toBeGreaterThan(0);
    }
  });

  it('docs/audit.md lists exactly the registry', () => {
    const doc = read('docs/audit.md');
    const section = doc.slice(doc.indexOf('## Event types'), doc.indexOf('## Fields'));
    const rows = [...section.matchAll(/^\| `([a-z0-9-]+)` +\| ([a-z, -]+?) +\|/gm)].map((m) => ({
      action: m[1] ?? '',
      categories: (m[2] ?? '').split(', '),
    }));
    expect(rows.map((r) => r.action).sort()).toEqual(AUDIT_EVENT_TYPES.map((t) => t.action).sort());
    for (const t of AUDIT_EVENT_TYPES) {
      expect(rows.find((r) => r.action === t.action)?.categories, t.action).toEqual([...t.categories]);
    }
  });

  it('every action emitted in src/ is in the registry, and every registered action is emitted', () => {
    const emitted = emittedActions();
    const registered = new Set(AUDIT_EVENT_TYPES.map((t) => t.action));
    const unlisted = [...emitted].filter(([a]) => !registered.has(a)).map(([a, f]) => `${a} (${f})`);
    expect(unlisted, 'emitted but not in src/audit/event-types.ts and docs/audit.md').toEqual([]);
    const stale = [...registered].filter((a) => !emitted.has(a));
    expect(stale, 'listed but never emitted').toEqual([]);
  });

  it('the scan finds what it should (it cannot pass by finding nothing)', () => {
    const emitted = emittedActions();
    for (const a of [
      'login',
      'api-key-anomaly',
      'tls-handshake-failed',
      'client-create',
      'circuit-half-open',
      'oauth-end-session-confirm-refused',
      'oauth-server-error',
      'allow',
      'retired-version',
    ]) {
      expect(emitted.has(a), a).toBe(true);
    }
  });
});
