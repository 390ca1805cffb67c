import { describe, expect, it } from 'vitest';
import type { GatewayRequest } from '../../context.ts';
import { Denial } from '../../problems.ts';
import type { Principal } from '../../context.ts';
import { compileOwnerCheck, OwnerBindingError, readOwnerBinding } from './index.ts';

const TEMPLATE = '/v1/patients/{patientId}';

function request(params: Record<string, string>, principal?: Principal): GatewayRequest {
  return { params, principal } as unknown as GatewayRequest;
}

const alice: Principal = {
  scheme: 'oauth',
  subject: 'pat_alice',
  clientId: 'app',
  scopes: new Set(['patients:read']),
};
const admin: Principal = {
  scheme: 'oauth',
  subject: 'staff_1',
  clientId: 'app',
  scopes: new Set(['patients:read', 'patients:admin']),
};

describe('object-level authorization', () => {
  const binding = readOwnerBinding(
    { 'x-portcullis-owner': { parameter: 'patientId', claim: 'sub', bypassScopes: ['patients:admin'] } },
    TEMPLATE,
    true,
  )!;
  const check = compileOwnerCheck(binding);

  it('lets a caller reach their own object', () => {
    expect(check(request({ patientId: 'pat_alice' }, alice))).toBeUndefined();
  });

  it('refuses another caller’s object, whatever the id looks like', () => {
    for (const id of ['pat_bob', 'PAT_ALICE', 'pat_alice ', 'pat_alic', '*', '']) {
      expect(() => check(request({ patientId: id }, alice))).toThrow(Denial);
    }
    try {
      void check(request({ patientId: 'pat_bob' }, alice));
    } catch (err) {
      expect(err).toMatchObject({ status: 403, reason: 'object-not-owned' });
    }
  });

  it('lets a privileged scope reach every object', () => {
    expect(check(request({ patientId: 'pat_bob' }, admin))).toBeUndefined();
  });

  it('refuses when no caller was verified', () => {
    expect(() => check(request({ patientId: 'pat_alice' }))).toThrow(Denial);
  });

  it('can bind to the client id instead of the subject', () => {
    const byClient = compileOwnerCheck(
      readOwnerBinding(
        { 'x-portcullis-owner': { parameter: 'patientId', claim: 'client_id' } },
        TEMPLATE,
        true,
      )!,
    );
    expect(byClient(request({ patientId: 'app' }, alice))).toBeUndefined();
    expect(() => byClient(request({ patientId: 'pat_alice' }, alice))).toThrow(Denial);
  });

  it('refuses bad declarations at compile time', () => {
    const bad: unknown[] = [
      'patientId',
      { parameter: 'nope' },
      { parameter: 'patientId', claim: 'email' },
      { parameter: 'patientId', bypassScopes: 'patients:admin' },
      { parameter: 'patientId', bypassScopes: [''] },
    ];
    for (const ext of bad) {
      expect(() => readOwnerBinding({ 'x-portcullis-owner': ext }, TEMPLATE, true)).toThrow(
        OwnerBindingError,
      );
    }
    expect(() =>
      readOwnerBinding({ 'x-portcullis-owner': { parameter: 'patientId' } }, TEMPLATE, false),
    ).toThrow(/public/);
    expect(readOwnerBinding({}, TEMPLATE, true)).toBeUndefined();
  });
});
