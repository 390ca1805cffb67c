/**
 * The request-validation stage: the OpenAPI operation is the contract for what may reach the
 * upstream (seed 000 §15.3, seed 004 V-274612/V-274613, OWASP API3/API6).
 *
 * Compiled once per configuration version with Ajv. Per request, in order:
 * 1. The body's media type: a body on an operation that declares none, a body without a
 *    Content-Type, a media type the operation does not declare, or a JSON body in a charset other
 *    than UTF-8 is refused with **415** `unsupported-media-type` (no media type is acceptable).
 * 2. Path, query, header and cookie parameters: declared primitive types are coerced from their
 *    strings; `form` arrays in the query (repeated names, or comma-separated with
 *    `explode: false`, or `spaceDelimited`/`pipeDelimited`), `simple` arrays in path and headers.
 *    Undeclared query parameters, and a repeated non-array parameter (parameter pollution), are
 *    refused. Undeclared headers and cookies are not (clients and browsers send many).
 * 3. The body: JSON (`application/json`, `*+json`) through the bounded parser in json.ts (depth,
 *    sizes and a total budget of values: `gateway.limits.jsonValues`), then the schema; `application/x-www-form-urlencoded` as an object of strings coerced by the
 *    schema; any other declared media type passes as bytes. A missing required body is refused.
 *
 * Everything found in steps 2 and 3 becomes one **400** `invalid-request` whose `errors` name
 * each failing field by `in` and JSON pointer with the Ajv keyword as `rule` (at most
 * {@link MAX_ERRORS}), never a value. The body goes upstream unchanged: the original bytes, not a
 * re-serialisation. The query goes upstream as validated: its canonical serialisation
 * (`req.forwardQuery`, read by the proxy), so that `limit=1.0` or `limit=%2B1`, checked as 1, reach
 * the upstream as `limit=1` and no parser there can read them differently. A Content-Type that
 * names a parameter twice (two `charset`s) is refused with 415 for the same reason.
 */
import type { ValidateFunction } from 'ajv';
import type { Stage } from '../../context.ts';
import { DEFAULT_JSON_LIMITS, parseJson } from '../../json.ts';
import type { JsonLimits } from '../../json.ts';
import type { OpenApiDocument, OpenApiOperation } from '../../openapi.ts';
import { Denial, isDenial } from '../../problems.ts';
import type { InvalidParam } from '../../problems.ts';
import {
  encodeQueryComponent,
  FORM_MEDIA_TYPE,
  isJsonMediaType,
  matchMediaType,
  parseCookies,
  parseForm,
  parseMediaType,
} from './params.ts';
import {
  ajvFor,
  compileSchema,
  isRecord,
  MAX_ERRORS,
  prepareSchema,
  SchemaError,
  toInvalidParams,
} from './schema.ts';

export { MAX_ERRORS, SchemaError } from './schema.ts';

export interface RequestValidationOptions {
  /** Limits applied while parsing JSON bodies and JSON-encoded parameters. */
  readonly json?: Partial<JsonLimits>;
}

type Location = 'path' | 'query' | 'header' | 'cookie';
const LOCATIONS: readonly Location[] = ['path', 'query', 'header', 'cookie'];

interface ParamSpec {
  readonly name: string;
  /** Lookup key: the name, lower case for headers. */
  readonly key: string;
  readonly required: boolean;
  readonly array: boolean;
  /** Query arrays: one name repeated (`true`) or one delimited value (`false`). */
  readonly explode: boolean;
  readonly delimiter: string;
  /** `content: {application/json: …}`: the value is JSON text. */
  readonly json: boolean;
}

interface LocationValidator {
  readonly specs: readonly ParamSpec[];
  readonly validate: ValidateFunction;
}

interface BodyEntry {
  readonly kind: 'json' | 'form' | 'bytes';
  readonly validate: ValidateFunction | undefined;
}

/** A delimited query array's separator as it goes upstream (space and `|` percent-encoded). */
const ENCODED_DELIMITER: Readonly<Record<string, string>> = { ',': ',', ' ': '%20', '|': '%7C' };

