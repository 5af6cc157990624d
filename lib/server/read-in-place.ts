// Reading a plain socket into buffers the connection chooses, instead of a fresh Buffer per read.
//
// By default Node allocates a new 64 KiB buffer for every read of a socket. Under a stream of
// large WRITEs that is a gigabyte of new memory per gigabyte written: page faults as the kernel
// copies into it, and the garbage collector's marking and sweeping as it dies (a profile of 1 MiB
// sequential writes put the two at about a third of the server's CPU). Node's `onread` option
// reads into a buffer the caller gives, and with a function, a buffer the caller chooses before
// each read: a connection hands out one scratch buffer that every connection of the process
// shares (each read's bytes are used or copied before the event loop's next read), or the
// rest of a large WRITE's payload buffer, so the kernel copies the payload once, into memory
// that is reused request after request.
//
// `onread` is an option of the net.Socket constructor, which a server does not call for the
// sockets it accepts, so the same fields are set here on a socket already made: found by value
// on probe sockets built with the option (no internal name is relied on), and armed with the
// handle's useUserBuffer(), as the constructor's own initSocketHandle() does. net.Socket's
// pause() and resume() stop and start such reads (they check the same field). A TLS socket is
// never switched: its reads go through the TLS layer's own buffers.

import net from 'node:net';
import tls from 'node:tls';

/** Bytes one read in place may bring; the scratch buffer every connection of the process shares. */
export const SCRATCH_BYTES = 256 * 1024;
let scratch: Buffer | undefined;

/** The scratch buffer reads go into when the connection has no better place for them. */
export function sharedReadBuffer(): Buffer {
  scratch ??= Buffer.allocUnsafeSlow(SCRATCH_BYTES);
  return scratch;
}

/** Called with the bytes read into `buffer` (its first `nread`); false stops reading. */
export type OnRead = (nread: number, buffer: Buffer) => boolean;

interface OnreadFields {
  readonly buffer: symbol;
  readonly callback: symbol;
  readonly generator: symbol;
}

let fields: OnreadFields | null | undefined;

function findField(socket: net.Socket, value: unknown): symbol | undefined {
  return Object.getOwnPropertySymbols(socket).find((s) => (socket as unknown as Record<symbol, unknown>)[s] === value);
}

/** The symbols under which net.Socket keeps its `onread` option, or null when they cannot be found. */
function onreadFields(): OnreadFields | null {
  if (fields !== undefined) return fields;
  const buffer = Buffer.alloc(1);
  const callback = (): boolean => true;
  const generator = (): Buffer => buffer;
  // `onread` is typed as a connect() option only; the constructor takes it (net.js).
  const withOnread = (onread: object): net.SocketConstructorOpts => ({ onread }) as net.SocketConstructorOpts;
  const plain = new net.Socket(withOnread({ buffer, callback }));
  const generated = new net.Socket(withOnread({ buffer: generator, callback }));
  const found = {
    buffer: findField(plain, buffer),
    callback: findField(plain, callback),
    generator: findField(generated, generator),
  };
  plain.destroy();
  generated.destroy();
  fields =
    found.buffer !== undefined && found.callback !== undefined && found.generator !== undefined
      ? { buffer: found.buffer, callback: found.callback, generator: found.generator }
      : null;
  return fields;
}

/**
 * From now on, read `socket` into the buffer `next()` returns before each read, and give each
 * read's bytes to `onRead` (no 'data' events). Returns false, changing nothing, for a socket this
 * cannot do (TLS, no handle, a Node without the option). The caller has taken whatever the
 * socket had already buffered (socket.read()) and stopped listening for 'data'.
 */
export function readInPlace(socket: net.Socket, next: () => Buffer, onRead: OnRead): boolean {
  if (socket instanceof tls.TLSSocket) return false;
  const handle = (socket as unknown as { _handle?: { useUserBuffer?: (buffer: Uint8Array) => void } | null })._handle;
  const f = onreadFields();
  if (f === null || handle?.useUserBuffer === undefined) return false;
  const target = socket as unknown as Record<symbol, unknown>;
  const first = next();
  target[f.buffer] = first;
  target[f.generator] = next;
  target[f.callback] = onRead;
  handle.useUserBuffer(first);
  return true;
}
