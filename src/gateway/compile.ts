/**
 * Compiles a loaded configuration into a {@link Runtime}: the route table of every declared
 * operation with its stage chain built once, the upstream pools and the trusted-proxy list.
 * A configuration that cannot be compiled throws a ConfigError naming the key and line; the
 * caller keeps serving with the previous runtime.
 */
import { createHash } from 'node:crypto';
import { ConfigError, pathToString } from '../config/load.ts';
import type { ConfigIssue, ConfigPath, LoadedConfig } from '../config/load.ts';
import type { LimitsConfig } from '../config/schema.ts';
import type { Chain, ResponseStage, Stage } from './chain.ts';
import { loadOpenApi, OpenApiError } from './openapi.ts';
import type { OpenApiDocument, SecurityRequirement } from './openapi.ts';
import { buildRouteTable } from './routes.ts';
import type { RouteTable } from './routes.ts';
import { compileTrustedProxies } from './forwarded.ts';
import type { TrustedProxies } from './forwarded.ts';
import { compileAuthenticate, isPublic } from './stages/authenticate/index.ts';
import type { SchemeVerifier } from './stages/authenticate/index.ts';
import { compileCors, refuseCrossOrigin } from './stages/cors/index.ts';
import type { CompiledCors } from './stages/cors/index.ts';
import type { JSONWebKeySet } from 'jose';
import { createAccessTokenVerifier } from '../tokens/access-token.ts';
import { oauthSchemeVerifier } from '../tokens/oauth-verifier.ts';
import { compileProxy, Upstream } from './stages/proxy/index.ts';
import { compileRequestValidation, SchemaError } from './stages/validate/index.ts';
import { compileResponseEnforcement } from './stages/filter-response/index.ts';
import { compileOwnerCheck, OwnerBindingError, readOwnerBinding } from './stages/authorize/index.ts';

export interface CompiledApi {
  readonly name: string;
  readonly basePath: string;
  readonly document: OpenApiDocument;
  readonly cors: CompiledCors | null;
  readonly upstream: Upstream;
}

export interface CompiledOperation {
  readonly api: CompiledApi;
  readonly method: string;
  /** Gateway path template, e.g. `/v1/patients/{patientId}`: what logs and metrics show. */
  readonly template: string;
  readonly operationId: string | undefined;
  readonly security: readonly SecurityRequirement[];
  /** Whether the operation needs a credential. */
  readonly protected: boolean;
  readonly chain: Chain;
  /** Stages applied to the answer, in order (response validation, filtering…). */
  readonly responseStages: readonly ResponseStage[];
}

export interface Runtime {
  readonly loaded: LoadedConfig;
  /** sha256 over the configuration text and each OpenAPI document: the configuration version. */
  readonly version: string;
  readonly routes: RouteTable<CompiledOperation>;
  readonly apis: readonly CompiledApi[];
  readonly trusted: TrustedProxies;
  readonly limits: LimitsConfig;
  readonly correlationHeader: string;
  /** Closes upstream pools, after in-flight requests finished with them. */
  close(): Promise<void>;
}

export interface CompileOptions {
  /** Verifiers by security scheme name, per API name; they take precedence over built-in ones. */
  readonly verifiers?: Readonly<Record<string, Readonly<Record<string, SchemeVerifier>>>>;
  /**
   * The token issuer whose JWT access tokens the gateway accepts (the built-in authorization
   * server). Without it, OAuth-protected operations cannot be satisfied (401).
   */
  readonly tokens?: TokenSource;
}

export interface TokenSource {
  readonly issuer: string;
  readonly keys: () => JSONWebKeySet;
  readonly isRevoked: (jti: string) => boolean | Promise<boolean>;
}

/** Scheme types whose credential is a bearer (or DPoP) access token. */
function isTokenScheme(scheme: Readonly<Record<string, unknown>>): boolean {
  if (scheme.type === 'oauth2' || scheme.type === 'openIdConnect') return true;
  return (
    scheme.type === 'http' && typeof scheme.scheme === 'string' && scheme.scheme.toLowerCase() === 'bearer'
  );
}

/** The audience (RFC 8707 resource) of an API: configured, or the public URL plus base path. */
export function apiAudience(
  publicUrl: string,
  api: { audience?: string | undefined; basePath: string },
): string {
  return api.audience ?? publicUrl + api.basePath;
}

function configError(loaded: LoadedConfig, path: ConfigPath, message: string): ConfigError {
  const at = loaded.locate(path);
  const issue: ConfigIssue = {
    path: pathToString(path),
    message,
    ...(at ? { line: at.line, column: at.column } : {}),
  };
  return new ConfigError(loaded.file, [issue]);
}

/** The version of a runtime: sha256 over the configuration's sha256 and each API's document. */
export function runtimeVersion(
  configSha: string,
  documents: readonly { readonly name: string; readonly sha256: string }[],
): string {
  const hash = createHash('sha256').update(configSha);
  for (const doc of documents) hash.update(`\n${doc.name}:${doc.sha256}`);
  return hash.digest('hex');
}

