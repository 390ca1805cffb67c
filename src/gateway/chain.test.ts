import { describe, expect, it } from 'vitest';
import { runStages } from './chain.ts';
import type { GatewayRequest, StageResponse, Step } from './context.ts';
import { Denial } from './problems.ts';

const answer: StageResponse = { status: 200, headers: {} };
const fresh = () => ({}) as GatewayRequest;

describe('runStages', () => {
  it('runs steps in order and stops at the first answer', async () => {
    const seen: string[] = [];
    const chain: Step[] = [
      { name: 'cors', run: () => void seen.push('a') },
      {
        name: 'authenticate',
        run: async () => {
          seen.push('b');
          return undefined;
        },
      },
      {
        name: 'validate',
        run: () => {
          seen.push('c');
          return answer;
        },
      },
      {
        name: 'proxy',
        run: () => {
          seen.push('never');
          return answer;
        },
      },
    ];
    const req = fresh();
    await expect(runStages(chain, req)).resolves.toBe(answer);
    expect(seen).toEqual(['a', 'b', 'c']);
    expect(req.stage).toBe('validate');
  });

  it('returns nothing when every step passes, and for an empty chain', async () => {
    await expect(runStages(null, fresh())).resolves.toBeUndefined();
    await expect(runStages([{ name: 'cors', run: () => undefined }], fresh())).resolves.toBeUndefined();
  });

  it('propagates a synchronous denial, stops the chain and names the step that refused', async () => {
    let after = false;
    const chain: Step[] = [
      { name: 'cors', run: () => undefined },
      {
        name: 'authorize',
        run: () => {
          throw new Denial('forbidden', 'test');
        },
      },
      {
        name: 'proxy',
        run: () => {
          after = true;
          return answer;
        },
      },
    ];
    const req = fresh();
    await expect(runStages(chain, req)).rejects.toMatchObject({
      code: 'forbidden',
      reason: 'test',
      status: 403,
    });
    expect(after).toBe(false);
    expect(req.stage).toBe('authorize');
  });

  it('propagates an asynchronous denial and names its step', async () => {
    const chain: Step[] = [
      { name: 'authenticate', run: () => undefined },
      {
        name: 'rate-limit',
        run: async () => {
          await Promise.resolve();
          throw new Denial('too-many-requests', 'late');
        },
      },
    ];
    const req = fresh();
    await expect(runStages(chain, req)).rejects.toBeInstanceOf(Denial);
    expect(req.stage).toBe('rate-limit');
  });

  it('propagates an unexpected error on the same path', async () => {
    const req = fresh();
    const chain: Step[] = [
      {
        name: 'validate',
        run: () => {
          throw new TypeError('bug');
        },
      },
    ];
    await expect(runStages(chain, req)).rejects.toBeInstanceOf(TypeError);
    expect(req.stage).toBe('validate');
  });
});
