/**
 * The privacy stage (issue 16): compiled only for operations whose `x-portcullis-purposes` go
 * beyond `service` (src/privacy/annotations.ts), so every other route pays nothing for it. It
 * runs after authentication and the owner check, and:
 *
 * 1. records an opt-out of sale and sharing when the signed-in subject's request carries
 *    `Sec-GPC: 1` (CPRA §7025; once: later requests find it in force);
 * 2. refuses, in this order: a sale / sharing / targeted-advertising purpose after that opt-out
 *    (`sale-sharing-opted-out`), an automated decision after its opt-out
 *    (`automation-opted-out`), sensitive data used beyond the service after the subject
 *    limited its use (`sensitive-data-limited`), and any purpose but `service` without a granted
 *    consent (`consent-required`; reason `consent-missing` or `consent-withdrawn`);
 * 3. hands the subject's current consents and opt-outs to the proxy, which puts them in the
 *    signed identity assertion (the `privacy` claim).
 *
 * A caller without an end user (client credentials, API key) has no consent to give: refused.
 * The subject's choices come from the privacy service's cache (src/privacy/service.ts).
 */
import { Denial } from '../../problems.ts';
import type { GatewayRequest, PrivacyClaims, Stage } from '../../context.ts';
import { SALE_SHARING_PURPOSES } from '../../../privacy/annotations.ts';
import type { OperationPrivacy } from '../../../privacy/annotations.ts';
import type { PrivacyService, SubjectChoices } from '../../../privacy/service.ts';

/** The subject of a request's end user, or undefined for a client acting for itself. */
export function endUserOf(req: GatewayRequest): string | undefined {
  const p = req.principal;
  if (p === undefined || p.subject === p.clientId) return undefined;
  return p.subject;
}

/** Whether the request carries the Global Privacy Control signal (`Sec-GPC: 1`). */
export function sendsGpc(req: GatewayRequest): boolean {
  const v = req.headers['sec-gpc'];
  return v === '1';
}

const claimsCache = new WeakMap<SubjectChoices, PrivacyClaims>();

/** The assertion claim of a subject's choices (built once per cached lookup). */
export function claimsOf(choices: SubjectChoices): PrivacyClaims {
  let claims = claimsCache.get(choices);
  if (claims === undefined) {
    claims = {
      consents: [...choices.granted].sort(),
      optOuts: [...choices.optedOut].sort(),
      version: choices.version,
    };
    claimsCache.set(choices, claims);
  }
  return claims;
}

export function compilePrivacyStage(privacy: OperationPrivacy, service: PrivacyService): Stage {
  const needConsent = privacy.purposes.filter((p) => p !== 'service');
  const saleOrSharing = privacy.purposes.some((p) => SALE_SHARING_PURPOSES.has(p));
  const automated = privacy.purposes.includes('automated-decision');
  const sensitiveBeyondService = privacy.sensitive && needConsent.length > 0;
  return async (req) => {
    const subject = endUserOf(req);
    if (subject === undefined) throw new Denial('consent-required', 'no-data-subject');
    let choices = await service.choices(subject);
    if (sendsGpc(req) && !choices.optedOut.has('sale-sharing')) {
      await service.recordGpc(subject, {
        listener: 'gateway',
        clientId: req.principal?.clientId,
        clientIp: req.clientIp,
        traceId: req.correlationId,
      });
      choices = await service.choices(subject);
    }
    if (saleOrSharing && choices.optedOut.has('sale-sharing')) {
      throw new Denial('sale-sharing-opted-out', 'opted-out-sale-sharing');
    }
    if (automated && choices.optedOut.has('automated-decision')) {
      throw new Denial('automation-opted-out', 'opted-out-automated-decision');
    }
    if (sensitiveBeyondService && choices.optedOut.has('sensitive-data')) {
      throw new Denial('sensitive-data-limited', 'sensitive-data-limited');
    }
    for (const purpose of needConsent) {
      if (!choices.granted.has(purpose)) {
        throw new Denial(
          'consent-required',
          choices.withdrawn.has(purpose) ? 'consent-withdrawn' : 'consent-missing',
        );
      }
    }
    req.privacy = claimsOf(choices);
    return undefined;
  };
}
