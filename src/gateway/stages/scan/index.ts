/**
 * Upload scanning (`uploads`): request bodies of the operations it names are scanned by ClamAV
 * (clamd, {@link scanWithClamd}) before the upstream sees them. Infected or unscannable content
 * is refused (422 `upload-rejected`, the signature in the audit event's reason); a scanner that
 * cannot be reached refuses with 503 unless `uploads.onScannerUnavailable: allow`. Every verdict
 * is logged. Compiled only for the operations configured: others carry no stage at all.
 *
 * Which operations: every operation with a request body of the APIs in `uploads.apis`, and any
 * operation that declares `x-portcullis-scan: true`; `x-portcullis-scan: false` opts one out.
 */
import type { Config } from '../../../config/schema.ts';
import type { Logger } from '../../../log/index.ts';
import type { Stage } from '../../context.ts';
import type { OpenApiOperation } from '../../openapi.ts';
import { Denial } from '../../problems.ts';
import { ScannerUnavailableError, scanWithClamd } from './clamd.ts';
import type { ClamdTarget } from './clamd.ts';

export const SCAN_EXTENSION = 'x-portcullis-scan';

export class ScanDeclarationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ScanDeclarationError';
  }
}

const BODY_METHODS = new Set(['post', 'put', 'patch', 'POST', 'PUT', 'PATCH']);

/** Whether `op` of API `apiName` is scanned. Throws for a malformed extension. */
export function isScanned(uploads: Config['uploads'], apiName: string, op: OpenApiOperation): boolean {
  const declared = op.definition[SCAN_EXTENSION];
  if (declared !== undefined && typeof declared !== 'boolean') {
    throw new ScanDeclarationError(`${SCAN_EXTENSION} must be true or false`);
  }
  if (declared === false) return false;
  if (declared === true) return true;
  return (
    uploads.apis.includes(apiName) && (op.definition.requestBody !== undefined || BODY_METHODS.has(op.method))
  );
}

/** The scanning stage for one operation; undefined when the operation is not scanned. */
export function compileScan(
  uploads: Config['uploads'],
  apiName: string,
  op: OpenApiOperation,
  logger: Logger | undefined,
): Stage | undefined {
  if (!isScanned(uploads, apiName, op)) return undefined;
  const clamd = uploads.clamd;
  if (clamd === undefined) {
    throw new ScanDeclarationError('uploads.clamd (socket, or host and port) is needed to scan uploads');
  }
  const target: ClamdTarget = {
    socket: clamd.socket,
    host: clamd.host,
    port: clamd.port,
    timeoutMs: clamd.timeoutMs,
  };
  const failOpen = uploads.onScannerUnavailable === 'allow';
  const log = logger?.child({ component: 'upload-scan' });
  return async (req) => {
    const body = req.body;
    if (body === undefined || body.length === 0) return undefined;
    const started = performance.now();
    let verdict;
    try {
      verdict = await scanWithClamd(target, body);
    } catch (err) {
      const why = err instanceof ScannerUnavailableError ? err.message : 'scan failed';
      log?.warn(
        {
          event: 'upload-scan',
          verdict: 'scanner-unavailable',
          why,
          failOpen,
          correlationId: req.correlationId,
        },
        'upload scanner unavailable',
      );
      if (failOpen) return undefined;
      throw new Denial('unavailable', 'upload-scanner-unavailable', { headers: { 'retry-after': '5' } });
    }
    const ms = Math.round(performance.now() - started);
    const fields = { event: 'upload-scan', bytes: body.length, ms, correlationId: req.correlationId };
    switch (verdict.kind) {
      case 'clean':
        log?.info({ ...fields, verdict: 'clean' }, 'upload scanned: clean');
        return undefined;
      case 'infected':
        log?.warn(
          { ...fields, verdict: 'infected', signature: verdict.signature },
          'upload refused: infected',
        );
        throw new Denial('upload-rejected', `upload-infected: ${verdict.signature}`);
      case 'unscannable':
        log?.warn(
          { ...fields, verdict: 'unscannable', detail: verdict.detail },
          'upload refused: unscannable',
        );
        throw new Denial('upload-rejected', 'upload-unscannable');
    }
  };
}
