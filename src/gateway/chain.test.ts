import { describe, expect, it } from 'vitest';
import { runChain } from './chain.ts';
import type { GatewayRequest, Stage, StageResponse } from './chain.ts';
import { Denial } from './problems.ts';

const req = {} as GatewayRequest;
const answer: StageResponse = { status: 200, headers: {} };

describe('runChain', () => {
  it('runs stages in order and stops at the first answer', async () => {
    const seen: string[] = [];
    const chain: Stage[] = [
      () => void seen.push('a'),
      async () => {
        seen.push('b');
        return undefined;
      },
      () => {
        seen.push('c');
        return answer;
      },
      () => {
        seen.push('never');
        return answer;
      },
    ];
    await expect(runChain(chain, req)).resolves.toBe(answer);
    expect(seen).toEqual(['a', 'b', 'c']);
  });

  it('propagates a synchronous denial and stops the chain', async () => {
    let after = false;
    const chain: Stage[] = [
      () => {
        throw new Denial('forbidden', 'test');
      },
      () => {
        after = true;
        return answer;
      },
    ];
    await expect(runChain(chain, req)).rejects.toMatchObject({
      code: 'forbidden',
      reason: 'test',
      status: 403,
    });
    expect(after).toBe(false);
  });

  it('propagates an asynchronous denial', async () => {
    const chain: Stage[] = [
      async () => {
        await Promise.resolve();
        throw new Denial('unauthenticated', 'late');
      },
    ];
    await expect(runChain(chain, req)).rejects.toBeInstanceOf(Denial);
  });

  it('treats a chain that never answers as a programming error', async () => {
    await expect(runChain(null, req)).rejects.toThrow(/without a response/);
    await expect(runChain([() => undefined], req)).rejects.toThrow(/without a response/);
  });
});
