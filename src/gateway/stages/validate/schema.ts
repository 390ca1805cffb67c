/**
 * OpenAPI schemas made ready for Ajv, once per configuration version, and shared by the
 * request-validation and response-enforcement stages.
 *
 * - OpenAPI 3.1 schemas are JSON Schema 2020-12 (Ajv2020); 3.0 schemas run on Ajv's draft-07 with
 *   `nullable` and the boolean `exclusiveMinimum`/`exclusiveMaximum` rewritten.
 * - Object schemas that say nothing about extra members get `additionalProperties: false`
 *   (authors opt out with `additionalProperties: true` or a schema). `allOf` members stay open;
 *   the object that combines them is closed over the union of their properties instead.
 *   Wrappers with `oneOf`/`anyOf` stay open; each alternative is closed on its own.
 * - `pattern`, `patternProperties` and the regex formats run on RE2 (regex.ts), never on V8's
 *   backtracking engine.
 * - Requests: a `readOnly` property becomes a schema that always fails (rule `readOnly`: mass
 *   assignment) and leaves `required`. Responses: a `writeOnly` property leaves `required` (the
 *   response stage removes it before validating).
 */
import { Ajv } from 'ajv';
import type { ErrorObject, Options, ValidateFunction } from 'ajv';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormatsModule from 'ajv-formats';
import type { OpenApiDocument } from '../../openapi.ts';
import { boundPointer, pointerSegment } from '../../json.ts';
import type { InvalidParam } from '../../problems.ts';
import { LINEAR_FORMATS, linearRegExp, linearTester } from './regex.ts';

/** Either Ajv flavour: draft-07 for OpenAPI 3.0, 2020-12 for 3.1. */
export type AnyAjv = Ajv | Ajv2020;

const addFormats = addFormatsModule as unknown as (ajv: AnyAjv) => AnyAjv;

export type Schema = Record<string, unknown> | boolean;
export type Direction = 'request' | 'response';

/** The keyword that stands for a readOnly property in a request; reported as rule `readOnly`. */
export const READ_ONLY_KEYWORD = 'x-portcullis-read-only';

/** A schema (or an operation) the gateway cannot enforce: a start-up error naming it. */
export class SchemaError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SchemaError';
  }
}

export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function typeIncludes(schema: Record<string, unknown>, type: string): boolean {
  const t = schema.type;
  return t === type || (Array.isArray(t) && t.includes(type));
}

function isObjectSchema(schema: Record<string, unknown>): boolean {
  if (typeIncludes(schema, 'object') || isRecord(schema.properties)) return true;
  return Array.isArray(schema.allOf) && schema.allOf.some((m) => isRecord(m) && isObjectSchema(m));
}

function saysAdditional(schema: Record<string, unknown>): boolean {
  return (
    schema.additionalProperties !== undefined ||
    schema.patternProperties !== undefined ||
    schema.unevaluatedProperties !== undefined
  );
}

const MAP_KEYWORDS = ['properties', 'patternProperties', 'dependentSchemas', '$defs', 'definitions'];
const SCHEMA_KEYWORDS = [
  'additionalProperties',
  'unevaluatedProperties',
  'additionalItems',
  'unevaluatedItems',
  'contains',
  'propertyNames',
  'not',
  'if',
  'then',
  'else',
];
const ARRAY_KEYWORDS = ['anyOf', 'oneOf', 'prefixItems'];

/** Property names an `allOf` combination declares, through nested `allOf`s; null if open. */
function allOfProperties(schema: Record<string, unknown>, names: Set<string>): boolean {
  if (isRecord(schema.properties)) for (const k of Object.keys(schema.properties)) names.add(k);
  if (schema.additionalProperties !== undefined && schema.additionalProperties !== false) return false;
  if (schema.patternProperties !== undefined || schema.unevaluatedProperties !== undefined) return false;
  if (schema.anyOf !== undefined || schema.oneOf !== undefined) return false;
  if (Array.isArray(schema.allOf)) {
    for (const member of schema.allOf) {
      if (!isRecord(member)) {
        if (member === true) return false;
        continue;
      }
      if (!allOfProperties(member, names)) return false;
    }
  }
  return true;
}

