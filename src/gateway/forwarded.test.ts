import { describe, expect, it } from 'vitest';
import { acceptCorrelationId, compileTrustedProxies, deriveClientIp } from './forwarded.ts';

const none = compileTrustedProxies([]);
const lb = compileTrustedProxies(['10.0.0.0/8', '192.0.2.10', '2001:db8::/32']);

describe('deriveClientIp', () => {
  it('uses the socket peer when no proxy is trusted, whatever the headers say', () => {
    expect(deriveClientIp('198.51.100.1', { 'x-forwarded-for': '1.2.3.4' }, none)).toBe('198.51.100.1');
    expect(deriveClientIp('198.51.100.1', { forwarded: 'for=1.2.3.4' }, none)).toBe('198.51.100.1');
  });

  it('ignores forwarding headers from an untrusted peer even when proxies are configured', () => {
    expect(deriveClientIp('198.51.100.1', { 'x-forwarded-for': '10.1.1.1' }, lb)).toBe('198.51.100.1');
  });

  it('walks X-Forwarded-For from the right, skipping trusted hops', () => {
    expect(deriveClientIp('10.0.0.5', { 'x-forwarded-for': '203.0.113.7' }, lb)).toBe('203.0.113.7');
    // A client-supplied leftmost entry cannot win over the real client the proxy appended.
    expect(deriveClientIp('10.0.0.5', { 'x-forwarded-for': '1.1.1.1, 203.0.113.7, 10.2.2.2' }, lb)).toBe(
      '203.0.113.7',
    );
    expect(deriveClientIp('10.0.0.5', { 'x-forwarded-for': ['1.1.1.1', '203.0.113.7'] }, lb)).toBe(
      '203.0.113.7',
    );
  });

  it('stops at a malformed hop and keeps the last address it could believe', () => {
    expect(deriveClientIp('10.0.0.5', { 'x-forwarded-for': 'garbage, 10.3.3.3' }, lb)).toBe('10.3.3.3');
    expect(deriveClientIp('10.0.0.5', { 'x-forwarded-for': '<script>' }, lb)).toBe('10.0.0.5');
  });

  it('reads RFC 7239 Forwarded when X-Forwarded-For is absent', () => {
    expect(deriveClientIp('192.0.2.10', { forwarded: 'for=203.0.113.8;proto=https' }, lb)).toBe(
      '203.0.113.8',
    );
    expect(deriveClientIp('192.0.2.10', { forwarded: 'for="[2001:db9::1]:443"' }, lb)).toBe('2001:db9::1');
    expect(deriveClientIp('192.0.2.10', { forwarded: 'for=_hidden' }, lb)).toBe('192.0.2.10');
  });

  it('treats IPv4-mapped IPv6 peers as their IPv4 address', () => {
    expect(deriveClientIp('::ffff:10.0.0.5', { 'x-forwarded-for': '203.0.113.7' }, lb)).toBe('203.0.113.7');
    expect(deriveClientIp('::ffff:198.51.100.1', {}, none)).toBe('198.51.100.1');
  });
});

describe('acceptCorrelationId', () => {
  it('keeps a well-formed id from a trusted proxy only', () => {
    expect(acceptCorrelationId('10.0.0.5', 'req-12345678', lb)).toBe('req-12345678');
    expect(acceptCorrelationId('198.51.100.1', 'req-12345678', lb)).toBeUndefined();
  });

  it('refuses malformed ids even from a trusted proxy', () => {
    for (const bad of [
      'short',
      'x'.repeat(129),
      'id with spaces',
      'id\r\ninjected: 1',
      '<script>alert(1)</script>',
    ]) {
      expect(acceptCorrelationId('10.0.0.5', bad, lb)).toBeUndefined();
    }
    expect(acceptCorrelationId('10.0.0.5', ['a-valid-id-1', 'a-valid-id-2'], lb)).toBeUndefined();
  });
});
