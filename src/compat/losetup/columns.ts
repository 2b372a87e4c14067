/**
 * The losetup output columns, defined once: `-l`, `--raw`, `-J`, `-O` name lookup
 * and the help text all come from this table (util-linux 2.38.1 order and texts).
 */
import type { LoopDevice } from '../../kernel/loop-device.js';
import { LOOP_MAJOR, major, minor } from '../../kernel/devnum.js';
import type { ColumnSpec } from '../smartcols.js';

export interface LoopColumn extends ColumnSpec {
  help: string;
  /** sysfs attributes the value reads (prefetched in one batch for a listing) */
  attrs: string[];
  /** The value asks LOOP_GET_STATUS64 (prefetched in one batch for a listing too). */
  status?: true;
  /** The cell text, or null for an empty cell (JSON null). */
  value(dev: LoopDevice): string | null;
}

const flag = (v: boolean): string => (v ? '1' : '0');
const num = (v: bigint | null): string | null => (v === null ? null : v.toString());

/** `%8u:%-3u` and `%3u:%-3u`: util-linux pads inside the cell, and the padding shows in raw and JSON. */
function majMin(maj: number, min: number, width: number): string {
  return `${String(maj).padStart(width)}:${String(min).padEnd(3)}`;
}

export const COLUMNS: readonly LoopColumn[] = [
  { name: 'NAME', help: 'loop device name', attrs: [], value: (d) => d.path },
  { name: 'AUTOCLEAR', help: 'autoclear flag set', attrs: ['loop/autoclear'], right: true, json: 'boolean', value: (d) => flag(d.autoclear()) },
  { name: 'BACK-FILE', help: 'device backing file', attrs: ['loop/backing_file'], value: (d) => d.backingFile() },
  {
    name: 'BACK-INO',
    help: 'backing file inode number',
    attrs: [],
    status: true,
    right: true,
    json: 'number',
    value: (d) => {
      const ids = d.backingIds();
      return ids && ids.ino ? ids.ino.toString() : null;
    },
  },
  {
    name: 'BACK-MAJ:MIN',
    help: 'backing file major:minor device number',
    attrs: [],
    status: true,
    value: (d) => {
      const ids = d.backingIds();
      return ids && ids.dev ? majMin(major(ids.dev), minor(ids.dev), 8) : null;
    },
  },
  {
    name: 'MAJ:MIN',
    help: 'loop device major:minor number',
    attrs: [],
    value: (d) => {
      const dn = d.devno();
      return dn && dn[0] === LOOP_MAJOR ? majMin(dn[0], dn[1], 3) : null;
    },
  },
  { name: 'OFFSET', help: 'offset from the beginning', attrs: ['loop/offset'], right: true, json: 'number', value: (d) => num(d.offset()) },
  { name: 'PARTSCAN', help: 'partscan flag set', attrs: ['loop/partscan'], right: true, json: 'boolean', value: (d) => flag(d.partscan()) },
  { name: 'RO', help: 'read-only device', attrs: ['ro'], right: true, json: 'boolean', value: (d) => flag(d.readOnly()) },
  {
    name: 'SIZELIMIT',
    help: 'size limit of the file in bytes',
    attrs: ['loop/sizelimit'],
    right: true,
    json: 'number',
    value: (d) => num(d.sizelimit()),
  },
  { name: 'DIO', help: 'access backing file with direct-io', attrs: ['loop/dio'], right: true, json: 'boolean', value: (d) => flag(d.directIo()) },
  { name: 'LOG-SEC', help: 'logical sector size in bytes', attrs: ['queue/logical_block_size'], right: true, json: 'number', value: (d) => num(d.logicalBlockSize()) },
];

/** `-l` without `-O`. */
export const DEFAULT_COLUMNS = ['NAME', 'SIZELIMIT', 'OFFSET', 'AUTOCLEAR', 'RO', 'BACK-FILE', 'DIO', 'LOG-SEC'].map(
  (n) => COLUMNS.findIndex((c) => c.name === n),
);

/** util-linux keeps at most twice the number of known columns. */
export const MAX_COLUMNS = COLUMNS.length * 2;

/** Case-insensitive exact name lookup; -1 when unknown. */
export function columnId(name: string): number {
  const upper = name.toUpperCase();
  return COLUMNS.findIndex((c) => c.name === upper);
}

export class UnknownColumn extends Error {
  constructor(readonly rest: string) {
    super(`unknown column: ${rest}`);
  }
}

/**
 * util-linux's string_add_to_idarray(): "+A,B" appends to `current`, "A,B" replaces it.
 * Returns null for the malformed lists util-linux rejects without a message (empty
 * names, too many columns); throws UnknownColumn with the *rest of the list* from the
 * bad name on, which is what util-linux prints.
 */
export function parseColumnList(list: string, current: number[]): number[] | null {
  if (!list) return null;
  const append = list.startsWith('+');
  const body = append ? list.slice(1) : list;
  const result = append ? [...current] : [];
  if (!body) return null;
  let begin = 0;
  for (let p = 0; p < body.length; p++) {
    if (result.length >= MAX_COLUMNS) return null;
    const atEnd = p + 1 === body.length;
    const end = atEnd ? p + 1 : body[p] === ',' ? p : -1;
    if (end < 0) continue;
    if (end <= begin) return null;
    const id = columnId(body.slice(begin, end));
    if (id < 0) throw new UnknownColumn(body.slice(begin));
    result.push(id);
    begin = p + 1;
  }
  return result;
}
