/**
 * Contract lint: an OpenAPI document checked with Spectral's OpenAPI ruleset, the OWASP API
 * Security Top 10 2023 ruleset (`@stoplight/spectral-owasp-ruleset`) and Portcullis's own rules.
 *
 * Some OWASP rules ask the contract to declare what the gateway does itself for every operation
 * (429 answers and RateLimit headers, 401 and 500 problem answers, short-lived tokens, closed
 * objects). Those are turned off here and listed in {@link SATISFIED_BY_GATEWAY} with the reason
 * and the configuration that provides it, so `portcullis lint` can say why they do not apply.
 *
 * Our own rules (`portcullis-*`):
 * - every operation declares its security, or is explicitly public (`security: []`);
 * - OAuth scopes are named `resource:action` (OpenID Connect's own scopes excepted);
 * - every operation declares at least one 4xx (or `default`) response.
 * Bounded strings and arrays are the OWASP ruleset's own `owasp:api4:2023-string-limit` and
 * `array-limit` rules.
 *
 * Spectral resolves `$ref`s to files beside the document and never fetches anything over the
 * network. Linting costs about half a second per document: it runs in the CLI
 * (`portcullis lint`), never in the gateway process.
 */
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { parse as parseYaml } from 'yaml';
import { locateInYaml } from '../gateway/openapi-schemas.ts';

export type LintSeverity = 'error' | 'warning' | 'info' | 'hint';

export interface LintFinding {
  readonly rule: string;
  readonly severity: LintSeverity;
  readonly message: string;
  /** JSON path in the document, dot-separated (`paths./a.get.responses`). */
  readonly path: string;
  readonly line: number | undefined;
  readonly column: number | undefined;
}

export interface LintReport {
  readonly file: string;
  readonly findings: readonly LintFinding[];
  readonly errors: number;
  readonly warnings: number;
}

/** OWASP rules the gateway satisfies for every operation, and how. */
export const SATISFIED_BY_GATEWAY: Readonly<Record<string, string>> = {
  'owasp:api4:2023-rate-limit':
    'the gateway sends RateLimit-Policy and RateLimit headers on every answer of a limited operation (rateLimits.*)',
  'owasp:api4:2023-rate-limit-retry-after': 'the gateway sends Retry-After with every 429 (rateLimits.*)',
  'owasp:api4:2023-rate-limit-responses-429':
    'the gateway answers 429 as an RFC 9457 problem when a limit is exceeded (rateLimits.*)',
  'owasp:api8:2023-define-error-responses-401':
    'the gateway answers 401 as an RFC 9457 problem with WWW-Authenticate before the upstream is called',
  'owasp:api8:2023-define-error-responses-500':
    'the gateway answers 500/502/503/504 as generic RFC 9457 problems; upstream error detail never passes',
  'owasp:api8:2023-define-error-validation':
    'the gateway answers 400/422 validation problems (docs/validation.md) before the upstream is called',
  'owasp:api8:2023-define-cors-origin':
    "the gateway writes CORS headers from the API's cors policy and strips the upstream's",
  'owasp:api2:2023-short-lived-access-tokens':
    'access tokens live oauth.accessTokenTtlSeconds (600 s by default; above 1800 s needs an exception)',
  'owasp:api2:2023-jwt-best-practices':
    'the gateway verifies JWTs per RFC 8725: algorithms pinned (ES256/PS256/EdDSA), explicit typ, iss/aud/exp checked',
  'owasp:api3:2023-no-additionalProperties':
    'the gateway closes objects by default: undeclared properties are refused (docs/validation.md)',
  'owasp:api3:2023-constrained-additionalProperties':
    'the gateway closes objects by default: undeclared properties are refused (docs/validation.md)',
};

const SEVERITIES: readonly LintSeverity[] = ['error', 'warning', 'info', 'hint'];
const HTTP_METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];
const OPENID_SCOPES = new Set(['openid', 'profile', 'email', 'address', 'phone', 'offline_access']);
const SCOPE_NAME = /^[a-z][a-z0-9-]*:[a-z][a-z0-9-]*$/;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The subset of Spectral's API used here (its types are CommonJS and loosely exported). */
interface SpectralResult {
  code: string | number;
  message: string;
  path: (string | number)[];
  severity: number;
  range: { start: { line: number; character: number } };
}
interface SpectralLike {
  setRuleset(ruleset: unknown): void;
  run(document: unknown): Promise<SpectralResult[]>;
}
interface SpectralModules {
  readonly Spectral: new (options: { resolver: unknown }) => SpectralLike;
  readonly Document: new (input: string, parser: unknown, source: string) => unknown;
  readonly yamlParser: unknown;
  readonly oas: unknown;
  readonly owasp: unknown;
  readonly resolver: unknown;
}

let modules: SpectralModules | undefined;

