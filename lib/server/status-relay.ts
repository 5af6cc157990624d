// --metrics with `serve --workers N` (doc/workers.md): every worker serves the HTTP endpoint on
// the socket the primary bound and shares (shared-socket.ts), so the HTTP parser runs in a worker,
// which has given up root like one process does, and never in the primary, which keeps root. The
// numbers cover every process: a worker asks the primary for them (workers-status.ts merges the
// primary's and every worker's), and serves the answer.

import { PendingReplies } from './pending-replies.js';
import type { SessionJson } from './session-list.js';
import type { StatusSource } from './status-server.js';

/** A worker's question to the primary (workers.ts FromWorker). */
export interface ScrapeRequest {
  readonly type: 'scrape';
  readonly id: number;
  readonly what: 'metrics' | 'sessions';
}

/** The primary's answer (workers.ts ToWorker). */
export type ScrapeReply =
  | { readonly type: 'scraped'; readonly id: number; readonly contentType: string; readonly text: string }
  | { readonly type: 'scraped'; readonly id: number; readonly sessions: readonly SessionJson[] }
  | { readonly type: 'scraped'; readonly id: number; readonly error: string };

/** How long a scrape waits for the primary (which waits up to 2 s for each worker). */
const REPLY_TIMEOUT_MS = 5000;

/** The worker's side: a StatusSource whose answers come from the primary. */
export class StatusRelay {
  readonly #ask: (request: ScrapeRequest) => void;
  readonly #timeoutMs: number;
  readonly #replies: PendingReplies<ScrapeReply>;

  constructor(ask: (request: ScrapeRequest) => void, timeoutMs = REPLY_TIMEOUT_MS) {
    this.#ask = ask;
    this.#timeoutMs = timeoutMs;
    this.#replies = new PendingReplies(timeoutMs);
  }

  /** The primary's 'scraped' message (a late or unknown one is dropped). */
  answer(reply: ScrapeReply): void {
    this.#replies.answer(reply.id, reply);
  }

  source(): StatusSource {
    return {
      metrics: async () => {
        const reply = await this.#request('metrics');
        if (!('text' in reply)) throw new Error('the primary sent no metrics');
        return { contentType: reply.contentType, text: reply.text };
      },
      sessions: async () => {
        const reply = await this.#request('sessions');
        if (!('sessions' in reply)) throw new Error('the primary sent no sessions');
        return reply.sessions;
      },
    };
  }

  async #request(what: ScrapeRequest['what']): Promise<ScrapeReply> {
    const reply = await this.#replies.ask((id) => this.#ask({ type: 'scrape', id, what }));
    if (reply === null) throw new Error(`the primary did not answer within ${this.#timeoutMs} ms`);
    if ('error' in reply) throw new Error(reply.error);
    return reply;
  }
}

/** The primary's side: answer `request` from `source` (the merged numbers of every process). */
export async function answerScrape(request: ScrapeRequest, source: StatusSource): Promise<ScrapeReply> {
  try {
    if (request.what === 'metrics') return { type: 'scraped', id: request.id, ...(await source.metrics()) };
    return { type: 'scraped', id: request.id, sessions: await source.sessions() };
  } catch (err) {
    return { type: 'scraped', id: request.id, error: (err as Error).message };
  }
}
