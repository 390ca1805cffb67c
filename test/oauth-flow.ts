/**
 * Driving the authorization-code flow over HTTP against a real gateway: a cookie jar, requests
 * that do not follow redirects, the login and consent forms, and openid-client as the relying
 * party (trusting the development CA through a custom fetch).
 */
import * as oidc from 'openid-client';
import { Agent, fetch as undiciFetch, request } from 'undici';

/** A cookie jar for one origin (the newest cookie of a name wins). */
export class Jar {
  readonly cookies = new Map<string, string>();
  header(): string {
    return [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  }
  take(setCookie: string | string[] | undefined): void {
    for (const c of Array.isArray(setCookie) ? setCookie : setCookie ? [setCookie] : []) {
      const [pair = ''] = c.split(';');
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      if (value === '' || /expires=Thu, 01 Jan 1970/i.test(c)) this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
  }
}

export interface FlowResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  /** The Location header made absolute. */
  location: string | undefined;
}

export interface Flow {
  readonly agent: Agent;
  /** undici's fetch through the agent, as openid-client's customFetch. */
  readonly fetch: oidc.CustomFetch;
  /**
   * One request without following redirects. A form body is posted with the page's Origin, as a
   * browser would, unless `browser` is false (a back-channel call such as /token or /request).
   */
  http(
    jar: Jar,
    url: string,
    init?: {
      form?: Record<string, string | string[]>;
      headers?: Record<string, string>;
      browser?: boolean;
    },
  ): Promise<FlowResponse>;
  /** Follows redirects while they stay on `issuer`; returns the last response and its URL. */
  follow(jar: Jar, url: string): Promise<FlowResponse & { url: string }>;
  /** A relying-party configuration from discovery, with the given client authentication. */
  discover(clientId: string, auth: oidc.ClientAuth): Promise<oidc.Configuration>;
  close(): Promise<void>;
}

/** `localAddress`: the loopback address the requests come from (e.g. 127.0.0.2), for per-source limits. */
export function createFlow(
  issuer: string,
  caPem: string | undefined,
  options: { localAddress?: string } = {},
): Flow {
  const agent = new Agent({
    connect: { ca: caPem },
    ...(options.localAddress === undefined ? {} : { localAddress: options.localAddress }),
  });
  const fetchFn: oidc.CustomFetch = async (url, init) => {
    const r = await undiciFetch(url, {
      method: init.method,
      headers: init.headers,
      body: init.body ?? null,
      redirect: 'manual',
      dispatcher: agent,
    });
    return new Response(await r.arrayBuffer(), { status: r.status, headers: new Headers([...r.headers]) });
  };
  const http: Flow['http'] = async (jar, url, init = {}) => {
    const body =
      init.form === undefined
        ? undefined
        : new URLSearchParams(
            Object.entries(init.form).flatMap(([k, v]): [string, string][] =>
              Array.isArray(v) ? v.map((x): [string, string] => [k, x]) : [[k, v]],
            ),
          ).toString();
    const res = await request(url, {
      method: body === undefined ? 'GET' : 'POST',
      headers: {
        ...(jar.cookies.size > 0 ? { cookie: jar.header() } : {}),
        ...(body === undefined
          ? {}
          : {
              'content-type': 'application/x-www-form-urlencoded',
              ...(init.browser === false ? {} : { origin: new URL(url).origin }),
            }),
        ...init.headers,
      },
      body: body ?? null,
      dispatcher: agent,
    });
    jar.take(res.headers['set-cookie']);
    const text = await res.body.text();
    const loc = res.headers.location;
    return {
      status: res.statusCode,
      headers: res.headers,
      body: text,
      location: typeof loc === 'string' ? new URL(loc, url).href : undefined,
    };
  };
  const follow: Flow['follow'] = async (jar, url) => {
    let current = url;
    for (let i = 0; i < 10; i++) {
      const res = await http(jar, current);
      if (res.status !== 303 && res.status !== 302) return { ...res, url: current };
      const next = res.location ?? '';
      if (!next.startsWith(issuer)) return { ...res, url: current };
      current = next;
    }
    throw new Error('too many redirects');
  };
  return {
    agent,
    fetch: fetchFn,
    http,
    follow,
    async discover(clientId, auth) {
      const config = await oidc.discovery(new URL(issuer), clientId, undefined, auth, {
        [oidc.customFetch]: fetchFn,
      });
      config[oidc.customFetch] = fetchFn;
      return config;
    },
    close: () => agent.close(),
  };
}

export function csrfOf(html: string): string {
  const m = /name="csrf" value="([^"]+)"/.exec(html);
  if (!m?.[1]) throw new Error(`no csrf field in: ${html.slice(0, 300)}`);
  return m[1];
}

