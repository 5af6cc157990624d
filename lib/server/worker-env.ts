// The environment variable that makes a started nbd-cow a worker of --workers N (workers.ts
// sets it; the command line reads it). Its own file, so the command line can tell a worker
// without loading the primary's code.

/** The listeners' addresses, as JSON, handed to a worker. */
export const WORKER_ENV = 'NBD_COW_WORKER';
