// Which TCP peers may connect: a list of CIDR ranges (`10.0.0.0/8`, `::1/128`, or one address)
// held in node:net's BlockList, which also matches IPv4-mapped IPv6 peers (`::ffff:10.1.2.3`)
// against IPv4 ranges, as a dual-stack listener on `::` reports IPv4 clients that way.

import { BlockList, isIP } from 'node:net';

/** The family and prefix-length ceiling of each address kind isIP() reports. */
const FAMILIES = { 4: { family: 'ipv4', bits: 32 }, 6: { family: 'ipv6', bits: 128 } } as const;

export class AccessList {
  readonly #ranges = new BlockList();
  /** The ranges as given, for log lines. */
  readonly rules: readonly string[];

  /** Throws an Error naming the first entry that is not an address or CIDR range. */
  constructor(rules: readonly string[]) {
    for (const rule of rules) addRule(this.#ranges, rule);
    this.rules = [...rules];
  }

  /** Whether `address` (a socket's remoteAddress) falls in one of the ranges. */
  allows(address: string): boolean {
    const family = isIP(address);
    if (family !== 4 && family !== 6) return false;
    return this.#ranges.check(address, FAMILIES[family].family);
  }
}

/** Add `rule` (ADDRESS or ADDRESS/PREFIX) to `ranges`, or throw a one-line reason. */
function addRule(ranges: BlockList, rule: string): void {
  const slash = rule.indexOf('/');
  const address = slash === -1 ? rule : rule.slice(0, slash);
  const family = isIP(address);
  if (family !== 4 && family !== 6) {
    throw new Error(`bad address range ${JSON.stringify(rule)}: expected an IPv4 or IPv6 address, optionally /PREFIX`);
  }
  // BlockList would take `fe80::1%eth0` and ignore the zone: refuse it rather than pretend.
  if (address.includes('%')) throw new Error(`bad address range ${JSON.stringify(rule)}: zone indexes (%IF) are not supported`);
  const { family: name, bits } = FAMILIES[family];
  if (slash === -1) {
    ranges.addAddress(address, name);
    return;
  }
  const prefixText = rule.slice(slash + 1);
  const prefix = Number(prefixText);
  if (!/^\d{1,3}$/.test(prefixText) || prefix > bits) {
    throw new Error(`bad address range ${JSON.stringify(rule)}: the prefix length must be a number from 0 to ${bits}`);
  }
  ranges.addSubnet(address, prefix, name);
}
