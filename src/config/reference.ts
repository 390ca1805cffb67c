/**
 * Renders the configuration reference (docs/configuration.md) from the schema itself, so the
 * documented keys, defaults and bounds cannot drift from what the loader enforces.
 * `npm run docs:config` rewrites the file; a test fails when it is stale.
 */
import { ConfigSchema, CONTROLS } from './schema.ts';

interface SchemaNode {
  type?: string;
  description?: string;
  default?: unknown;
  minimum?: number;
  maximum?: number;
  minLength?: number;
  maxLength?: number;
  minItems?: number;
  maxItems?: number;
  pattern?: string;
  format?: string;
  const?: unknown;
  properties?: Record<string, SchemaNode>;
  required?: string[];
  items?: SchemaNode;
  anyOf?: SchemaNode[];
}

function typeOf(node: SchemaNode): string {
  if (node.anyOf) {
    const consts = node.anyOf.map((b) => b.const).filter((c) => c !== undefined);
    if (consts.length === node.anyOf.length)
      return consts.map((c) => `\`${JSON.stringify(c)}\``).join(' \\| ');
  }
  if (node.const !== undefined) return `\`${JSON.stringify(node.const)}\``;
  if (node.type === 'array' && node.items) return `list of ${typeOf(node.items)}`;
  return node.format ? `${node.type ?? 'value'} (${node.format})` : (node.type ?? 'value');
}

function bounds(node: SchemaNode): string {
  const parts: string[] = [];
  if (node.minimum !== undefined || node.maximum !== undefined) {
    parts.push(`${String(node.minimum ?? '…')}–${String(node.maximum ?? '…')}`);
  }
  if (node.minLength !== undefined && node.minLength > 1) parts.push(`≥ ${String(node.minLength)} chars`);
  if (node.maxLength !== undefined) parts.push(`≤ ${String(node.maxLength)} chars`);
  if (node.minItems !== undefined && node.minItems > 0) parts.push(`≥ ${String(node.minItems)} items`);
  if (node.maxItems !== undefined) parts.push(`≤ ${String(node.maxItems)} items`);
  return parts.join(', ');
}

function defaultOf(node: SchemaNode, required: boolean): string {
  if (node.default === undefined) return required ? '**required**' : '(unset)';
  if (typeof node.default === 'object' && node.default !== null && !Array.isArray(node.default)) return '';
  return `\`${JSON.stringify(node.default)}\``;
}

function escape(text: string): string {
  return text.replaceAll('|', '\\|');
}

export function renderConfigReference(): string {
  const rows: string[] = [];
  const walk = (node: SchemaNode, path: string, required: boolean) => {
    if (path !== '') {
      const isSection = node.type === 'object' && node.properties !== undefined;
      rows.push(
        `| \`${path}\` | ${isSection ? 'section' : escape(typeOf(node))} | ${defaultOf(node, required)} | ${escape(bounds(node))} | ${escape(node.description ?? '')} |`,
      );
    }
    if (node.type === 'object' && node.properties) {
      for (const [key, child] of Object.entries(node.properties)) {
        walk(child, path === '' ? key : `${path}.${key}`, node.required?.includes(key) ?? false);
      }
    }
    if (node.type === 'array' && node.items?.type === 'object') walk(node.items, `${path}[]`, false);
  };
  walk(ConfigSchema, '', false);
  return [
    '# Configuration reference',
    '',
    'Generated from `src/config/schema.ts` by `npm run docs:config`; a test fails when this file is stale.',
    '',
    'One YAML file (`--config`; README, Commands, says how commands find it). Every key is optional unless marked',
    '**required**; what a file leaves out takes the secure default shown. Unknown keys are errors.',
    'Paths to files are relative to the configuration file. Errors name the key path and line.',
    '',
    '| key | type | default | bounds | description |',
    '|---|---|---|---|---|',
    ...rows,
    '',
    '## Documented exceptions',
    '',
    'A setting that weakens a control is refused unless an unexpired entry in `exceptions` names',
    'that control (seed 000 §15.13: scope, rationale, compensating controls, owner, approver,',
    'expiry). An expired exception stops applying: the configuration is refused again, at start',
    'or at reload, and a warning names it; one expiring within 14 days is warned about.',
    '',
    '| control | weakened by |',
    '|---|---|',
    ...CONTROLS.map((c) => `| \`${c}\` | ${CONTROL_TEXT[c]} |`),
    '',
  ].join('\n');
}

const CONTROL_TEXT: Record<(typeof CONTROLS)[number], string> = {
  'admin-loopback': '`admin.host` on an address other than loopback',
  'request-limits': '`gateway.limits.*` above 1 MiB body, 16 KiB headers or 8 KiB URL',
  'upstream-plaintext': 'an `http://` upstream on a host other than loopback',
  'cors-credentials': '`apis[].cors.allowCredentials: true`',
  'token-lifetime': '`oauth.accessTokenTtlSeconds` above 1800 (30 minutes)',
  'audit-request-events': '`audit.requestEvents: false` (no audit event per request)',
  'rate-limits': '`rateLimits.mode` `shadow` or `off`',
  'internal-plaintext':
    'a PostgreSQL `store.url` off loopback without `sslmode=verify-full`, or a `redis.url` off loopback not `rediss://` (or with TLS options in the URL)',
};
