/**
 * Checks every schema of an OpenAPI document against the JSON Schema meta-schema before anything
 * compiles it, and reports every mistake at once, each with the document's line and column, the
 * JSON pointer of the offending keyword and what was expected, in words:
 *
 *   api.yaml:9:19 /paths/~1a/get/parameters/0/schema/type: must be one of array, boolean,
 *   integer, null, number, object, string (got "strnig")
 *
 * rather than the compiler's first complaint (`data/properties/q/type undefined`). Schemas are
 * found where OpenAPI puts them (components, parameters, headers, media types), before `$ref`s
 * are resolved, so each is reported once, where it is written.
 */
import { Ajv as Ajv07 } from 'ajv';
import type { ErrorObject } from 'ajv';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { isMap, isScalar, isSeq, LineCounter, parseDocument } from 'yaml';
import type { Node as YamlNode } from 'yaml';

/** One mistake: where it is written and what is wrong. */
export interface SchemaIssue {
  readonly pointer: string;
  readonly line: number | undefined;
  readonly column: number | undefined;
  readonly message: string;
}

/** Reported at most; a document with more is cut short with a count. */
export const MAX_SCHEMA_ISSUES = 50;

const HTTP_METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const escape = (key: string) => key.replaceAll('~', '~0').replaceAll('/', '~1');

/** Every schema object the document writes, with its JSON pointer. */
function* schemasOf(doc: Record<string, unknown>): Generator<[string, unknown]> {
  const inContent = function* (content: unknown, at: string): Generator<[string, unknown]> {
    if (!isObject(content)) return;
    for (const [type, media] of Object.entries(content)) {
      if (isObject(media) && 'schema' in media) yield [`${at}/${escape(type)}/schema`, media.schema];
    }
  };
  const inParameters = function* (list: unknown, at: string): Generator<[string, unknown]> {
    if (!Array.isArray(list)) return;
    for (const [i, p] of (list as unknown[]).entries()) {
      if (!isObject(p)) continue;
      if ('schema' in p) yield [`${at}/${String(i)}/schema`, p.schema];
      yield* inContent(p.content, `${at}/${String(i)}/content`);
    }
  };
  const inHeaders = function* (headers: unknown, at: string): Generator<[string, unknown]> {
    if (!isObject(headers)) return;
    for (const [name, h] of Object.entries(headers)) {
      if (!isObject(h)) continue;
      if ('schema' in h) yield [`${at}/${escape(name)}/schema`, h.schema];
      yield* inContent(h.content, `${at}/${escape(name)}/content`);
    }
  };
  const inResponses = function* (responses: unknown, at: string): Generator<[string, unknown]> {
    if (!isObject(responses)) return;
    for (const [status, r] of Object.entries(responses)) {
      if (!isObject(r)) continue;
      yield* inContent(r.content, `${at}/${escape(status)}/content`);
      yield* inHeaders(r.headers, `${at}/${escape(status)}/headers`);
    }
  };
  const components = isObject(doc.components) ? doc.components : {};
  if (isObject(components.schemas)) {
    for (const [name, s] of Object.entries(components.schemas))
      yield [`/components/schemas/${escape(name)}`, s];
  }
  if (isObject(components.parameters)) {
    for (const [name, p] of Object.entries(components.parameters)) {
      if (isObject(p) && 'schema' in p) yield [`/components/parameters/${escape(name)}/schema`, p.schema];
    }
  }
  yield* inHeaders(components.headers, '/components/headers');
  yield* inResponses(components.responses, '/components/responses');
  if (isObject(components.requestBodies)) {
    for (const [name, b] of Object.entries(components.requestBodies)) {
      if (isObject(b)) yield* inContent(b.content, `/components/requestBodies/${escape(name)}/content`);
    }
  }
  if (!isObject(doc.paths)) return;
  for (const [path, item] of Object.entries(doc.paths)) {
    if (!isObject(item)) continue;
    const at = `/paths/${escape(path)}`;
    yield* inParameters(item.parameters, `${at}/parameters`);
    for (const method of HTTP_METHODS) {
      const op = item[method];
      if (!isObject(op)) continue;
      yield* inParameters(op.parameters, `${at}/${method}/parameters`);
      if (isObject(op.requestBody))
        yield* inContent(op.requestBody.content, `${at}/${method}/requestBody/content`);
      yield* inResponses(op.responses, `${at}/${method}/responses`);
    }
  }
}

