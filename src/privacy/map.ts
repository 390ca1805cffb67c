/**
 * Records of processing (GDPR Art. 30(1) style) from the annotated contracts: per API, the
 * operations with their purposes, the categories of personal data they receive and return,
 * whether any is sensitive, and the recipients (the upstream the gateway forwards them to).
 * `portcullis privacy map [--json]` prints it.
 */
import type { LoadedConfig } from '../config/load.ts';
import { loadOpenApi, OpenApiError } from '../gateway/openapi.ts';
import { PrivacyAnnotationError, PURPOSES, readOperationPrivacy } from './annotations.ts';
import type { AutomatedDecision, DataCategory, DataField, OperationPrivacy, Purpose } from './annotations.ts';

export interface ProcessingOperation {
  readonly method: string;
  /** The path as the gateway serves it (base path included). */
  readonly path: string;
  readonly operationId: string | undefined;
  readonly purposes: readonly Purpose[];
  /** Purposes the gateway asks the subject's consent for (all but `service`). */
  readonly consentRequired: readonly Purpose[];
  readonly categories: readonly DataCategory[];
  readonly sensitive: boolean;
  readonly fields: readonly DataField[];
  readonly automatedDecision?: AutomatedDecision;
}

export interface ProcessingRecord {
  readonly api: string;
  readonly title: string;
  readonly basePath: string;
  readonly purposes: readonly Purpose[];
  readonly categories: readonly DataCategory[];
  readonly sensitiveCategories: readonly DataCategory[];
  /** Who receives the data: the upstream origin the gateway forwards to. */
  readonly recipients: readonly string[];
  readonly operations: readonly ProcessingOperation[];
}

export interface DataMap {
  /** The gateway's public URL: where the subjects meet the controller's APIs. */
  readonly gateway: string;
  readonly records: readonly ProcessingRecord[];
  /** Contract warnings (personal data without a category), one line each. */
  readonly warnings: readonly string[];
}

export interface MapInput {
  readonly name: string;
  readonly title: string;
  readonly basePath: string;
  readonly upstream: string;
  readonly operations: readonly OperationPrivacy[];
}

function sortPurposes(set: Iterable<Purpose>): Purpose[] {
  return [...new Set(set)].sort((a, b) => PURPOSES.indexOf(a) - PURPOSES.indexOf(b));
}

export function buildDataMap(
  gateway: string,
  apis: readonly MapInput[],
  warnings: readonly string[],
): DataMap {
  const records = apis.map((api): ProcessingRecord => {
    const operations = api.operations.map((op): ProcessingOperation => ({
      method: op.method,
      path: api.basePath + (op.path === '/' ? '' : op.path),
      operationId: op.operationId,
      purposes: op.purposes,
      consentRequired: op.purposes.filter((p) => p !== 'service'),
      categories: op.categories,
      sensitive: op.sensitive,
      fields: op.fields,
      ...(op.automatedDecision === undefined ? {} : { automatedDecision: op.automatedDecision }),
    }));
    const fields = api.operations.flatMap((o) => o.fields);
    return {
      api: api.name,
      title: api.title,
      basePath: api.basePath,
      purposes: sortPurposes(api.operations.flatMap((o) => o.purposes)),
      categories: [...new Set(fields.map((f) => f.category))].sort(),
      sensitiveCategories: [...new Set(fields.filter((f) => f.sensitive).map((f) => f.category))].sort(),
      recipients: [new URL(api.upstream).origin],
      operations,
    };
  });
  return { gateway, records, warnings };
}

/** Reads every API's contract named by the configuration and builds the map. */
export async function loadDataMap(loaded: LoadedConfig): Promise<DataMap> {
  const warnings: string[] = [];
  const inputs: MapInput[] = [];
  for (const [i, api] of loaded.config.apis.entries()) {
    const where = `apis[${String(i)}].openapi (${api.name})`;
    try {
      const document = await loadOpenApi(loaded.resolvePath(api.openapi));
      const own: string[] = [];
      const operations = document.operations.map((op) => readOperationPrivacy(op, own));
      warnings.push(...own.map((w) => `${where}: ${w}`));
      inputs.push({
        name: api.name,
        title: document.title,
        basePath: api.basePath,
        upstream: api.upstream.url,
        operations,
      });
    } catch (err) {
      if (err instanceof OpenApiError || err instanceof PrivacyAnnotationError) {
        throw new Error(`${where}: ${err.message}`, { cause: err });
      }
      throw err;
    }
  }
  return buildDataMap(loaded.config.gateway.publicUrl, inputs, warnings);
}

/** The map as text for a person: one block per API, one line per operation. */
export function formatDataMap(map: DataMap): string {
  const lines: string[] = [`Records of processing (gateway ${map.gateway})`];
  for (const r of map.records) {
    lines.push(
      '',
      `API ${r.api} (${r.title}) at ${r.basePath}`,
      `  purposes:   ${r.purposes.join(', ')}`,
      `  categories: ${r.categories.join(', ') || '(none declared)'}`,
      `  sensitive:  ${r.sensitiveCategories.join(', ') || 'no'}`,
      `  recipients: ${r.recipients.join(', ')}`,
      '  operations:',
    );
    for (const op of r.operations) {
      const consent = op.consentRequired.length > 0 ? `; consent: ${op.consentRequired.join(', ')}` : '';
      const automated = op.automatedDecision === undefined ? '' : '; automated decision';
      lines.push(
        `    ${op.method.padEnd(6)} ${op.path}  purposes: ${op.purposes.join(', ')}; data: ${op.categories.join(', ') || '-'}${op.sensitive ? ' (sensitive)' : ''}${consent}${automated}`,
      );
    }
  }
  if (map.warnings.length > 0) {
    lines.push('', 'Warnings:');
    for (const w of map.warnings) lines.push(`  ${w}`);
  }
  return lines.join('\n') + '\n';
}