/**
 * Returns a transformed deep copy of `schema` for `direction`. `openapi30` selects the 3.0
 * rewrites. Shared sub-schemas stay shared in the copy.
 */
export function prepareSchema(schema: unknown, direction: Direction, openapi30: boolean): Schema {
  const memo = new Map<object, Schema>();
  const walk = (node: unknown, inAllOf: boolean): Schema => {
    if (typeof node === 'boolean') return node;
    if (!isRecord(node)) return {};
    const key = inAllOf ? undefined : node;
    if (key !== undefined) {
      const seen = memo.get(key);
      if (seen !== undefined) return seen;
    }
    if (typeof node.$ref === 'string') {
      throw new SchemaError(`unresolved (recursive) $ref ${JSON.stringify(node.$ref)} is not supported`);
    }
    const out: Record<string, unknown> = {};
    if (key !== undefined) memo.set(key, out);
    for (const [k, v] of Object.entries(node)) {
      if (MAP_KEYWORDS.includes(k) && isRecord(v)) {
        const m: Record<string, Schema> = {};
        for (const [name, sub] of Object.entries(v)) m[name] = walk(sub, false);
        out[k] = m;
      } else if (SCHEMA_KEYWORDS.includes(k) && (isRecord(v) || typeof v === 'boolean')) {
        out[k] = walk(v, false);
      } else if (k === 'items') {
        out[k] = Array.isArray(v) ? v.map((s) => walk(s, false)) : walk(v, false);
      } else if (k === 'allOf' && Array.isArray(v)) {
        out[k] = v.map((s) => walk(s, true));
      } else if (ARRAY_KEYWORDS.includes(k) && Array.isArray(v)) {
        out[k] = v.map((s) => walk(s, false));
      } else {
        out[k] = v;
      }
    }
    if (openapi30) {
      if (out.nullable === true) {
        if (typeof out.type === 'string') out.type = [out.type, 'null'];
        if (Array.isArray(out.enum) && !out.enum.includes(null))
          out.enum = [...(out.enum as unknown[]), null];
      }
      delete out.nullable;
      for (const [flag, bound] of [
        ['exclusiveMinimum', 'minimum'],
        ['exclusiveMaximum', 'maximum'],
      ] as const) {
        if (out[flag] === true && typeof out[bound] === 'number') {
          out[flag] = out[bound];
          Reflect.deleteProperty(out, bound);
        } else if (typeof out[flag] === 'boolean') {
          Reflect.deleteProperty(out, flag);
        }
      }
    }
    // readOnly / writeOnly members.
    if (isRecord(out.properties)) {
      const props = out.properties as Record<string, Schema>;
      const dropped = new Set<string>();
      for (const [name, sub] of Object.entries(props)) {
        if (!isRecord(sub)) continue;
        if (direction === 'request' && sub.readOnly === true) {
          props[name] = { [READ_ONLY_KEYWORD]: true };
          dropped.add(name);
        } else if (direction === 'response' && sub.writeOnly === true) {
          dropped.add(name);
        }
      }
      if (dropped.size > 0 && Array.isArray(out.required)) {
        out.required = out.required.filter((r) => typeof r !== 'string' || !dropped.has(r));
      }
    }
    // Closed by default.
    if (!inAllOf && isObjectSchema(out) && !saysAdditional(out) && out.anyOf === undefined) {
      if (out.oneOf === undefined && out.if === undefined && out.dependentSchemas === undefined) {
        if (Array.isArray(out.allOf)) {
          const names = new Set<string>();
          if (allOfProperties(out, names)) {
            const props = isRecord(out.properties) ? { ...out.properties } : {};
            for (const name of names) if (!(name in props)) props[name] = true;
            out.properties = props;
            out.additionalProperties = false;
          }
        } else {
          out.additionalProperties = false;
        }
      }
    }
    return out;
  };
  return walk(schema, false);
}

