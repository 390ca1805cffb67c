/**
 * Data minimisation on a parsed response, guided by a schema prepared for responses (see
 * validate/schema.ts): members a closed object does not declare and `writeOnly` members are
 * deleted, and arrays are cut to their `maxItems` (the declared page size). `allOf` members are
 * applied in turn; `oneOf`/`anyOf` alternatives are not guessed (their own closure is enforced by
 * validation afterwards, so an undeclared member there fails closed).
 */
import { isRecord } from '../validate/schema.ts';

/** Deeper data than this is not pruned (the response parser bounds depth well below it). */
const MAX_PRUNE_DEPTH = 256;

/** Compiled `patternProperties` patterns (a finite set: they come from the documents). */
const compiled = new Map<string, RegExp>();

function patternMatch(patterns: Record<string, unknown>, key: string): unknown {
  for (const [pattern, schema] of Object.entries(patterns)) {
    let re = compiled.get(pattern);
    if (re === undefined) {
      re = new RegExp(pattern, 'u');
      compiled.set(pattern, re);
    }
    if (re.test(key)) return schema;
  }
  return undefined;
}

/** Prunes `data` in place; returns whether anything was removed or cut. */
export function prune(schema: unknown, data: unknown, depth = 0): boolean {
  if (!isRecord(schema) || depth > MAX_PRUNE_DEPTH) return false;
  let changed = false;
  if (Array.isArray(schema.allOf)) {
    for (const member of schema.allOf) changed = prune(member, data, depth + 1) || changed;
  }
  if (Array.isArray(data)) {
    if (typeof schema.maxItems === 'number' && data.length > schema.maxItems) {
      data.length = Math.max(0, Math.floor(schema.maxItems));
      changed = true;
    }
    const prefix: readonly unknown[] = Array.isArray(schema.prefixItems)
      ? schema.prefixItems
      : Array.isArray(schema.items)
        ? schema.items
        : [];
    const rest = Array.isArray(schema.items) ? schema.additionalItems : schema.items;
    for (const [i, item] of data.entries()) {
      const itemSchema = i < prefix.length ? prefix[i] : rest;
      changed = prune(itemSchema, item, depth + 1) || changed;
    }
    return changed;
  }
  if (!isRecord(data)) return changed;
  const properties = isRecord(schema.properties) ? schema.properties : {};
  const patterns = isRecord(schema.patternProperties) ? schema.patternProperties : undefined;
  for (const key of Object.keys(data)) {
    const declared = Object.hasOwn(properties, key) ? properties[key] : undefined;
    if (declared !== undefined) {
      if (isRecord(declared) && declared.writeOnly === true) {
        Reflect.deleteProperty(data, key);
        changed = true;
      } else {
        changed = prune(declared, data[key], depth + 1) || changed;
      }
      continue;
    }
    const byPattern = patterns === undefined ? undefined : patternMatch(patterns, key);
    if (byPattern !== undefined) {
      changed = prune(byPattern, data[key], depth + 1) || changed;
    } else if (schema.additionalProperties === false) {
      Reflect.deleteProperty(data, key);
      changed = true;
    } else if (isRecord(schema.additionalProperties)) {
      changed = prune(schema.additionalProperties, data[key], depth + 1) || changed;
    }
  }
  return changed;
}
