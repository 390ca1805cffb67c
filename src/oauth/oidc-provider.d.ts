/**
 * The part of oidc-provider v9 Portcullis uses, typed narrowly (the package ships no types).
 * Configuration stays a loose record here; src/oauth/provider.ts builds it.
 */
declare module 'oidc-provider' {
  import type { EventEmitter } from 'node:events';
  import type { IncomingMessage, ServerResponse } from 'node:http';
  import type { Http2ServerRequest, Http2ServerResponse } from 'node:http2';

  export type AnyRequest = IncomingMessage | Http2ServerRequest;
  export type AnyResponse = ServerResponse | Http2ServerResponse;

  /** The Koa context oidc-provider hands to hooks (only what Portcullis reads). */
  export interface KoaContextWithOIDC {
    readonly method: string;
    readonly path: string;
    readonly req: AnyRequest;
    readonly res: AnyResponse;
    status: number;
    body: unknown;
    type: string;
    set(name: string, value: string): void;
    get(name: string): string;
    readonly oidc?: OIDCContext;
  }

  export interface OIDCContext {
    readonly route?: string;
    readonly params?: Readonly<Record<string, unknown>>;
    readonly client?: ClientInstance;
    readonly entities: Readonly<Record<string, unknown>>;
  }

  export interface ClientInstance {
    readonly clientId: string;
    readonly clientSecret?: string;
    readonly clientAuthMethod: string;
    readonly scope?: string;
    readonly applicationType?: string;
    readonly tlsClientAuthSubjectDn?: string;
    readonly tlsClientAuthSanDns?: string;
    readonly tlsClientAuthSanUri?: string;
    readonly tlsClientAuthSanIp?: string;
    readonly tlsClientAuthSanEmail?: string;
    grantTypeAllowed(type: string): boolean;
    compareClientSecret(actual: string): boolean | Promise<boolean>;
  }

  export interface ClientClass {
    readonly prototype: ClientInstance;
    find(id: string): Promise<ClientInstance | undefined>;
  }

  export interface InteractionDetails {
    readonly uid: string;
    readonly prompt: {
      readonly name: string;
      readonly reasons: readonly string[];
      readonly details: Record<string, unknown>;
    };
    readonly params: Readonly<Record<string, unknown>>;
    readonly session?: { readonly accountId?: string; readonly uid?: string };
    readonly grantId?: string;
    readonly lastSubmission?: Record<string, unknown>;
    readonly returnTo: string;
    readonly exp: number;
  }

  export interface GrantInstance {
    addOIDCScope(scope: string): void;
    addResourceScope(resource: string, scope: string): void;
    save(): Promise<string>;
  }

  export interface GrantClass {
    new (properties: { accountId: string; clientId: string }): GrantInstance;
    find(id: string): Promise<GrantInstance | undefined>;
  }

  export class Provider extends EventEmitter {
    constructor(issuer: string, configuration: Record<string, unknown>);
    readonly issuer: string;
    readonly Client: ClientClass;
    readonly Grant: GrantClass;
    proxy: boolean;
    callback(): (req: AnyRequest, res: AnyResponse) => Promise<void>;
    use(middleware: (ctx: KoaContextWithOIDC, next: () => Promise<void>) => Promise<void>): this;
    /** The name of one of its cookies (configuration `cookies.names`). */
    cookieName(type: 'session' | 'interaction' | 'resume'): string;
    interactionDetails(req: AnyRequest, res: AnyResponse): Promise<InteractionDetails>;
    interactionFinished(
      req: AnyRequest,
      res: AnyResponse,
      result: Record<string, unknown>,
      options?: { mergeWithLastSubmission?: boolean },
    ): Promise<void>;
    interactionResult(
      req: AnyRequest,
      res: AnyResponse,
      result: Record<string, unknown>,
      options?: { mergeWithLastSubmission?: boolean },
    ): Promise<string>;
  }

  export class OIDCProviderError extends Error {
    constructor(status?: number, message?: string);
    error: string;
    error_description?: string;
    status: number;
    statusCode: number;
    expose: boolean;
  }

  export namespace errors {
    class InvalidTarget extends OIDCProviderError {
      constructor(description?: string);
    }
    class InvalidRequest extends OIDCProviderError {
      constructor(description?: string);
    }
    class InvalidClient extends OIDCProviderError {
      constructor(description?: string);
    }
    /** `invalid_client` with the generic description; `detail` stays server-side. */
    class InvalidClientAuth extends OIDCProviderError {
      constructor(detail?: string);
    }
    class InvalidScope extends OIDCProviderError {
      constructor(description?: string, scope?: string);
    }
    class AccessDenied extends OIDCProviderError {
      constructor(description?: string);
    }
    class SessionNotFound extends OIDCProviderError {
      constructor(description?: string);
    }
    class InvalidGrant extends OIDCProviderError {
      constructor(description?: string);
    }
    class InvalidRequestUri extends OIDCProviderError {
      constructor(description?: string);
    }
    class UnsupportedTokenType extends OIDCProviderError {
      constructor(description?: string);
    }
  }

  export default Provider;
}
