import { describe, expect, it } from 'vitest';
import { normalizeTarget } from './path.ts';
import { buildRouteTable, matchMixed } from './routes.ts';
import type { RouteSpec } from './routes.ts';

function segs(target: string): readonly string[] {
  return normalizeTarget(target, 8192).segments;
}

const PATIENTS: ReadonlyArray<RouteSpec<string>> = [
  { method: 'GET', template: '/v1/patients', data: 'list' },
  { method: 'POST', template: '/v1/patients', data: 'create' },
  { method: 'GET', template: '/v1/patients/search', data: 'search' },
  { method: 'GET', template: '/v1/patients/{patientId}', data: 'read' },
  { method: 'PUT', template: '/v1/patients/{patientId}', data: 'update' },
  { method: 'DELETE', template: '/v1/patients/{patientId}', data: 'delete' },
  { method: 'GET', template: '/v1/patients/{id}/notes', data: 'notes' },
  { method: 'GET', template: '/v1/patients/search/notes/{noteId}', data: 'search-note' },
  { method: 'GET', template: '/v1/files/{name}.json', data: 'file-json' },
  { method: 'GET', template: '/v1/files/{name}', data: 'file' },
  { method: 'GET', template: '/v1/files/report-{year}.{ext}', data: 'report' },
  { method: 'GET', template: '/', data: 'root' },
  { method: 'GET', template: '/v1/dir/', data: 'dir-slash' },
];

