/**
 * The data subject's side of privacy on the gateway itself (issue 16), added to the route table
 * by the compiler when a contract carries privacy annotations:
 *
 *   GET    /privacy/v1/consents                  the caller's consents and opt-outs
 *   PUT    /privacy/v1/consents/{purpose}        grant; body {"noticeVersion": "…"}
 *   DELETE /privacy/v1/consents/{purpose}        withdraw
 *   GET    /privacy/v1/opt-outs                  the caller's opt-outs
 *   PUT    /privacy/v1/opt-outs/{optOut}         opt out (sale-sharing, sensitive-data, automated-decision)
 *   DELETE /privacy/v1/opt-outs/{optOut}         opt back in
 *   GET    /privacy/v1/automated-decisions       public: the logic of every annotated automated decision
 *   GET    /.well-known/gpc.json                 public: {"gpc": true, "lastUpdate": …}
 *
 * The subject is the `sub` of the caller's own access token (any API of this gateway as its
 * audience); a client acting for itself has no subject and is refused. `Sec-GPC: 1` on any of
 * these requests records the opt-out of sale and sharing, as on annotated operations.
 */
import type { GatewayRequest, SchemeVerifier, Stage, StageResponse } from '../gateway/context.ts';
import { Denial } from '../gateway/problems.ts';
import type { InvalidParam } from '../gateway/problems.ts';
import { endUserOf, sendsGpc } from '../gateway/stages/privacy/index.ts';
import type { AutomatedDecision, DataCategory, OperationPrivacy } from './annotations.ts';
import { isOptOut, isPurpose, PrivacyInputError } from './service.ts';
import type { ChangeActor, ChoiceRecord, PrivacyService } from './service.ts';

export const SUBJECT_API_BASE = '/privacy/v1';
export const GPC_PATH = '/.well-known/gpc.json';
/** When this gateway's GPC support last changed (the `lastUpdate` of gpc.json). */
export const GPC_LAST_UPDATE = '2026-12-07';

export interface SubjectRoute {
  readonly method: 'GET' | 'PUT' | 'DELETE';
  readonly template: string;
  /** Whether the caller's access token is needed. */
  readonly protected: boolean;
  /** Runs after authentication: answers, or throws a Denial. */
  readonly answer: Stage;
}

/** An automated decision as the information endpoint describes it. */
export interface DecisionInfo extends AutomatedDecision {
  readonly api: string;
  readonly method: string;
  readonly path: string;
  readonly operationId: string | undefined;
  readonly categories: readonly DataCategory[];
}

export interface SubjectApiOptions {
  readonly service: PrivacyService;
  /** Every API's data map, with the base path its operations are served under. */
  readonly apis: readonly {
    readonly name: string;
    readonly basePath: string;
    readonly operations: readonly OperationPrivacy[];
  }[];
}

function json(status: number, body: unknown, headers: Record<string, string> = {}): StageResponse {
  return {
    status,
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  };
}

function invalid(param: InvalidParam): Denial {
  return new Denial('invalid-request', 'privacy-input', { errors: [param] });
}

function subjectOf(req: GatewayRequest): string {
  const subject = endUserOf(req);
  if (subject === undefined) throw new Denial('forbidden', 'no-data-subject');
  return subject;
}

function actorOf(req: GatewayRequest): ChangeActor {
  return {
    listener: 'gateway',
    source: 'subject',
    clientId: req.principal?.clientId,
    clientIp: req.clientIp,
    traceId: req.correlationId,
  };
}

async function honourGpc(req: GatewayRequest, service: PrivacyService, subject: string): Promise<void> {
  if (!sendsGpc(req)) return;
  const { source: _source, ...actor } = actorOf(req);
  await service.recordGpc(subject, actor);
}

function view(r: ChoiceRecord) {
  return {
    ...(r.kind === 'consent' ? { purpose: r.name } : { optOut: r.name }),
    state: r.state,
    ...(r.noticeVersion === null ? {} : { noticeVersion: r.noticeVersion }),
    source: r.source,
    updatedAt: r.updatedAt,
  };
}

/** The JSON object body of a PUT (empty allowed when nothing is needed). */
function readBody(req: GatewayRequest): Record<string, unknown> {
  if (req.body === undefined) return {};
  const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
  if (type !== 'application/json') throw new Denial('unsupported-media-type', 'privacy-body-not-json');
  let parsed: unknown;
  try {
    parsed = JSON.parse(req.body.toString('utf8'));
  } catch {
    throw invalid({ in: 'body', pointer: '', rule: 'json' });
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw invalid({ in: 'body', pointer: '', rule: 'type' });
  }
  const body = parsed as Record<string, unknown>;
  for (const key of Object.keys(body)) {
    if (key !== 'noticeVersion')
      throw invalid({ in: 'body', pointer: `/${key}`, rule: 'additionalProperties' });
  }
  return body;
}