const BYTE = linearTester('^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$');

const OPENAPI_FORMATS: Record<string, { type: 'number' | 'string'; validate: (v: never) => boolean }> = {
  int32: { type: 'number', validate: (v: number) => Number.isInteger(v) && v >= -(2 ** 31) && v < 2 ** 31 },
  int64: { type: 'number', validate: (v: number) => Number.isInteger(v) },
  float: { type: 'number', validate: () => true },
  double: { type: 'number', validate: () => true },
  byte: {
    type: 'string',
    validate: (v: string) => BYTE(v),
  },
  binary: { type: 'string', validate: () => true },
  password: { type: 'string', validate: () => true },
};

function newAjv(openapi30: boolean, coerce: boolean): AnyAjv {
  const options: Options = {
    strict: false,
    allErrors: true,
    messages: false,
    logger: false,
    unicodeRegExp: true,
    validateFormats: true,
    // `pattern` and `patternProperties` on RE2: linear time whatever the input (regex.ts).
    code: { regExp: linearRegExp },
    ...(coerce ? { coerceTypes: 'array' as const } : {}),
  };
  const ajv: AnyAjv = openapi30 ? new Ajv(options) : new Ajv2020(options);
  addFormats(ajv);
  for (const [name, validate] of Object.entries(LINEAR_FORMATS))
    ajv.addFormat(name, { type: 'string', validate });
  for (const [name, format] of Object.entries(OPENAPI_FORMATS)) {
    ajv.addFormat(name, format as { type: 'number'; validate: (v: number) => boolean });
  }
  ajv.addKeyword({ keyword: READ_ONLY_KEYWORD, schemaType: 'boolean', validate: () => false, errors: false });
  return ajv;
}

/** The Ajv instances of one document: strict for bodies, coercing (strings) for parameters. */
export interface DocumentAjv {
  readonly openapi30: boolean;
  readonly strict: AnyAjv;
  readonly coercing: AnyAjv;
}

const perDocument = new WeakMap<OpenApiDocument, DocumentAjv>();

/** One pair of Ajv instances per document, so per configuration version. */
export function ajvFor(doc: OpenApiDocument): DocumentAjv {
  let found = perDocument.get(doc);
  if (found === undefined) {
    const openapi30 = doc.version.startsWith('3.0');
    found = { openapi30, strict: newAjv(openapi30, false), coercing: newAjv(openapi30, true) };
    perDocument.set(doc, found);
  }
  return found;
}

/** Compiles a prepared schema; an Ajv compile error becomes a {@link SchemaError}. */
export function compileSchema(ajv: AnyAjv, schema: Schema): ValidateFunction {
  try {
    return ajv.compile(schema);
  } catch (err) {
    throw new SchemaError(`schema cannot be compiled: ${(err as Error).message}`);
  }
}

/** Largest number of errors one refusal lists. */
export const MAX_ERRORS = 20;

/** Turns Ajv errors into pointers and rules (never values), appended to `out` up to the cap. */
export function toInvalidParams(
  where: InvalidParam['in'],
  errors: readonly ErrorObject[] | null | undefined,
  out: InvalidParam[],
  basePointer = '',
): void {
  if (!errors) return;
  for (const e of errors) {
    if (out.length >= MAX_ERRORS) return;
    let pointer = basePointer + e.instancePath;
    const p = e.params as Record<string, unknown>;
    const member = p.missingProperty ?? p.additionalProperty ?? p.unevaluatedProperty;
    if (typeof member === 'string') pointer += `/${pointerSegment(member)}`;
    const rule = e.keyword === READ_ONLY_KEYWORD ? 'readOnly' : e.keyword;
    const entry: InvalidParam = { in: where, pointer: boundPointer(pointer), rule };
    if (!out.some((o) => o.in === entry.in && o.pointer === entry.pointer && o.rule === entry.rule)) {
      out.push(entry);
    }
  }
}
