/**
 * The login and consent interactions of the embedded authorization server: everything under
 * `/interaction/`. oidc-provider decides *whether* to prompt (login, max_age, prompt=login,
 * consent); this handler renders the pages and records the user's answers.
 *
 * Routes (uid = oidc-provider's interaction id; its cookie is path-scoped to `/interaction/<uid>`):
 *   GET  /interaction/:uid                     login, second-factor or consent page
 *   POST /interaction/:uid/login               username + password
 *   POST /interaction/:uid/totp                TOTP code (users with a second factor)
 *   POST /interaction/:uid/confirm             consent: the scopes the user ticked
 *   POST /interaction/:uid/abort               access_denied back to the client
 *   GET  /interaction/:uid/federated           start sign-in at the upstream provider
 *   GET  /interaction/federated-callback       the upstream's redirect URI (bounces to ↓)
 *   GET  /interaction/:uid/federated/callback  finish it
 *
 * Every POST needs the CSRF token bound to the interaction (HMAC of the uid) and a same-origin
 * `Origin` (or `Sec-Fetch-Site: same-origin`). Every page gets a fresh CSP nonce, no script.
 * Every login failure shows GENERIC_LOGIN_FAILURE. Nothing a user types is logged.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import type { Config } from '../../config/schema.ts';
import type { Logger } from '../../log/index.ts';
import { describeError } from '../../log/index.ts';
import type { Users } from '../users.ts';
import { GENERIC_LOGIN_FAILURE } from '../users.ts';
import { FEDERATION_CALLBACK_PATH, uidFromState } from './federation.ts';
import type { Federation, FederationPending } from './federation.ts';
import { consentPage, contentSecurityPolicy, errorPage, layout, loginPage, totpPage } from './html.ts';
import { refusalEvent, signInEvent, signInFailureEvent } from './audit.ts';
import type { SignInAuditSink, SignInContext } from './audit.ts';

export { escapeHtml, contentSecurityPolicy } from './html.ts';
export { createFederation, FEDERATION_CALLBACK_PATH } from './federation.ts';
export type { Federation } from './federation.ts';

/** The request as the handler needs it (node:http or node:http2 compatibility request). */
export interface InteractionRequest extends AsyncIterable<unknown> {
  readonly method?: string | undefined;
  readonly url?: string | undefined;
  readonly headers: IncomingHttpHeaders;
  readonly socket: { readonly remoteAddress?: string | undefined };
}

export interface InteractionResponse {
  statusCode: number;
  readonly headersSent: boolean;
  setHeader(name: string, value: string): unknown;
  end(body: string): unknown;
}

/** What the gateway already knows about the request (it may have read the body). */
export interface InteractionRequestContext {
  readonly body?: Buffer | undefined;
  /** The client address after trusted-proxy processing (throttling counts per it). */
  readonly clientIp?: string | undefined;
  readonly correlationId?: string | undefined;
  /** The provider in force (overrides `options.provider`). */
  readonly provider?: InteractionProvider | undefined;
}

// --- the part of oidc-provider used here (the package ships no types) ------------------------

export interface InteractionGrant {
  addOIDCScope(scope: string): void;
  rejectOIDCScope(scope: string): void;
  addOIDCClaims(claims: string[]): void;
  addResourceScope(resource: string, scope: string): void;
  rejectResourceScope(resource: string, scope: string): void;
  save(): Promise<string>;
}

export interface InteractionProvider {
  interactionDetails(req: never, res: never): Promise<unknown>;
  interactionResult(
    req: never,
    res: never,
    result: Record<string, unknown>,
    options?: { mergeWithLastSubmission?: boolean },
  ): Promise<string>;
  readonly Client: { find(id: string): Promise<unknown> };
  readonly Grant: {
    new (properties: { accountId: string; clientId: string }): InteractionGrant;
    find(id: string): Promise<InteractionGrant | undefined>;
  };
}

