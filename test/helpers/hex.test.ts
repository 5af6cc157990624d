import t from 'tap';
import { hex } from './hex.js';

t.test('hex drops comments and whitespace', async (t) => {
  t.same(
    hex`25 60 # magic
    9513`,
    Buffer.from([0x25, 0x60, 0x95, 0x13]),
  );
  t.throws(() => hex`2 # odd`);
});
