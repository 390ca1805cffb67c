/**
 * Sign-in through an upstream OpenID Provider (config.oauth.federation), with openid-client as
 * the relying party: authorization code + PKCE S256 + state + nonce, ID token validated by
 * openid-client. The upstream `sub` maps to the local account `<issuer>|<sub>`.
 *
 * The redirect URI registered at the upstream is fixed (`/interaction/federated-callback`); the
 * interaction uid travels in `state` (`<uid>.<random>`) and the handler bounces the browser to
 * `/interaction/<uid>/federated/callback`, where oidc-provider's interaction cookie is in scope.
 */
import { readFileSync } from 'node:fs';
import * as client from 'openid-client';
import { Agent, fetch as undiciFetch } from 'undici';
import type { OAuthConfig } from '../../config/schema.ts';

export type FederationConfig = NonNullable<OAuthConfig['federation']>;

/** The fixed callback path registered as redirect URI at the upstream provider. */
export const FEDERATION_CALLBACK_PATH = '/interaction/federated-callback';

/** What the handler keeps (inside the interaction) between the redirect and the callback. */
export interface FederationPending {
  readonly state: string;
  readonly nonce: string;
  readonly verifier: string;
}

export interface FederatedIdentity {
  readonly issuer: string;
  readonly subject: string;
}

export interface Federation {
  /** Shown on the login page. */
  readonly name: string;
  /** The authorization URL to send the browser to, and what to keep for the callback. */
  start(uid: string): Promise<{ url: string; pending: FederationPending }>;
  /** Exchanges the code and validates the ID token; throws on any mismatch. */
  finish(callbackUrl: URL, pending: FederationPending): Promise<FederatedIdentity>;
}

export interface FederationOptions {
  /** The gateway's public origin; the redirect URI is this + FEDERATION_CALLBACK_PATH. */
  readonly publicUrl: string;
  /** Resolves `caFile` (relative to the configuration file's folder). */
  readonly caPem?: string;
}

/** The uid carried in a federation `state`, or undefined when the state is malformed. */
export function uidFromState(state: string): string | undefined {
  const m = /^([A-Za-z0-9_-]{8,64})\.[A-Za-z0-9_-]{20,128}$/.exec(state);
  return m?.[1];
}

export function loadCa(file: string | undefined): string | undefined {
  return file === undefined ? undefined : readFileSync(file, 'utf8');
}

export function createFederation(config: FederationConfig, options: FederationOptions): Federation {
  const redirectUri = new URL(FEDERATION_CALLBACK_PATH, options.publicUrl).href;
  const dispatcher = options.caPem === undefined ? undefined : new Agent({ connect: { ca: options.caPem } });
  const fetchWithCa: client.CustomFetch | undefined =
    dispatcher === undefined
      ? undefined
      : async (url, init) => {
          const r = await undiciFetch(url, {
            method: init.method,
            headers: init.headers,
            body: init.body ?? null,
            redirect: 'manual',
            dispatcher,
            ...(init.signal === undefined ? {} : { signal: init.signal }),
          });
          // Hand openid-client a platform Response.
          return new Response(await r.arrayBuffer(), {
            status: r.status,
            statusText: r.statusText,
            headers: new Headers([...r.headers]),
          });
        };
  let configuration: Promise<client.Configuration> | undefined;
  const discover = (): Promise<client.Configuration> => {
    configuration ??= client
      .discovery(
        new URL(config.issuer),
        config.clientId,
        { redirect_uris: [redirectUri], response_types: ['code'] },
        client.ClientSecretBasic(config.clientSecret),
        fetchWithCa === undefined ? {} : { [client.customFetch]: fetchWithCa },
      )
      .then((c) => {
        if (fetchWithCa !== undefined) c[client.customFetch] = fetchWithCa;
        return c;
      })
      .catch((err: unknown) => {
        configuration = undefined; // try discovery again next time
        throw err;
      });
    return configuration;
  };
  return {
    name: config.name,
    async start(uid) {
      const c = await discover();
      const verifier = client.randomPKCECodeVerifier();
      const pending: FederationPending = {
        state: `${uid}.${client.randomState()}`,
        nonce: client.randomNonce(),
        verifier,
      };
      const url = client.buildAuthorizationUrl(c, {
        redirect_uri: redirectUri,
        scope: config.scopes.join(' '),
        code_challenge: await client.calculatePKCECodeChallenge(verifier),
        code_challenge_method: 'S256',
        state: pending.state,
        nonce: pending.nonce,
      });
      return { url: url.href, pending };
    },
    async finish(callbackUrl, pending) {
      const c = await discover();
      // openid-client compares the callback URL with the redirect URI: rebuild it on the
      // registered path with the upstream's query parameters.
      const current = new URL(redirectUri);
      current.search = callbackUrl.search;
      const tokens = await client.authorizationCodeGrant(c, current, {
        pkceCodeVerifier: pending.verifier,
        expectedState: pending.state,
        expectedNonce: pending.nonce,
        idTokenExpected: true,
      });
      const claims = tokens.claims();
      if (!claims) throw new Error('upstream provider returned no ID token');
      return { issuer: claims.iss, subject: claims.sub };
    },
  };
}
