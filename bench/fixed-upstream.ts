/**
 * A fixed upstream for `npm run bench` and `npm run bench:floods`: a bare `node:http` server that
 * answers from memory, so that every target of a run pays the same, tiny upstream cost.
 *
 * - `GET /patients/<id>`: one patient record, {@link FIXED_PATIENT}, 396 bytes of JSON that
 *   the demo contract's `Patient` schema accepts (so the gateway's response enforcement passes it
 *   unchanged, with nothing to strip);
 * - `GET /status`: `{"status":"ok","patients":1}`, the demo's public operation;
 * - anything else: 404.
 *
 * It ignores every request header (the gateway's caller assertion included): the security is
 * the gateway's, this only stands for a fast service.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

/** The record's id, and the subject of the benchmark's token: the caller owns the record. */
export const FIXED_PATIENT_ID = 'pat_bench0000001';

export const FIXED_PATIENT = {
  id: FIXED_PATIENT_ID,
  givenName: 'Maximiliane Theodora Anastasia Josephine Henriette',
  familyName: 'Vandenberghe-Oyelaran de Castellane-Montmorency Ruiz',
  birthDate: '1984-07-21',
  email:
    'maximiliane.vandenberghe-oyelaran.admissions@patient-records-and-admissions.north-west-regional-hospital-network.example.org',
  createdAt: '2025-01-15T09:30:00.000Z',
  updatedAt: '2025-06-30T17:45:12.345Z',
};

export interface FixedUpstream {
  url: string;
  close(): Promise<void>;
}

export async function startFixedUpstream(): Promise<FixedUpstream> {
  const record = Buffer.from(JSON.stringify(FIXED_PATIENT));
  const status = Buffer.from(JSON.stringify({ status: 'ok', patients: 1 }));
  const missing = Buffer.from(JSON.stringify({ title: 'Not Found', status: 404 }));
  const json = (length: number) => ({ 'content-type': 'application/json', 'content-length': length });
  const server = createServer({ keepAliveTimeout: 60_000 }, (req, res) => {
    const url = req.url ?? '';
    if (req.method === 'GET' && url.startsWith('/patients/') && url.indexOf('/', 10) === -1) {
      res.writeHead(200, json(record.length)).end(record);
    } else if (req.method === 'GET' && url === '/status') {
      res.writeHead(200, json(status.length)).end(status);
    } else {
      res.writeHead(404, json(missing.length)).end(missing);
    }
  });
  server.listen(0, '127.0.0.1');
  await new Promise((ok) => server.once('listening', ok));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${String(port)}`,
    close: () =>
      new Promise((ok) => {
        server.close(() => ok());
        server.closeAllConnections();
      }),
  };
}
