/**
 * The per-request context and the stage runner.
 *
 * A stage either passes (returns nothing), answers (returns a {@link StageResponse}: the chain
 * stops and that is the response), or refuses (throws a {@link Denial}). Nothing else: one
 * denial path renders every refusal. Stages are compiled once per configuration version; the
 * functions here only do per-request work.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { Readable } from 'node:stream';
import type { DetailedPeerCertificate } from 'node:tls';
import type { NormalizedTarget } from './path.ts';
import type { CompiledOperation } from './compile.ts';
import type { Principal } from './stages/authenticate/index.ts';

export interface GatewayRequest {
  readonly correlationId: string;
  readonly method: string;
  readonly target: NormalizedTarget;
  readonly headers: IncomingHttpHeaders;
  /** The peer's address as seen on the socket. */
  readonly peerIp: string;
  /** The client's address: the peer, or what a trusted proxy says the client is. */
  readonly clientIp: string;
  readonly operation: CompiledOperation;
  /** Path parameters, decoded once. */
  readonly params: Readonly<Record<string, string>>;
  /** The request body, read up to the size limit; undefined when there is none. */
  body: Buffer | undefined;
  /** Set by the authenticate stage; read by later stages. */
  credentialPresented: boolean;
  /** The verified caller, set by the authenticate stage on protected operations. */
  principal?: Principal;
  /** The TLS client certificate of this connection (with its chain), if one was presented. */
  peerCertificate(): DetailedPeerCertificate | undefined;
  /** Set by the validate stage: the canonical query that was validated; the proxy sends it. */
  forwardQuery?: string;
  /** Headers that stages add to whatever response is sent (e.g. CORS). */
  readonly responseHeaders: Record<string, string>;
}

export interface StageResponse {
  readonly status: number;
  readonly headers: Readonly<Record<string, string | readonly string[]>>;
  readonly body?: Buffer | string | Readable;
  /** Called when the response is finished or aborted; e.g. to release an upstream stream. */
  readonly onDone?: () => void;
}

export type StageResult = StageResponse | undefined;

/**
 * A stage on the way back: receives the answer the chain produced (the upstream's, normally)
 * and returns what the client gets, or throws a {@link Denial}. Runs in order, after the chain.
 */
export type ResponseStage = (
  req: GatewayRequest,
  res: StageResponse,
) => StageResponse | Promise<StageResponse>;
export type Stage = (req: GatewayRequest) => StageResult | Promise<StageResult>;

/** A compiled chain. `null` stands for an empty chain, so an unused chain costs nothing. */
export type Chain = readonly Stage[] | null;

/**
 * Runs the stages in order until one answers. A stage that throws ends the chain; the caller's
 * single error path renders the refusal. A chain that ends without an answer is a programming
 * error (the last stage must answer) and surfaces as one.
 */
export async function runChain(chain: Chain, req: GatewayRequest): Promise<StageResponse> {
  if (chain !== null) {
    for (const stage of chain) {
      const result = stage(req);
      const settled = result instanceof Promise ? await result : result;
      if (settled !== undefined) return settled;
    }
  }
  throw new Error('stage chain ended without a response');
}
