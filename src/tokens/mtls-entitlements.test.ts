import { describe, expect, it } from 'vitest';
import { ca, leaf } from '../../test/pki.ts';
import {
  CertEntitlementError,
  canonicalDn,
  compileCertEntitlements,
  subjectAltNames,
} from './mtls-entitlements.ts';

describe('certificate entitlements', () => {
  it('matches by exact subject DN (canonical spacing) or by one SAN, and maps to a principal', async () => {
    const root = await ca('CN=Root');
    const cert = await leaf(root, 'reports', {
      san: [
        { type: 'dns', value: 'Reports.Example.COM' },
        { type: 'url', value: 'spiffe://example.org/ns/prod/sa/reports' },
        { type: 'email', value: 'ops@Example.org' },
        { type: 'ip', value: '10.1.2.3' },
      ],
    });
    const sans = subjectAltNames(cert.cert);
    expect(sans).toEqual([
      'dns:reports.example.com',
      'uri:spiffe://example.org/ns/prod/sa/reports',
      'email:ops@example.org',
      'ip:10.1.2.3',
    ]);
    const subject = cert.cert.subject;
    expect(subject).toBe('CN=reports, O=Example');
    const byDn = compileCertEntitlements([{ subject: 'CN=reports,O=Example' }]);
    expect(byDn.match(subject, sans)).toBe(subject);
    expect(byDn.match('CN=reports, O=Example2', [])).toBeUndefined();
    expect(byDn.match('CN=Reports, O=Example', [])).toBeUndefined();
    for (const san of [
      'dns:reports.example.com',
      'DNS:REPORTS.example.com',
      'uri:spiffe://example.org/ns/prod/sa/reports',
      'email:ops@EXAMPLE.org',
      'ip:10.1.2.3',
    ]) {
      expect(compileCertEntitlements([{ san, principal: 'reports' }]).match(subject, sans)).toBe('reports');
    }
    for (const san of [
      'dns:other.example.com',
      'uri:spiffe://example.org/ns/prod/sa/report',
      'ip:10.1.2.4',
    ]) {
      expect(compileCertEntitlements([{ san }]).match(subject, sans)).toBeUndefined();
    }
    expect(compileCertEntitlements([]).match(subject, sans)).toBeUndefined();
  });

  it.each([
    [{}, 'subject', 'exactly one'],
    [{ subject: 'CN=a', san: 'dns:a' }, 'subject', 'exactly one'],
    [{ san: 'a.example.com' }, 'san', 'expected dns:NAME'],
    [{ san: 'rfc822:a@b' }, 'san', 'expected dns:NAME'],
    [{ san: 'dns:*.example.com' }, 'san', 'wildcards'],
  ])('refuses a bad entry %j, naming the key', (entry, key, message) => {
    try {
      compileCertEntitlements([{ subject: 'CN=ok' }, entry]);
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(CertEntitlementError);
      expect(err).toMatchObject({ index: 1, key });
      expect((err as Error).message).toContain(message);
    }
  });

  it('refuses duplicates', () => {
    expect(() => compileCertEntitlements([{ subject: 'CN=a, O=b' }, { subject: 'CN=a,O=b' }])).toThrow(
      /listed twice/,
    );
    expect(canonicalDn('CN=a,O=b')).toBe('CN=a, O=b');
  });
});
