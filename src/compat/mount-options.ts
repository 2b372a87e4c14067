/**
 * Mount option strings as libmount reads them: comma-separated, `name` or
 * `name=value`, where a value may be double-quoted and then contain commas
 * (`context="a,b"`). Order is kept: it matters to filesystems (last one wins).
 */
export interface MountOption {
  name: string;
  value: string | null; // null: no '=' at all; '' for "name="
}

export class MountOptionError extends Error {}

export function parseMountOptions(text: string): MountOption[] {
  const result: MountOption[] = [];
  let i = 0;
  while (i < text.length) {
    let item = '';
    let quoted = false;
    for (; i < text.length; i++) {
      const ch = text[i];
      if (ch === '"') quoted = !quoted;
      else if (ch === ',' && !quoted) break;
      item += ch;
    }
    if (quoted) throw new MountOptionError(`unterminated quote in mount options '${text}'`);
    i++; // skip the comma
    if (item === '') continue; // libmount tolerates empty items ("ro,,noexec")
    const eq = item.indexOf('=');
    result.push(eq < 0 ? { name: item, value: null } : { name: item.slice(0, eq), value: item.slice(eq + 1) });
  }
  return result;
}

export function formatMountOptions(opts: MountOption[]): string {
  return opts.map((o) => (o.value === null ? o.name : `${o.name}=${o.value}`)).join(',');
}

/** The value of the last occurrence of `name`, unquoted; undefined when absent. */
export function optionValue(opts: MountOption[], name: string): string | null | undefined {
  for (let i = opts.length - 1; i >= 0; i--) {
    if (opts[i].name === name) {
      const v = opts[i].value;
      return v !== null && v.length >= 2 && v.startsWith('"') && v.endsWith('"') ? v.slice(1, -1) : v;
    }
  }
  return undefined;
}

/** Whether the options end up read-only: the last of ro/rw wins, as in the kernel flags. */
export function isReadOnly(opts: MountOption[]): boolean {
  let ro = false;
  for (const o of opts) {
    if (o.value !== null) continue;
    if (o.name === 'ro') ro = true;
    else if (o.name === 'rw') ro = false;
  }
  return ro;
}
