// NBD_OPT_STARTTLS's upgrade of a plain socket to a server-side TLS socket (node:tls does the
// cryptography). The ACK goes out in clear text first; the upgrade starts once it has reached
// the kernel, so no earlier reply is left behind in the plain socket's buffer.

import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import type { TlsCredentials } from './tls-credentials.js';

export interface TlsUpgradeEvents {
  /**
   * The ACK is written: let go of the plain socket (stop listening to it) and say whether to go
   * on (false: the connection closed meanwhile, or the client sent bytes before the handshake).
   */
  upgrading(): boolean;
  /** The handshake succeeded; `identity` is what the client proved (credentials.identityOf). */
  secure(socket: TLSSocket, identity: string | undefined): void;
  /** The ACK could not be written, or the handshake failed: the connection must close. */
  failed(reason: string): void;
}

/** OpenSSL's reason ("tlsv1 alert unknown ca"), not its whole error string with codes and source lines. */
function describeTlsError(error: Error): string {
  const { reason, code } = error as Error & { reason?: unknown; code?: unknown };
  if (typeof reason === 'string' && reason !== '') return typeof code === 'string' ? `${reason} (${code})` : reason;
  return error.message;
}

function ignore(): void {
  /* reported by the TLS socket */
}

/** Write `ack` on `socket`, then wrap it in TLS with `credentials`; the outcome goes to `events`. */
export function startTls(socket: Socket, ack: Buffer, credentials: TlsCredentials, events: TlsUpgradeEvents): void {
  socket.write(ack, (err) => {
    if (err !== undefined && err !== null) {
      events.failed(`writing the STARTTLS reply: ${err.message}`);
      return;
    }
    if (socket.destroyed || !events.upgrading()) return;
    // From here the TLS socket reports the connection's errors; one left on the plain socket
    // with no listener would crash the process.
    socket.on('error', ignore);
    const secure = new TLSSocket(socket, credentials.socketOptions());
    const fail = (reason: string): void => {
      stopWatching();
      secure.destroy();
      events.failed(reason);
    };
    const onError = (error: Error): void => fail(`TLS handshake failed: ${describeTlsError(error)}`);
    // A client that hangs up mid-handshake (FIN, no more ClientHello) ends the connection now,
    // not at the handshake deadline.
    const onGone = (): void => fail('client closed the connection during the TLS handshake');
    const stopWatching = (): void => {
      secure.off('error', onError);
      secure.off('end', onGone);
      secure.off('close', onGone);
      socket.off('end', onGone);
    };
    secure.on('error', onError);
    secure.on('end', onGone);
    secure.on('close', onGone);
    socket.on('end', onGone);
    secure.once('secure', () => {
      stopWatching();
      const refused = credentials.refusal(secure);
      if (refused !== undefined) {
        secure.destroy();
        events.failed(`TLS handshake refused: ${refused}`);
        return;
      }
      events.secure(secure, credentials.identityOf(secure));
    });
  });
}
