/**
 * The route table: OpenAPI path templates compiled once into a segment trie, matched against
 * the decoded segments from `normalizeTarget` (./path.ts).
 *
 * Precedence (OpenAPI: concrete paths before templated ones), at every level: a literal
 * segment first, then mixed segments (`{name}.json`, most literal characters first), then a
 * whole-segment parameter; when a branch cannot match the rest of the path the next one is
 * tried (backtracking). The trie is a tree, so one match visits each node at most once.
 *
 * The path item is chosen first and the method second: when the most specific path that
 * matches does not declare the method, the answer is `method-not-allowed` with that path's
 * methods, even if a less specific template declares it (`DELETE /a/search` with
 * `GET /a/search` and `DELETE /a/{id}` is a 405).
 */
import { decodePathPiece, encodeSegment, isDotSegment } from './path.ts';
import { isDenial } from './problems.ts';

/** One operation to route. */
export interface RouteSpec<T> {
  /** An upper-case HTTP method, e.g. `GET`. */
  readonly method: string;
  /** The full gateway path template in OpenAPI syntax, e.g. `/v1/patients/{patientId}`. */
  readonly template: string;
  readonly data: T;
}

export type RouteMatch<T> =
  | {
      readonly kind: 'found';
      readonly data: T;
      /** Parameter values, decoded once (never containing `/`), by parameter name. */
      readonly params: Record<string, string>;
      /** The template as declared. */
      readonly template: string;
    }
  | { readonly kind: 'method-not-allowed'; readonly allow: readonly string[] }
  | { readonly kind: 'not-found' };

export interface RouteTable<T> {
  /**
   * Finds the operation for a method and the decoded segments of a path. `segments` must
   * come from `normalizeTarget`; methods and segments are compared case-sensitively.
   */
  match(method: string, segments: readonly string[]): RouteMatch<T>;
}

interface Endpoint<T> {
  readonly data: T;
  readonly template: string;
  /** Parameter names in capture order. */
  readonly paramNames: readonly string[];
}

interface MixedChild<T> {
  readonly key: string;
  /** Literal text around the parameters: `params + 1` pieces; only the first and last may be empty. */
  readonly pieces: readonly string[];
  readonly minLength: number;
  readonly literalLength: number;
  readonly node: TrieNode<T>;
}

interface TrieNode<T> {
  readonly literals: Map<string, TrieNode<T>>;
  readonly mixed: MixedChild<T>[];
  param: TrieNode<T> | undefined;
  methods: Map<string, Endpoint<T>> | undefined;
  allow: readonly string[];
}

type ParsedSegment =
  | { readonly kind: 'literal'; readonly value: string }
  | { readonly kind: 'param' }
  | { readonly kind: 'mixed'; readonly pieces: readonly string[] };

interface ParsedTemplate {
  readonly segments: readonly ParsedSegment[];
  readonly paramNames: readonly string[];
  /** Equal for equivalent templates (`/a/{x}` and `/a/{y}`). */
  readonly key: string;
}