export async function compileRuntime(loaded: LoadedConfig, options: CompileOptions = {}): Promise<Runtime> {
  const { config } = loaded;
  const publicHost = new URL(config.gateway.publicUrl).host;
  const apis: CompiledApi[] = [];
  const routes: { method: string; template: string; data: CompiledOperation }[] = [];
  try {
    for (const [i, api] of config.apis.entries()) {
      let document: OpenApiDocument;
      try {
        document = await loadOpenApi(loaded.resolvePath(api.openapi));
      } catch (err) {
        if (err instanceof OpenApiError) throw configError(loaded, ['apis', i, 'openapi'], err.message);
        throw err;
      }
      if (document.operations.length === 0) {
        throw configError(loaded, ['apis', i, 'openapi'], 'the document declares no operations');
      }
      let caFile: string | undefined;
      if (api.upstream.caFile !== undefined) caFile = loaded.resolvePath(api.upstream.caFile);
      let upstream: Upstream;
      try {
        upstream = new Upstream({
          ...api.upstream.timeouts,
          url: api.upstream.url,
          connections: api.upstream.connections,
          caFile,
        });
      } catch (err) {
        throw configError(
          loaded,
          ['apis', i, 'upstream', 'caFile'],
          `cannot read the CA file (${(err as NodeJS.ErrnoException).code ?? 'error'})`,
        );
      }
      const compiled: CompiledApi = {
        name: api.name,
        basePath: api.basePath,
        document,
        cors: api.cors ? compileCors(api.cors) : null,
        upstream,
      };
      apis.push(compiled);
      const schemeTypes: Record<string, string> = {};
      for (const [name, scheme] of Object.entries(document.securitySchemes)) {
        schemeTypes[name] = typeof scheme.type === 'string' ? scheme.type : '';
      }
      const verifiers: Record<string, SchemeVerifier> = {};
      if (options.tokens !== undefined) {
        const tokenSchemes = Object.entries(document.securitySchemes).filter(([, s]) => isTokenScheme(s));
        if (tokenSchemes.length > 0) {
          // One verifier (and one cache of verified tokens) per API audience.
          const verify = createAccessTokenVerifier({
            issuer: options.tokens.issuer,
            audience: apiAudience(config.gateway.publicUrl, api),
            keys: options.tokens.keys,
            isRevoked: options.tokens.isRevoked,
          });
          for (const [name] of tokenSchemes) verifiers[name] = oauthSchemeVerifier(name, verify);
        }
      }
      Object.assign(verifiers, options.verifiers?.[api.name] ?? {});
      const proxy = compileProxy(upstream, {
        basePath: api.basePath,
        correlationHeader: config.gateway.correlationHeader,
        publicHost,
      });
      const apiRoutes: typeof routes = [];
      for (const op of document.operations) {
        const authenticate = compileAuthenticate({
          apiName: api.name,
          security: op.security,
          schemeTypes,
          verifiers,
        });
        const template = api.basePath + (op.path === '/' ? '' : op.path);
        const stages: Stage[] = [compiled.cors?.stage ?? refuseCrossOrigin];
        if (authenticate) stages.push(authenticate);
        let owner;
        try {
          owner = readOwnerBinding(op.definition, template, !isPublic(op.security));
        } catch (err) {
          if (err instanceof OwnerBindingError)
            throw configError(loaded, ['apis', i, 'openapi'], err.message);
          throw err;
        }
        if (owner) stages.push(compileOwnerCheck(owner));
        const responseStages: ResponseStage[] = [];
        try {
          const validate = compileRequestValidation(op, document);
          if (validate) stages.push(validate);
          const enforce = compileResponseEnforcement(op, document);
          if (enforce) responseStages.push(enforce);
        } catch (err) {
          if (err instanceof SchemaError)
            throw configError(loaded, ['apis', i, 'openapi'], `${op.method} ${op.path}: ${err.message}`);
          throw err;
        }
        stages.push(proxy);
        apiRoutes.push({
          method: op.method,
          template: template === '' ? '/' : template,
          data: {
            api: compiled,
            method: op.method,
            template,
            operationId: op.operationId,
            security: op.security,
            protected: !isPublic(op.security),
            chain: stages,
            responseStages,
          },
        });
      }
      try {
        buildRouteTable(apiRoutes);
      } catch (err) {
        throw configError(loaded, ['apis', i, 'openapi'], (err as Error).message);
      }
      routes.push(...apiRoutes);
    }
    let table: RouteTable<CompiledOperation>;
    try {
      table = buildRouteTable(routes);
    } catch (err) {
      throw configError(loaded, ['apis'], `APIs overlap: ${(err as Error).message}`);
    }
    return {
      loaded,
      version: runtimeVersion(
        loaded.sha256,
        apis.map((a) => ({ name: a.name, sha256: a.document.sha256 })),
      ),
      routes: table,
      apis,
      trusted: compileTrustedProxies(config.gateway.trustedProxies),
      limits: config.gateway.limits,
      correlationHeader: config.gateway.correlationHeader,
      close: async () => {
        await Promise.all(apis.map((a) => a.upstream.close()));
      },
    };
  } catch (err) {
    await Promise.allSettled(apis.map((a) => a.upstream.close()));
    throw err;
  }
}
