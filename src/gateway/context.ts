/**
 * The request context and the stage contract: what every stage receives, what it may return,
 * and who the verified caller is. This module sits below the compiler (compile.ts), the stages
 * and the front door: it imports none of them (test/import-cycles.test.ts keeps it so).
 *
 * A stage either passes (returns nothing), answers (returns a {@link StageResponse}: the chain
 * stops and that is the response), or refuses (throws a `Denial` from problems.ts). Nothing else:
 * one denial path (pipeline.ts) renders every refusal, naming the {@link StageName} that refused.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { Readable } from 'node:stream';
import type { DetailedPeerCertificate } from 'node:tls';
import type { SecurityRequirement } from './openapi.ts';
import type { ProblemCode } from './problems.ts';
import type { NormalizedTarget } from './path.ts';

/**
 * The step of the request path that produced a refusal: what the audit event's `event.action`
 * and the `portcullis_denials_total{stage}` metric name. A fixed set (bounded label values).
 */
export const STAGE_NAMES = [
  'framing',
  'limits',
  'load-shedding',
  'route',
  'cors',
  'csrf',
  'deprecation',
  'rate-limit',
  'authenticate',
  'authorize',
  'validate',
  'scan',
  'privacy',
  'idempotency',
  'proxy',
  'response',
  'websocket',
  'authorization-server',
] as const;
export type StageName = (typeof STAGE_NAMES)[number];

/** Who a verified credential belongs to; later stages read it from the request. */
export interface Principal {
  readonly scheme: string;
  readonly subject: string;
  readonly clientId: string;
  readonly scopes: ReadonlySet<string>;
}

/**
 * What stages, verifiers and observers know of the matched operation. The compiler's
 * `CompiledOperation` (compile.ts) extends it with the chains themselves.
 */
export interface OperationInfo {
  readonly api: { readonly name: string; readonly basePath: string };
  readonly method: string;
  /** Gateway path template, e.g. `/v1/patients/{patientId}`: what logs and metrics show. */
  readonly template: string;
  readonly operationId: string | undefined;
  readonly security: readonly SecurityRequirement[];
  /** Whether the operation needs a credential. */
  readonly protected: boolean;
}

export interface GatewayRequest {
  readonly correlationId: string;
  readonly method: string;
  readonly target: NormalizedTarget;
  readonly headers: IncomingHttpHeaders;
  /** The peer's address as seen on the socket. */
  readonly peerIp: string;
  /** The client's address: the peer, or what a trusted proxy says the client is. */
  readonly clientIp: string;
  readonly operation: OperationInfo;
  /** Path parameters, decoded once. */
  readonly params: Readonly<Record<string, string>>;
  /** The request body, read up to the size limit; undefined when there is none. */
  body: Buffer | undefined;
  /** Set by the authenticate stage; read by later stages. */
  credentialPresented: boolean;
  /** The verified caller, set by the authenticate stage on protected operations. */
  principal?: Principal | undefined;
  /** The TLS client certificate of this connection (with its chain), if one was presented. */
  peerCertificate(): DetailedPeerCertificate | undefined;
  /** Set by the validate stage: the canonical query that was validated; the proxy sends it. */
  forwardQuery?: string | undefined;
  /** Headers that stages add to whatever response is sent (e.g. CORS). */
  readonly responseHeaders: Record<string, string>;
  /** The step in progress (set by the runner); a refusal is attributed to it. */
  stage?: StageName | undefined;
  /** Set by the privacy stage (annotated operations only): the claim the identity assertion carries. */
  privacy?: PrivacyClaims | undefined;
}

/** The subject's current consents and opt-outs, as the upstream receives them (issue 16). */
export interface PrivacyClaims {
  /** Purposes with a granted consent, sorted. */
  readonly consents: readonly string[];
  /** Opt-outs in force, sorted. */
  readonly optOuts: readonly string[];
  /** Changes whenever either list changes (the assertion cache's key). */
  readonly version: string;
}

export interface StageResponse {
  readonly status: number;
  readonly headers: Readonly<Record<string, string | readonly string[]>>;
  readonly body?: Buffer | string | Readable;
  /** Called when the response is finished or aborted; e.g. to release an upstream stream. */
  readonly onDone?: () => void;
}

export type StageResult = StageResponse | undefined;

export type Stage = (req: GatewayRequest) => StageResult | Promise<StageResult>;

/**
 * A stage on the way back: receives the answer the chain produced (the upstream's, normally)
 * and returns what the client gets, or throws a `Denial`. Runs in order, after the chain.
 */
export type ResponseStage = (
  req: GatewayRequest,
  res: StageResponse,
) => StageResponse | Promise<StageResponse>;

/** One compiled step of a chain: the stage and the name its refusals carry. */
export interface Step {
  readonly name: StageName;
  readonly run: Stage;
}

/** A compiled chain. `null` stands for an empty chain, so an unused chain costs nothing. */
export type Chain = readonly Step[] | null;

/** The outcome of verifying one security scheme's credential. */
export type VerifyOutcome =
  | { readonly ok: true; readonly principal: Principal }
  | {
      readonly ok: false;
      /** 401: no acceptable credential; 403: a valid credential without the required scopes. */
      readonly status: 401 | 403;
      readonly reason: string;
      /**
       * The complete `WWW-Authenticate` value for this refusal, when the verifier knows better than
       * the default Bearer challenge (e.g. the DPoP challenge of RFC 9449 §7.1).
       */
      readonly challenge?: string;
      /** Issue 13: the id of a known API key that was refused (for the audit event; never the key). */
      readonly apiKeyId?: string;
    };

/** Verifies one security scheme's credential on a request. */
export type SchemeVerifier = (
  req: GatewayRequest,
  requiredScopes: readonly string[],
) => VerifyOutcome | Promise<VerifyOutcome>;

/** Which door a request came through. */
export type DoorKind = 'api' | 'websocket' | 'authorization-server';

/**
 * How one request ended, as the observers (audit, metrics) see it: one record per request,
 * refusals included, whatever the door. The pipeline's exchange is this record.
 */
export interface RequestRecord {
  readonly door: DoorKind;
  readonly correlationId: string;
  readonly clientIp: string;
  readonly method: string;
  /** The path without its query: observers of the authorization server map it to a bounded route. */
  readonly rawPath: string;
  readonly status: number;
  readonly durationMs: number;
  /** The matched operation; undefined when the request was refused before routing. */
  readonly op: OperationInfo | undefined;
  readonly principal?: Principal | undefined;
  readonly denial:
    | {
        readonly code: ProblemCode;
        readonly reason: string;
        /** Issue 13: a rate-limit refusal's counter (see problems.ts RateLimitRefusal). */
        readonly rateLimit?:
          | { readonly dimension: string; readonly key: string; readonly retryAfterSeconds: number }
          | undefined;
        /** Issue 13: a refused request's known API key id. */
        readonly apiKeyId?: string | undefined;
      }
    | undefined;
  /** The step that refused (set with `denial`). */
  readonly stage?: StageName | undefined;
  readonly body?: Buffer | undefined;
  /** Issue 13: bytes of the response body sent (undefined when unknown, e.g. the AS's own). */
  readonly responseBytes?: number | undefined;
}
