/**
 * The data map of a contract: the privacy annotations of an OpenAPI document, read once when the
 * document is loaded (issue 16).
 *
 * - `x-portcullis-data: {category, sensitive?}` on a schema or a property names the category of
 *   personal data it holds (`sensitive` defaults from the category: health, biometric, … are
 *   sensitive under GDPR Art. 9 and CPRA §1798.140(ae)); `x-portcullis-data: none` says that a
 *   property that looks personal is not. A schema's annotation covers what it contains unless a
 *   nested property says otherwise.
 * - `x-portcullis-purposes: [...]` on an operation lists the purposes it serves (default
 *   `[service]`: providing what the subject asked for).
 * - `x-portcullis-automated-decision: {logic, significance, consequences?, humanReview?}` on an
 *   operation declares a decision based solely on automated processing (GDPR Art. 22, CPRA ADMT):
 *   the purpose `automated-decision` is implied and the information endpoint describes it.
 *
 * A malformed annotation is an error naming the operation and the JSON pointer; a property that
 * looks like personal data (by name or format) in an answer without a category is a warning.
 */

export const PURPOSES = [
  'service',
  'analytics',
  'marketing',
  'sale',
  'sharing',
  'targeted-advertising',
  'profiling',
  'automated-decision',
] as const;
export type Purpose = (typeof PURPOSES)[number];

/** Purposes that an opt-out of sale and sharing (CPRA, the GPC signal) refuses. */
export const SALE_SHARING_PURPOSES: ReadonlySet<Purpose> = new Set([
  'sale',
  'sharing',
  'targeted-advertising',
]);

/** Categories of personal data, and whether each is sensitive by default. */
export const DATA_CATEGORIES = {
  identifier: false,
  contact: false,
  demographic: false,
  'online-identifier': false,
  device: false,
  usage: false,
  'approximate-location': false,
  employment: false,
  education: false,
  inference: false,
  health: true,
  genetic: true,
  biometric: true,
  'precise-location': true,
  financial: true,
  'government-id': true,
  'racial-or-ethnic-origin': true,
  'political-opinion': true,
  'religious-belief': true,
  'sex-life-or-orientation': true,
  'union-membership': true,
  'criminal-record': true,
  credentials: true,
  'communications-content': true,
} as const satisfies Record<string, boolean>;
export type DataCategory = keyof typeof DATA_CATEGORIES;

/** One annotated field of a request or an answer. */
export interface DataField {
  /** `request` (the body the client sends) or `response` (what a success answer carries). */
  readonly direction: 'request' | 'response';
  /** JSON pointer into the body, an array's items are the segment `*` (`/items` then `*` then `/email`). */
  readonly pointer: string;
  readonly category: DataCategory;
  readonly sensitive: boolean;
}

export interface AutomatedDecision {
  /** Meaningful information about the logic involved (GDPR Art. 15(1)(h)). */
  readonly logic: string;
  /** The significance of the decision for the subject. */
  readonly significance: string;
  /** The envisaged consequences, when declared. */
  readonly consequences: string | undefined;
  /** How to reach a person to contest it (GDPR Art. 22(3)), when declared. */
  readonly humanReview: string | undefined;
}

/** The privacy view of one operation. */
export interface OperationPrivacy {
  readonly method: string;
  readonly path: string;
  readonly operationId: string | undefined;
  /** Declared purposes, `automated-decision` added when the operation declares one; sorted. */
  readonly purposes: readonly Purpose[];
  /** Whether `x-portcullis-purposes` was written (else the default `[service]`). */
  readonly purposesDeclared: boolean;
  readonly fields: readonly DataField[];
  readonly categories: readonly DataCategory[];
  readonly sensitive: boolean;
  readonly automatedDecision: AutomatedDecision | undefined;
}

/** A mistake in an annotation: the operation and the pointer inside it. */
export class PrivacyAnnotationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PrivacyAnnotationError';
  }
}