export interface InteractionHandlerOptions {
  /**
   * The provider in force (a getter: it is rebuilt on reload), unless each call passes
   * `context.provider`.
   */
  readonly provider?: () => InteractionProvider;
  readonly users: Users;
  /** The configuration in force (gateway.publicUrl, oauth.*). */
  readonly config: () => Pick<Config, 'gateway' | 'oauth'>;
  readonly logger: Logger;
  readonly federation?: Federation | undefined;
  /**
   * Key for the CSRF tokens (HMAC-SHA-256 of the interaction uid). Processes sharing a store must
   * share it, e.g. `Buffer.from(keys.hmac('client-secret', 'interaction-csrf-v1'), 'base64url')`.
   * Default: random per process.
   */
  readonly csrfKey?: Uint8Array;
  /**
   * The scopes a user may consent to (roles, src/admin/roles.ts): the consent page offers only
   * these and a submitted form cannot add others. Default: every scope the client holds.
   */
  readonly entitlement?: ((accountId: string) => Promise<(scope: string) => boolean>) | undefined;
  /** Human descriptions of scopes shown on the consent page. */
  readonly scopeDescriptions?: Readonly<Record<string, string>>;
  /**
   * The descriptions the APIs' OpenAPI documents give their scopes (oauth2 flows), asked for each
   * consent page so that a reload's new wording shows at once. They win over `scopeDescriptions`.
   */
  readonly contractScopeDescriptions?: () => Promise<Readonly<Record<string, string>>>;
  readonly now?: () => number;
  /** Sign-in decisions for the audit trail (issue 13; see ./audit.ts). */
  readonly audit?: SignInAuditSink | undefined;
}

export type InteractionHandler = (
  req: InteractionRequest,
  res: InteractionResponse,
  context?: InteractionRequestContext,
) => Promise<void>;

const UID = /^[A-Za-z0-9_-]{8,64}$/;
const MAX_BODY = 16 * 1024;
/** How long a password-verified login waits for its second factor. */
const PENDING_SECOND_FACTOR_MS = 5 * 60 * 1000;

const DEFAULT_SCOPES: Readonly<Record<string, string>> = {
  openid: 'sign you in with your account',
  profile: 'see your profile (name, username)',
  email: 'see your email address',
  offline_access: 'keep access while you are away',
};

/** A refusal rendered as an error page; `message` is shown, `reason` only logged. */
class InteractionRefusal extends Error {
  readonly status: number;
  readonly reason: string;
  constructor(status: number, reason: string, message: string) {
    super(message);
    this.name = 'InteractionRefusal';
    this.status = status;
    this.reason = reason;
  }
}

const EXPIRED = 'This sign-in request has expired or is not valid.';

// --- typed views of oidc-provider's loose objects ----------------------------------------------

interface Details {
  readonly uid: string;
  readonly prompt: string;
  readonly reasons: readonly string[];
  readonly missingOIDCScope: readonly string[];
  readonly missingOIDCClaims: readonly string[];
  readonly missingResourceScopes: Readonly<Record<string, readonly string[]>>;
  readonly clientId: string;
  readonly requestedScope: string;
  /** The client's redirect URI for this request (oidc-provider checked it is registered). */
  readonly redirectUri: string | undefined;
  readonly accountId: string | undefined;
  readonly grantId: string | undefined;
  readonly portcullis: PendingState;
  /** The provider that answered (the one in force for this request). */
  readonly provider: InteractionProvider;
}

interface PendingState {
  readonly secondFactor?: { readonly accountId: string; readonly at: number };
  readonly federation?: FederationPending & { readonly at: number };
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}
function strings(v: unknown): string[] {
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
}

