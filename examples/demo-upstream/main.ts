/**
 * Runs the demo upstream on its own:
 *
 *   sh scripts/node24.sh examples/demo-upstream/main.ts [--host 127.0.0.1] [--port 4010] [--seed 1]
 *
 * Stops on SIGINT (Ctrl-C) or SIGTERM.
 */
import { parseArgs } from 'node:util';
import { DEFAULT_PORT, startDemoUpstream } from './server.ts';

const usage = 'usage: main.ts [--host HOST] [--port PORT] [--seed N]';

function integer(name: string, raw: string | undefined, fallback: number, min: number, max: number): number {
  if (raw === undefined) return fallback;
  const value = /^[0-9]+$/.test(raw) ? Number(raw) : NaN;
  if (!(value >= min && value <= max)) throw new Error(`--${name} must be an integer from ${min} to ${max}`);
  return value;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string' },
      seed: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    console.log(usage);
    return;
  }
  const upstream = await startDemoUpstream({
    host: values.host,
    port: integer('port', values.port, DEFAULT_PORT, 0, 65535),
    seed: integer('seed', values.seed, 1, 0, 2 ** 32 - 1),
  });
  console.log(`demo upstream listening on ${upstream.url} (try ${upstream.url}/status)`);

  const stop = (signal: NodeJS.Signals): void => {
    console.log(`demo upstream: ${signal}, closing`);
    upstream.close().then(
      () => process.exit(0),
      (error: unknown) => {
        console.error('demo upstream: close failed', error);
        process.exit(1);
      },
    );
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

main().catch((error: unknown) => {
  console.error(`demo upstream: ${error instanceof Error ? error.message : String(error)}`);
  console.error(usage);
  process.exit(1);
});
