// systemd socket activation (sd_listen_fds(3)): the listening sockets a service manager passed
// us, read from LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES. Like sd_listen_fds(unset_environment=1)
// the variables are removed once read, so no child process takes them for its own.
//
// The fds start at 3 (SD_LISTEN_FDS_START) and are consecutive. sd_listen_fds() also sets
// FD_CLOEXEC on them; Node cannot, and need not: node 20 marks inherited fds above 2
// close-on-exec at start-up (an fd a shell passed without O_CLOEXEC has it in /proc/self/fdinfo
// at the script's first line, and a child spawned then does not get it), so no child holds a
// listening socket.

import { fstatSync } from 'node:fs';
import type { ListenAddress } from './listener.js';

/** The first passed fd (SD_LISTEN_FDS_START in sd-daemon.h). */
export const SD_LISTEN_FDS_START = 3;
/**
 * Most sockets accepted. systemd allows up to INT_MAX - 3; a unit listens on a handful, and a
 * garbage count in the thousands would otherwise make us claim fds that are not ours.
 */
export const MAX_LISTEN_FDS = 64;
/** systemd's limit on a FileDescriptorName= (fdname_is_valid: at most 255 characters). */
const MAX_FDNAME_LENGTH = 255;

export interface InheritedSocket {
  readonly fd: number;
  /** Its LISTEN_FDNAMES entry: FileDescriptorName=, by default the socket unit's name. */
  readonly name?: string;
}

type Env = Readonly<Record<string, string | undefined>>;

/**
 * The sockets passed to process `pid`, or null when none were: LISTEN_PID unset or another
 * process's (it was meant for a parent), or LISTEN_FDS unset, as sd_listen_fds() returns 0.
 * Garbage throws one readable line. Reads `env` only.
 */
export function parseListenFds(env: Env, pid: number): InheritedSocket[] | null {
  const pidText = env['LISTEN_PID'];
  if (pidText === undefined) return null;
  const listenPid = parseDecimal('LISTEN_PID', pidText);
  if (listenPid < 1) throw new Error(`LISTEN_PID=${pidText} is not a process id`);
  if (listenPid !== pid) return null;
  const countText = env['LISTEN_FDS'];
  if (countText === undefined) return null;
  const count = parseDecimal('LISTEN_FDS', countText);
  if (count < 1 || count > MAX_LISTEN_FDS) {
    throw new Error(`LISTEN_FDS=${countText}: expected 1 to ${MAX_LISTEN_FDS} sockets`);
  }
  const names = parseNames(env['LISTEN_FDNAMES'], count);
  return Array.from({ length: count }, (_, i) => {
    const fd = SD_LISTEN_FDS_START + i;
    const name = names?.[i];
    return name === undefined || name === '' ? { fd } : { fd, name };
  });
}

/**
 * The listening sockets systemd passed to this process, as listener addresses (NbdListener
 * resolves each to the TCP or unix address it really is), or null when not socket-activated.
 * Consumes the variables: they are deleted from `env` (process.env by default) whatever they
 * held, so call this once at start-up and keep the result (a reload must reuse it). Throws one
 * line for garbage or for an fd that is not an open socket.
 */
export function inheritedListenAddresses(env: NodeJS.ProcessEnv = process.env, pid = process.pid): ListenAddress[] | null {
  let sockets: InheritedSocket[] | null;
  try {
    sockets = parseListenFds(env, pid);
  } finally {
    delete env['LISTEN_PID'];
    delete env['LISTEN_FDS'];
    delete env['LISTEN_FDNAMES'];
  }
  if (sockets === null) return null;
  for (const { fd } of sockets) checkInheritedFd(fd, sockets.length);
  return sockets.map(({ fd, name }) => (name === undefined ? { kind: 'inherited', fd } : { kind: 'inherited', fd, name }));
}

/** A plain decimal number: no sign, spaces, exponent or hex (what a service manager writes). */
function parseDecimal(variable: string, text: string): number {
  if (!/^[0-9]{1,10}$/.test(text)) throw new Error(`${variable}=${JSON.stringify(text)} is not a decimal number`);
  return Number(text);
}

/** LISTEN_FDNAMES: one colon-separated name per fd (an empty one: no name). */
function parseNames(text: string | undefined, count: number): string[] | undefined {
  if (text === undefined) return undefined;
  const names = text.split(':');
  if (names.length !== count) {
    throw new Error(`LISTEN_FDNAMES has ${names.length} name(s) for LISTEN_FDS=${count} socket(s)`);
  }
  for (const name of names) {
    // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what is refused
    if (name.length > MAX_FDNAME_LENGTH || /[\u0000-\u001f\u007f]/.test(name)) {
      throw new Error(`LISTEN_FDNAMES holds an invalid name ${JSON.stringify(name.slice(0, 64))}`);
    }
  }
  return names;
}

/** Throw one line unless `fd`, one of LISTEN_FDS=`count`, is an open socket (not, say, node's own epoll fd). */
export function checkInheritedFd(fd: number, count: number): void {
  let isSocket: boolean;
  try {
    isSocket = fstatSync(fd).isSocket();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new Error(`LISTEN_FDS=${count}, but fd ${fd} is not open (${code})`);
  }
  if (!isSocket) throw new Error(`LISTEN_FDS=${count}, but fd ${fd} is not a socket`);
}
