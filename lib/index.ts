// Public API: start an nbd-cow server from Node.
//
//   const server = await startServer({ base: 'golden.img', listen: { kind: 'tcp', host: '127.0.0.1', port: 0 } });
//   console.log(server.uri); // nbd://127.0.0.1:40123/golden
//   await server.stop();     // finishes in-flight requests, deletes every ephemeral overlay
//
// Clients reach `golden` (a private throwaway overlay per connection) and `golden@NAME` (the
// named overlay NAME, kept in the overlay directory and shared by its connections), as the
// overlay policy allows.

export { type CheckReport, checkOverlay } from './block/overlay-check.js';
export { validateBlockSize } from './block/overlay-layout.js';
export { ConfigError } from './config/config-error.js';
export { loadConfigFile, parseConfig } from './config/config-file.js';
export type { ExportConfig, ListenerConfig, ServerConfig } from './config/server-config.js';
export {
  DEFAULT_BLOCK_SIZE,
  DEFAULT_BUFFER_MEMORY,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_PORT,
  defaultExportName,
  defaultOverlayDir,
} from './defaults.js';
export { LOG_FORMATS, type LogFormat, type LogLevel } from './log.js';
export { MAX_PAYLOAD } from './protocol/constants.js';
export { defaultCacheDir, type RemoteOptions } from './remote/remote-options.js';
export type { AccessOptions } from './server/access-options.js';
export type { ReloadSummary } from './server/configured-exports.js';
export type { ConnectionLimits } from './server/connection-limits.js';
export type { NamedOverlayOwner, OverlayPolicy } from './server/exports.js';
export { NAMED_OVERLAY_OWNERS, OVERLAY_POLICIES } from './server/exports.js';
export type { ListenAddress } from './server/listener.js';
export { ServerMetrics } from './server/metrics.js';
export type { ServerEvents, SessionRecord } from './server/server-events.js';
export { TLS_MODES, type TlsMode } from './server/tls-credentials.js';
export { formatUri } from './server/uri.js';
export { type ServerOptions, serverConfigFromOptions, startServer } from './server-options.js';
export { type RunningServer, type ServerRuntime, startConfiguredServer } from './start-server.js';