describe('buildRouteTable: matching', () => {
  const table = buildRouteTable(PATIENTS);

  it('matches literal routes', () => {
    expect(table.match('GET', segs('/v1/patients'))).toEqual({
      kind: 'found',
      data: 'list',
      params: {},
      template: '/v1/patients',
    });
    expect(table.match('POST', segs('/v1/patients'))).toMatchObject({ kind: 'found', data: 'create' });
    expect(table.match('GET', segs('/'))).toMatchObject({ kind: 'found', data: 'root' });
  });

  it('prefers a literal segment over a parameter', () => {
    expect(table.match('GET', segs('/v1/patients/search'))).toMatchObject({ kind: 'found', data: 'search' });
    const read = table.match('GET', segs('/v1/patients/p-123'));
    expect(read).toMatchObject({ kind: 'found', data: 'read', template: '/v1/patients/{patientId}' });
    expect(read.kind === 'found' && { ...read.params }).toEqual({ patientId: 'p-123' });
  });

  it('backtracks from a literal branch that cannot finish to the templated one', () => {
    const notes = table.match('GET', segs('/v1/patients/search/notes'));
    expect(notes).toMatchObject({ kind: 'found', data: 'notes', template: '/v1/patients/{id}/notes' });
    expect(notes.kind === 'found' && { ...notes.params }).toEqual({ id: 'search' });
    const searchNote = table.match('GET', segs('/v1/patients/search/notes/n1'));
    expect(searchNote).toMatchObject({ kind: 'found', data: 'search-note' });
    expect(searchNote.kind === 'found' && { ...searchNote.params }).toEqual({ noteId: 'n1' });
    expect(table.match('GET', segs('/v1/patients/p1/notes/n1'))).toEqual({ kind: 'not-found' });
  });

  it('matches mixed segments before whole-segment parameters', () => {
    const json = table.match('GET', segs('/v1/files/a.b.json'));
    expect(json).toMatchObject({ kind: 'found', data: 'file-json' });
    expect(json.kind === 'found' && { ...json.params }).toEqual({ name: 'a.b' });
    const plain = table.match('GET', segs('/v1/files/a.xml'));
    expect(plain).toMatchObject({ kind: 'found', data: 'file' });
    expect(plain.kind === 'found' && { ...plain.params }).toEqual({ name: 'a.xml' });
    // '.json' alone would leave {name} empty: falls through to {name}.
    expect(table.match('GET', segs('/v1/files/.json'))).toMatchObject({
      data: 'file',
      params: { name: '.json' },
    });
  });

  it('prefers the mixed segment with more literal text', () => {
    const report = table.match('GET', segs('/v1/files/report-2024.json'));
    expect(report).toMatchObject({ kind: 'found', data: 'report' });
    expect(report.kind === 'found' && { ...report.params }).toEqual({ year: '2024', ext: 'json' });
  });

  it('decodes parameters once: spaces, Unicode and escapes arrive decoded, never a slash', () => {
    const read = table.match('GET', segs('/v1/patients/caf%C3%A9%20au%20lait'));
    expect(read.kind === 'found' && read.params['patientId']).toBe('café au lait');
    const pct = table.match('GET', segs('/v1/patients/100%25'));
    expect(pct.kind === 'found' && pct.params['patientId']).toBe('100%');
    // An encoded slash never reaches the table, so a parameter cannot span segments.
    expect(() => segs('/v1/patients/a%2Fnotes')).toThrow('encoded-slash');
    expect(table.match('GET', segs('/v1/patients/a/b'))).toEqual({ kind: 'not-found' });
  });

  it('gives parameters a prototype-free object', () => {
    const t = buildRouteTable([{ method: 'GET', template: '/{__proto__}/{constructor}', data: 1 }]);
    const m = t.match('GET', ['x', 'y']);
    expect(m.kind).toBe('found');
    if (m.kind === 'found') {
      expect(Object.getPrototypeOf(m.params)).toBeNull();
      expect(Object.entries(m.params)).toEqual([
        ['__proto__', 'x'],
        ['constructor', 'y'],
      ]);
    }
  });

  it('answers 405 with the sorted methods of the matched path', () => {
    expect(table.match('PATCH', segs('/v1/patients/p1'))).toEqual({
      kind: 'method-not-allowed',
      allow: ['DELETE', 'GET', 'PUT'],
    });
    expect(table.match('DELETE', segs('/v1/patients'))).toEqual({
      kind: 'method-not-allowed',
      allow: ['GET', 'POST'],
    });
    // The most specific path is chosen before the method: /search declares GET only.
    expect(table.match('DELETE', segs('/v1/patients/search'))).toEqual({
      kind: 'method-not-allowed',
      allow: ['GET'],
    });
  });

  it('compares methods and paths case-sensitively', () => {
    expect(table.match('get', segs('/v1/patients'))).toEqual({
      kind: 'method-not-allowed',
      allow: ['GET', 'POST'],
    });
    expect(table.match('GET', segs('/V1/patients'))).toEqual({ kind: 'not-found' });
    expect(table.match('GET', segs('/v1/patients/SEARCH'))).toMatchObject({ data: 'read' });
  });

  it('answers 404 for undeclared paths, prefixes and trailing slashes', () => {
    expect(table.match('GET', segs('/v1'))).toEqual({ kind: 'not-found' });
    expect(table.match('GET', segs('/v2/patients'))).toEqual({ kind: 'not-found' });
    expect(table.match('GET', segs('/v1/patients/'))).toEqual({ kind: 'not-found' });
    expect(table.match('GET', segs('/v1/patients/p1/notes/'))).toEqual({ kind: 'not-found' });
    expect(table.match('GET', segs('/v1/patients/p1/extra'))).toEqual({ kind: 'not-found' });
    expect(table.match('GET', segs('/v1/dir'))).toEqual({ kind: 'not-found' });
    expect(table.match('GET', segs('/v1/dir/'))).toMatchObject({ kind: 'found', data: 'dir-slash' });
  });

  it('never binds an empty parameter', () => {
    const t = buildRouteTable([
      { method: 'GET', template: '/a/{x}', data: 1 },
      { method: 'GET', template: '/b/{x}.json', data: 2 },
    ]);
    expect(t.match('GET', ['a', ''])).toEqual({ kind: 'not-found' });
    expect(t.match('GET', ['b', '.json'])).toEqual({ kind: 'not-found' });
  });

  it('matches literal template text written encoded or in Unicode against decoded segments', () => {
    const t = buildRouteTable([
      { method: 'GET', template: '/caf%C3%A9/a%20b', data: 1 },
      { method: 'GET', template: '/患者/{id}', data: 2 },
      { method: 'GET', template: '/%7Euser', data: 3 },
    ]);
    expect(t.match('GET', segs('/caf%c3%a9/a%20b'))).toMatchObject({ data: 1 });
    expect(t.match('GET', segs('/%E6%82%A3%E8%80%85/7'))).toMatchObject({ data: 2, params: { id: '7' } });
    expect(t.match('GET', segs('/~user'))).toMatchObject({ data: 3 });
  });

  it('keeps several mixed templates apart', () => {
    const t = buildRouteTable([
      { method: 'GET', template: '/v{major}.{minor}', data: 'version' },
      { method: 'GET', template: '/{a}-{b}', data: 'dash' },
      { method: 'GET', template: '/{a}-{b}-{c}', data: 'dash3' },
    ]);
    expect(t.match('GET', ['v1.2'])).toMatchObject({ data: 'version', params: { major: '1', minor: '2' } });
    expect(t.match('GET', ['x-y-z'])).toMatchObject({ data: 'dash3', params: { a: 'x', b: 'y', c: 'z' } });
    expect(t.match('GET', ['x-y'])).toMatchObject({ data: 'dash', params: { a: 'x', b: 'y' } });
    expect(t.match('GET', ['x--'])).toMatchObject({ data: 'dash', params: { a: 'x', b: '-' } });
    expect(t.match('GET', ['xy'])).toEqual({ kind: 'not-found' });
  });
});

