import type { Config } from '../config/schema.ts';

/** The admin API's resource indicator and token audience: `admin.audience`, else publicUrl + /admin. */
export function adminAudience(config: Pick<Config, 'admin' | 'gateway'>): string {
  return config.admin.audience ?? `${config.gateway.publicUrl}/admin`;
}