/** Spectral and its rulesets, loaded on first use (they are large; the gateway never loads them). */
function spectralModules(): SpectralModules {
  if (modules !== undefined) return modules;
  const require = createRequire(import.meta.url);
  const core = require('@stoplight/spectral-core') as {
    Spectral: SpectralModules['Spectral'];
    Document: SpectralModules['Document'];
  };
  const parsers = require('@stoplight/spectral-parsers') as { Yaml: unknown };
  const rulesets = require('@stoplight/spectral-rulesets') as { oas: unknown };
  const owaspModule = require('@stoplight/spectral-owasp-ruleset') as { default?: unknown };
  const refResolver = require('@stoplight/spectral-ref-resolver') as {
    Resolver: new (options: {
      resolvers: Record<string, { resolve: (ref: unknown) => Promise<string> }>;
    }) => unknown;
  };
  const readers = require('@stoplight/json-ref-readers') as {
    resolveFile: (ref: unknown) => Promise<string>;
  };
  modules = {
    Spectral: core.Spectral,
    Document: core.Document,
    yamlParser: parsers.Yaml,
    oas: rulesets.oas,
    owasp: owaspModule.default ?? owaspModule,
    // Files only: no http(s) resolver, so a $ref to a URL is reported, never fetched.
    resolver: new refResolver.Resolver({ resolvers: { file: { resolve: readers.resolveFile } } }),
  };
  return modules;
}

/** Portcullis's own rules over the parsed document. */
function ownRules(
  doc: Record<string, unknown>,
): { rule: string; severity: LintSeverity; message: string; path: string[] }[] {
  const out: { rule: string; severity: LintSeverity; message: string; path: string[] }[] = [];
  const topSecurity = doc.security;
  const paths = isObject(doc.paths) ? doc.paths : {};
  for (const [path, item] of Object.entries(paths)) {
    if (!isObject(item)) continue;
    for (const method of HTTP_METHODS) {
      const op = item[method];
      if (!isObject(op)) continue;
      const at = ['paths', path, method];
      if (op.security === undefined && topSecurity === undefined) {
        out.push({
          rule: 'portcullis-operation-security',
          severity: 'error',
          message: `${method.toUpperCase()} ${path} declares no security: name its schemes, or write "security: []" to make it public on purpose`,
          path: at,
        });
      }
      const responses = isObject(op.responses) ? Object.keys(op.responses) : [];
      if (!responses.some((s) => s === 'default' || /^4(\d\d|XX)$/i.test(s))) {
        out.push({
          rule: 'portcullis-error-responses',
          severity: 'warning',
          message: `${method.toUpperCase()} ${path} declares no 4xx or default response: declare the problems a client must handle`,
          path: [...at, 'responses'],
        });
      }
    }
  }
  const components = isObject(doc.components) ? doc.components : {};
  const schemes = isObject(components.securitySchemes) ? components.securitySchemes : {};
  for (const [name, scheme] of Object.entries(schemes)) {
    if (!isObject(scheme) || scheme.type !== 'oauth2' || !isObject(scheme.flows)) continue;
    for (const [flowName, flow] of Object.entries(scheme.flows)) {
      if (!isObject(flow) || !isObject(flow.scopes)) continue;
      for (const scope of Object.keys(flow.scopes)) {
        if (OPENID_SCOPES.has(scope) || SCOPE_NAME.test(scope)) continue;
        out.push({
          rule: 'portcullis-scope-names',
          severity: 'warning',
          message: `scope "${scope}" is not named resource:action (e.g. patients:read)`,
          path: ['components', 'securitySchemes', name, 'flows', flowName, 'scopes', scope],
        });
      }
    }
  }
  return out;
}

const toPointer = (path: readonly (string | number)[]) =>
  '/' + path.map((p) => String(p).replaceAll('~', '~0').replaceAll('/', '~1')).join('/');

/** Lints one document (YAML or JSON). */
export async function lintDocument(file: string): Promise<LintReport> {
  const text = await readFile(file, 'utf8');
  const m = spectralModules();
  const spectral = new m.Spectral({ resolver: m.resolver });
  spectral.setRuleset({
    extends: [
      [m.oas, 'recommended'],
      [m.owasp, 'recommended'],
    ],
    rules: Object.fromEntries(Object.keys(SATISFIED_BY_GATEWAY).map((rule) => [rule, 'off'])),
  });
  const results = await spectral.run(new m.Document(text, m.yamlParser, file));
  const seen = new Set<string>();
  const findings: LintFinding[] = [];
  for (const r of results) {
    const key = `${String(r.code)}\n${r.path.join('.')}\n${r.message}`;
    if (seen.has(key)) continue;
    seen.add(key);
    findings.push({
      rule: String(r.code),
      severity: SEVERITIES[r.severity] ?? 'hint',
      message: r.message,
      path: r.path.join('.'),
      line: r.range.start.line + 1,
      column: r.range.start.character + 1,
    });
  }
  let parsed: unknown;
  try {
    parsed = parseYaml(text);
  } catch {
    parsed = undefined; // Spectral reported the parse error
  }
  if (isObject(parsed)) {
    const locate = locateInYaml(text);
    for (const f of ownRules(parsed)) {
      const at = locate(toPointer(f.path));
      findings.push({
        rule: f.rule,
        severity: f.severity,
        message: f.message,
        path: f.path.join('.'),
        line: at?.line,
        column: at?.col,
      });
    }
  }
  findings.sort((a, b) => (a.line ?? 0) - (b.line ?? 0) || a.rule.localeCompare(b.rule));
  return {
    file,
    findings,
    errors: findings.filter((f) => f.severity === 'error').length,
    warnings: findings.filter((f) => f.severity === 'warning').length,
  };
}