describe('buildRouteTable: build-time errors', () => {
  const bad: ReadonlyArray<readonly [string, string, RegExp]> = [
    ['GET', 'v1/patients', /must start with '\/'/],
    ['GET', '', /must start with '\/'/],
    ['GET', '/v1/patients?x=1', /query or fragment/],
    ['GET', '/v1#x', /query or fragment/],
    ['GET', '/v1//patients', /empty segment/],
    ['GET', '//', /empty segment/],
    ['GET', '/v1/../admin', /dot segments/],
    ['GET', '/v1/%2e', /dot segments/],
    ['GET', '/v1/{id', /unbalanced braces/],
    ['GET', '/v1/id}', /unbalanced braces/],
    ['GET', '/v1/}id{', /unbalanced braces/],
    ['GET', '/v1/{a{b}}', /unbalanced braces/],
    ['GET', '/v1/{a}b}', /unbalanced braces/],
    ['GET', '/v1/{}', /invalid parameter name/],
    ['GET', '/v1/{a b}', /invalid parameter name/],
    ['GET', '/v1/{id}/x/{id}', /duplicate parameter name "id"/],
    ['GET', '/v1/{id}.{id}', /duplicate parameter name "id"/],
    ['GET', '/v1/{a}{b}', /adjacent parameters/],
    ['GET', '/v1/a b', /can never match a request \(forbidden-char\)/],
    ['GET', '/v1/a;b', /can never match a request \(path-parameter\)/],
    ['GET', '/v1/a%2Fb', /can never match a request \(encoded-slash\)/],
    ['GET', '/v1/a%zz', /can never match a request \(bad-escape\)/],
    ['GET', '/v1/\uD800', /not well-formed Unicode/],
    ['get', '/v1', /invalid method "get"/],
    ['', '/v1', /invalid method ""/],
    ['G ET', '/v1', /invalid method/],
  ];

  it.each(bad)('%s %j is refused', (method, template, message) => {
    expect(() => buildRouteTable([{ method, template, data: 0 }])).toThrow(TypeError);
    expect(() => buildRouteTable([{ method, template, data: 0 }])).toThrow(message);
  });

  it('names the template in the error', () => {
    expect(() => buildRouteTable([{ method: 'GET', template: '/v1/{id', data: 0 }])).toThrow('"/v1/{id"');
  });

  it('refuses the same method on equivalent templates', () => {
    expect(() =>
      buildRouteTable([
        { method: 'GET', template: '/a/{x}', data: 1 },
        { method: 'GET', template: '/a/{y}', data: 2 },
      ]),
    ).toThrow(/"\/a\/\{y\}": GET is already declared for the equivalent template "\/a\/\{x\}"/);
    expect(() =>
      buildRouteTable([
        { method: 'GET', template: '/f/{a}.json', data: 1 },
        { method: 'GET', template: '/f/{b}.json', data: 2 },
      ]),
    ).toThrow(TypeError);
    expect(() =>
      buildRouteTable([
        { method: 'GET', template: '/~a', data: 1 },
        { method: 'GET', template: '/%7Ea', data: 2 },
      ]),
    ).toThrow(TypeError);
  });

  it('allows different methods on equivalent templates, each with its own parameter names', () => {
    const t = buildRouteTable([
      { method: 'GET', template: '/a/{x}', data: 1 },
      { method: 'PUT', template: '/a/{y}', data: 2 },
    ]);
    expect(t.match('GET', ['a', 'v'])).toMatchObject({ data: 1, params: { x: 'v' }, template: '/a/{x}' });
    expect(t.match('PUT', ['a', 'v'])).toMatchObject({ data: 2, params: { y: 'v' }, template: '/a/{y}' });
    expect(t.match('POST', ['a', 'v'])).toEqual({ kind: 'method-not-allowed', allow: ['GET', 'PUT'] });
  });

  it('accepts an empty table that finds nothing', () => {
    expect(buildRouteTable([]).match('GET', [])).toEqual({ kind: 'not-found' });
  });
});

