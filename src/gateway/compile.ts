/**
 * Compiles a loaded configuration into a {@link Runtime}: the route table of every declared
 * operation with its stage chain built once, the upstream pools and the trusted-proxy list.
 * A configuration that cannot be compiled throws a ConfigError naming the key and line; the
 * caller keeps serving with the previous runtime.
 */
import { ScanDeclarationError, compileScan } from './stages/scan/index.ts';
import type { Sealer } from '../keys/envelope.ts';
import type { Kysely } from 'kysely';
import type { Database } from '../store/schema.ts';
import { createHash } from 'node:crypto';
import { ConfigError, pathToString } from '../config/load.ts';
import type { ConfigIssue, ConfigPath, LoadedConfig } from '../config/load.ts';
import type { LimitsConfig } from '../config/schema.ts';
import type { GatewayRequest, OperationInfo, ResponseStage, Stage, Step } from './context.ts';
import { loadOpenApi, OpenApiError } from './openapi.ts';
import type { SchemaIssue } from './openapi-schemas.ts';
import type { OpenApiDocument } from './openapi.ts';
import { buildRouteTable } from './routes.ts';
import { allowedHosts } from './strict-http.ts';
import type { RouteTable } from './routes.ts';
import { compileTrustedProxies } from './forwarded.ts';
import type { TrustedProxies } from './forwarded.ts';
import { compileAuthenticate, isPublic } from './stages/authenticate/index.ts';
import type { SchemeVerifier } from './context.ts';
import { compileCors, refuseCrossOrigin } from './stages/cors/index.ts';
import type { CompiledCors } from './stages/cors/index.ts';
import type { JSONWebKeySet } from 'jose';
import { createAccessTokenVerifier } from '../tokens/access-token.ts';
import { oauthSchemeVerifier } from '../tokens/oauth-verifier.ts';
import { apiKeySchemeVerifier } from '../tokens/api-keys.ts';
import type { ApiKeyAuthority } from '../tokens/api-keys.ts';
import type { ReplayCache } from '../tokens/dpop.ts';
import type { IdentitySigner } from '../tokens/identity.ts';
import { IssuerConfigError, openExternalIssuers, routeByIssuer } from '../tokens/issuers.ts';
import type { ExternalIssuers } from '../tokens/issuers.ts';
import { readFileSync } from 'node:fs';
import { compileClientCertPolicy, mtlsSchemeVerifier } from '../tokens/mtls.ts';
import type { ClientCertPolicy } from '../tokens/mtls.ts';
import { CertEntitlementError, compileCertEntitlements } from '../tokens/mtls-entitlements.ts';
import type { CertEntitlements } from '../tokens/mtls-entitlements.ts';
import { compileProxy, Upstream } from './stages/proxy/index.ts';
import { compileRequestValidation, SchemaError } from './stages/validate/index.ts';
import { compileResponseEnforcement } from './stages/filter-response/index.ts';
import { compileOwnerCheck, OwnerBindingError, readOwnerBinding } from './stages/authorize/index.ts';
import { compileRateLimits, createLimitBackends } from './stages/rate-limit/index.ts';
import type { CompiledRateLimits, LimitBackends } from './stages/rate-limit/index.ts';
import { compileIdempotency, IdempotencyDeclarationError } from './stages/idempotency/index.ts';
import {
  compileApiPolicies,
  compileOperationPolicies,
  PolicyError,
  resilienceOptions,
} from './api-policies.ts';
import type { CircuitStateChange } from './resilience/guard.ts';
// Privacy (issue 16): the data map read at load, its stage on annotated operations only.
import { needsEnforcement, PrivacyAnnotationError, readOperationPrivacy } from '../privacy/annotations.ts';
import type { OperationPrivacy } from '../privacy/annotations.ts';
import type { PrivacyService } from '../privacy/service.ts';
import { anyApiVerifier, subjectRoutes } from '../privacy/subject-api.ts';
import { compilePrivacyStage } from './stages/privacy/index.ts';
import { Denial } from './problems.ts';

