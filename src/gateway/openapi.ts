/**
 * Loads an OpenAPI 3.0 / 3.1 document and lists its operations. `$ref`s are resolved within the
 * document and to files beside it; network references are never fetched.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { $RefParser } from '@apidevtools/json-schema-ref-parser';
import { parse as parseYaml } from 'yaml';
import { checkDocumentSchemas } from './openapi-schemas.ts';
import type { SchemaIssue } from './openapi-schemas.ts';
import { compileLinear, PatternError } from './stages/validate/regex.ts';

export const HTTP_METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'] as const;

/** A security requirement: scheme name → required scopes. `{}` means "no credential needed". */
export type SecurityRequirement = Readonly<Record<string, readonly string[]>>;

export interface OpenApiOperation {
  readonly method: string; // upper case
  readonly path: string; // as written in the document, e.g. /patients/{patientId}
  readonly operationId: string | undefined;
  /** Effective requirements: the operation's own, else the document's; [] means public. */
  readonly security: readonly SecurityRequirement[];
  /**
   * Effective parameters: the path item's, overridden by the operation's with the same name and
   * location (dereferenced parameter objects).
   */
  readonly parameters: readonly Readonly<Record<string, unknown>>[];
  /** The dereferenced operation object, for stages that need more (validation, limits). */
  readonly definition: Readonly<Record<string, unknown>>;
}

export interface OpenApiDocument {
  /** sha256 of the document text (hex): part of the runtime version. */
  readonly sha256: string;
  readonly version: string;
  readonly title: string;
  readonly operations: readonly OpenApiOperation[];
  readonly securitySchemes: Readonly<Record<string, Readonly<Record<string, unknown>>>>;
}

