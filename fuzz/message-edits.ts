// Mutations of whole messages: duplicated, reordered, dropped, and spliced in from another
// recording, each message itself intact. They reach states a real client never puts together
// (requests before GO, GO twice, options after transmission started, 200 requests at once).

import type { Recording } from './corpus.js';
import type { Rng } from './prng.js';

export type MessageEdit = 'duplicate' | 'swap' | 'move' | 'drop' | 'splice' | 'graft' | 'flood';

const MESSAGE_EDITS: readonly MessageEdit[] = ['duplicate', 'swap', 'move', 'drop', 'splice', 'graft', 'flood'];

function insertAt(list: Buffer[], at: number, items: readonly Buffer[]): Buffer[] {
  return [...list.slice(0, at), ...items, ...list.slice(at)];
}

/** Apply `edit` to `messages` (not changed); `others` are the recordings to splice from. */
export function applyMessageEdit(
  rng: Rng,
  messages: readonly Buffer[],
  edit: MessageEdit,
  others: readonly Recording[],
): Buffer[] {
  const list = [...messages];
  if (list.length === 0) return list;
  const i = rng.int(list.length);
  const j = rng.int(list.length);
  const chosen = list[i] as Buffer; // i < list.length
  switch (edit) {
    case 'duplicate':
      return insertAt(list, rng.int(list.length + 1), Array<Buffer>(rng.between(1, 3)).fill(chosen));
    case 'swap':
      list[i] = list[j] as Buffer; // j < list.length
      list[j] = chosen;
      return list;
    case 'move':
      list.splice(i, 1);
      return insertAt(list, rng.int(list.length + 1), [chosen]);
    case 'drop':
      list.splice(i, 1);
      return list;
    case 'splice': {
      const donor = rng.pick(others).messages;
      const start = rng.int(donor.length);
      const run = donor.slice(start, start + rng.between(1, 4)).map((m) => m.bytes);
      return insertAt(list, rng.int(list.length + 1), run);
    }
    case 'graft': {
      const donor = rng.pick(others).messages;
      return [...list.slice(0, i), ...donor.slice(rng.int(donor.length)).map((m) => m.bytes)];
    }
    case 'flood':
      // Past the server's in-flight cap (128 requests) when `chosen` is a request.
      return insertAt(list, i, Array<Buffer>(rng.between(20, 300)).fill(chosen));
  }
}

/** One to three message edits; returns the messages and the edits' names. */
export function randomMessageEdits(
  rng: Rng,
  messages: readonly Buffer[],
  others: readonly Recording[],
): { messages: Buffer[]; ops: MessageEdit[] } {
  const ops: MessageEdit[] = [];
  let out = [...messages];
  const count = rng.between(1, 3);
  for (let k = 0; k < count; k++) {
    const edit = rng.chance(0.1) ? 'flood' : rng.pick(MESSAGE_EDITS.filter((e) => e !== 'flood'));
    ops.push(edit);
    out = applyMessageEdit(rng, out, edit, others);
  }
  return { messages: out, ops };
}