/** One validated (coerced) value as text: numbers in JavaScript's shortest form, null empty. */
function scalarText(value: unknown): string {
  if (value === null) return '';
  if (typeof value === 'string') return value;
  if (typeof value === 'number') return Object.is(value, -0) ? '0' : String(value);
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  return JSON.stringify(value);
}

/**
 * The canonical query string of what was validated: declared parameters in declared order, each
 * value as coerced for validation (`limit=01`, `limit=1.0`, `limit=%2B1` all become `limit=1`),
 * arrays in their declared style, every component percent-encoded but RFC 3986 unreserved.
 */
function canonicalQuery(specs: readonly ParamSpec[], data: Record<string, unknown>): string {
  const parts: string[] = [];
  for (const spec of specs) {
    const value = data[spec.key];
    if (value === undefined) continue;
    const name = encodeQueryComponent(spec.name);
    if (spec.json) {
      parts.push(`${name}=${encodeQueryComponent(JSON.stringify(value))}`);
    } else if (spec.array && Array.isArray(value)) {
      const items = value.map((item) => encodeQueryComponent(scalarText(item)));
      if (spec.explode) for (const item of items) parts.push(`${name}=${item}`);
      else parts.push(`${name}=${items.join(ENCODED_DELIMITER[spec.delimiter] ?? ',')}`);
    } else {
      parts.push(`${name}=${encodeQueryComponent(scalarText(value))}`);
    }
  }
  return parts.join('&');
}

/** Headers OpenAPI says a `header` parameter may not describe (they are ignored). */
const IGNORED_HEADERS = new Set(['accept', 'content-type', 'authorization']);

function typeIncludes(schema: unknown, type: string): boolean {
  if (!isRecord(schema)) return false;
  const t = schema.type;
  return t === type || (Array.isArray(t) && t.includes(type));
}

function compileParam(param: Record<string, unknown>, where: string): { spec: ParamSpec; schema: unknown } {
  const name = param.name;
  const location = param.in as Location;
  if (typeof name !== 'string' || name === '') throw new SchemaError(`${where}: a parameter needs a name`);
  let schema: unknown = param.schema ?? {};
  let json = false;
  if (isRecord(param.content)) {
    const entries = Object.entries(param.content);
    const first = entries[0];
    if (entries.length !== 1 || first === undefined || !isJsonMediaType(first[0].toLowerCase())) {
      throw new SchemaError(`${where}: parameter "${name}" content must be one JSON media type`);
    }
    json = true;
    schema = isRecord(first[1]) ? (first[1].schema ?? {}) : {};
  }
  const array = !json && typeIncludes(schema, 'array');
  if (!json && typeIncludes(schema, 'object')) {
    throw new SchemaError(`${where}: object-typed parameter "${name}" is not supported (use content JSON)`);
  }
  const defaultStyle = location === 'query' || location === 'cookie' ? 'form' : 'simple';
  const style = typeof param.style === 'string' ? param.style : defaultStyle;
  const allowed =
    location === 'query'
      ? ['form', 'spaceDelimited', 'pipeDelimited']
      : location === 'cookie'
        ? ['form']
        : ['simple'];
  if (!allowed.includes(style)) {
    throw new SchemaError(`${where}: parameter "${name}" style "${style}" is not supported`);
  }
  const explode = typeof param.explode === 'boolean' ? param.explode : style === 'form';
  return {
    spec: {
      name,
      key: location === 'header' ? name.toLowerCase() : name,
      required: location === 'path' || param.required === true,
      array,
      explode: location === 'query' && explode,
      delimiter: style === 'spaceDelimited' ? ' ' : style === 'pipeDelimited' ? '|' : ',',
      json,
    },
    schema,
  };
}

/**
 * Builds the request-validation stage of one operation. Throws a {@link SchemaError} (a start-up
 * error) for what it cannot enforce: unsupported parameter styles, object-typed parameters,
 * recursive schemas, schemas Ajv cannot compile.
 */
