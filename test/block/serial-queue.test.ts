import t from 'tap';
import { SerialQueue } from '../../lib/block/serial-queue.js';

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

t.test('tasks run one at a time in queue order; a failure rejects only its own promise', async (t) => {
  const queue = new SerialQueue();
  const events: string[] = [];
  let running = 0;
  let most = 0;
  const task =
    (name: string, fail = false) =>
    async (): Promise<void> => {
      running++;
      most = Math.max(most, running);
      events.push(`start ${name}`);
      await tick();
      await tick();
      events.push(`end ${name}`);
      running--;
      if (fail) throw new Error(`${name} failed`);
    };
  const a = queue.run(task('a'));
  const b = queue.run(task('b', true));
  const c = queue.run(task('c'));
  await a;
  await t.rejects(b, { message: 'b failed' });
  await c;
  t.equal(most, 1, 'never two at once');
  t.same(events, ['start a', 'end a', 'start b', 'end b', 'start c', 'end c']);
  // Idle again (once the queue has seen c settle): a new task starts at once.
  await tick();
  let started = false;
  const d = queue.run(async () => {
    started = true;
  });
  t.ok(started, 'an idle queue runs the task synchronously');
  await d;
});