/** An Ajv error in words, with the value found where useful. */
function describe(error: ErrorObject, value: unknown): string {
  const params = error.params as Record<string, unknown>;
  const got =
    value === undefined
      ? ''
      : ` (got ${(JSON.stringify(value) as string | undefined)?.slice(0, 80) ?? typeof value})`;
  switch (error.keyword) {
    case 'enum':
      return `must be one of ${(params.allowedValues as unknown[]).map(String).join(', ')}${got}`;
    case 'type':
      return `must be ${String(params.type).replaceAll(',', ' or ')}${got}`;
    case 'anyOf':
    case 'oneOf':
      return `is not a valid value here${got}`;
    case 'minimum':
      return `must be at least ${String(params.limit)}${got}`;
    case 'uniqueItems':
      return `must not repeat items${got}`;
    case 'minItems':
      return `must have at least ${String(params.limit)} item(s)${got}`;
    case 'format':
      return `must be a valid ${String(params.format)}${got}`;
    default:
      return `fails the meta-schema's "${error.keyword}" rule${got}`;
  }
}

function valueAt(root: unknown, instancePath: string): unknown {
  let node = root;
  for (const raw of instancePath.split('/').slice(1)) {
    const key = raw.replaceAll('~1', '/').replaceAll('~0', '~');
    if (Array.isArray(node)) node = node[Number(key)];
    else if (isObject(node)) node = node[key];
    else return undefined;
  }
  return node;
}

/**
 * For each error, the most specific one per location: Ajv reports `type` and `anyOf` failures
 * for the same `type: strnig`; the `enum` (or deepest) one says it best.
 */
function mostSpecific(errors: readonly ErrorObject[]): ErrorObject[] {
  const rank = (e: ErrorObject) =>
    e.keyword === 'enum' ? 0 : e.keyword === 'anyOf' || e.keyword === 'oneOf' ? 2 : 1;
  const best = new Map<string, ErrorObject>();
  for (const e of errors) {
    const seen = best.get(e.instancePath);
    if (seen === undefined || rank(e) < rank(seen)) best.set(e.instancePath, e);
  }
  return [...best.values()];
}

/** Where a JSON pointer is written in the YAML (or JSON) text, 1-based. */
export function locateInYaml(text: string): (pointer: string) => { line: number; col: number } | undefined {
  const lineCounter = new LineCounter();
  const document = parseDocument(text, { lineCounter, keepSourceTokens: false, uniqueKeys: false });
  return (pointer) => {
    let node: unknown = document.contents;
    let at: YamlNode | undefined;
    for (const raw of pointer.split('/').slice(1)) {
      const key = raw.replaceAll('~1', '/').replaceAll('~0', '~');
      if (isMap(node)) {
        const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === key);
        if (pair === undefined) break;
        at = isScalar(pair.key) ? pair.key : at;
        node = pair.value;
        if (isScalar(node)) at = node;
      } else if (isSeq(node)) {
        const item = node.items[Number(key)];
        if (item === undefined) break;
        node = item;
        at = item as YamlNode;
      } else break;
    }
    const offset = at?.range?.[0];
    return offset === undefined ? undefined : lineCounter.linePos(offset);
  };
}

let ajv07: Ajv07 | undefined;
let ajv2020: Ajv2020 | undefined;

/**
 * Every schema of `doc` (the parsed `text`) checked against the meta-schema of its OpenAPI
 * version: 2020-12 for 3.1, draft-07 for 3.0 (whose extra keywords, such as `nullable`, the
 * meta-schema allows). Empty when all are valid.
 */
export function checkDocumentSchemas(
  doc: Record<string, unknown>,
  text: string,
  openapi30: boolean,
): SchemaIssue[] {
  const ajv = openapi30
    ? (ajv07 ??= new Ajv07({ strict: false, allErrors: true, logger: false }))
    : (ajv2020 ??= new Ajv2020({ strict: false, allErrors: true, logger: false }));
  const issues: { pointer: string; message: string }[] = [];
  for (const [pointer, schema] of schemasOf(doc)) {
    if (typeof schema === 'boolean') continue;
    if (!isObject(schema)) {
      issues.push({ pointer, message: `must be a schema object${schema === null ? ' (got null)' : ''}` });
      continue;
    }
    if (ajv.validateSchema(schema) === true) continue;
    for (const error of mostSpecific(ajv.errors ?? [])) {
      // OpenAPI 3.0 schemas keep draft-04's boolean exclusiveMinimum/Maximum (draft-07 says number).
      if (openapi30 && /\/exclusiveM(in|ax)imum$/.test(error.instancePath)) {
        if (typeof valueAt(schema, error.instancePath) === 'boolean') continue;
      }
      issues.push({
        pointer: pointer + error.instancePath,
        message: describe(error, valueAt(schema, error.instancePath)),
      });
    }
  }
  if (issues.length === 0) return [];
  const locate = locateInYaml(text);
  return issues.slice(0, MAX_SCHEMA_ISSUES).map((i) => {
    const at = locate(i.pointer);
    return { pointer: i.pointer, message: i.message, line: at?.line, column: at?.col };
  });
}
