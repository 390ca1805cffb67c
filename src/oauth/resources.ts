/**
 * Which resource (API audience, RFC 8707) a token request is for, and whether the client may have
 * it: the policy behind `features.resourceIndicators` in provider.ts, kept apart as pure functions.
 *
 * - Every configured API is a resource: its audience, and the OAuth scopes its OpenAPI document
 *   declares.
 * - A client is registered for a set of resources: those named at registration
 *   (`clients create --resource NAME|AUDIENCE`), or, when none were named, every API that declares
 *   one of the client's scopes. A client obtains tokens only for those.
 * - A requested scope is either an OpenID Connect scope (`openid`, `profile`, …) or a scope of the
 *   resource the token is for that the client holds; anything else is refused with
 *   `invalid_scope` instead of being dropped.
 * - Without a `resource` parameter the audience is chosen from the requested scopes when they all
 *   belong to one API, else the client's default resource (its only registered one); otherwise the
 *   request is refused with `invalid_target` saying what to send. A sign-in request with OpenID
 *   scopes only needs no resource (its access token is for `/me`).
 */

export interface Resource {
  /** The API's name in the configuration. */
  readonly name: string;
  /** Its audience: the `resource` value a client sends. */
  readonly audience: string;
  readonly scopes: ReadonlySet<string>;
}

export interface ResourceCatalog {
  /** By audience. */
  readonly resources: ReadonlyMap<string, Resource>;
  /** OpenID Connect scopes (`openid`, `offline_access`, claim scopes): never tied to a resource. */
  readonly oidcScopes: ReadonlySet<string>;
}

export interface ResourceClient {
  /** The scopes the client holds (space-separated). */
  readonly scope: string;
  /** The audiences it is registered for ({@link registeredAudiences}). */
  readonly audiences: ReadonlySet<string>;
}

/** A refusal with its OAuth error code and a description safe to show the client. */
export class ResourceRefusal extends Error {
  readonly error: 'invalid_target' | 'invalid_scope';
  readonly description: string;
  constructor(error: 'invalid_target' | 'invalid_scope', description: string) {
    super(description);
    this.name = 'ResourceRefusal';
    this.error = error;
    this.description = description;
  }
}

/**
 * The audiences a client is registered for. `registered` holds API names or audiences as given at
 * registration; a name that matches no configured API (any more) counts for nothing. Without a
 * registered list, every API declaring one of the client's scopes.
 */
export function registeredAudiences(
  catalog: ResourceCatalog,
  clientScope: string,
  registered: readonly string[] | undefined,
): Set<string> {
  const audiences = new Set<string>();
  if (registered !== undefined && registered.length > 0) {
    const wanted = new Set(registered);
    for (const r of catalog.resources.values()) {
      if (wanted.has(r.name) || wanted.has(r.audience)) audiences.add(r.audience);
    }
    return audiences;
  }
  const held = clientScope.split(' ');
  for (const r of catalog.resources.values()) {
    if (held.some((s) => r.scopes.has(s))) audiences.add(r.audience);
  }
  return audiences;
}

function splitScope(scope: string | undefined): string[] {
  return scope === undefined ? [] : scope.split(' ').filter((s) => s !== '');
}

/** The resource a client's request may be for, or a refusal when it is unknown or not registered. */
export function checkTarget(catalog: ResourceCatalog, client: ResourceClient, indicator: string): Resource {
  const resource = catalog.resources.get(indicator);
  if (resource === undefined) {
    throw new ResourceRefusal('invalid_target', 'resource is not an API of this authorization server');
  }
  if (!client.audiences.has(indicator)) {
    throw new ResourceRefusal('invalid_target', 'client is not registered for this resource');
  }
  return resource;
}

/**
 * Refuses a requested scope that is neither an OpenID Connect scope nor a scope of one of the
 * `indicators` (already checked with {@link checkTarget}) that the client holds.
 */
export function checkScopes(
  catalog: ResourceCatalog,
  client: ResourceClient,
  indicators: readonly string[],
  requested: string | undefined,
): void {
  const held = new Set(splitScope(client.scope));
  for (const scope of splitScope(requested)) {
    if (catalog.oidcScopes.has(scope)) continue;
    const ofTarget = indicators.some((i) => catalog.resources.get(i)?.scopes.has(scope) === true);
    if (!ofTarget) {
      throw new ResourceRefusal(
        'invalid_scope',
        indicators.length === 0
          ? `scope ${scope} is not a scope of any API`
          : `scope ${scope} is not a scope of the requested resource`,
      );
    }
    if (!held.has(scope)) {
      throw new ResourceRefusal('invalid_scope', `client is not registered for scope ${scope}`);
    }
  }
}

/**
 * The resource for a request without a `resource` parameter (RFC 8707 §2): see the module
 * comment. `oneOf` are the resources a grant holds (at the token endpoint, when several were
 * granted); `openIdOnly` whether a request with OpenID scopes alone may go without a resource.
 */
export function chooseResource(
  catalog: ResourceCatalog,
  client: ResourceClient,
  requested: string | undefined,
  options: { readonly oneOf?: readonly string[] | undefined; readonly openIdOnly: boolean },
): string | undefined {
  const candidates = options.oneOf ?? [...client.audiences];
  const apiScopes = splitScope(requested).filter((s) => !catalog.oidcScopes.has(s));
  const held = new Set(splitScope(client.scope));
  const unknown = apiScopes.find((s) => ![...catalog.resources.values()].some((r) => r.scopes.has(s)));
  if (unknown !== undefined) {
    throw new ResourceRefusal('invalid_scope', `scope ${unknown} is not a scope of any API`);
  }
  const notHeld = apiScopes.find((s) => !held.has(s));
  if (notHeld !== undefined) {
    throw new ResourceRefusal('invalid_scope', `client is not registered for scope ${notHeld}`);
  }
  if (apiScopes.length > 0) {
    const fitting = candidates.filter((a) => {
      const r = catalog.resources.get(a);
      return r !== undefined && apiScopes.every((s) => r.scopes.has(s));
    });
    if (fitting.length === 1) return fitting[0];
    if (fitting.length === 0) {
      const everywhere = [...catalog.resources.values()].filter((r) =>
        apiScopes.every((s) => r.scopes.has(s)),
      );
      if (everywhere.length === 0) {
        throw new ResourceRefusal(
          'invalid_target',
          'the requested scopes belong to different APIs; request one resource at a time with the resource parameter',
        );
      }
      throw new ResourceRefusal(
        'invalid_target',
        'client is not registered for the API of the requested scopes',
      );
    }
    throw new ResourceRefusal(
      'invalid_target',
      'the requested scopes belong to several APIs; choose one with the resource parameter',
    );
  }
  if (options.openIdOnly && options.oneOf === undefined && splitScope(requested).length > 0) return undefined;
  if (candidates.length === 1) return candidates[0];
  throw new ResourceRefusal(
    'invalid_target',
    candidates.length === 0
      ? 'client is not registered for any API'
      : options.oneOf === undefined
        ? 'client is registered for several APIs; choose one with the resource parameter'
        : 'several resources were granted; choose one with the resource parameter',
  );
}