export interface CompiledApi {
  readonly name: string;
  readonly basePath: string;
  readonly document: OpenApiDocument;
  readonly cors: CompiledCors | null;
  readonly upstream: Upstream;
  /** The data map: each operation's purposes and personal data (src/privacy/annotations.ts). */
  readonly privacy: readonly OperationPrivacy[];
}

export interface CompiledOperation extends OperationInfo {
  readonly api: CompiledApi;
  /**
   * The request stages in order (pipeline.ts runs them): sunset, CORS, CSRF, limits,
   * authentication, authorization, validation. `null` when there is none.
   */
  readonly requestStages: readonly Step[] | null;
  /** The upstream call: the proxy, wrapped by idempotency where the operation declares it. */
  readonly upstream: Step;
  /** Stages applied to the answer, in order (response validation, filtering…). */
  readonly responseStages: readonly ResponseStage[];
  /** Declared `x-portcullis-websocket: true`: accepts an upgrade (websocket.ts). */
  readonly websocket: boolean;
}

export interface Runtime {
  readonly loaded: LoadedConfig;
  /** sha256 over the configuration text and each OpenAPI document: the configuration version. */
  readonly version: string;
  readonly routes: RouteTable<CompiledOperation>;
  readonly apis: readonly CompiledApi[];
  readonly trusted: TrustedProxies;
  readonly limits: LimitsConfig;
  /** Rate limits, including the authorization server's (gateway-server.ts calls them). */
  readonly rateLimits: CompiledRateLimits;
  readonly correlationHeader: string;
  /** The host names this gateway answers for (publicUrl's host and `gateway.hostAliases`). */
  readonly hosts: ReadonlySet<string>;
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
  /** Counters, Redis connections and idempotency records kept across reloads (one per process). */
  readonly backends?: LimitBackends;
  /** Told when an upstream's circuit breaker opens, half-opens or closes. */
  readonly onCircuitStateChange?: (change: CircuitStateChange) => void;
  /** Verifies API keys for `apiKey` schemes; without it, such schemes cannot be satisfied. */
  readonly apiKeys?: ApiKeyAuthority;
  /** The DPoP proof `jti` replay cache shared by every verifier of this process. */
  readonly dpopReplay?: ReplayCache;
  /** Signs the caller assertion sent upstream instead of the client's credential. */
  readonly identity?: IdentitySigner;
  /** The store, for idempotency records with `idempotency.backend: store`. */
  readonly db?: Kysely<Database>;
  /** Encrypts idempotency records kept in Redis or the store (src/keys/envelope.ts). */
  readonly idempotencySealer?: Sealer;
  /** Consents and opt-outs: enforced on annotated operations, served at /privacy/v1 (issue 16). */
  readonly privacy?: PrivacyService;
  /** Told about contract warnings (e.g. personal data without a category). */
  readonly onWarning?: (message: string) => void;
}