describe('matchMixed', () => {
  // Reference semantics: the anchored lazy regex `^p0(.+?)p1(.+?)…pk$`.
  function reference(pieces: readonly string[], segment: string): string[] | null {
    const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    const source = '^' + pieces.map(escape).join('(.+?)') + '$';
    const m = new RegExp(source, 's').exec(segment);
    return m === null ? null : m.slice(1);
  }

  function run(pieces: readonly string[], segment: string): string[] | null {
    const minLength = pieces.reduce((n, p) => n + p.length, 0) + pieces.length - 1;
    const captures = ['before'];
    const ok = matchMixed(pieces, minLength, segment, captures);
    if (!ok) {
      expect(captures).toEqual(['before']);
      return null;
    }
    return captures.slice(1);
  }

  it('agrees with the lazy regex on exhaustive small inputs', () => {
    const patterns: ReadonlyArray<readonly string[]> = [
      ['', '.json'],
      ['a', ''],
      ['', '-', ''],
      ['a', 'b', 'a'],
      ['', 'ab', 'b', ''],
      ['ab', 'ba', ''],
      ['', 'a', 'a', 'a'],
    ];
    const alphabet = ['a', 'b', '-', '.'];
    const inputs: string[] = [''];
    for (let len = 1; len <= 6; len++) {
      const prev = inputs.filter((s) => s.length === len - 1);
      for (const p of prev) for (const c of alphabet) inputs.push(p + c);
    }
    inputs.push('x.json', 'a.b.json');
    let matched = 0;
    for (const pieces of patterns) {
      for (const input of inputs) {
        const got = run(pieces, input);
        expect(got, `${JSON.stringify(pieces)} on ${JSON.stringify(input)}`).toEqual(
          reference(pieces, input),
        );
        if (got !== null) matched++;
      }
    }
    expect(matched).toBeGreaterThan(100);
  });

  it('stays linear on inputs built to make a backtracking regex explode', () => {
    // `^(.+?)-(.+?)-(.+?)x$` on this input takes cubic time with a backtracking engine.
    const input = '-'.repeat(8000);
    expect(run(['', '-', '-', 'x'], input)).toBeNull();
  });
});
