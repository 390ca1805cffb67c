/**
 * OAuth clients as administrators see them (never a secret), and deleting one. Called by
 * `portcullis clients delete` and the admin API.
 */
import { deleteClient, getClient, listClients } from '../../oauth/clients.ts';
import type { ClientRecord } from '../../oauth/clients.ts';
import type { AdminActor } from '../actor.ts';
import { AdminError, adminAction } from './context.ts';
import type { AdminServices } from './context.ts';

export function clientsList(svc: AdminServices, actor: AdminActor): Promise<ClientRecord[]> {
  return adminAction(svc, actor, { action: 'clients-list', permission: 'clients:read' }, () =>
    listClients(svc.db),
  );
}

export function clientShow(svc: AdminServices, actor: AdminActor, clientId: string): Promise<ClientRecord> {
  return adminAction(
    svc,
    actor,
    { action: 'client-show', permission: 'clients:read', target: clientId },
    async () => {
      const c = await getClient(svc.db, clientId);
      if (c === undefined) throw new AdminError('not-found', 'no-such-client', 'no such client');
      return c;
    },
  );
}

export function clientDelete(svc: AdminServices, actor: AdminActor, clientId: string): Promise<void> {
  return adminAction(
    svc,
    actor,
    {
      action: 'client-delete',
      permission: 'clients:write',
      category: 'credential-lifecycle',
      target: clientId,
      fields: { 'portcullis.client_id': clientId, 'portcullis.credential.type': 'client' },
    },
    async () => {
      if (!(await deleteClient(svc.db, clientId))) {
        throw new AdminError('not-found', 'no-such-client', 'no such client');
      }
    },
  );
}
