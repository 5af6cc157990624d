// Replays the real-client transcripts in fixtures/transcripts/*.hex against a live server and
// asserts that every server reply is byte-identical to the recorded one. These are regression
// golden files: when a change to the server's replies is intended, regenerate them with
// `npx tsc -p tsconfig.bench.json && node dist/fixtures/record-transcript.js` and review the diff.
//
// Nothing needs masking: the base is the same deterministic pattern image, the export name and
// description come from its file name, and the cookies are the client's own, echoed back.

import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { writePatternImage } from '../../lib/demo-image.js';
import { startServer } from '../../lib/index.js';
import { RawClient } from '../helpers/raw-nbd/client.js';
import { parseTranscript, type TranscriptStep } from '../helpers/transcript.js';

// Must match fixtures/record-transcript.ts.
const BASE_NAME = 'pattern.img';
const BASE_SIZE = 4 * 1024 * 1024;
const STEP_TIMEOUT_MS = 5000;

const DIR = fileURLToPath(new URL('../../fixtures/transcripts/', import.meta.url));
const files = readdirSync(DIR)
  .filter((f) => f.endsWith('.hex'))
  .sort();

const where = (step: TranscriptStep): string => `${step.label || 'unlabelled step'} (line ${step.line})`;

t.ok(files.length >= 4, `transcripts found in fixtures/transcripts: ${files.join(', ')}`);

for (const file of files) {
  t.test(file, async (t) => {
    const steps = parseTranscript(readFileSync(join(DIR, file), 'utf8'));
    t.ok(steps.some((s) => s.dir === '>') && steps.some((s) => s.dir === '<'), 'transcript has both directions');

    const dir = t.testdir();
    await writePatternImage(join(dir, BASE_NAME), BASE_SIZE);
    const server = await startServer({
      base: join(dir, BASE_NAME),
      listen: { kind: 'tcp', host: '127.0.0.1', port: 0 },
      overlayDir: join(dir, 'overlays'),
      logLevel: 'silent',
    });
    const client = await RawClient.connect(server.address);
    t.teardown(async () => {
      client.destroy();
      await server.stop();
    });

    for (const step of steps) {
      if (step.dir === '>') {
        if (step.kind === 'end') client.socket.end();
        else client.write(step.bytes);
        continue;
      }
      if (step.kind === 'end') {
        t.equal(await client.closed(STEP_TIMEOUT_MS), true, `server closes: ${where(step)}`);
        t.equal(client.buffered, 0, 'no bytes after the recorded ones');
        continue;
      }
      let got: Buffer;
      try {
        got = await client.read(step.bytes.length, STEP_TIMEOUT_MS);
      } catch (err) {
        t.fail(`no ${step.bytes.length}-byte reply for ${where(step)}: ${String(err)}`);
        return;
      }
      // Hex strings, so a mismatch shows as a readable diff.
      if (!t.equal(got.toString('hex'), step.bytes.toString('hex'), where(step))) return;
    }
  });
}

t.test('transcript parser', async (t) => {
  const steps = parseTranscript('# head\n\n# greeting\n< 0102\n< 03\n# flags\n> 00000003\n> end\n< end\n');
  t.same(
    steps.map((s) => [s.dir, s.kind, s.bytes.toString('hex'), s.label, s.line]),
    [
      ['<', 'bytes', '010203', 'greeting', 4],
      ['>', 'bytes', '00000003', 'flags', 7],
      ['>', 'end', '', '', 8],
      ['<', 'end', '', '', 9],
    ],
  );
  t.throws(() => parseTranscript('> 0g\n'), /line 1/);
  t.throws(() => parseTranscript('> 012\n'), /odd number/);
});
