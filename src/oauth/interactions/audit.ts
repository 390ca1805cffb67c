/**
 * Sign-in on the audit trail (issue 13): every decision of the login, second-factor, consent and
 * federation interactions becomes one `authentication` event (throttling: `rate-limit`) with the
 * user, the client, the source address, the outcome and a reason code. The event types are
 * listed in `src/audit/event-types.ts` and `docs/audit.md`.
 *
 * Never in an event: what the user typed (username, password, code), cookies, codes or tokens.
 * A failed login names the account (`user.id`) only when it exists; an unknown username is not
 * recorded (users type passwords into the username field).
 */
import type { AuditEventInput } from '../../audit/event.ts';
import type { SignInFailure } from '../users.ts';

/** Where sign-in events go (the gateway's observer; never throws into the interaction). */
export type SignInAuditSink = (input: AuditEventInput) => void;

/** What is known about the interaction when the decision is made. */
export interface SignInContext {
  readonly clientId?: string | undefined;
  readonly clientIp?: string | undefined;
  readonly correlationId?: string | undefined;
  readonly userId?: string | undefined;
}

/** Every sign-in action (each is listed in `src/audit/event-types.ts` and `docs/audit.md`). */
export const SIGN_IN_ACTIONS = [
  'login',
  'login-first-factor',
  'login-throttled',
  'second-factor',
  'consent',
  'interaction-abort',
  'interaction-refused',
  'interaction-error',
  'federated-login',
] as const;
export type SignInAction = (typeof SIGN_IN_ACTIONS)[number];

/** Builds one sign-in event (pure: the tests and the handler share it). */
export function signInEvent(
  action: SignInAction,
  outcome: 'success' | 'failure',
  reason: string,
  ctx: SignInContext,
  extra: Pick<
    AuditEventInput,
    'portcullis.scopes.granted' | 'portcullis.scopes.required' | 'portcullis.rate_limit.retry_after'
  > = {},
): AuditEventInput {
  return {
    'event.category': action === 'login-throttled' ? 'rate-limit' : 'authentication',
    'event.action': action,
    'event.outcome': outcome,
    'event.reason': reason,
    'portcullis.listener': 'oauth',
    ...(ctx.userId === undefined ? {} : { 'user.id': ctx.userId }),
    ...(ctx.clientId === undefined || ctx.clientId === '' ? {} : { 'portcullis.client_id': ctx.clientId }),
    ...(ctx.clientIp === undefined ? {} : { 'client.ip': ctx.clientIp }),
    ...(ctx.correlationId === undefined ? {} : { 'trace.id': ctx.correlationId }),
    ...extra,
  };
}

/** The event for a failed first or second factor (throttling is its own action). */
export function signInFailureEvent(
  step: 'login' | 'second-factor',
  why: SignInFailure,
  ctx: SignInContext,
): AuditEventInput {
  const withUser = { ...ctx, userId: why.userId };
  if (why.reason === 'throttled') {
    return signInEvent('login-throttled', 'failure', `${step}-throttled`, withUser, {
      ...(why.retryAfterSeconds === undefined
        ? {}
        : { 'portcullis.rate_limit.retry_after': why.retryAfterSeconds }),
    });
  }
  return signInEvent(step, 'failure', why.reason, withUser);
}

/** Interaction refusals that end a federated sign-in are `federated-login` failures. */
const FEDERATION_REASONS = new Set([
  'federation-state',
  'federation-failed',
  'federated-account-refused',
  'federation-not-expected',
]);

/** The event for an interaction refused with `reason` (an InteractionRefusal's code). */
export function refusalEvent(reason: string, ctx: SignInContext): AuditEventInput {
  return signInEvent(
    FEDERATION_REASONS.has(reason) ? 'federated-login' : 'interaction-refused',
    'failure',
    reason,
    ctx,
  );
}
