// The worker's side of --metrics with --workers N (lib/server/status-relay.ts): a scrape asks the
// primary and serves its answer; an error from the primary, an answer of the wrong kind, or none
// within the timeout fails that scrape alone; a late answer is dropped. And the primary's side:
// each kind of question gets its answer, and a failing source an error, never a throw.

import t from 'tap';
import { answerScrape, type ScrapeRequest, StatusRelay } from '../../lib/server/status-relay.js';
import type { StatusSource } from '../../lib/server/status-server.js';

const SESSION = { id: 1, peer: 'unix', worker: 42 } as never;

const source: StatusSource = {
  metrics: async () => ({ contentType: 'text/plain; version=0.0.4', text: 'nbd_cow_connections 2\n' }),
  sessions: async () => [SESSION],
};

t.test('a scrape is asked of the primary and answered with what it sends', async (t) => {
  const asked: ScrapeRequest[] = [];
  const relay = new StatusRelay((request) => {
    asked.push(request);
    void answerScrape(request, source).then((reply) => relay.answer(reply));
  });
  t.same(await relay.source().metrics(), { contentType: 'text/plain; version=0.0.4', text: 'nbd_cow_connections 2\n' });
  t.same(await relay.source().sessions(), [SESSION]);
  t.same(
    asked.map((r) => r.what),
    ['metrics', 'sessions'],
  );
  t.not(asked[0]?.id, asked[1]?.id, 'each question has its own id');
});

t.test("the primary's error, or an answer of the wrong kind, fails that scrape", async (t) => {
  const relay = new StatusRelay((request) =>
    relay.answer(
      request.what === 'metrics'
        ? { type: 'scraped', id: request.id, error: 'worker 7 did not answer' }
        : { type: 'scraped', id: request.id, contentType: 'text/plain', text: '' },
    ),
  );
  await t.rejects(relay.source().metrics(), { message: 'worker 7 did not answer' });
  await t.rejects(relay.source().sessions(), { message: 'the primary sent no sessions' });
});

t.test('no answer within the timeout fails the scrape; the late answer is dropped', async (t) => {
  let last: ScrapeRequest | null = null;
  const relay = new StatusRelay((request) => {
    last = request;
  }, 50);
  await t.rejects(relay.source().metrics(), { message: 'the primary did not answer within 50 ms' });
  const late = last as ScrapeRequest | null;
  t.ok(late !== null);
  if (late !== null) relay.answer({ type: 'scraped', id: late.id, sessions: [] });
  t.pass('a late answer throws nothing');
});

t.test("the primary's side: a failing source becomes an error answer", async (t) => {
  const failing: StatusSource = {
    metrics: async () => {
      throw new Error('registry broke');
    },
    sessions: async () => {
      throw new Error('no list');
    },
  };
  t.same(await answerScrape({ type: 'scrape', id: 3, what: 'metrics' }, failing), {
    type: 'scraped',
    id: 3,
    error: 'registry broke',
  });
  t.same(await answerScrape({ type: 'scrape', id: 4, what: 'sessions' }, source), {
    type: 'scraped',
    id: 4,
    sessions: [SESSION],
  });
});
