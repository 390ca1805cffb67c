import { describe, expect, it } from 'vitest';
import { uidFromState } from './federation.ts';
import { interactionPolicy } from './hooks.ts';
import { contentSecurityPolicy, escapeHtml, loginPage } from './html.ts';

describe('HTML escaping', () => {
  it('escapes every character that can break out of text or a quoted attribute', () => {
    expect(escapeHtml(`<script>alert('x')</script> & "q" \`b\` a=b`)).toBe(
      '&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot; &#96;b&#96; a&#61;b',
    );
  });

  it('renders a hostile client name and username inert', () => {
    const html = loginPage({
      uid: 'abcdefgh12345678',
      csrf: 'tok"en',
      clientName: '<img src=x onerror=alert(1)>',
      username: '"><script>x</script>',
      error: '<b>',
      federationName: '</a><script>',
    });
    expect(html).not.toMatch(/<script|<img|<b>/);
    expect(html).toContain('value="tok&quot;en"');
  });
});

describe('CSP', () => {
  it('allows only the nonce’d stylesheet and same-origin forms (plus the client redirect origin)', () => {
    expect(contentSecurityPolicy('n0nce')).toBe(
      "default-src 'none'; style-src 'nonce-n0nce'; img-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    const withTarget = contentSecurityPolicy('n0nce', 'https://client.example');
    expect(withTarget).toContain("form-action 'self' https://client.example;");
    expect(withTarget).not.toContain('unsafe-inline');
    expect(withTarget).not.toContain('script-src');
  });
});

describe('federation state', () => {
  it('carries the interaction uid and nothing else', () => {
    expect(uidFromState(`abcdefgh_123.${'x'.repeat(43)}`)).toBe('abcdefgh_123');
    expect(uidFromState('abcdefgh_123')).toBeUndefined();
    expect(uidFromState(`../../x.${'x'.repeat(43)}`)).toBeUndefined();
    expect(uidFromState(`abcdefgh/123.${'x'.repeat(43)}`)).toBeUndefined();
  });
});

describe('interaction policy from config.oauth.session', () => {
  interface Check {
    reason: string;
    check: (ctx: unknown) => boolean | Promise<boolean>;
  }
  const policy = interactionPolicy({
    maxAgeSeconds: 28_800,
    idleTimeoutSeconds: 1_800,
    reauthenticateAfterSeconds: 3_600,
  }) as unknown as {
    get(name: string): { checks: Iterable<Check> } | undefined;
  };
  const checks = [...(policy.get('login')?.checks ?? [])];
  const find = (reason: string) => {
    const c = checks.find((x) => x.reason === reason);
    if (!c) throw new Error(`no check ${reason}`);
    return c;
  };
  const ctx = (
    ageSeconds: number,
    opts: { granted?: string; fresh?: boolean; accountId?: string | null } = {},
  ) => ({
    oidc: {
      session: {
        accountId: opts.accountId === null ? undefined : (opts.accountId ?? 'user-1'),
        past: (age: number) => ageSeconds > age,
      },
      result: opts.fresh === true ? { login: {} } : undefined,
      requestParamOIDCScopes: new Set(['openid']),
      requestParamScopes: new Set(['openid', 'items:read']),
      grant: {
        getOIDCScopeEncountered: () => opts.granted ?? '',
        getResourceScopeEncountered: () => opts.granted ?? '',
      },
      resourceServers: { 'https://api.example/v1': {} },
    },
  });

  it('keeps the base checks (max_age, no_session) and adds ours', () => {
    const reasons = checks.map((c) => c.reason);
    expect(reasons).toEqual(
      expect.arrayContaining(['no_session', 'max_age', 'session_too_old', 'reauthentication_required']),
    );
  });

  it('session_too_old: a login older than maxAgeSeconds is never reused', async () => {
    const c = find('session_too_old');
    expect(await c.check(ctx(28_801))).toBe(true);
    expect(await c.check(ctx(28_799))).toBe(false);
    expect(await c.check(ctx(28_801, { fresh: true }))).toBe(false);
    expect(await c.check(ctx(28_801, { accountId: null }))).toBe(false);
  });

  it('reauthentication_required: granting new access needs a login newer than reauthenticateAfterSeconds', async () => {
    const c = find('reauthentication_required');
    expect(await c.check(ctx(3_601))).toBe(true);
    expect(await c.check(ctx(3_599))).toBe(false);
    // Nothing new asked for: the old login still serves.
    expect(await c.check(ctx(3_601, { granted: 'openid items:read' }))).toBe(false);
    expect(await c.check(ctx(3_601, { fresh: true }))).toBe(false);
  });
});
