// Rewrites docs/configuration.md from the configuration schema.
import { writeFile } from 'node:fs/promises';
import { renderConfigReference } from '../src/config/reference.ts';

await writeFile(new URL('../docs/configuration.md', import.meta.url), renderConfigReference());
console.error('docs/configuration.md written');
