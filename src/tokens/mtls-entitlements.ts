/**
 * Certificate entitlements: which client certificates an API accepts on its `mutualTLS` scheme.
 * A certificate that chains to a configured CA is authenticated, not authorised: the API lists
 * the certificates it accepts (`apis[].mtls.clients`), each by its exact subject DN or by one
 * subject alternative name, optionally naming the principal the upstream and the audit trail see
 * (a certificate→principal map). A certificate that matches no entry is refused with 403.
 *
 * Matchers are built once per configuration version; a request does one map lookup per name.
 *
 * @example
 * ```yaml
 * apis:
 *   - name: billing
 *     mtls:
 *       clients:
 *         - subject: 'CN=billing-batch, O=Example'
 *           principal: billing-batch
 *         - san: 'uri:spiffe://example.org/ns/prod/sa/reports'
 * ```
 */
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';

export interface CertEntitlementEntry {
  /** The exact subject distinguished name, e.g. `CN=billing, O=Example`. */
  readonly subject?: string | undefined;
  /** One subject alternative name: `dns:NAME`, `email:ADDR`, `uri:URI` or `ip:ADDR`. */
  readonly san?: string | undefined;
  /** The principal name for a matching certificate (default: its subject DN). */
  readonly principal?: string | undefined;
}

/** A bad entry: `index` in the list and the `key` at fault, for the operator's error. */
export class CertEntitlementError extends Error {
  readonly index: number;
  readonly key: 'subject' | 'san' | 'principal';
  constructor(index: number, key: CertEntitlementError['key'], message: string) {
    super(message);
    this.name = 'CertEntitlementError';
    this.index = index;
    this.key = key;
  }
}

export interface CertEntitlements {
  /**
   * The principal name a verified certificate is entitled as, or undefined when the API does not
   * accept it. `subject` is the DN as the verifier reports it; `sans` its alternative names in the
   * `type:value` form of {@link subjectAltNames}.
   */
  match(subject: string, sans: readonly string[]): string | undefined;
}

const SAN_TYPES: Readonly<Record<string, x509.GeneralNameType>> = {
  dns: 'dns',
  email: 'email',
  uri: 'url',
  ip: 'ip',
};
const SAN_PREFIX: Readonly<Record<string, string>> = { dns: 'dns', email: 'email', url: 'uri', ip: 'ip' };

/** The canonical text of a DN, as the certificate verifier writes it (RFC 4514 order and escaping). */
export function canonicalDn(dn: string): string {
  return new x509.Name(dn).toString();
}

/** A SAN's canonical `type:value`: DNS names and e-mail domains compared without case. */
function canonicalSan(type: string, value: string): string {
  if (type === 'dns') return `dns:${value.toLowerCase().replace(/\.$/, '')}`;
  if (type === 'email') {
    const at = value.lastIndexOf('@');
    return `email:${at < 0 ? value : value.slice(0, at) + value.slice(at).toLowerCase()}`;
  }
  return `${type}:${value}`;
}

/** The subject alternative names of a certificate, as `dns:…`, `email:…`, `uri:…`, `ip:…`. */
export function subjectAltNames(cert: x509.X509Certificate): string[] {
  let ext: x509.SubjectAlternativeNameExtension | null;
  try {
    ext = cert.getExtension(x509.SubjectAlternativeNameExtension);
  } catch {
    return [];
  }
  if (ext === null) return [];
  const out: string[] = [];
  for (const name of ext.names.items) {
    const prefix = SAN_PREFIX[name.type];
    if (prefix !== undefined) out.push(canonicalSan(prefix, name.value));
  }
  return out;
}

/** Builds the matcher of one API's entries; throws {@link CertEntitlementError} on a bad entry. */
export function compileCertEntitlements(entries: readonly CertEntitlementEntry[]): CertEntitlements {
  const bySubject = new Map<string, string | undefined>();
  const bySan = new Map<string, string | undefined>();
  entries.forEach((entry, i) => {
    const hasSubject = entry.subject !== undefined;
    const hasSan = entry.san !== undefined;
    if (hasSubject === hasSan) {
      throw new CertEntitlementError(i, 'subject', 'give exactly one of subject and san');
    }
    if (entry.subject !== undefined) {
      let dn: string;
      try {
        dn = canonicalDn(entry.subject);
      } catch {
        throw new CertEntitlementError(
          i,
          'subject',
          'is not a distinguished name (e.g. "CN=billing, O=Example")',
        );
      }
      if (dn === '') throw new CertEntitlementError(i, 'subject', 'is empty');
      if (bySubject.has(dn)) throw new CertEntitlementError(i, 'subject', `${dn} is listed twice`);
      bySubject.set(dn, entry.principal);
    }
    if (entry.san !== undefined) {
      const colon = entry.san.indexOf(':');
      const type = colon < 0 ? '' : entry.san.slice(0, colon).toLowerCase();
      const value = colon < 0 ? '' : entry.san.slice(colon + 1);
      if (SAN_TYPES[type] === undefined || value === '') {
        throw new CertEntitlementError(i, 'san', 'expected dns:NAME, email:ADDR, uri:URI or ip:ADDR');
      }
      if (type === 'dns' && value.includes('*')) {
        throw new CertEntitlementError(i, 'san', 'wildcards are not accepted: list each name');
      }
      const key = canonicalSan(type, value);
      if (bySan.has(key)) throw new CertEntitlementError(i, 'san', `${key} is listed twice`);
      bySan.set(key, entry.principal);
    }
  });
  return {
    match(subject, sans) {
      if (bySubject.has(subject)) return bySubject.get(subject) ?? subject;
      for (const san of sans) if (bySan.has(san)) return bySan.get(san) ?? subject;
      return undefined;
    },
  };
}