export interface Authorization {
  /** The redirect back to the client, with `code` (or `error`) and `state`. */
  readonly callback: string;
  readonly verifier: string;
  readonly state: string;
  readonly nonce: string;
}

/**
 * Runs the front channel from an authorization URL: signs in as `user` when the login page
 * shows, ticks every offered scope on the consent page, and returns the redirect to the client.
 */
export async function frontChannel(
  flow: Flow,
  jar: Jar,
  url: string,
  user: { username: string; password: string },
): Promise<string> {
  let page = await flow.follow(jar, url);
  for (let step = 0; step < 4; step++) {
    if (page.status === 303 || page.status === 302) return page.location ?? '';
    if (page.status !== 200) throw new Error(`unexpected ${String(page.status)}: ${page.body.slice(0, 300)}`);
    let next: FlowResponse;
    if (page.body.includes('<h1>Sign in</h1>')) {
      next = await flow.http(jar, `${page.url}/login`, {
        form: { csrf: csrfOf(page.body), username: user.username, password: user.password },
      });
    } else if (page.body.includes('Allow access?')) {
      const offered = [...page.body.matchAll(/name="scope" value="([^"]+)"/g)].map((m) => m[1] ?? '');
      next = await flow.http(jar, `${page.url}/confirm`, {
        form: { csrf: csrfOf(page.body), scope: offered },
      });
    } else {
      throw new Error(`unexpected page: ${page.body.slice(0, 300)}`);
    }
    if (next.status !== 303) throw new Error(`form refused (${String(next.status)})`);
    page = await flow.follow(jar, next.location ?? '');
  }
  throw new Error('the flow did not return to the client');
}

/** Authorization code + PKCE + state + nonce from a fresh authorization URL. */
export async function authorize(
  flow: Flow,
  config: oidc.Configuration,
  jar: Jar,
  user: { username: string; password: string },
  params: Record<string, string>,
  options: { par?: boolean } = {},
): Promise<Authorization & { url: string }> {
  const verifier = oidc.randomPKCECodeVerifier();
  const state = oidc.randomState();
  const nonce = oidc.randomNonce();
  const all = {
    code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    state,
    nonce,
    ...params,
  };
  const url =
    options.par === true
      ? await oidc.buildAuthorizationUrlWithPAR(config, all)
      : oidc.buildAuthorizationUrl(config, all);
  const callback = await frontChannel(flow, jar, url.href, user);
  return { url: url.href, callback, verifier, state, nonce };
}

/** Exchanges the code of `a` at the token endpoint. */
export function exchange(config: oidc.Configuration, a: Authorization) {
  return oidc.authorizationCodeGrant(config, new URL(a.callback), {
    pkceCodeVerifier: a.verifier,
    expectedState: a.state,
    expectedNonce: a.nonce,
    idTokenExpected: true,
  });
}

/** The OAuth error code of a refused openid-client call (or its message). */
export async function oauthError(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    const e = err as { error?: unknown; cause?: unknown };
    if (typeof e.error === 'string') return e.error;
    const challenge = Array.isArray(e.cause)
      ? (e.cause[0] as { parameters?: { error?: string } })
      : undefined;
    return challenge?.parameters?.error ?? (err as Error).message;
  }
  throw new Error('expected a refusal');
}