function parsePending(v: unknown): PendingState {
  if (!isRecord(v)) return {};
  const out: { secondFactor?: PendingState['secondFactor']; federation?: PendingState['federation'] } = {};
  const sf = v.secondFactor;
  if (isRecord(sf) && typeof sf.accountId === 'string' && typeof sf.at === 'number') {
    out.secondFactor = { accountId: sf.accountId, at: sf.at };
  }
  const f = v.federation;
  if (
    isRecord(f) &&
    typeof f.state === 'string' &&
    typeof f.nonce === 'string' &&
    typeof f.verifier === 'string' &&
    typeof f.at === 'number'
  ) {
    out.federation = { state: f.state, nonce: f.nonce, verifier: f.verifier, at: f.at };
  }
  return out;
}

function parseDetails(raw: unknown, provider: InteractionProvider): Details {
  if (!isRecord(raw) || !isRecord(raw.prompt) || !isRecord(raw.params)) {
    throw new Error('unexpected interaction details');
  }
  const details = isRecord(raw.prompt.details) ? raw.prompt.details : {};
  const rs: Record<string, string[]> = {};
  if (isRecord(details.missingResourceScopes)) {
    for (const [k, v] of Object.entries(details.missingResourceScopes)) rs[k] = strings(v);
  }
  const session = isRecord(raw.session) ? raw.session : {};
  const result = isRecord(raw.result) ? raw.result : {};
  return {
    uid: str(raw.uid) ?? '',
    prompt: str(raw.prompt.name) ?? '',
    reasons: strings(raw.prompt.reasons),
    missingOIDCScope: strings(details.missingOIDCScope),
    missingOIDCClaims: strings(details.missingOIDCClaims),
    missingResourceScopes: rs,
    clientId: str(raw.params.client_id) ?? '',
    requestedScope: str(raw.params.scope) ?? '',
    redirectUri: str(raw.params.redirect_uri),
    accountId: str(session.accountId),
    grantId: str(raw.grantId),
    portcullis: parsePending(result.portcullis),
    provider,
  };
}

function clientName(client: unknown, fallback: string): string {
  if (!isRecord(client) && typeof client !== 'object') return fallback;
  const name = (client as { clientName?: unknown } | null)?.clientName;
  return typeof name === 'string' && name.length > 0 ? name : fallback;
}

/**
 * The CSP source for the client's redirect URI: a form POST here ends in a redirect to it, and
 * browsers apply `form-action` to the whole redirect chain.
 */
function formTarget(redirectUri: string | undefined): string | undefined {
  if (redirectUri === undefined) return undefined;
  let url: URL;
  try {
    url = new URL(redirectUri);
  } catch {
    return undefined;
  }
  if (url.protocol === 'https:' || url.protocol === 'http:') return url.origin;
  return /^[a-z][a-z0-9+.-]*:$/.test(url.protocol) ? url.protocol : undefined;
}

function isSessionNotFound(err: unknown): boolean {
  return (
    err instanceof Error &&
    (err.name === 'SessionNotFound' || (err as { error?: unknown }).error === 'invalid_request')
  );
}

// --- the handler --------------------------------------------------------------------------------

