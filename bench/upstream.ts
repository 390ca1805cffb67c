/**
 * An upstream in its own process, so that the benchmark client, the upstream and the gateway
 * each have their own event loop: the demo upstream, or with `--fixed` the fixed one
 * (bench/fixed-upstream.ts). Prints `{"url": …, "pid": …}` on stdout once listening and exits on
 * SIGTERM/SIGINT or when its stdin closes (the benchmark went away).
 */
import { startDemoUpstream } from '../examples/demo-upstream/server.ts';
import { startFixedUpstream } from './fixed-upstream.ts';

const upstream = process.argv.includes('--fixed')
  ? await startFixedUpstream()
  : await startDemoUpstream({ port: 0 });
process.stdout.write(JSON.stringify({ url: upstream.url, pid: process.pid }) + '\n');

let stopping = false;
const stop = () => {
  if (stopping) return;
  stopping = true;
  void upstream.close().finally(() => process.exit(0));
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.on('error', stop);
process.stdin.resume();
