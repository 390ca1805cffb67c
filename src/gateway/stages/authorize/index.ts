/**
 * Object-level authorization (OWASP API1): an operation binds a path parameter to a claim of
 * the verified caller, so one caller cannot reach another's record by changing an id.
 *
 * Declared on the OpenAPI operation as
 *
 * ```yaml
 * x-portcullis-owner:
 *   parameter: patientId     # the path parameter holding the object's owner id
 *   claim: sub               # the caller's claim it must equal (sub or client_id)
 *   bypassScopes: [patients:admin]   # holders of any of these may reach every object
 * ```
 *
 * A mismatch is 403 with reason `object-not-owned`; the upstream is never called. Checked at
 * compile time: the parameter must be a declared path parameter of the template, and the
 * operation must require a credential (an owner check on a public operation is a contract bug).
 */
import { Denial } from '../../problems.ts';
import type { Stage } from '../../context.ts';

export const OWNER_EXTENSION = 'x-portcullis-owner';

export interface OwnerBinding {
  readonly parameter: string;
  readonly claim: 'sub' | 'client_id';
  readonly bypassScopes: readonly string[];
}

/** Thrown at compile time for an invalid extension; the message says what is wrong. */
export class OwnerBindingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'OwnerBindingError';
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Reads and checks the extension; undefined when the operation declares none. */
export function readOwnerBinding(
  definition: Readonly<Record<string, unknown>>,
  template: string,
  isProtected: boolean,
): OwnerBinding | undefined {
  const raw = definition[OWNER_EXTENSION];
  if (raw === undefined) return undefined;
  const where = `${OWNER_EXTENSION} on ${template}`;
  if (!isRecord(raw)) throw new OwnerBindingError(`${where} must be an object`);
  const { parameter, claim = 'sub', bypassScopes = [] } = raw;
  if (typeof parameter !== 'string' || !template.includes(`{${parameter}}`)) {
    throw new OwnerBindingError(`${where}: parameter must name a path parameter of the template`);
  }
  if (claim !== 'sub' && claim !== 'client_id') {
    throw new OwnerBindingError(`${where}: claim must be "sub" or "client_id"`);
  }
  if (!Array.isArray(bypassScopes) || !bypassScopes.every((s) => typeof s === 'string' && s !== '')) {
    throw new OwnerBindingError(`${where}: bypassScopes must be a list of scopes`);
  }
  if (!isProtected) {
    throw new OwnerBindingError(`${where}: the operation is public; an owner check needs a credential`);
  }
  return { parameter, claim, bypassScopes };
}

export function compileOwnerCheck(binding: OwnerBinding): Stage {
  const { parameter, claim, bypassScopes } = binding;
  return (req) => {
    const principal = req.principal;
    // The authenticate stage runs first; without a principal there is nothing to compare.
    if (principal === undefined) throw new Denial('forbidden', 'object-owner-unknown');
    if (bypassScopes.some((s) => principal.scopes.has(s))) return undefined;
    const owner = req.params[parameter];
    const caller = claim === 'sub' ? principal.subject : principal.clientId;
    if (owner === undefined || owner !== caller) throw new Denial('forbidden', 'object-not-owned');
    return undefined;
  };
}