export function createInteractionHandler(options: InteractionHandlerOptions): InteractionHandler {
  const { users, logger, federation } = options;
  const now = options.now ?? Date.now;
  const csrfKey = options.csrfKey ?? randomBytes(32);
  const scopeText = { ...DEFAULT_SCOPES, ...(options.scopeDescriptions ?? {}) };
  const audit: SignInAuditSink = options.audit ?? (() => undefined);
  const who = (
    d: Details | undefined,
    ip: string,
    ctx: InteractionRequestContext | undefined,
  ): SignInContext => ({
    clientId: d?.clientId,
    clientIp: ip,
    correlationId: ctx?.correlationId,
    userId: d?.accountId,
  });

  const providerFor = (ctx: InteractionRequestContext | undefined): InteractionProvider => {
    const p = ctx?.provider ?? options.provider?.();
    if (p === undefined) throw new Error('no authorization server provider');
    return p;
  };

  const csrfToken = (uid: string) =>
    createHmac('sha256', csrfKey).update(`portcullis-interaction-csrf-v1\0${uid}`).digest('base64url');

  function send(
    res: InteractionResponse,
    status: number,
    title: string,
    body: string,
    redirectUri?: string,
  ): void {
    const nonce = randomBytes(18).toString('base64url');
    const html = layout(title, nonce, body);
    res.statusCode = status;
    res.setHeader('content-type', 'text/html; charset=utf-8');
    res.setHeader('content-security-policy', contentSecurityPolicy(nonce, formTarget(redirectUri)));
    res.setHeader('cache-control', 'no-store');
    res.setHeader('pragma', 'no-cache');
    res.setHeader('x-content-type-options', 'nosniff');
    res.setHeader('referrer-policy', 'same-origin');
    res.setHeader('x-frame-options', 'DENY');
    res.setHeader('cross-origin-opener-policy', 'same-origin');
    res.setHeader('content-length', String(Buffer.byteLength(html)));
    res.end(html);
  }

  function redirect(res: InteractionResponse, location: string): void {
    res.statusCode = 303;
    res.setHeader('location', location);
    res.setHeader('cache-control', 'no-store');
    res.setHeader('referrer-policy', 'no-referrer');
    res.setHeader('content-length', '0');
    res.end('');
  }

  async function readForm(req: InteractionRequest, ctx: InteractionRequestContext | undefined) {
    const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
    if (type !== 'application/x-www-form-urlencoded') {
      throw new InteractionRefusal(415, 'form-content-type', 'The request could not be processed.');
    }
    let body = ctx?.body;
    if (body === undefined) {
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const chunk of req) {
        const b = Buffer.isBuffer(chunk) ? chunk : Buffer.from(String(chunk));
        size += b.length;
        if (size > MAX_BODY)
          throw new InteractionRefusal(413, 'form-too-large', 'The request could not be processed.');
        chunks.push(b);
      }
      body = Buffer.concat(chunks);
    }
    if (body.length > MAX_BODY)
      throw new InteractionRefusal(413, 'form-too-large', 'The request could not be processed.');
    return new URLSearchParams(body.toString('utf8'));
  }

  /** Same-origin check (Origin, else Sec-Fetch-Site) and the interaction-bound token. */
  function checkCsrf(req: InteractionRequest, uid: string, form: URLSearchParams): void {
    const expectedOrigin = new URL(options.config().gateway.publicUrl).origin;
    // Pages use `Referrer-Policy: same-origin`, so browsers send Origin on same-origin POSTs;
    // an opaque ("null") or missing Origin must be vouched for by Sec-Fetch-Site.
    const origin = req.headers.origin;
    if (origin !== undefined && origin !== 'null') {
      if (origin !== expectedOrigin) {
        throw new InteractionRefusal(403, 'csrf-origin', 'The request could not be verified.');
      }
    } else if (req.headers['sec-fetch-site'] !== 'same-origin') {
      throw new InteractionRefusal(403, 'csrf-no-origin', 'The request could not be verified.');
    }
    const given = Buffer.from(form.get('csrf') ?? '');
    const expected = Buffer.from(csrfToken(uid));
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      throw new InteractionRefusal(403, 'csrf-token', 'The request could not be verified.');
    }
  }

  async function details(
    req: InteractionRequest,
    res: InteractionResponse,
    uid: string,
    provider: InteractionProvider,
  ): Promise<Details> {
    let raw: unknown;
    try {
      raw = await provider.interactionDetails(req as never, res as never);
    } catch (err) {
      if (isSessionNotFound(err)) throw new InteractionRefusal(400, 'interaction-not-found', EXPIRED);
      throw err;
    }
    const d = parseDetails(raw, provider);
    if (d.uid !== uid) throw new InteractionRefusal(400, 'interaction-uid-mismatch', EXPIRED);
    return d;
  }

  async function finish(
    req: InteractionRequest,
    res: InteractionResponse,
    d: Details,
    result: Record<string, unknown>,
    merge: boolean,
  ): Promise<void> {
    const returnTo = await d.provider.interactionResult(req as never, res as never, result, {
      mergeWithLastSubmission: merge,
    });
    redirect(res, returnTo);
  }

  async function nameOf(d: Details): Promise<string> {
    return clientName(await d.provider.Client.find(d.clientId), d.clientId);
  }

  async function entitledFor(accountId: string): Promise<(scope: string) => boolean> {
    return options.entitlement === undefined ? () => true : options.entitlement(accountId);
  }

  function consentScopes(
    d: Details,
    entitled: (scope: string) => boolean,
    fromContracts: Readonly<Record<string, string>>,
  ) {
    const seen = new Map<string, boolean>();
    for (const s of d.missingOIDCScope) seen.set(s, s === 'openid');
    for (const list of Object.values(d.missingResourceScopes))
      for (const s of list) if (!seen.has(s)) seen.set(s, false);
    return [...seen]
      .filter(([name]) => entitled(name))
      .map(([name, required]) => ({
        name,
        required,
        description: fromContracts[name] ?? scopeText[name] ?? 'access the API on your behalf',
      }));
  }

  async function renderPage(
    res: InteractionResponse,
    d: Details,
    error?: string,
    status = 200,
  ): Promise<void> {
    const csrf = csrfToken(d.uid);
    const client = await nameOf(d);
    if (d.prompt === 'login') {
      const sf = d.portcullis.secondFactor;
      if (sf && now() - sf.at < PENDING_SECOND_FACTOR_MS) {
        send(
          res,
          status,
          'Two-step verification',
          totpPage({ uid: d.uid, csrf, clientName: client, error }),
          d.redirectUri,
        );
        return;
      }
      send(
        res,
        status,
        'Sign in',
        loginPage({ uid: d.uid, csrf, clientName: client, error, federationName: federation?.name }),
        d.redirectUri,
      );
      return;
    }
    if (d.prompt === 'consent') {
      const account = d.accountId === undefined ? undefined : await users.find(d.accountId);
      if (!account) throw new InteractionRefusal(400, 'consent-without-account', EXPIRED);
      send(
        res,
        status,
        'Allow access',
        consentPage({
          uid: d.uid,
          csrf,
          clientName: client,
          username: account.username,
          scopes: consentScopes(
            d,
            await entitledFor(account.id),
            (await options.contractScopeDescriptions?.()) ?? {},
          ),
        }),
        d.redirectUri,
      );
      return;
    }
    throw new InteractionRefusal(400, 'unknown-prompt', EXPIRED);
  }

  async function loginSucceeded(
    req: InteractionRequest,
    res: InteractionResponse,
    d: Details,
    accountId: string,
    amr: string[],
    ctx: InteractionRequestContext | undefined,
    ip: string,
  ) {
    audit(
      signInEvent(amr.includes('fed') ? 'federated-login' : 'login', 'success', amr.join('+'), {
        ...who(d, ip, ctx),
        userId: accountId,
      }),
    );
    logger.info(
      { event: 'interaction.login', correlationId: ctx?.correlationId, accountId, clientId: d.clientId, amr },
      'end-user signed in',
    );
    await finish(req, res, d, { login: { accountId, amr, remember: true } }, false);
  }

  async function onLogin(
    req: InteractionRequest,
    res: InteractionResponse,
    d: Details,
    form: URLSearchParams,
    ip: string,
    ctx?: InteractionRequestContext,
  ) {
    if (d.prompt !== 'login') throw new InteractionRefusal(400, 'login-not-expected', EXPIRED);
    const username = (form.get('username') ?? '').slice(0, 256);
    const password = (form.get('password') ?? '').slice(0, 1024);
    const outcome = await users.authenticate({
      username,
      password,
      ip,
      onFailure: (why) => {
        audit(signInFailureEvent('login', why, who(d, ip, ctx)));
      },
    });
    if (!outcome.ok) {
      logger.info(
        {
          event: 'interaction.login-failed',
          correlationId: ctx?.correlationId,
          clientId: d.clientId,
          clientIp: ip,
        },
        'end-user sign-in failed',
      );
      send(
        res,
        400,
        'Sign in',
        loginPage({
          uid: d.uid,
          csrf: csrfToken(d.uid),
          clientName: await nameOf(d),
          error: GENERIC_LOGIN_FAILURE,
          // The username stays in the form (escaped); the password never comes back.
          username: username.slice(0, 128),
          federationName: federation?.name,
        }),
        d.redirectUri,
      );
      return;
    }
    if (outcome.secondFactor === 'totp') {
      audit(
        signInEvent('login-first-factor', 'success', 'second-factor-required', {
          ...who(d, ip, ctx),
          userId: outcome.user.id,
        }),
      );
      await d.provider.interactionResult(
        req as never,
        res as never,
        { portcullis: { secondFactor: { accountId: outcome.user.id, at: now() } } },
        { mergeWithLastSubmission: false },
      );
      // Not resumed yet: the second factor comes first.
      redirect(res, `/interaction/${encodeURIComponent(d.uid)}`);
      return;
    }
    await loginSucceeded(req, res, d, outcome.user.id, ['pwd'], ctx, ip);
  }

  async function onTotp(
    req: InteractionRequest,
    res: InteractionResponse,
    d: Details,
    form: URLSearchParams,
    ip: string,
    ctx?: InteractionRequestContext,
  ) {
    const sf = d.portcullis.secondFactor;
    if (d.prompt !== 'login' || !sf || now() - sf.at >= PENDING_SECOND_FACTOR_MS) {
      throw new InteractionRefusal(400, 'second-factor-not-expected', EXPIRED);
    }
    const outcome = await users.verifyTotp({
      accountId: sf.accountId,
      code: (form.get('code') ?? '').slice(0, 16),
      ip,
      onFailure: (why) => {
        audit(signInFailureEvent('second-factor', why, { ...who(d, ip, ctx), userId: sf.accountId }));
      },
    });
    if (!outcome.ok) {
      logger.info(
        {
          event: 'interaction.second-factor-failed',
          correlationId: ctx?.correlationId,
          clientId: d.clientId,
          clientIp: ip,
        },
        'end-user second factor failed',
      );
      send(
        res,
        400,
        'Two-step verification',
        totpPage({
          uid: d.uid,
          csrf: csrfToken(d.uid),
          clientName: await nameOf(d),
          error: GENERIC_LOGIN_FAILURE,
        }),
        d.redirectUri,
      );
      return;
    }
    audit(signInEvent('second-factor', 'success', 'totp', { ...who(d, ip, ctx), userId: sf.accountId }));
    await loginSucceeded(req, res, d, sf.accountId, ['pwd', 'otp', 'mfa'], ctx, ip);
  }

  async function onConfirm(
    req: InteractionRequest,
    res: InteractionResponse,
    d: Details,
    form: URLSearchParams,
    ip: string,
    ctx?: InteractionRequestContext,
  ) {
    if (d.prompt !== 'consent' || d.accountId === undefined) {
      throw new InteractionRefusal(400, 'consent-not-expected', EXPIRED);
    }
    // Only what the user is entitled to can be granted, whatever the form says.
    const entitled = await entitledFor(d.accountId);
    const chosen = new Set(form.getAll('scope').filter((s) => entitled(s)));
    const provider = d.provider;
    const grant =
      (d.grantId === undefined ? undefined : await provider.Grant.find(d.grantId)) ??
      new provider.Grant({ accountId: d.accountId, clientId: d.clientId });
    const granted: string[] = [];
    const rejected: string[] = [];
    for (const scope of d.missingOIDCScope) {
      if (scope === 'openid' || chosen.has(scope)) {
        grant.addOIDCScope(scope);
        granted.push(scope);
      } else {
        grant.rejectOIDCScope(scope);
        rejected.push(scope);
      }
    }
    if (d.missingOIDCClaims.length > 0) grant.addOIDCClaims([...d.missingOIDCClaims]);
    for (const [resource, scopes] of Object.entries(d.missingResourceScopes)) {
      for (const scope of scopes) {
        if (chosen.has(scope)) {
          grant.addResourceScope(resource, scope);
          granted.push(scope);
        } else {
          grant.rejectResourceScope(resource, scope);
          rejected.push(scope);
        }
      }
    }
    const grantId = await grant.save();
    audit(
      signInEvent(
        'consent',
        'success',
        rejected.length === 0 ? 'all-scopes-granted' : 'some-scopes-declined',
        who(d, ip, ctx),
        {
          'portcullis.scopes.granted': [...new Set(granted)],
          'portcullis.scopes.required': [...new Set([...granted, ...rejected])],
        },
      ),
    );
    logger.info(
      {
        event: 'interaction.consent',
        correlationId: ctx?.correlationId,
        accountId: d.accountId,
        clientId: d.clientId,
        granted: [...new Set(granted)],
        rejected: [...new Set(rejected)],
      },
      'end-user consent recorded',
    );
    await finish(req, res, d, { consent: { grantId } }, true);
  }

  async function onAbort(
    req: InteractionRequest,
    res: InteractionResponse,
    d: Details,
    ip: string,
    ctx?: InteractionRequestContext,
  ) {
    // Cancelling on the consent page refuses consent; anywhere else it aborts the sign-in.
    audit(
      d.prompt === 'consent'
        ? signInEvent('consent', 'failure', 'consent-refused', who(d, ip, ctx))
        : signInEvent('interaction-abort', 'failure', `aborted-at-${d.prompt || 'unknown'}`, who(d, ip, ctx)),
    );
    logger.info(
      { event: 'interaction.abort', correlationId: ctx?.correlationId, clientId: d.clientId },
      'end-user cancelled',
    );
    await finish(
      req,
      res,
      d,
      { error: 'access_denied', error_description: 'End-User aborted interaction' },
      false,
    );
  }

  async function onFederatedStart(req: InteractionRequest, res: InteractionResponse, d: Details) {
    if (!federation) throw new InteractionRefusal(404, 'federation-off', 'Not found.');
    if (d.prompt !== 'login') throw new InteractionRefusal(400, 'login-not-expected', EXPIRED);
    const { url, pending } = await federation.start(d.uid);
    await d.provider.interactionResult(
      req as never,
      res as never,
      { portcullis: { federation: { ...pending, at: now() } } },
      { mergeWithLastSubmission: false },
    );
    redirect(res, url);
  }

  async function onFederatedCallback(
    req: InteractionRequest,
    res: InteractionResponse,
    d: Details,
    url: URL,
    ip: string,
    ctx?: InteractionRequestContext,
  ) {
    if (!federation) throw new InteractionRefusal(404, 'federation-off', 'Not found.');
    const pending = d.portcullis.federation;
    if (d.prompt !== 'login' || !pending || now() - pending.at >= PENDING_SECOND_FACTOR_MS) {
      throw new InteractionRefusal(400, 'federation-not-expected', EXPIRED);
    }
    if (url.searchParams.get('state') !== pending.state) {
      throw new InteractionRefusal(400, 'federation-state', 'Sign-in with the identity provider failed.');
    }
    let identity;
    try {
      identity = await federation.finish(url, pending);
    } catch (err) {
      logger.warn(
        {
          event: 'interaction.federation-failed',
          correlationId: ctx?.correlationId,
          error: describeError(err),
        },
        'federated sign-in failed',
      );
      throw new InteractionRefusal(400, 'federation-failed', 'Sign-in with the identity provider failed.');
    }
    const user = await users.federated(identity.issuer, identity.subject);
    if (!user)
      throw new InteractionRefusal(
        403,
        'federated-account-refused',
        'Sign-in with the identity provider failed.',
      );
    await loginSucceeded(req, res, d, user.id, ['fed'], ctx, ip);
  }

  return async function interactionHandler(req, res, ctx) {
    const method = req.method ?? 'GET';
    const url = new URL(req.url ?? '/', 'https://interaction.invalid');
    const ip = ctx?.clientIp ?? req.socket.remoteAddress ?? 'unknown';
    /** The interaction, once known: refusals after this point name its client and user. */
    let known: Details | undefined;
    try {
      // The upstream provider's fixed redirect URI: bounce to the interaction's own path, where
      // oidc-provider's path-scoped interaction cookie is sent.
      if (url.pathname === FEDERATION_CALLBACK_PATH) {
        if (method !== 'GET') throw new InteractionRefusal(405, 'method', 'Method not allowed.');
        const uid = uidFromState(url.searchParams.get('state') ?? '');
        if (uid === undefined) throw new InteractionRefusal(400, 'federation-state', EXPIRED);
        redirect(res, `/interaction/${uid}/federated/callback${url.search}`);
        return;
      }
      const m =
        /^\/interaction\/([^/]+)(?:\/(login|totp|confirm|abort|federated|federated\/callback))?$/.exec(
          url.pathname,
        );
      const uid = m?.[1];
      if (m === null || uid === undefined || !UID.test(uid))
        throw new InteractionRefusal(404, 'not-found', 'Not found.');
      const action = m[2] ?? 'page';
      const isGet = action === 'page' || action === 'federated' || action === 'federated/callback';
      if (method !== (isGet ? 'GET' : 'POST')) {
        res.setHeader('allow', isGet ? 'GET' : 'POST');
        throw new InteractionRefusal(405, 'method', 'Method not allowed.');
      }
      if (isGet) {
        const d = await details(req, res, uid, providerFor(ctx));
        known = d;
        if (action === 'page') await renderPage(res, d);
        else if (action === 'federated') await onFederatedStart(req, res, d);
        else await onFederatedCallback(req, res, d, url, ip, ctx);
        return;
      }
      const form = await readForm(req, ctx);
      checkCsrf(req, uid, form);
      const d = await details(req, res, uid, providerFor(ctx));
      known = d;
      switch (action) {
        case 'login':
          await onLogin(req, res, d, form, ip, ctx);
          return;
        case 'totp':
          await onTotp(req, res, d, form, ip, ctx);
          return;
        case 'confirm':
          await onConfirm(req, res, d, form, ip, ctx);
          return;
        default:
          await onAbort(req, res, d, ip, ctx);
      }
    } catch (err) {
      audit(
        err instanceof InteractionRefusal
          ? refusalEvent(err.reason, who(known, ip, ctx))
          : signInEvent('interaction-error', 'failure', 'internal-error', who(known, ip, ctx)),
      );
      if (res.headersSent) {
        logger.warn(
          { event: 'interaction.error', correlationId: ctx?.correlationId, error: describeError(err) },
          'interaction failed after headers',
        );
        return;
      }
      if (err instanceof InteractionRefusal) {
        logger.info(
          {
            event: 'interaction.refused',
            correlationId: ctx?.correlationId,
            reason: err.reason,
            status: err.status,
          },
          'interaction refused',
        );
        send(res, err.status, 'Error', errorPage(err.message, ctx?.correlationId));
        return;
      }
      logger.warn(
        { event: 'interaction.error', correlationId: ctx?.correlationId, error: describeError(err) },
        'interaction failed',
      );
      send(res, 500, 'Error', errorPage('Something went wrong. Please try again later.', ctx?.correlationId));
    }
  };
}
