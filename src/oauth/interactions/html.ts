/**
 * Server-rendered login, second-factor, consent and error pages. Every interpolated value goes
 * through `escapeHtml`; the only inline element with code-like content is the stylesheet, which
 * carries the per-response CSP nonce. There is no script at all.
 */

const ESCAPES: Readonly<Record<string, string>> = {
  '&': '&amp;',
  '<': '&lt;',
  '>': '&gt;',
  '"': '&quot;',
  "'": '&#39;',
  '`': '&#96;',
  '=': '&#61;',
};

/** Escapes text for HTML element content and quoted attribute values. */
export function escapeHtml(value: string): string {
  return value.replace(/[&<>"'`=]/g, (c) => ESCAPES[c] ?? c);
}

/**
 * The page's Content-Security-Policy: nothing but the nonce'd stylesheet, and forms posted to this
 * origin (plus `formTarget`, the client's redirect-URI origin the submission redirects to).
 */
export function contentSecurityPolicy(nonce: string, formTarget?: string): string {
  const targets = formTarget === undefined ? "'self'" : `'self' ${formTarget}`;
  return `default-src 'none'; style-src 'nonce-${nonce}'; img-src 'none'; form-action ${targets}; frame-ancestors 'none'; base-uri 'none'`;
}

const STYLE = `
:root{color-scheme:light dark;--fg:#1b1f24;--bg:#f4f5f7;--card:#fff;--muted:#5b6470;--accent:#1f5fbf;--err:#b42318;--line:#d0d5dd}
@media (prefers-color-scheme:dark){:root{--fg:#e6e8eb;--bg:#111418;--card:#1a1e24;--muted:#9aa3ad;--accent:#6ea0ff;--err:#ff7a6e;--line:#323945}}
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:var(--bg);color:var(--fg);display:flex;min-height:100vh;align-items:center;justify-content:center}
main{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:2rem;width:min(26rem,92vw);box-shadow:0 4px 24px rgb(0 0 0 / 8%)}
h1{font-size:1.35rem;margin:0 0 .25rem}
p.sub{color:var(--muted);margin:0 0 1.5rem}
label{display:block;font-weight:600;margin:1rem 0 .35rem}
input[type=text],input[type=password]{width:100%;padding:.6rem .7rem;border:1px solid var(--line);border-radius:8px;background:transparent;color:inherit;font:inherit}
input:focus{outline:2px solid var(--accent);outline-offset:1px}
button{font:inherit;border-radius:8px;padding:.6rem 1rem;cursor:pointer;border:1px solid var(--line);background:transparent;color:inherit}
button.primary{background:var(--accent);border-color:var(--accent);color:#fff;width:100%;margin-top:1.5rem;font-weight:600}
.row{display:flex;gap:.75rem;margin-top:1.5rem}.row button{flex:1;margin:0}
.error{color:var(--err);border:1px solid var(--err);border-radius:8px;padding:.6rem .75rem;margin:0 0 1rem}
ul.scopes{list-style:none;padding:0;margin:1rem 0}ul.scopes li{padding:.4rem 0;border-bottom:1px solid var(--line)}
ul.scopes label{display:flex;gap:.6rem;align-items:center;font-weight:400;margin:0}
.alt{margin-top:1.25rem;padding-top:1.25rem;border-top:1px solid var(--line);text-align:center}
.alt a{color:var(--accent)}
footer{margin-top:1.5rem;color:var(--muted);font-size:.8rem;text-align:center}
`;

export function layout(title: string, nonce: string, body: string): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">
<title>${escapeHtml(title)}</title>
<style nonce="${escapeHtml(nonce)}">${STYLE}</style>
</head>
<body>
<main>
${body}
<footer>Secured by Portcullis</footer>
</main>
</body>
</html>
`;
}

function hidden(name: string, value: string): string {
  return `<input type="hidden" name="${escapeHtml(name)}" value="${escapeHtml(value)}">`;
}

function errorBox(message: string | undefined): string {
  return message === undefined ? '' : `<p class="error" role="alert">${escapeHtml(message)}</p>`;
}

export interface LoginPageInput {
  readonly uid: string;
  readonly csrf: string;
  readonly clientName: string;
  readonly error?: string | undefined;
  readonly username?: string | undefined;
  /** Name of the upstream identity provider, when federation is configured. */
  readonly federationName?: string | undefined;
}

export function loginPage(p: LoginPageInput): string {
  const base = `/interaction/${encodeURIComponent(p.uid)}`;
  const federation =
    p.federationName === undefined
      ? ''
      : `<div class="alt"><a href="${escapeHtml(`${base}/federated`)}">Sign in with ${escapeHtml(p.federationName)}</a></div>`;
  return `<h1>Sign in</h1>
<p class="sub">to continue to <strong>${escapeHtml(p.clientName)}</strong></p>
${errorBox(p.error)}
<form method="post" action="${escapeHtml(`${base}/login`)}" autocomplete="on">
${hidden('csrf', p.csrf)}
<label for="username">Username</label>
<input id="username" name="username" type="text" autocomplete="username" autocapitalize="none" spellcheck="false" maxlength="128" required autofocus value="${escapeHtml(p.username ?? '')}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" maxlength="256" required>
<button class="primary" type="submit">Sign in</button>
</form>
<form method="post" action="${escapeHtml(`${base}/abort`)}">
${hidden('csrf', p.csrf)}
<div class="row"><button type="submit">Cancel</button></div>
</form>
${federation}`;
}

export function totpPage(p: {
  uid: string;
  csrf: string;
  clientName: string;
  error?: string | undefined;
}): string {
  const base = `/interaction/${encodeURIComponent(p.uid)}`;
  return `<h1>Two-step verification</h1>
<p class="sub">Enter the 6-digit code from your authenticator app to continue to <strong>${escapeHtml(p.clientName)}</strong>.</p>
${errorBox(p.error)}
<form method="post" action="${escapeHtml(`${base}/totp`)}" autocomplete="off">
${hidden('csrf', p.csrf)}
<label for="code">Verification code</label>
<input id="code" name="code" type="text" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}" maxlength="6" required autofocus>
<button class="primary" type="submit">Verify</button>
</form>
<form method="post" action="${escapeHtml(`${base}/abort`)}">
${hidden('csrf', p.csrf)}
<div class="row"><button type="submit">Cancel</button></div>
</form>`;
}

export interface ConsentPageInput {
  readonly uid: string;
  readonly csrf: string;
  readonly clientName: string;
  readonly username: string;
  /** Scopes to confirm; `required` ones (openid) cannot be unticked. */
  readonly scopes: readonly {
    readonly name: string;
    readonly description: string;
    readonly required: boolean;
  }[];
}

export function consentPage(p: ConsentPageInput): string {
  const base = `/interaction/${encodeURIComponent(p.uid)}`;
  const items = p.scopes
    .map((s) => {
      const id = `scope-${escapeHtml(s.name)}`;
      const box = s.required
        ? `<input type="checkbox" id="${id}" checked disabled>${hidden('scope', s.name)}`
        : `<input type="checkbox" id="${id}" name="scope" value="${escapeHtml(s.name)}" checked>`;
      return `<li><label for="${id}">${box}<span><code>${escapeHtml(s.name)}</code> ${escapeHtml(s.description)}</span></label></li>`;
    })
    .join('\n');
  return `<h1>Allow access?</h1>
<p class="sub"><strong>${escapeHtml(p.clientName)}</strong> asks for access to your account <strong>${escapeHtml(p.username)}</strong>.</p>
<form method="post" action="${escapeHtml(`${base}/confirm`)}">
${hidden('csrf', p.csrf)}
<ul class="scopes">
${items}
</ul>
<button class="primary" type="submit">Allow</button>
</form>
<form method="post" action="${escapeHtml(`${base}/abort`)}">
${hidden('csrf', p.csrf)}
<div class="row"><button type="submit">Deny</button></div>
</form>`;
}

/** The error page, in the same look as the sign-in pages; the correlation id lets support find it. */
export function errorPage(message: string, correlationId?: string): string {
  const reference =
    correlationId === undefined || correlationId === ''
      ? ''
      : `\n<p class="sub">Reference: <code>${escapeHtml(correlationId)}</code></p>`;
  return `<h1>Something went wrong</h1>
<p class="error" role="alert">${escapeHtml(message)}</p>
<p class="sub">Return to the application and start signing in again.</p>${reference}`;
}
