// Driving lib/server/negotiation.ts directly: an export over a FakeDevice, an option context,
// and the replies of an outcome decoded. Shared by the negotiation tests.

import { decodeOptionReply } from '../../lib/protocol/handshake.js';
import { type Export, type ExportRegistry, singleExportRegistry } from '../../lib/server/exports.js';
import { handleOption, type NegotiationState, type OptionContext, type SettledOutcome } from '../../lib/server/negotiation.js';
import type { TlsMode } from '../../lib/server/tls-credentials.js';
import { FakeDevice } from './fake-device.js';

export const ACK = 1;
export const ERR_TLS_REQD = 0x80000005;
export const REP_SERVER = 2;
export const REP_INFO = 3;
export const REP_META_CONTEXT = 4;
export const ERR_UNSUP = 0x80000001;
export const ERR_POLICY = 0x80000002;
export const ERR_INVALID = 0x80000003;
export const ERR_UNKNOWN = 0x80000006;
export const ERR_SHUTDOWN = 0x80000007;

export const OPT = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

export const SIZE = 1 << 20;

export function makeExport(name = 'golden', options: { readOnly?: boolean; blockSize?: number } = {}): Export {
  return {
    name,
    description: `${name} disk`,
    size: SIZE,
    readOnly: options.readOnly ?? false,
    preferredBlockSize: options.blockSize ?? 4096,
    openDevice: async () => new FakeDevice(SIZE),
  };
}

export function context(
  registry: ExportRegistry = singleExportRegistry(makeExport()),
  state: Partial<NegotiationState> = {},
  shuttingDown = false,
  tlsMode: TlsMode = 'off',
): OptionContext & { state: NegotiationState } {
  return {
    registry,
    state: {
      structuredReplies: false,
      metaContexts: null,
      noZeroes: false,
      tls: false,
      tlsIdentity: undefined,
      peerAddress: undefined,
      ...state,
    },
    shuttingDown,
    tlsMode,
  };
}

/** handleOption, with the device open of a GO or EXPORT_NAME awaited. */
/** An outcome that answers the client here (every one but a hand-over to another worker). */
export type AnsweredOutcome = Exclude<SettledOutcome, { kind: 'handover' }>;

function answered(outcome: SettledOutcome): AnsweredOutcome {
  if (outcome.kind === 'handover') throw new Error(`handed over to worker ${outcome.owner}`);
  return outcome;
}

export async function handle(option: number, payload: Buffer, ctx: OptionContext): Promise<AnsweredOutcome> {
  const outcome = handleOption(option, payload, ctx);
  return answered(outcome.kind === 'opening' ? await outcome.settled : outcome);
}

/** The outcome of an option answered at once (anything but GO and EXPORT_NAME). */
export function settledNow(outcome: ReturnType<typeof handleOption>): AnsweredOutcome {
  if (outcome.kind === 'opening') throw new Error('answered only after a device open');
  return answered(outcome);
}

export interface Reply {
  option: number;
  replyType: number;
  payload: Buffer;
}

export function replies(outcome: SettledOutcome): Reply[] {
  return answered(outcome).replies.map((r) => {
    const d = decodeOptionReply(r);
    if (r.length !== 20 + d.payload.length) throw new Error(`a reply of ${r.length} bytes is not exactly one message`);
    return { option: d.option, replyType: d.replyType, payload: Buffer.from(d.payload) };
  });
}

export function types(outcome: SettledOutcome): number[] {
  return replies(outcome).map((r) => r.replyType);
}

/** The info type of each NBD_REP_INFO reply. */
export function infoTypes(outcome: SettledOutcome): number[] {
  return replies(outcome)
    .filter((r) => r.replyType === REP_INFO)
    .map((r) => r.payload.readUInt16BE(0));
}

export function metaContexts(outcome: SettledOutcome): [number, string][] {
  return replies(outcome)
    .filter((r) => r.replyType === REP_META_CONTEXT)
    .map((r) => [r.payload.readUInt32BE(0), r.payload.subarray(4).toString('utf8')]);
}
