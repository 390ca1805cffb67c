/**
 * The OpenAPI extension an operation declares idempotency with:
 *
 * ```yaml
 * post:
 *   x-portcullis-idempotency:
 *     required: true     # a request without Idempotency-Key is refused (400); default false
 *     ttlSeconds: 86400  # how long the response is replayed; default idempotency.defaultTtlSeconds
 * ```
 *
 * Only unsafe methods (POST, PUT, PATCH, DELETE) may declare it.
 */
export const EXTENSION = 'x-portcullis-idempotency';

const UNSAFE = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

export interface IdempotencyDeclaration {
  readonly required: boolean;
  readonly ttlSeconds: number;
}

/** A declaration that cannot be used; the message names the problem (never request data). */
export class IdempotencyDeclarationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'IdempotencyDeclarationError';
  }
}

/** The operation's declaration, or null when it declares none. */
export function readDeclaration(
  method: string,
  definition: Readonly<Record<string, unknown>>,
  limits: { readonly defaultTtlSeconds: number; readonly maxTtlSeconds: number },
): IdempotencyDeclaration | null {
  const raw = definition[EXTENSION];
  if (raw === undefined) return null;
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new IdempotencyDeclarationError(`${EXTENSION} must be an object`);
  }
  if (!UNSAFE.has(method)) {
    throw new IdempotencyDeclarationError(`${EXTENSION} applies to POST, PUT, PATCH and DELETE only`);
  }
  const decl = raw as Record<string, unknown>;
  for (const name of Object.keys(decl)) {
    if (name !== 'required' && name !== 'ttlSeconds') {
      throw new IdempotencyDeclarationError(`${EXTENSION}: unknown property "${name}"`);
    }
  }
  const required = decl.required ?? false;
  if (typeof required !== 'boolean')
    throw new IdempotencyDeclarationError(`${EXTENSION}.required must be a boolean`);
  const ttl = decl.ttlSeconds ?? limits.defaultTtlSeconds;
  if (typeof ttl !== 'number' || !Number.isInteger(ttl) || ttl < 1 || ttl > limits.maxTtlSeconds) {
    throw new IdempotencyDeclarationError(
      `${EXTENSION}.ttlSeconds must be an integer from 1 to ${String(limits.maxTtlSeconds)}`,
    );
  }
  return { required, ttlSeconds: ttl };
}
