/**
 * `portcullis probe <base-url> --openapi FILE`: the active contract test of
 * src/compliance/probe.ts against a running API. The target is only ever the URL given; the token,
 * when one is needed, comes from an environment variable so that it never appears in `ps`.
 */
import { readFileSync } from 'node:fs';
import { Option } from 'commander';
import type { Command } from 'commander';
import { probe } from '../compliance/probe.ts';
import { fail, formatTable } from './common.ts';

interface ProbeCliOptions {
  openapi: string;
  tokenEnv: string;
  ca?: string;
  foreignId: string[];
  maxRequests: string;
  rate: string;
  json?: boolean;
}

const collect = (value: string, previous: string[]) => [...previous, value];

function positive(value: string, name: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer`);
  return n;
}

export function registerProbeCommand(program: Command): void {
  program
    .command('probe')
    .argument('<base-url>', "the API's base URL, e.g. https://localhost:8443/v1 (nothing else is contacted)")
    .description(
      'actively test a running API from its OpenAPI contract (auth bypass, BOLA, injection, limits, headers, TLS)',
    )
    .requiredOption('--openapi <file>', 'the OpenAPI document of the API')
    .addOption(
      new Option('--token-env <name>', 'environment variable holding a valid access token').default(
        'PORTCULLIS_PROBE_TOKEN',
      ),
    )
    .option('--ca <file>', "PEM CA to trust for the target's certificate")
    .option(
      '--foreign-id <name=value>',
      "a path parameter value of another subject's object (repeatable)",
      collect,
      [],
    )
    .option('--max-requests <n>', 'requests at most', '400')
    .option('--rate <n>', 'requests per second at most', '50')
    .option('--json', 'machine-readable output')
    .action(async (baseUrl: string, opts: ProbeCliOptions) => {
      const json = opts.json === true;
      try {
        const foreignIds: Record<string, string> = {};
        for (const pair of opts.foreignId) {
          const eq = pair.indexOf('=');
          if (eq < 1) throw new Error(`--foreign-id ${pair}: expected name=value`);
          foreignIds[pair.slice(0, eq)] = pair.slice(eq + 1);
        }
        const token = process.env[opts.tokenEnv];
        const maxRequests = positive(opts.maxRequests, '--max-requests');
        let shown = 0;
        const report = await probe({
          baseUrl,
          openapi: opts.openapi,
          token: token === '' ? undefined : token,
          foreignIds,
          ca: opts.ca === undefined ? undefined : readFileSync(opts.ca, 'utf8'),
          maxRequests,
          ratePerSecond: positive(opts.rate, '--rate'),
          onRequest: (sent, max) => {
            if (sent - shown >= 25 || sent === max) {
              shown = sent;
              process.stderr.write(`probe: ${String(sent)} requests sent (at most ${String(max)})\n`);
            }
          },
        });
        if (json) {
          process.stdout.write(JSON.stringify(report, null, 2) + '\n');
        } else {
          process.stdout.write(
            `${report.target}: ${String(report.findings.length)} finding(s) from ${String(report.requests)} requests\n`,
          );
          if (report.findings.length > 0) {
            process.stdout.write(
              formatTable(
                ['SEVERITY', 'CHECK', 'OPERATION', 'REQUEST', 'EVIDENCE'],
                report.findings.map((f) => [f.severity, f.check, f.operation, f.request, f.evidence]),
              ),
            );
          }
          for (const s of report.skipped) process.stdout.write(`skipped: ${s}\n`);
        }
        process.exitCode = report.findings.length === 0 ? 0 : 1;
      } catch (err) {
        fail(err, json);
      }
    });
}