export function compileRequestValidation(
  op: OpenApiOperation,
  doc: OpenApiDocument,
  options: RequestValidationOptions = {},
): Stage | null {
  const where = `${op.method} ${op.path}`;
  const ajv = ajvFor(doc);
  const limits: JsonLimits = { ...DEFAULT_JSON_LIMITS, ...options.json };

  const grouped = new Map<Location, { spec: ParamSpec; schema: unknown }[]>();
  for (const param of op.parameters) {
    const location = param.in;
    if (typeof location !== 'string' || !LOCATIONS.includes(location as Location)) {
      throw new SchemaError(`${where}: parameter location ${JSON.stringify(location)} is not supported`);
    }
    const loc = location as Location;
    if (loc === 'header' && typeof param.name === 'string' && IGNORED_HEADERS.has(param.name.toLowerCase())) {
      continue;
    }
    const list = grouped.get(loc) ?? [];
    list.push(compileParam(param, where));
    grouped.set(loc, list);
  }
  const locations = new Map<Location, LocationValidator>();
  for (const loc of LOCATIONS) {
    const list = grouped.get(loc) ?? [];
    if (list.length === 0 && loc !== 'query') continue;
    const properties: Record<string, unknown> = {};
    for (const { spec, schema } of list)
      properties[spec.key] = prepareSchema(schema, 'request', ajv.openapi30);
    const schema = {
      type: 'object',
      properties,
      required: list.filter((p) => p.spec.required).map((p) => p.spec.key),
      additionalProperties: loc !== 'query',
    };
    locations.set(loc, {
      specs: list.map((p) => p.spec),
      validate: compileSchema(ajv.coercing, schema),
    });
  }

  const requestBody = isRecord(op.definition.requestBody) ? op.definition.requestBody : undefined;
  const bodyRequired = requestBody?.required === true;
  const bodies = new Map<string, BodyEntry>();
  if (requestBody !== undefined && isRecord(requestBody.content)) {
    for (const [mediaType, entry] of Object.entries(requestBody.content)) {
      const essence = parseMediaType(mediaType)?.essence ?? mediaType.toLowerCase();
      const schema = isRecord(entry) ? entry.schema : undefined;
      const kind = isJsonMediaType(essence) ? 'json' : essence === FORM_MEDIA_TYPE ? 'form' : 'bytes';
      let validate: ValidateFunction | undefined;
      if (schema !== undefined && kind !== 'bytes') {
        const prepared = prepareSchema(schema, 'request', ajv.openapi30);
        validate = compileSchema(kind === 'json' ? ajv.strict : ajv.coercing, prepared);
      }
      bodies.set(essence, { kind, validate });
    }
  }
  const query = locations.get('query');
  const path = locations.get('path');
  const header = locations.get('header');
  const cookie = locations.get('cookie');
  const formLimits = { maxKeys: limits.maxObjectKeys, maxValuesPerKey: limits.maxArrayItems };

  /** Shapes one parameter's raw strings into what its schema expects (before coercion). */
  const shape = (spec: ParamSpec, raw: readonly string[], loc: Location, errors: InvalidParam[]): unknown => {
    const pointer = `/${spec.key.replaceAll('~', '~0').replaceAll('/', '~1')}`;
    if (spec.array && spec.explode) return [...raw];
    if (raw.length > 1) {
      errors.push({ in: loc, pointer, rule: 'duplicate' });
      return undefined;
    }
    const value = raw[0] ?? '';
    if (spec.json) {
      try {
        return parseJson(value, limits, loc, pointer);
      } catch (err) {
        if (isDenial(err) && err.errors) errors.push(...err.errors);
        else throw err;
        return undefined;
      }
    }
    if (spec.array)
      return value === '' ? [] : value.split(spec.delimiter).map((v) => (loc === 'query' ? v : v.trim()));
    return value;
  };

  const check = (
    loc: Location,
    validator: LocationValidator | undefined,
    data: Record<string, unknown>,
    errors: InvalidParam[],
  ): void => {
    if (validator === undefined) return;
    if (!validator.validate(data)) toInvalidParams(loc, validator.validate.errors, errors);
  };

  return (req) => {
    // 1. The body's media type: 415 before anything else.
    const body = req.body;
    let entry: BodyEntry | undefined;
    if (body !== undefined) {
      if (bodies.size === 0) throw new Denial('unsupported-media-type', 'body-not-declared');
      const header = req.headers['content-type'];
      const media = parseMediaType(header);
      if (media === null) {
        // Absent, or malformed (a parameter named twice included): no media type is acceptable.
        throw new Denial(
          'unsupported-media-type',
          header === undefined ? 'content-type-missing' : 'content-type-malformed',
        );
      }
      entry = matchMediaType(bodies, media.essence);
      if (entry === undefined) throw new Denial('unsupported-media-type', 'content-type-not-declared');
      if (
        (entry.kind === 'json' || entry.kind === 'form') &&
        media.charset !== undefined &&
        media.charset !== 'utf-8' &&
        media.charset !== 'utf8'
      ) {
        throw new Denial('unsupported-media-type', 'charset-not-utf8');
      }
    }

    const errors: InvalidParam[] = [];
    let queryData: Record<string, unknown> | undefined;
    // 2. Parameters.
    if (path !== undefined) {
      const data = Object.create(null) as Record<string, unknown>;
      for (const spec of path.specs) {
        const raw = req.params[spec.name];
        if (raw !== undefined) data[spec.key] = shape(spec, [raw], 'path', errors);
      }
      check('path', path, data, errors);
    }
    if (query !== undefined && req.target.query !== '') {
      const pairs = parseForm(req.target.query, 'query', formLimits, errors);
      const data = Object.create(null) as Record<string, unknown>;
      const specs = new Map(query.specs.map((s) => [s.key, s]));
      for (const [name, raw] of pairs) {
        const spec = specs.get(name);
        data[name] = spec === undefined ? raw[0] : shape(spec, raw, 'query', errors);
      }
      check('query', query, data, errors);
      queryData = data;
    } else if (query !== undefined && query.specs.some((s) => s.required)) {
      check('query', query, Object.create(null) as Record<string, unknown>, errors);
    }
    if (header !== undefined) {
      const data = Object.create(null) as Record<string, unknown>;
      for (const spec of header.specs) {
        const raw = req.headers[spec.key];
        if (raw !== undefined)
          data[spec.key] = shape(spec, [Array.isArray(raw) ? raw.join(', ') : raw], 'header', errors);
      }
      check('header', header, data, errors);
    }
    if (cookie !== undefined) {
      const { values, repeated } = parseCookies(req.headers.cookie);
      const data = Object.create(null) as Record<string, unknown>;
      for (const spec of cookie.specs) {
        const raw = values.get(spec.name);
        if (raw === undefined) continue;
        data[spec.key] = shape(spec, repeated.has(spec.name) ? [raw, raw] : [raw], 'cookie', errors);
      }
      check('cookie', cookie, data, errors);
    }

    // 3. The body.
    if (body === undefined) {
      if (bodyRequired) errors.push({ in: 'body', pointer: '', rule: 'required' });
    } else if (entry !== undefined && entry.kind !== 'bytes') {
      // JSON and form bodies are parsed (with limits and key checks) even without a schema.
      let data: unknown;
      let parsed = true;
      if (entry.kind === 'json') {
        try {
          data = parseJson(body, limits, 'body');
        } catch (err) {
          if (!isDenial(err) || !err.errors) throw err;
          errors.push(...err.errors);
          parsed = false;
        }
      } else {
        let text: string;
        try {
          text = new TextDecoder('utf-8', { fatal: true }).decode(body);
        } catch {
          throw new Denial('invalid-request', 'form-utf8', {
            errors: [{ in: 'body', pointer: '', rule: 'encoding' }],
          });
        }
        const form = Object.create(null) as Record<string, unknown>;
        for (const [name, values] of parseForm(text, 'body', formLimits, errors)) {
          form[name] = values.length === 1 ? values[0] : values;
        }
        data = form;
      }
      const validate = entry.validate;
      if (parsed && validate !== undefined && !validate(data))
        toInvalidParams('body', validate.errors, errors);
    }
    if (errors.length > 0) {
      throw new Denial('invalid-request', 'request-schema', { errors: errors.slice(0, MAX_ERRORS) });
    }
    // What goes upstream is what was validated, so that the upstream cannot read it differently.
    if (queryData !== undefined && query !== undefined)
      req.forwardQuery = canonicalQuery(query.specs, queryData);
    return undefined;
  };
}
