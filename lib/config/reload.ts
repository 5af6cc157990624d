// Reload a running server from its configuration file (SIGHUP): parse and check the file, then
// apply its exports. A file that does not parse or check, or an export that does not open,
// leaves the running configuration in place; the log says why.

import type { Logger } from '../log.js';
import type { RunningServer } from '../start-server.js';
import { loadConfigFile } from './config-file.js';

/** Reload `server` from `path`; true when the new configuration is in place. Never throws. */
export async function reloadFromFile(server: RunningServer, path: string, log: Logger): Promise<boolean> {
  try {
    const config = await loadConfigFile(path);
    const { added, removed, changed } = await server.reload(config);
    const parts = [
      added.length > 0 ? `added ${added.join(', ')}` : '',
      removed.length > 0 ? `removed ${removed.join(', ')}` : '',
      changed.length > 0 ? `changed ${changed.join(', ')}` : '',
    ].filter((p) => p !== '');
    log.info(`reloaded ${path}: ${parts.length > 0 ? parts.join('; ') : 'no export changed'}`);
    return true;
  } catch (err) {
    log.error(`reload failed, the running configuration stays: ${err instanceof Error ? err.message : String(err)}`);
    return false;
  }
}
