import t from 'tap';
import * as c from '../../lib/protocol/constants.js';

// Values copied from doc/proto.md (NetworkBlockDevice/nbd), not from the code under test.
const SPEC: Readonly<Record<string, number | bigint | string>> = {
  NBDMAGIC: 0x4e42444d41474943n,
  IHAVEOPT: 0x49484156454f5054n,
  NBD_REP_MAGIC: 0x3e889045565a9n,
  NBD_FLAG_FIXED_NEWSTYLE: 1,
  NBD_FLAG_NO_ZEROES: 2,
  NBD_FLAG_C_FIXED_NEWSTYLE: 1,
  NBD_FLAG_C_NO_ZEROES: 2,
  NBD_OPT_EXPORT_NAME: 1,
  NBD_OPT_ABORT: 2,
  NBD_OPT_LIST: 3,
  NBD_OPT_PEEK_EXPORT: 4,
  NBD_OPT_STARTTLS: 5,
  NBD_OPT_INFO: 6,
  NBD_OPT_GO: 7,
  NBD_OPT_STRUCTURED_REPLY: 8,
  NBD_OPT_LIST_META_CONTEXT: 9,
  NBD_OPT_SET_META_CONTEXT: 10,
  NBD_OPT_EXTENDED_HEADERS: 11,
  NBD_REP_ACK: 1,
  NBD_REP_SERVER: 2,
  NBD_REP_INFO: 3,
  NBD_REP_META_CONTEXT: 4,
  NBD_REP_FLAG_ERROR: 2 ** 31,
  NBD_REP_ERR_UNSUP: 2 ** 31 + 1,
  NBD_REP_ERR_POLICY: 2 ** 31 + 2,
  NBD_REP_ERR_INVALID: 2 ** 31 + 3,
  NBD_REP_ERR_PLATFORM: 2 ** 31 + 4,
  NBD_REP_ERR_TLS_REQD: 2 ** 31 + 5,
  NBD_REP_ERR_UNKNOWN: 2 ** 31 + 6,
  NBD_REP_ERR_SHUTDOWN: 2 ** 31 + 7,
  NBD_REP_ERR_BLOCK_SIZE_REQD: 2 ** 31 + 8,
  NBD_REP_ERR_TOO_BIG: 2 ** 31 + 9,
  NBD_INFO_EXPORT: 0,
  NBD_INFO_NAME: 1,
  NBD_INFO_DESCRIPTION: 2,
  NBD_INFO_BLOCK_SIZE: 3,
  NBD_FLAG_HAS_FLAGS: 0x0001,
  NBD_FLAG_READ_ONLY: 0x0002,
  NBD_FLAG_SEND_FLUSH: 0x0004,
  NBD_FLAG_SEND_FUA: 0x0008,
  NBD_FLAG_ROTATIONAL: 0x0010,
  NBD_FLAG_SEND_TRIM: 0x0020,
  NBD_FLAG_SEND_WRITE_ZEROES: 0x0040,
  NBD_FLAG_SEND_DF: 0x0080,
  NBD_FLAG_CAN_MULTI_CONN: 0x0100,
  NBD_FLAG_SEND_RESIZE: 0x0200,
  NBD_FLAG_SEND_CACHE: 0x0400,
  NBD_FLAG_SEND_FAST_ZERO: 0x0800,
  NBD_REQUEST_MAGIC: 0x25609513,
  NBD_SIMPLE_REPLY_MAGIC: 0x67446698,
  NBD_STRUCTURED_REPLY_MAGIC: 0x668e33ef,
  NBD_CMD_READ: 0,
  NBD_CMD_WRITE: 1,
  NBD_CMD_DISC: 2,
  NBD_CMD_FLUSH: 3,
  NBD_CMD_TRIM: 4,
  NBD_CMD_CACHE: 5,
  NBD_CMD_WRITE_ZEROES: 6,
  NBD_CMD_BLOCK_STATUS: 7,
  NBD_CMD_FLAG_FUA: 0x01,
  NBD_CMD_FLAG_NO_HOLE: 0x02,
  NBD_CMD_FLAG_DF: 0x04,
  NBD_CMD_FLAG_REQ_ONE: 0x08,
  NBD_CMD_FLAG_FAST_ZERO: 0x10,
  NBD_REPLY_FLAG_DONE: 1,
  NBD_REPLY_TYPE_NONE: 0,
  NBD_REPLY_TYPE_OFFSET_DATA: 1,
  NBD_REPLY_TYPE_OFFSET_HOLE: 2,
  NBD_REPLY_TYPE_BLOCK_STATUS: 5,
  NBD_REPLY_TYPE_ERROR: 2 ** 15 + 1,
  NBD_REPLY_TYPE_ERROR_OFFSET: 2 ** 15 + 2,
  NBD_EPERM: 1,
  NBD_EIO: 5,
  NBD_ENOMEM: 12,
  NBD_EINVAL: 22,
  NBD_ENOSPC: 28,
  NBD_EOVERFLOW: 75,
  NBD_ENOTSUP: 95,
  NBD_ESHUTDOWN: 108,
  NBD_STATE_HOLE: 1,
  NBD_STATE_ZERO: 2,
  CONTEXT_BASE_ALLOCATION: 'base:allocation',
  CONTEXT_QEMU_ALLOCATION_DEPTH: 'qemu:allocation-depth',
  MAX_STRING_LENGTH: 4096,
  MAX_PAYLOAD_ADVERTISED: 33554432,
  MAX_PAYLOAD: 67108864,
};