/** The verifiers for every scheme of one API's document that this gateway can check. */
function buildVerifiers(
  apiName: string,
  audience: string,
  document: OpenApiDocument,
  options: CompileOptions & {
    readonly publicUrl: string;
    readonly clientCerts: ClientCertPolicy | undefined;
    readonly certEntitlements: CertEntitlements | undefined;
    readonly externalIssuers: ExternalIssuers;
  },
): Record<string, SchemeVerifier> {
  const verifiers: Record<string, SchemeVerifier> = {};
  const certificate = (req: GatewayRequest) => req.peerCertificate();
  const schemes = Object.entries(document.securitySchemes);
  const tokenSchemes = schemes.filter(([, s]) => isTokenScheme(s));
  // One verifier (and one cache of verified tokens) per issuer and API audience, chosen by the
  // token's iss (tokens/issuers.ts). Key-bound tokens are accepted with their proof: a DPoP
  // proof, or the certificate of this TLS connection.
  const tokens = options.tokens;
  const allowBoundTokens = options.dpopReplay !== undefined;
  const verify = routeByIssuer([
    ...(tokens === undefined
      ? []
      : [
          {
            issuer: tokens.issuer,
            verify: createAccessTokenVerifier({ ...tokens, audience, allowBoundTokens }),
          },
        ]),
    ...options.externalIssuers.verifiersFor({
      audience,
      isRevoked: tokens?.isRevoked ?? (() => false),
      allowBoundTokens,
    }),
  ]);
  if (verify !== undefined && tokenSchemes.length > 0) {
    const dpopReplay = options.dpopReplay;
    for (const [name] of tokenSchemes) {
      verifiers[name] = oauthSchemeVerifier(name, verify, {
        realm: apiName,
        ...(dpopReplay === undefined
          ? {}
          : {
              dpop: {
                replay: dpopReplay,
                requestUrl: (req: GatewayRequest) => options.publicUrl + req.target.path,
              },
              mtls: { certificate },
            }),
      });
    }
  }
  for (const [name, scheme] of schemes) {
    if (scheme.type === 'apiKey' && options.apiKeys !== undefined) {
      const where = scheme.in;
      if (
        (where === 'header' || where === 'query' || where === 'cookie') &&
        typeof scheme.name === 'string'
      ) {
        verifiers[name] = apiKeySchemeVerifier(name, { in: where, name: scheme.name }, options.apiKeys);
      }
    }
    if (scheme.type === 'mutualTLS' && options.clientCerts !== undefined) {
      verifiers[name] = mtlsSchemeVerifier(name, options.clientCerts, {
        certificate,
        entitlements: options.certEntitlements,
      });
    }
  }
  return verifiers;
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

/** Every schema mistake of one API's document, each as `document:line:col pointer: what`. */
function documentErrors(
  loaded: LoadedConfig,
  index: number,
  document: string,
  issues: readonly SchemaIssue[],
): ConfigError {
  const at = loaded.locate(['apis', index, 'openapi']);
  return new ConfigError(
    loaded.file,
    issues.map((issue) => ({
      path: pathToString(['apis', index, 'openapi']),
      message: `${document}${issue.line === undefined ? '' : `:${String(issue.line)}:${String(issue.column ?? 1)}`} ${issue.pointer}: ${issue.message}`,
      ...(at ? { line: at.line, column: at.column } : {}),
    })),
  );
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
  let clientCerts: ClientCertPolicy | undefined;
  const mtls = config.gateway.mtls;
  if (mtls !== undefined) {
    try {
      clientCerts = await compileClientCertPolicy({
        caFiles: mtls.caFiles.map((f) => loaded.resolvePath(f)),
        crlFiles: mtls.crlFiles.map((f) => loaded.resolvePath(f)),
      });
    } catch (err) {
      throw configError(loaded, ['gateway', 'mtls'], (err as Error).message);
    }
  }
  const apis: CompiledApi[] = [];
  const routes: { method: string; template: string; data: CompiledOperation }[] = [];
  let externalIssuers: ExternalIssuers;
  try {
    externalIssuers = openExternalIssuers(config.tokens.issuers, {
      readCa: (f) => readFileSync(loaded.resolvePath(f), 'utf8'),
      ...(options.tokens === undefined ? {} : { reserved: [options.tokens.issuer] }),
    });
  } catch (err) {
    if (err instanceof IssuerConfigError)
      throw configError(loaded, ['tokens', 'issuers', err.index, err.key], err.message);
    throw err;
  }
  const backends = options.backends ?? createLimitBackends();
  const subjectVerifiers: SchemeVerifier[] = [];
  // The privacy API counts against the first API's rate limits (per IP, client and user).
  let subjectLimits:
    ((protectedOp: boolean) => ReturnType<Awaited<ReturnType<CompiledRateLimits['forApi']>>>) | undefined;
  try {
    const rateLimits = await compileRateLimits(loaded, backends);
    const idempotency = compileIdempotency(loaded, backends, options.db, options.idempotencySealer);
    for (const [i, api] of config.apis.entries()) {
      let document: OpenApiDocument;
      try {
        document = await loadOpenApi(loaded.resolvePath(api.openapi));
      } catch (err) {
        if (err instanceof OpenApiError) {
          if (err.issues.length === 0) throw configError(loaded, ['apis', i, 'openapi'], err.message);
          throw documentErrors(loaded, i, api.openapi, err.issues);
        }
        throw err;
      }
      if (document.operations.length === 0) {
        throw configError(loaded, ['apis', i, 'openapi'], 'the document declares no operations');
      }
      const declaredIds = new Set(document.operations.map((op) => op.operationId));
      for (const id of Object.keys(api.rateLimits?.operations ?? {})) {
        if (!declaredIds.has(id)) {
          throw configError(
            loaded,
            ['apis', i, 'rateLimits', 'operations', id],
            `operationId "${id}" is not declared in ${api.openapi}, so this limit would never apply`,
          );
        }
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
          resilience: resilienceOptions(api, options.onCircuitStateChange),
        });
      } catch (err) {
        throw configError(
          loaded,
          ['apis', i, 'upstream', 'caFile'],
          `cannot read the CA file (${(err as NodeJS.ErrnoException).code ?? 'error'})`,
        );
      }
      const privacyMap: OperationPrivacy[] = [];
      try {
        const warnings: string[] = [];
        for (const op of document.operations) privacyMap.push(readOperationPrivacy(op, warnings));
        for (const w of warnings) options.onWarning?.(`apis[${String(i)}].openapi (${api.name}): ${w}`);
      } catch (err) {
        if (err instanceof PrivacyAnnotationError)
          throw configError(loaded, ['apis', i, 'openapi'], err.message);
        throw err;
      }
      const compiled: CompiledApi = {
        name: api.name,
        basePath: api.basePath,
        document,
        cors: api.cors ? compileCors(api.cors) : null,
        upstream,
        privacy: privacyMap,
      };
      apis.push(compiled);
      let policies;
      try {
        policies = compileApiPolicies(api, config.gateway.publicUrl);
      } catch (err) {
        if (err instanceof PolicyError) throw configError(loaded, ['apis', i, err.key], err.message);
        throw err;
      }
      const schemeTypes: Record<string, string> = {};
      for (const [name, scheme] of Object.entries(document.securitySchemes)) {
        schemeTypes[name] = typeof scheme.type === 'string' ? scheme.type : '';
      }
      // A mutualTLS scheme needs the API's certificate entitlements: a CA alone is not authorisation.
      let certEntitlements: CertEntitlements | undefined;
      if (Object.values(document.securitySchemes).some((s) => s.type === 'mutualTLS')) {
        if (api.mtls === undefined) {
          throw configError(
            loaded,
            ['apis', i, 'name'],
            'the OpenAPI document declares a mutualTLS scheme: list the certificates this API accepts in mtls.clients (a trusted CA alone is not authorisation)',
          );
        }
        try {
          certEntitlements = compileCertEntitlements(api.mtls.clients);
        } catch (err) {
          if (err instanceof CertEntitlementError) {
            throw configError(loaded, ['apis', i, 'mtls', 'clients', err.index, err.key], err.message);
          }
          throw err;
        }
      }
      const verifiers = buildVerifiers(api.name, apiAudience(config.gateway.publicUrl, api), document, {
        ...options,
        publicUrl: config.gateway.publicUrl,
        clientCerts,
        certEntitlements,
        externalIssuers,
      });
      Object.assign(verifiers, options.verifiers?.[api.name] ?? {});
      const tokenScheme = Object.entries(document.securitySchemes).find(
        ([n, s]) => isTokenScheme(s) && verifiers[n],
      );
      if (tokenScheme !== undefined) subjectVerifiers.push(verifiers[tokenScheme[0]] as SchemeVerifier);
      const limitsFor = await rateLimits.forApi(i, document);
      subjectLimits ??= (protectedOp) => limitsFor(undefined, protectedOp);
      const identitySigner = options.identity;
      const proxy = compileProxy(upstream, {
        basePath: api.basePath,
        correlationHeader: config.gateway.correlationHeader,
        publicHost,
        contract: document,
        credentialHeaders: new Set(
          Object.values(document.securitySchemes)
            .filter((s) => s.type === 'apiKey' && s.in === 'header' && typeof s.name === 'string')
            .map((s) => String(s.name).toLowerCase()),
        ),
        ...(identitySigner === undefined
          ? {}
          : {
              identity: {
                header: config.gateway.identity.header,
                audience: upstream.origin,
                sign: identitySigner,
              },
            }),
      });
      // Inside idempotency, the upstream call names itself: a refusal there is the proxy's.
      const proxyStep: Stage = (req) => {
        req.stage = 'proxy';
        return proxy(req);
      };
      const apiRoutes: typeof routes = [];
      for (const [opIndex, op] of document.operations.entries()) {
        const authenticate = compileAuthenticate({
          apiName: api.name,
          security: op.security,
          schemeTypes,
          verifiers,
        });
        const template = api.basePath + (op.path === '/' ? '' : op.path);
        let extra;
        try {
          extra = compileOperationPolicies(op, document, policies);
        } catch (err) {
          if (err instanceof PolicyError) throw configError(loaded, ['apis', i, err.key], err.message);
          throw err;
        }
        const stages: Step[] = [];
        for (const run of extra.first) stages.push({ name: 'deprecation', run });
        stages.push({ name: 'cors', run: compiled.cors?.stage ?? refuseCrossOrigin });
        for (const run of extra.afterCors) stages.push({ name: 'csrf', run });
        const limit = limitsFor(op.operationId, !isPublic(op.security));
        if (limit.beforeAuth) stages.push({ name: 'rate-limit', run: limit.beforeAuth });
        if (authenticate) stages.push({ name: 'authenticate', run: authenticate });
        if (limit.afterAuth) stages.push({ name: 'rate-limit', run: limit.afterAuth });
        let owner;
        try {
          owner = readOwnerBinding(op.definition, template, !isPublic(op.security));
        } catch (err) {
          if (err instanceof OwnerBindingError)
            throw configError(loaded, ['apis', i, 'openapi'], err.message);
          throw err;
        }
        if (owner) stages.push({ name: 'authorize', run: compileOwnerCheck(owner) });
        const privacy = privacyMap[opIndex];
        if (privacy !== undefined && needsEnforcement(privacy)) {
          if (isPublic(op.security))
            throw configError(
              loaded,
              ['apis', i, 'openapi'],
              `${op.method} ${op.path}: x-portcullis-purposes beyond service need a protected operation (consent is per signed-in subject)`,
            );
          stages.push({
            name: 'privacy',
            run: options.privacy ? compilePrivacyStage(privacy, options.privacy) : noPrivacyService,
          });
        }
        const responseStages: ResponseStage[] = [];
        try {
          const validate = compileRequestValidation(op, document, {
            json: { maxValues: config.gateway.limits.jsonValues },
          });
          if (validate) stages.push({ name: 'validate', run: validate });
          const enforce = compileResponseEnforcement(op, document);
          if (enforce) responseStages.push(enforce);
        } catch (err) {
          if (err instanceof SchemaError)
            throw configError(loaded, ['apis', i, 'openapi'], `${op.method} ${op.path}: ${err.message}`);
          throw err;
        }
        responseStages.push(...extra.responseStages);
        // Upload scanning (issue 18): only on the operations `uploads` names.
        try {
          const scan = compileScan(config.uploads, api.name, op, backends.logger);
          if (scan) stages.push({ name: 'scan', run: scan });
        } catch (err) {
          if (err instanceof ScanDeclarationError)
            throw configError(loaded, ['apis', i, 'openapi'], `${op.method} ${op.path}: ${err.message}`);
          throw err;
        }
        let upstreamStep: Step;
        try {
          const wrapped = await idempotency.wrap(api.name, op, template, proxyStep);
          upstreamStep =
            wrapped === proxyStep ? { name: 'proxy', run: proxy } : { name: 'idempotency', run: wrapped };
        } catch (err) {
          if (err instanceof IdempotencyDeclarationError)
            throw configError(loaded, ['apis', i, 'openapi'], `${op.method} ${op.path}: ${err.message}`);
          throw err;
        }
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
            requestStages: stages.length === 0 ? null : stages,
            upstream: upstreamStep,
            responseStages,
            websocket: extra.websocket,
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
    if (options.privacy !== undefined && apis.some((a) => a.privacy.some(isAnnotated))) {
      routes.push(...privacyRoutes(options.privacy, apis, subjectVerifiers, subjectLimits));
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
      rateLimits,
      correlationHeader: config.gateway.correlationHeader,
      hosts: allowedHosts(config.gateway.publicUrl, config.gateway.hostAliases),
      close: async () => {
        await Promise.all([...apis.map((a) => a.upstream.close()), externalIssuers.close()]);
        if (options.backends === undefined) await backends.close();
      },
    };
  } catch (err) {
    await Promise.allSettled([...apis.map((a) => a.upstream.close()), externalIssuers.close()]);
    if (options.backends === undefined) await backends.close();
    throw err;
  }
}

/** Without a privacy service (a compile for validation only), annotated operations fail closed. */
const noPrivacyService: Stage = () => {
  throw new Denial('unavailable', 'privacy-service-unavailable');
};

function isAnnotated(p: OperationPrivacy): boolean {
  return p.purposesDeclared || p.fields.length > 0 || p.automatedDecision !== undefined;
}

/** The subject API (src/privacy/subject-api.ts) as routes of the table. */
function privacyRoutes(
  service: PrivacyService,
  apis: readonly CompiledApi[],
  verifiers: readonly SchemeVerifier[],
  limits: ((protectedOp: boolean) => { beforeAuth: Stage | null; afterAuth: Stage | null }) | undefined,
): { method: string; template: string; data: CompiledOperation }[] {
  const verify = anyApiVerifier(verifiers);
  const security = [{ subject: [] }];
  const authenticate = compileAuthenticate({
    apiName: 'privacy',
    security,
    schemeTypes: { subject: 'oauth2' },
    verifiers: { subject: verify },
  });
  const api: CompiledApi = {
    name: 'privacy',
    basePath: '/privacy/v1',
    // Never proxied: the answers are the gateway's own.
    document: { sha256: '', version: '3.1.0', title: 'privacy', operations: [], securitySchemes: {} },
    cors: null,
    upstream: undefined as unknown as Upstream,
    privacy: [],
  };
  return subjectRoutes({
    service,
    apis: apis.map((a) => ({ name: a.name, basePath: a.basePath, operations: a.privacy })),
  }).map((r) => {
    const stages: Step[] = [];
    const limit = limits?.(r.protected);
    if (r.protected) stages.push({ name: 'cors', run: refuseCrossOrigin });
    if (limit?.beforeAuth) stages.push({ name: 'rate-limit', run: limit.beforeAuth });
    if (r.protected && authenticate) stages.push({ name: 'authenticate', run: authenticate });
    if (limit?.afterAuth) stages.push({ name: 'rate-limit', run: limit.afterAuth });
    return {
      method: r.method,
      template: r.template,
      data: {
        api,
        method: r.method,
        template: r.template,
        operationId: undefined,
        security: r.protected ? security : [],
        protected: r.protected,
        requestStages: stages.length === 0 ? null : stages,
        upstream: { name: 'privacy', run: r.answer },
        responseStages: [],
        websocket: false,
      },
    };
  });
}
