// `hex` template tag for annotated byte fixtures: whitespace and `#` comments (to end of line)
// are dropped, the rest must be hex digits. hex`25609513 # magic` -> <Buffer 25 60 95 13>.

/** Build a Buffer from annotated hex text. */
export function hex(strings: TemplateStringsArray, ...values: unknown[]): Buffer {
  let text = '';
  strings.forEach((part, i) => {
    text += part;
    if (i < values.length) text += String(values[i]);
  });
  const digits = text
    .split('\n')
    .map((line) => line.replace(/#.*$/, ''))
    .join('')
    .replace(/\s+/g, '');
  if (!/^([0-9a-fA-F]{2})*$/.test(digits)) {
    throw new Error(`hex fixture has a stray character or an odd digit count: ${digits}`);
  }
  return Buffer.from(digits, 'hex');
}