t.test('every constant has the value proto.md gives it', async (t) => {
  const actual = c as unknown as Record<string, unknown>;
  for (const [name, value] of Object.entries(SPEC)) t.equal(actual[name], value, name);
});

t.test('the magics spell their names', async (t) => {
  const ascii = (n: bigint): string => {
    const buf = Buffer.alloc(8);
    buf.writeBigUInt64BE(n);
    return buf.toString('latin1');
  };
  t.equal(ascii(c.NBDMAGIC), 'NBDMAGIC');
  t.equal(ascii(c.IHAVEOPT), 'IHAVEOPT');
});

t.test('every NBD_REP_ERR_* has bit 31 set and fits a u32', async (t) => {
  for (const [name, value] of Object.entries(c)) {
    if (!name.startsWith('NBD_REP_ERR_')) continue;
    t.ok(typeof value === 'number' && value >= 2 ** 31 && value < 2 ** 32, name);
  }
});

t.test('optionName and commandName', async (t) => {
  t.equal(c.optionName(7), 'NBD_OPT_GO');
  t.equal(c.optionName(1), 'NBD_OPT_EXPORT_NAME');
  t.equal(c.optionName(11), 'NBD_OPT_EXTENDED_HEADERS');
  t.equal(c.optionName(99), 'NBD_OPT_UNKNOWN(99)');
  t.equal(c.optionName(0), 'NBD_OPT_UNKNOWN(0)');
  t.equal(c.commandName(0), 'NBD_CMD_READ');
  t.equal(c.commandName(7), 'NBD_CMD_BLOCK_STATUS');
  t.equal(c.commandName(8), 'NBD_CMD_UNKNOWN(8)');
  for (let code = 1; code <= 11; code++) t.match(c.optionName(code), /^NBD_OPT_[A-Z_]+$/, `option ${code} has a name`);
  for (let type = 0; type <= 7; type++) t.match(c.commandName(type), /^NBD_CMD_[A-Z_]+$/, `command ${type} has a name`);
});

t.test('the name tables agree with the constants', async (t) => {
  const actual = c as unknown as Record<string, unknown>;
  for (const [code, name] of Object.entries(c.OPTION_NAMES)) t.equal(actual[name], Number(code), name);
  for (const [code, name] of Object.entries(c.COMMAND_NAMES)) t.equal(actual[name], Number(code), name);
  t.equal(c.optionName(Number('toString')), 'NBD_OPT_UNKNOWN(NaN)', 'no prototype lookups');
});