function param(req: GatewayRequest, name: string): string {
  return req.params[name] ?? '';
}

export function subjectRoutes(options: SubjectApiOptions): SubjectRoute[] {
  const { service } = options;
  const decisions: DecisionInfo[] = [];
  for (const api of options.apis) {
    for (const op of api.operations) {
      if (op.automatedDecision === undefined) continue;
      decisions.push({
        api: api.name,
        method: op.method,
        path: api.basePath + (op.path === '/' ? '' : op.path),
        operationId: op.operationId,
        categories: op.categories,
        ...op.automatedDecision,
      });
    }
  }
  const decisionsBody = JSON.stringify({ decisions });
  const gpcBody = JSON.stringify({ gpc: true, lastUpdate: GPC_LAST_UPDATE });
  const base = SUBJECT_API_BASE;

  const listChoices = async (req: GatewayRequest, kind: 'consent' | 'opt-out' | undefined) => {
    const subject = subjectOf(req);
    await honourGpc(req, service, subject);
    const choices = await service.choices(subject);
    const consents = choices.records.filter((r) => r.kind === 'consent').map(view);
    const optOuts = choices.records.filter((r) => r.kind === 'opt-out').map(view);
    return json(200, kind === 'opt-out' ? { subject, optOuts } : { subject, consents, optOuts });
  };

  const setConsent =
    (granted: boolean): Stage =>
    async (req) => {
      const subject = subjectOf(req);
      const purpose = param(req, 'purpose');
      if (!isPurpose(purpose) || purpose === 'service')
        throw invalid({ in: 'path', pointer: '/purpose', rule: 'enum' });
      const body = readBody(req);
      const notice = body.noticeVersion;
      if (notice !== undefined && typeof notice !== 'string') {
        throw invalid({ in: 'body', pointer: '/noticeVersion', rule: 'type' });
      }
      if (granted && notice === undefined)
        throw invalid({ in: 'body', pointer: '/noticeVersion', rule: 'required' });
      await honourGpc(req, service, subject);
      try {
        const record = await service.setConsent(
          subject,
          { purpose, granted, noticeVersion: notice },
          actorOf(req),
        );
        return json(200, view(record));
      } catch (err) {
        if (err instanceof PrivacyInputError)
          throw invalid({ in: 'body', pointer: '/noticeVersion', rule: 'pattern' });
        throw err;
      }
    };

  const setOptOut =
    (optedOut: boolean): Stage =>
    async (req) => {
      const subject = subjectOf(req);
      const optOut = param(req, 'optOut');
      if (!isOptOut(optOut)) throw invalid({ in: 'path', pointer: '/optOut', rule: 'enum' });
      readBody(req);
      await honourGpc(req, service, subject);
      const record = await service.setOptOut(subject, { optOut, optedOut }, actorOf(req));
      return json(200, view(record));
    };

  return [
    {
      method: 'GET',
      template: `${base}/consents`,
      protected: true,
      answer: (req) => listChoices(req, undefined),
    },
    { method: 'PUT', template: `${base}/consents/{purpose}`, protected: true, answer: setConsent(true) },
    { method: 'DELETE', template: `${base}/consents/{purpose}`, protected: true, answer: setConsent(false) },
    {
      method: 'GET',
      template: `${base}/opt-outs`,
      protected: true,
      answer: (req) => listChoices(req, 'opt-out'),
    },
    { method: 'PUT', template: `${base}/opt-outs/{optOut}`, protected: true, answer: setOptOut(true) },
    { method: 'DELETE', template: `${base}/opt-outs/{optOut}`, protected: true, answer: setOptOut(false) },
    {
      method: 'GET',
      template: `${base}/automated-decisions`,
      protected: false,
      answer: () => ({
        status: 200,
        headers: { 'content-type': 'application/json', 'cache-control': 'public, max-age=300' },
        body: decisionsBody,
      }),
    },
    {
      method: 'GET',
      template: GPC_PATH,
      protected: false,
      answer: () => ({
        status: 200,
        headers: { 'content-type': 'application/json', 'cache-control': 'public, max-age=86400' },
        body: gpcBody,
      }),
    },
  ];
}

/**
 * A verifier for the subject API: the caller's access token is accepted when any API of this
 * gateway would accept it (its audience is one of theirs); no scope is required.
 */
export function anyApiVerifier(verifiers: readonly SchemeVerifier[]): SchemeVerifier {
  return async (req) => {
    let first: Awaited<ReturnType<SchemeVerifier>> | undefined;
    for (const verify of verifiers) {
      const outcome = await verify(req, []);
      if (outcome.ok) return outcome;
      first ??= outcome;
    }
    return first ?? { ok: false, status: 401, reason: 'no-token-verifier' };
  };
}
