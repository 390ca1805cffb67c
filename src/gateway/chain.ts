/**
 * The stage runner: the one small function every request's stages go through (pipeline.ts).
 * Types live in context.ts; this module only runs them.
 */
import type { Chain, GatewayRequest, StageResult } from './context.ts';

/**
 * Runs the steps in order until one answers, and returns that answer; `undefined` when every
 * step passed. Before each step, `req.stage` names it, so a step that throws (synchronously or
 * not) ends the chain and the caller's single error path knows which stage refused.
 */
export async function runStages(chain: Chain, req: GatewayRequest): Promise<StageResult> {
  if (chain === null) return undefined;
  for (const step of chain) {
    req.stage = step.name;
    const result = step.run(req);
    const settled = result instanceof Promise ? await result : result;
    if (settled !== undefined) return settled;
  }
  return undefined;
}

export type {
  Chain,
  GatewayRequest,
  ResponseStage,
  Stage,
  StageResponse,
  StageResult,
  Step,
} from './context.ts';