/** RFC 9110 token characters, upper-case letters only. */
const METHOD = /^[A-Z0-9!#$%&'*+.^_`|~-]+$/;
const PARAM_NAME = /^[A-Za-z0-9_.-]+$/;
const NON_ASCII = /[\u0080-\u{10FFFF}]+/gu;

const NOT_FOUND: RouteMatch<never> = Object.freeze({ kind: 'not-found' });
const NO_PARAMS: Record<string, string> = Object.freeze(Object.create(null) as Record<string, string>);

function newNode<T>(): TrieNode<T> {
  return { literals: new Map(), mixed: [], param: undefined, methods: undefined, allow: [] };
}

function templateError(template: string, problem: string): TypeError {
  return new TypeError(`route template ${JSON.stringify(template)}: ${problem}`);
}

/** Decodes literal template text with the request rules; raw non-ASCII is taken as written. */
function decodeLiteral(template: string, raw: string): string {
  let encoded: string;
  try {
    encoded = raw.replace(NON_ASCII, encodeURIComponent);
  } catch {
    throw templateError(template, 'literal text is not well-formed Unicode');
  }
  try {
    return decodePathPiece(encoded);
  } catch (error) {
    if (isDenial(error)) {
      throw templateError(
        template,
        `literal ${JSON.stringify(raw)} can never match a request (${error.reason})`,
      );
    }
    throw error;
  }
}

function parseSegment(template: string, raw: string, names: string[]): ParsedSegment {
  if (!raw.includes('{') && !raw.includes('}')) {
    const value = decodeLiteral(template, raw);
    if (isDotSegment(value)) throw templateError(template, 'dot segments are not allowed');
    return { kind: 'literal', value };
  }
  const pieces: string[] = [];
  let pos = 0;
  for (;;) {
    const open = raw.indexOf('{', pos);
    const close = raw.indexOf('}', pos);
    if (open === -1) {
      if (close !== -1) throw templateError(template, 'unbalanced braces');
      pieces.push(decodeLiteral(template, raw.slice(pos)));
      break;
    }
    if (close === -1 || close < open) throw templateError(template, 'unbalanced braces');
    const name = raw.slice(open + 1, close);
    if (name.includes('{')) throw templateError(template, 'unbalanced braces');
    if (!PARAM_NAME.test(name)) {
      throw templateError(template, `invalid parameter name ${JSON.stringify(name)} (use A-Z a-z 0-9 _ . -)`);
    }
    if (names.includes(name))
      throw templateError(template, `duplicate parameter name ${JSON.stringify(name)}`);
    names.push(name);
    const literal = raw.slice(pos, open);
    if (literal === '' && pieces.length > 0) {
      throw templateError(template, 'adjacent parameters in one segment are ambiguous');
    }
    pieces.push(literal === '' ? '' : decodeLiteral(template, literal));
    pos = close + 1;
  }
  if (pieces.length === 2 && pieces[0] === '' && pieces[1] === '') return { kind: 'param' };
  return { kind: 'mixed', pieces };
}

function mixedKey(pieces: readonly string[]): string {
  return pieces.map(encodeSegment).join('{}');
}

function parseTemplate(template: unknown): ParsedTemplate {
  if (typeof template !== 'string') throw new TypeError('route template must be a string');
  if (!template.startsWith('/')) throw templateError(template, "must start with '/'");
  if (template.includes('?') || template.includes('#')) {
    throw templateError(template, 'must not contain a query or fragment');
  }
  const names: string[] = [];
  const segments: ParsedSegment[] = [];
  if (template !== '/') {
    const raws = template.slice(1).split('/');
    raws.forEach((raw, i) => {
      if (raw === '') {
        if (i !== raws.length - 1) throw templateError(template, 'empty segment');
        segments.push({ kind: 'literal', value: '' });
      } else {
        segments.push(parseSegment(template, raw, names));
      }
    });
  }
  const key =
    '/' +
    segments
      .map((s) =>
        s.kind === 'literal' ? encodeSegment(s.value) : s.kind === 'param' ? '{}' : mixedKey(s.pieces),
      )
      .join('/');
  return { segments, paramNames: names, key };
}

function childFor<T>(node: TrieNode<T>, segment: ParsedSegment): TrieNode<T> {
  switch (segment.kind) {
    case 'literal': {
      let child = node.literals.get(segment.value);
      if (child === undefined) {
        child = newNode();
        node.literals.set(segment.value, child);
      }
      return child;
    }
    case 'param':
      node.param ??= newNode();
      return node.param;
    case 'mixed': {
      const key = mixedKey(segment.pieces);
      let entry = node.mixed.find((m) => m.key === key);
      if (entry === undefined) {
        const literalLength = segment.pieces.reduce((sum, p) => sum + p.length, 0);
        entry = {
          key,
          pieces: segment.pieces,
          literalLength,
          minLength: literalLength + segment.pieces.length - 1,
          node: newNode(),
        };
        node.mixed.push(entry);
      }
      return entry.node;
    }
  }
}

function finish<T>(node: TrieNode<T>): void {
  if (node.methods !== undefined) node.allow = Object.freeze([...node.methods.keys()].sort());
  node.mixed.sort((a, b) =>
    a.literalLength !== b.literalLength ? b.literalLength - a.literalLength : a.key < b.key ? -1 : 1,
  );
  for (const child of node.literals.values()) finish(child);
  for (const m of node.mixed) finish(m.node);
  if (node.param !== undefined) finish(node.param);
}

/**
 * Matches one decoded segment against a mixed template segment, pushing one value per
 * parameter onto `captures`. Each parameter takes the shortest non-empty text after which the
 * rest can match (the semantics of the anchored lazy regex `^p0(.+?)p1(.+?)…pk$`), found with
 * `indexOf` in linear time: earliest placement of each literal leaves the most room for the
 * rest, so it finds a match whenever one exists, with no regex backtracking to exploit.
 * @internal Exported for tests.
 */
export function matchMixed(
  pieces: readonly string[],
  minLength: number,
  segment: string,
  captures: string[],
): boolean {
  if (segment.length < minLength) return false;
  const last = pieces.length - 1;
  const prefix = pieces[0] ?? '';
  const suffix = pieces[last] ?? '';
  if (!segment.startsWith(prefix) || !segment.endsWith(suffix)) return false;
  const end = segment.length - suffix.length;
  const base = captures.length;
  let pos = prefix.length;
  for (let j = 1; j < last; j++) {
    const literal = pieces[j] ?? '';
    const at = segment.indexOf(literal, pos + 1);
    if (at === -1 || at + literal.length >= end) {
      captures.length = base;
      return false;
    }
    captures.push(segment.slice(pos, at));
    pos = at + literal.length;
  }
  captures.push(segment.slice(pos, end));
  return true;
}

function find<T>(
  node: TrieNode<T>,
  segments: readonly string[],
  i: number,
  captures: string[],
): TrieNode<T> | undefined {
  const segment = segments[i];
  if (segment === undefined) return node.methods === undefined ? undefined : node;
  const literal = node.literals.get(segment);
  if (literal !== undefined) {
    const found = find(literal, segments, i + 1, captures);
    if (found !== undefined) return found;
  }
  // Parameter values are never empty.
  if (segment === '') return undefined;
  for (const m of node.mixed) {
    const base = captures.length;
    if (matchMixed(m.pieces, m.minLength, segment, captures)) {
      const found = find(m.node, segments, i + 1, captures);
      if (found !== undefined) return found;
      captures.length = base;
    }
  }
  if (node.param !== undefined) {
    captures.push(segment);
    const found = find(node.param, segments, i + 1, captures);
    if (found !== undefined) return found;
    captures.pop();
  }
  return undefined;
}

/**
 * Compiles routes into a {@link RouteTable}.
 *
 * Templates use OpenAPI syntax: `/`-separated segments, each a literal, a parameter
 * `{name}` or literal text mixed with parameters (`{name}.json`, `v{major}.{minor}`; two
 * parameters may not touch). Literal text follows the request rules of
 * `normalizeTarget` and may be percent-encoded (decoded once) or raw Unicode. A
 * trailing `/` is a final empty segment, as in requests.
 *
 * @throws TypeError naming the template for: a method that is not an upper-case token, a
 *   template not starting with `/`, a query or fragment, an empty or dot segment,
 *   unbalanced braces, an invalid or duplicate parameter name, adjacent parameters, literal
 *   text no request could match, and the same method declared twice for equivalent templates
 *   (`/a/{x}` and `/a/{y}`).
 *
 * @example
 * const table = buildRouteTable([
 *   { method: 'GET', template: '/v1/patients/search', data: 'search' },
 *   { method: 'GET', template: '/v1/patients/{id}', data: 'read' },
 * ]);
 * table.match('GET', ['v1', 'patients', 'p 1']);
 * // { kind: 'found', data: 'read', params: { id: 'p 1' }, template: '/v1/patients/{id}' }
 */
export function buildRouteTable<T>(routes: ReadonlyArray<RouteSpec<T>>): RouteTable<T> {
  const given: unknown = routes;
  if (!Array.isArray(given)) throw new TypeError('buildRouteTable: routes must be an array');
  const root = newNode<T>();
  const declared = new Map<string, string>();
  for (const route of routes) {
    const { method, template, data } = route;
    if (typeof method !== 'string' || !METHOD.test(method)) {
      throw templateError(template, `invalid method ${JSON.stringify(method)} (an upper-case HTTP method)`);
    }
    const parsed = parseTemplate(template);
    const id = `${method} ${parsed.key}`;
    const previous = declared.get(id);
    if (previous !== undefined) {
      throw templateError(
        template,
        `${method} is already declared for the equivalent template ${JSON.stringify(previous)}`,
      );
    }
    declared.set(id, template);
    let node = root;
    for (const segment of parsed.segments) node = childFor(node, segment);
    node.methods ??= new Map();
    node.methods.set(method, { data, template, paramNames: Object.freeze([...parsed.paramNames]) });
  }
  finish(root);

  return {
    match(method: string, segments: readonly string[]): RouteMatch<T> {
      const captures: string[] = [];
      const node = find(root, segments, 0, captures);
      if (node === undefined) return NOT_FOUND;
      const endpoint = node.methods?.get(method);
      if (endpoint === undefined) return { kind: 'method-not-allowed', allow: node.allow };
      let params = NO_PARAMS;
      const names = endpoint.paramNames;
      if (names.length > 0) {
        params = Object.create(null) as Record<string, string>;
        for (let i = 0; i < names.length; i++) params[names[i] ?? ''] = captures[i] ?? '';
      }
      return { kind: 'found', data: endpoint.data, params, template: endpoint.template };
    },
  };
}