interface OperationLike {
  readonly method: string;
  readonly path: string;
  readonly operationId: string | undefined;
  readonly definition: Readonly<Record<string, unknown>>;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Property names (or formats) that usually hold personal data: unannotated, they are warned. */
const LOOKS_PERSONAL =
  /(^|[^a-z])(name|email|e-?mail|phone|mobile|address|street|postcode|postalcode|zip|birth|dob|ssn|national|passport|licen[cs]e|gender|sex|location|latitude|longitude|geo|ip|diagnos|condition|medication|allerg|health|medical|salary|income|iban|card|account|religion|ethnic)/i;
const PERSONAL_FORMATS = new Set(['email', 'idn-email', 'ipv4', 'ipv6']);

function splitWords(name: string): string {
  // camelCase → camel-case so that the pattern's word starts match `givenName` and `birthDate`.
  return name.replace(/([a-z0-9])([A-Z])/g, '$1-$2');
}

function escapePointer(key: string): string {
  return key.replaceAll('~', '~0').replaceAll('/', '~1');
}

type Annotation = { readonly category: DataCategory; readonly sensitive: boolean } | 'none';

function readDataAnnotation(value: unknown, where: string): Annotation {
  if (value === 'none') return 'none';
  if (!isObject(value)) {
    throw new PrivacyAnnotationError(`${where}: x-portcullis-data must be {category, sensitive?} or "none"`);
  }
  for (const key of Object.keys(value)) {
    if (key !== 'category' && key !== 'sensitive') {
      throw new PrivacyAnnotationError(`${where}: x-portcullis-data has an unknown member "${key}"`);
    }
  }
  const category = value.category;
  if (typeof category !== 'string' || !Object.hasOwn(DATA_CATEGORIES, category)) {
    throw new PrivacyAnnotationError(
      `${where}: x-portcullis-data.category must be one of ${Object.keys(DATA_CATEGORIES).join(', ')}`,
    );
  }
  const byDefault = DATA_CATEGORIES[category as DataCategory];
  if (value.sensitive !== undefined && typeof value.sensitive !== 'boolean') {
    throw new PrivacyAnnotationError(`${where}: x-portcullis-data.sensitive must be a boolean`);
  }
  if (byDefault && value.sensitive === false) {
    throw new PrivacyAnnotationError(
      `${where}: category "${category}" is sensitive personal data; it cannot be marked sensitive: false`,
    );
  }
  return { category: category as DataCategory, sensitive: value.sensitive ?? byDefault };
}

interface Walk {
  readonly direction: 'request' | 'response';
  readonly where: string;
  readonly fields: DataField[];
  readonly unlabelled: string[];
}

/** Walks a dereferenced schema; `inherited` is the nearest enclosing annotation. */
function walkSchema(
  node: unknown,
  pointer: string,
  inherited: Annotation | undefined,
  walk: Walk,
  stack: Set<object>,
): void {
  if (!isObject(node) || stack.has(node)) return;
  stack.add(node);
  try {
    let here = inherited;
    if (node['x-portcullis-data'] !== undefined) {
      const own = readDataAnnotation(
        node['x-portcullis-data'],
        `${walk.where} ${walk.direction} ${pointer || '/'}`,
      );
      here = own;
      if (
        own !== 'none' &&
        !walk.fields.some(
          (f) => f.direction === walk.direction && f.pointer === pointer && f.category === own.category,
        )
      ) {
        walk.fields.push({ direction: walk.direction, pointer, ...own });
      }
    }
    for (const key of ['allOf', 'anyOf', 'oneOf'] as const) {
      const list = node[key];
      if (Array.isArray(list)) for (const sub of list) walkSchema(sub, pointer, here, walk, stack);
    }
    if (isObject(node.items)) walkSchema(node.items, `${pointer}/*`, here, walk, stack);
    if (isObject(node.additionalProperties)) {
      walkSchema(node.additionalProperties, `${pointer}/*`, here, walk, stack);
    }
    const props = node.properties;
    if (isObject(props)) {
      for (const [name, sub] of Object.entries(props)) {
        // What never travels in this direction is not processed there: a write-only property in
        // an answer, a read-only one in a request.
        if (isObject(sub) && sub[walk.direction === 'response' ? 'writeOnly' : 'readOnly'] === true) continue;
        const at = `${pointer}/${escapePointer(name)}`;
        if (
          here === undefined &&
          isObject(sub) &&
          sub['x-portcullis-data'] === undefined &&
          (LOOKS_PERSONAL.test(splitWords(name)) ||
            (typeof sub.format === 'string' && PERSONAL_FORMATS.has(sub.format))) &&
          !hasAnnotationInside(sub)
        ) {
          walk.unlabelled.push(at);
        }
        walkSchema(sub, at, here, walk, stack);
      }
    }
  } finally {
    stack.delete(node);
  }
}

/** Whether a property's schema annotates itself through a combinator (`oneOf: [$ref, null]`). */
function hasAnnotationInside(node: Record<string, unknown>): boolean {
  for (const key of ['allOf', 'anyOf', 'oneOf'] as const) {
    const list = node[key];
    if (Array.isArray(list) && list.some((s) => isObject(s) && s['x-portcullis-data'] !== undefined)) {
      return true;
    }
  }
  return false;
}

function bodySchemas(content: unknown): unknown[] {
  if (!isObject(content)) return [];
  return Object.values(content)
    .filter(isObject)
    .map((media) => media.schema)
    .filter((s) => s !== undefined);
}

function readPurposes(value: unknown, where: string): Purpose[] {
  if (!Array.isArray(value) || value.length === 0) {
    throw new PrivacyAnnotationError(`${where}: x-portcullis-purposes must be a non-empty array`);
  }
  const out = new Set<Purpose>();
  for (const p of value) {
    if (typeof p !== 'string' || !(PURPOSES as readonly string[]).includes(p)) {
      throw new PrivacyAnnotationError(
        `${where}: x-portcullis-purposes: "${String(p)}" is not one of ${PURPOSES.join(', ')}`,
      );
    }
    out.add(p as Purpose);
  }
  return [...out];
}

function readAutomatedDecision(value: unknown, where: string): AutomatedDecision {
  const at = `${where}: x-portcullis-automated-decision`;
  if (!isObject(value)) throw new PrivacyAnnotationError(`${at} must be an object`);
  const text = (key: string, required: boolean): string | undefined => {
    const v = value[key];
    if (v === undefined && !required) return undefined;
    if (typeof v !== 'string' || v.trim() === '' || v.length > 2000) {
      throw new PrivacyAnnotationError(`${at}.${key} must be a non-empty string of at most 2000 characters`);
    }
    return v.trim();
  };
  for (const key of Object.keys(value)) {
    if (!['logic', 'significance', 'consequences', 'humanReview'].includes(key)) {
      throw new PrivacyAnnotationError(`${at} has an unknown member "${key}"`);
    }
  }
  return {
    logic: text('logic', true) ?? '',
    significance: text('significance', true) ?? '',
    consequences: text('consequences', false),
    humanReview: text('humanReview', false),
  };
}

/**
 * Reads the privacy annotations of one operation. `warnings` receives one line per property of a
 * success answer that looks like personal data but has no category.
 */
export function readOperationPrivacy(op: OperationLike, warnings: string[]): OperationPrivacy {
  const where = `${op.method} ${op.path}`;
  const def = op.definition;
  const declared = def['x-portcullis-purposes'];
  const purposes = new Set<Purpose>(declared === undefined ? ['service'] : readPurposes(declared, where));
  const automatedDecision =
    def['x-portcullis-automated-decision'] === undefined
      ? undefined
      : readAutomatedDecision(def['x-portcullis-automated-decision'], where);
  if (automatedDecision !== undefined) purposes.add('automated-decision');
  const fields: DataField[] = [];
  const requestWalk: Walk = { direction: 'request', where, fields, unlabelled: [] };
  const body = def.requestBody;
  if (isObject(body))
    for (const s of bodySchemas(body.content)) walkSchema(s, '', undefined, requestWalk, new Set());
  const responseWalk: Walk = { direction: 'response', where, fields, unlabelled: [] };
  const responses = def.responses;
  if (isObject(responses)) {
    for (const [status, response] of Object.entries(responses)) {
      if (!/^2(\d\d|XX)$/.test(status) || !isObject(response)) continue;
      for (const s of bodySchemas(response.content)) walkSchema(s, '', undefined, responseWalk, new Set());
    }
  }
  for (const pointer of new Set(responseWalk.unlabelled)) {
    warnings.push(
      `${where}${op.operationId === undefined ? '' : ` (${op.operationId})`}: the answer's property ${pointer} looks like personal data but has no x-portcullis-data category`,
    );
  }
  const categories = [...new Set(fields.map((f) => f.category))].sort();
  return {
    method: op.method,
    path: op.path,
    operationId: op.operationId,
    purposes: [...purposes].sort((a, b) => PURPOSES.indexOf(a) - PURPOSES.indexOf(b)),
    purposesDeclared: declared !== undefined,
    fields,
    categories,
    sensitive: fields.some((f) => f.sensitive),
    automatedDecision,
  };
}

/**
 * Whether the gateway has anything to enforce on this operation: a purpose beyond `service`
 * (consent, opt-outs) — only such operations get the privacy stage.
 */
export function needsEnforcement(p: OperationPrivacy): boolean {
  return p.purposes.some((purpose) => purpose !== 'service');
}