/** A document that cannot be used; `message` says where inside it. */
export class OpenApiError extends Error {
  /** Every schema mistake of the document, when that is what is wrong (openapi-schemas.ts). */
  readonly issues: readonly SchemaIssue[];
  constructor(message: string, issues: readonly SchemaIssue[] = []) {
    super(message);
    this.name = 'OpenApiError';
    this.issues = issues;
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function readSecurity(value: unknown, where: string): SecurityRequirement[] {
  if (!Array.isArray(value)) throw new OpenApiError(`${where}: security must be an array`);
  return value.map((req, i) => {
    if (!isObject(req)) throw new OpenApiError(`${where}: security[${i}] must be an object`);
    const out: Record<string, readonly string[]> = {};
    for (const [scheme, scopes] of Object.entries(req)) {
      if (!Array.isArray(scopes) || !scopes.every((s) => typeof s === 'string')) {
        throw new OpenApiError(`${where}: security[${i}].${scheme} must be an array of scope strings`);
      }
      out[scheme] = scopes;
    }
    return out;
  });
}

/** Members whose values are data or vendor extensions, not schemas: their `pattern`s are not. */
const NOT_SCHEMA = new Set(['example', 'examples', 'default', 'enum', 'const']);

/**
 * Every regular expression the document declares (`pattern`, the keys of `patternProperties`)
 * must run on the linear-time engine the validators use; the first that cannot is an error
 * naming the file, its JSON pointer and why (issue 12, #5: ReDoS through contract patterns).
 */
function checkPatterns(node: unknown, file: string, pointer: string, seen = new WeakSet<object>()): void {
  if (typeof node !== 'object' || node === null || seen.has(node)) return;
  seen.add(node);
  if (Array.isArray(node)) {
    node.forEach((item, i) => {
      checkPatterns(item, file, `${pointer}/${String(i)}`, seen);
    });
    return;
  }
  if (!isObject(node)) return;
  for (const [key, value] of Object.entries(node)) {
    if (NOT_SCHEMA.has(key) || key.startsWith('x-')) continue;
    const at = `${pointer}/${key.replaceAll('~', '~0').replaceAll('/', '~1')}`;
    const check = (pattern: string, where: string): void => {
      try {
        compileLinear(pattern);
      } catch (err) {
        if (!(err instanceof PatternError)) throw err;
        throw new OpenApiError(`${file}#${where}: pattern refused: ${err.message}`);
      }
    };
    if (key === 'pattern' && typeof value === 'string') check(value, at);
    else if (key === 'patternProperties' && isObject(value)) {
      for (const name of Object.keys(value))
        check(name, `${at}/${name.replaceAll('~', '~0').replaceAll('/', '~1')}`);
    }
    checkPatterns(value, file, at, seen);
  }
}

/** Parses an already-read document (YAML or JSON text). `file` is used for relative `$ref`s. */
export async function parseOpenApi(text: string, file: string): Promise<OpenApiDocument> {
  let raw: unknown;
  try {
    raw = parseYaml(text, { maxAliasCount: 100 });
  } catch (err) {
    throw new OpenApiError(`not valid YAML or JSON: ${(err as Error).message.split('\n')[0] ?? ''}`);
  }
  if (!isObject(raw)) throw new OpenApiError('not an OpenAPI document (expected an object)');
  const version = raw.openapi;
  if (typeof version !== 'string' || !/^3\.[01]\.\d+$/.test(version)) {
    throw new OpenApiError('"openapi" must be a 3.0.x or 3.1.x version');
  }
  checkPatterns(raw, file, '');
  const schemaIssues = checkDocumentSchemas(raw, text, version.startsWith('3.0'));
  if (schemaIssues.length > 0) {
    throw new OpenApiError(
      `${String(schemaIssues.length)} invalid schema(s), the first at ${schemaIssues[0]?.pointer ?? ''}`,
      schemaIssues,
    );
  }
  let doc: Record<string, unknown>;
  try {
    doc = await $RefParser.dereference<Record<string, unknown>>(file, raw, {
      resolve: { http: false, external: true },
      dereference: { circular: 'ignore' },
    });
  } catch (err) {
    throw new OpenApiError(`cannot resolve a $ref: ${(err as Error).message.split('\n')[0] ?? ''}`);
  }
  const info = isObject(doc.info) ? doc.info : {};
  const paths = doc.paths;
  if (!isObject(paths)) throw new OpenApiError('"paths" must be an object');
  const topSecurity = doc.security === undefined ? [] : readSecurity(doc.security, 'document');
  const components = isObject(doc.components) ? doc.components : {};
  const schemes = isObject(components.securitySchemes) ? components.securitySchemes : {};
  const securitySchemes: Record<string, Record<string, unknown>> = {};
  for (const [name, s] of Object.entries(schemes)) {
    if (!isObject(s)) throw new OpenApiError(`components.securitySchemes.${name} must be an object`);
    securitySchemes[name] = s;
  }

  const operations: OpenApiOperation[] = [];
  for (const [path, item] of Object.entries(paths)) {
    if (!path.startsWith('/')) throw new OpenApiError(`paths: "${path}" must start with "/"`);
    if (!isObject(item)) throw new OpenApiError(`paths."${path}" must be an object`);
    for (const method of HTTP_METHODS) {
      const op = item[method];
      if (op === undefined) continue;
      if (!isObject(op)) throw new OpenApiError(`paths."${path}".${method} must be an object`);
      const where = `paths."${path}".${method}`;
      const security = op.security === undefined ? topSecurity : readSecurity(op.security, where);
      for (const req of security) {
        for (const scheme of Object.keys(req)) {
          if (!(scheme in securitySchemes)) {
            throw new OpenApiError(`${where}: security scheme "${scheme}" is not declared in components`);
          }
          const unverifiable = unverifiableScheme(securitySchemes[scheme] ?? {});
          if (unverifiable !== undefined) {
            throw new OpenApiError(
              `${where}: security scheme "${scheme}" ${unverifiable}; Portcullis verifies oauth2, openIdConnect, http bearer, apiKey (header, query, cookie) and mutualTLS schemes`,
            );
          }
        }
      }
      const parameters = new Map<string, Record<string, unknown>>();
      for (const list of [item.parameters, op.parameters]) {
        if (list === undefined) continue;
        if (!Array.isArray(list)) throw new OpenApiError(`${where}: parameters must be an array`);
        for (const p of list as unknown[]) {
          if (!isObject(p)) throw new OpenApiError(`${where}: each parameter must be an object`);
          parameters.set(`${String(p.in)}:${String(p.name)}`, p);
        }
      }
      operations.push({
        method: method.toUpperCase(),
        parameters: [...parameters.values()],
        path,
        operationId: typeof op.operationId === 'string' ? op.operationId : undefined,
        security,
        definition: op,
      });
    }
  }
  return {
    sha256: createHash('sha256').update(text).digest('hex'),
    version,
    title: typeof info.title === 'string' ? info.title : '',
    operations,
    securitySchemes,
  };
}

/**
 * Why the gateway could never verify a scheme an operation requires, or undefined when it can.
 * Such an operation would refuse every request (default deny), which is a contract mistake the
 * operator should hear about at load, not from callers.
 */
function unverifiableScheme(scheme: Readonly<Record<string, unknown>>): string | undefined {
  const { type } = scheme;
  if (type === 'oauth2' || type === 'openIdConnect' || type === 'mutualTLS') return undefined;
  if (type === 'http') {
    const name = typeof scheme.scheme === 'string' ? scheme.scheme.toLowerCase() : '';
    return name === 'bearer'
      ? undefined
      : `is http "${name || '(no scheme)'}", which the gateway does not verify (a password or digest on every request)`;
  }
  if (type === 'apiKey') {
    if (typeof scheme.name !== 'string' || scheme.name === '') return 'is an apiKey scheme without a name';
    return scheme.in === 'header' || scheme.in === 'query' || scheme.in === 'cookie'
      ? undefined
      : 'is an apiKey scheme whose "in" is not header, query or cookie';
  }
  return `has type ${JSON.stringify(type ?? null)}, which the gateway does not verify`;
}

/** Reads and parses a document file. */
export async function loadOpenApi(file: string): Promise<OpenApiDocument> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new OpenApiError(`cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  return parseOpenApi(text, file);
}
