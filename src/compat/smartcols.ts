/**
 * The part of libsmartcols 2.38.1 that `losetup --list` uses, for a stdout that is not a
 * terminal (no width limit, so nothing is ever truncated or wrapped).
 *
 * table  Each column is as wide as its widest cell or its header (the header counts even
 *        with noHeadings); cells are joined by one space; right-aligned columns (and their
 *        header) are padded on the left; the last column is never padded on the right, so
 *        a row whose last cell is empty ends with the separator space. Control bytes,
 *        invalid UTF-8, non-printable characters and a backslash followed by 'x' are shown
 *        as "\xHH" (lower-case hex, per byte); widths are terminal cells (wcwidth).
 * raw    Cells joined by one space, no alignment; every byte that is blank (space, tab), a
 *        backslash, or not printable ASCII (controls, DEL, all bytes >= 0x80) becomes "\xHH".
 * json   {"<table name>": [ {...}, ... ]} with 3-space indentation, keys = lower-cased
 *        column names, objects joined as "},{"; strings JSON-escaped (", \, \b \t \n \f \r,
 *        other controls as \u00hh; DEL and non-ASCII bytes pass through); numbers are
 *        written verbatim; an empty/null string or number is `null`; booleans are false
 *        when empty or starting with '0', 'N' or 'n', else true. noHeadings is ignored.
 *
 * With no rows, table and raw print nothing at all and JSON prints an empty array
 * ("[\n\n   ]"). Table and raw output end with one newline after the last row. Cell text is
 * cut at a NUL byte, as a C string would be. Everything is computed on UTF-8 bytes; use
 * renderTableBytes() when cells are raw bytes (e.g. a backing-file name that is not UTF-8)
 * so that JSON output keeps them unchanged.
 */

export type JsonType = 'string' | 'number' | 'boolean';

export interface ColumnSpec {
  name: string;
  /** SCOLS_FL_RIGHT */
  right?: boolean;
  /** JSON type, default 'string'. */
  json?: JsonType;
  /**
   * libsmartcols width hint (losetup's `whint`). Only an absolute hint (>= 1) matters off a
   * terminal, and only when it exceeds the header width — never the case for losetup.
   */
  whint?: number;
}

export interface RenderOptions {
  mode: 'table' | 'raw' | 'json';
  noHeadings?: boolean;
  /** The JSON key of the array ('loopdevices' for losetup); "" when not set, as in C. */
  tableName?: string;
  /**
   * Table mode only: whether LC_CTYPE is a UTF-8 locale (default true). In the C/POSIX
   * locale every byte >= 0x80 is shown as "\xHH" and counts 4 cells.
   */
  utf8?: boolean;
}

export type Cell = string | Uint8Array | null;

export function renderTable(columns: ColumnSpec[], rows: Array<Array<Cell>>, opts: RenderOptions): string {
  if (opts.mode === 'table') {
    const plain = renderHumanPlain(columns, rows, !!opts.noHeadings);
    if (plain !== null) return plain;
  }
  return renderTableBytes(columns, rows, opts).toString('utf8');
}

export function renderTableBytes(columns: ColumnSpec[], rows: Array<Array<Cell>>, opts: RenderOptions): Buffer {
  if (columns.length === 0) return Buffer.alloc(0); // scols_print_table() fails: no columns
  const cells = rows.map((row) => columns.map((_, i) => cBytes(row[i] ?? null)));
  switch (opts.mode) {
    case 'json':
      return renderJson(columns, cells, opts.tableName ?? '');
    case 'raw':
      return renderRaw(columns, cells, !!opts.noHeadings);
    case 'table':
      return renderHuman(columns, cells, !!opts.noHeadings, opts.utf8 ?? true);
  }
}

/** The cell as the C string libsmartcols stores: bytes up to the first NUL. */
function cBytes(cell: Cell): Buffer {
  if (cell === null) return Buffer.alloc(0);
  const b = typeof cell === 'string' ? Buffer.from(cell, 'utf8') : Buffer.from(cell);
  const nul = b.indexOf(0);
  return nul < 0 ? b : b.subarray(0, nul);
}

function hexEscape(byte: number): string {
  return '\\x' + byte.toString(16).padStart(2, '0');
}

// ---------------------------------------------------------------------------------------
// table ("human") output

interface Encoded {
  text: Buffer;
  width: number;
}

function renderHuman(columns: ColumnSpec[], rows: Buffer[][], noHeadings: boolean, utf8: boolean): Buffer {
  if (rows.length === 0) return Buffer.alloc(0);

  const header = columns.map((c) => safeEncode(Buffer.from(c.name, 'utf8'), utf8));
  const body = rows.map((row) => row.map((cell) => safeEncode(cell, utf8)));

  const widths = columns.map((col, i) => {
    // The header sets the minimum even when it is not printed; 1 if it is empty.
    const min = Math.max(1, header[i].width);
    let width = Math.max(0, ...body.map((row) => row[i].width));
    const hint = Math.trunc(col.whint ?? 0);
    if (width < min) width = min;
    else if (hint >= 1 && width < hint && min < hint) width = hint;
    return width;
  });

  const line = (enc: Encoded[]): Buffer => {
    const parts: Buffer[] = [];
    enc.forEach((cell, i) => {
      const last = i === columns.length - 1;
      const right = !!columns[i].right;
      let width = widths[i];
      let len = cell.width;
      if (last && len < width && !right) width = len;
      if (len > 0) {
        if (right && len < width) {
          parts.push(Buffer.from(' '.repeat(width - len)));
          len = width;
        }
        parts.push(cell.text);
      }
      if (last) return;
      if (len < width) parts.push(Buffer.from(' '.repeat(width - len)));
      parts.push(Buffer.from(' '));
    });
    return Buffer.concat(parts);
  };

  const lines = body.map(line);
  if (!noHeadings) lines.unshift(line(header));
  return Buffer.concat([joinLines(lines), Buffer.from('\n')]);
}

function joinLines(lines: Buffer[]): Buffer {
  const parts: Buffer[] = [];
  lines.forEach((l, i) => {
    if (i > 0) parts.push(Buffer.from('\n'));
    parts.push(l);
  });
  return Buffer.concat(parts);
}

/**
 * A cell that is its own encoding in table output: printable ASCII (0x20..0x7e) without a
 * literal "\x", so one byte per character and one column per byte (see safeEncode). A
 * regular expression, not a loop over the characters: a listing runs once, in V8's
 * interpreter, where a per-character loop over thousands of cells cost more than the rest
 * of the table; the regex engine compiles to machine code at once.
 */
const PLAIN = /^(?:[\x20-\x5b\x5d-\x7e]|\\(?!x))*$/;

/**
 * renderHuman() for the usual listing, where every cell and header is a plain string (or
 * null): the same widths and padding computed on strings, without a Buffer per cell, and
 * with the padding and joining left to String and Array builtins (see PLAIN for why).
 * Null when some cell is not plain; renderHuman() then does it byte by byte.
 */
function renderHumanPlain(columns: ColumnSpec[], rows: Array<Array<Cell>>, noHeadings: boolean): string | null {
  if (columns.length === 0 || rows.length === 0) return null;
  const n = columns.length;
  const widths: number[] = [];
  for (let i = 0; i < n; i++) {
    if (!PLAIN.test(columns[i].name)) return null;
    widths.push(0);
  }
  for (const row of rows) {
    for (let i = 0; i < n; i++) {
      const cell = row[i] ?? null;
      if (cell === null) continue;
      if (typeof cell !== 'string' || !PLAIN.test(cell)) return null;
      if (cell.length > widths[i]) widths[i] = cell.length;
    }
  }
  for (let i = 0; i < n; i++) {
    // the header sets the minimum even when it is not printed; 1 if it is empty
    const min = Math.max(1, columns[i].name.length);
    const hint = Math.trunc(columns[i].whint ?? 0);
    if (widths[i] < min) widths[i] = min;
    else if (hint >= 1 && widths[i] < hint && min < hint) widths[i] = hint;
  }
  const right = columns.map((c) => !!c.right);
  const last = n - 1;
  const parts: string[] = new Array<string>(n);
  const line = (cells: ReadonlyArray<Cell>): string => {
    // every cell but the last is padded to its width (an empty one to blanks, whatever its
    // alignment); the last is padded only when right-aligned and not empty
    for (let i = 0; i < last; i++) {
      const text = (cells[i] as string | null | undefined) ?? '';
      parts[i] = right[i] ? text.padStart(widths[i]) : text.padEnd(widths[i]);
    }
    const text = (cells[last] as string | null | undefined) ?? '';
    parts[last] = right[last] && text.length > 0 ? text.padStart(widths[last]) : text;
    return parts.join(' ');
  };
  const lines: string[] = [];
  if (!noHeadings) lines.push(line(columns.map((c) => c.name)));
  for (const row of rows) lines.push(line(row));
  lines.push('');
  return lines.join('\n');
}

/**
 * mbs_safe_encode(): copy printable characters, hex-escape the rest per byte, count cells.
 * A result of width 0 (e.g. only zero-width characters) is treated as no data at all,
 * as ul_buffer_get_safe_data() does.
 */
function safeEncode(s: Buffer, utf8: boolean): Encoded {
  // Nearly every cell (device names, numbers, ordinary paths) is printable ASCII without a
  // literal "\x": such a cell is its own encoding, one column per byte. Checking that first
  // keeps a listing of thousands of devices from building a string per character.
  let plain = true;
  for (let i = 0; i < s.length; i++) {
    const b = s[i];
    if (b < 0x20 || b >= 0x7f || (b === 0x5c && s[i + 1] === 0x78)) {
      plain = false;
      break;
    }
  }
  if (plain) return { text: s, width: s.length };
  let out = '';
  const raw: Buffer[] = [];
  let width = 0;
  const flush = (): void => {
    if (out) raw.push(Buffer.from(out, 'latin1'));
    out = '';
  };
  let i = 0;
  while (i < s.length) {
    const b = s[i];
    if ((b === 0x5c && s[i + 1] === 0x78) || b < 0x20 || b === 0x7f) {
      out += hexEscape(b);
      width += 4;
      i++;
      continue;
    }
    if (b < 0x80) {
      out += String.fromCharCode(b);
      width += 1;
      i++;
      continue;
    }
    const ch = utf8 ? decodeUtf8(s, i) : null;
    if (ch === null) {
      // Invalid (or, in the C locale, any) non-ASCII byte: not printable as a single byte.
      out += hexEscape(b);
      width += 4;
      i++;
      continue;
    }
    const cls = charClass(ch.cp);
    if (cls < 0) {
      for (let k = 0; k < ch.len; k++) out += hexEscape(s[i + k]);
      width += 4 * ch.len;
    } else {
      flush();
      raw.push(s.subarray(i, i + ch.len));
      width += cls;
    }
    i += ch.len;
  }
  flush();
  if (width === 0) return { text: Buffer.alloc(0), width: 0 };
  return { text: Buffer.concat(raw), width };
}

/** One well-formed UTF-8 sequence at s[i] (no overlongs, surrogates or > U+10FFFF). */
function decodeUtf8(s: Buffer, i: number): { cp: number; len: number } | null {
  const b0 = s[i];
  let len: number;
  let cp: number;
  let lo = 0x80;
  let hi = 0xbf;
  if (b0 >= 0xc2 && b0 <= 0xdf) {
    len = 2;
    cp = b0 & 0x1f;
  } else if (b0 >= 0xe0 && b0 <= 0xef) {
    len = 3;
    cp = b0 & 0x0f;
    if (b0 === 0xe0) lo = 0xa0;
    if (b0 === 0xed) hi = 0x9f;
  } else if (b0 >= 0xf0 && b0 <= 0xf4) {
    len = 4;
    cp = b0 & 0x07;
    if (b0 === 0xf0) lo = 0x90;
    if (b0 === 0xf4) hi = 0x8f;
  } else {
    return null;
  }
  for (let k = 1; k < len; k++) {
    const b = s[i + k];
    if (b === undefined || b < (k === 1 ? lo : 0x80) || b > (k === 1 ? hi : 0xbf)) return null;
    cp = (cp << 6) | (b & 0x3f);
  }
  return { cp, len };
}

// ---------------------------------------------------------------------------------------
// raw output

function renderRaw(columns: ColumnSpec[], rows: Buffer[][], noHeadings: boolean): Buffer {
  if (rows.length === 0) return Buffer.alloc(0);
  const line = (cells: Buffer[]): string => cells.map(nonblank).join(' ');
  const lines = rows.map(line);
  if (!noHeadings) lines.unshift(line(columns.map((c) => Buffer.from(c.name, 'utf8'))));
  return Buffer.from(lines.join('\n') + '\n', 'latin1');
}

/** fputs_nonblank(): the result is pure ASCII. */
function nonblank(s: Buffer): string {
  let out = '';
  for (const b of s) {
    out += b <= 0x20 || b === 0x5c || b >= 0x7f ? hexEscape(b) : String.fromCharCode(b);
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// JSON output (lib/jsonwrt.c)

function renderJson(columns: ColumnSpec[], rows: Buffer[][], tableName: string): Buffer {
  const parts: Buffer[] = [];
  const put = (s: string | Buffer): void => {
    parts.push(typeof s === 'string' ? Buffer.from(s, 'utf8') : s);
  };
  const keys = columns.map((c) => jsonQuote(asciiLower(Buffer.from(c.name, 'utf8'))));

  put('{\n   ');
  put(jsonQuote(asciiLower(Buffer.from(tableName, 'utf8'))));
  put(': [\n');
  rows.forEach((row, r) => {
    // A new object directly follows the previous "}" without a newline or indentation.
    put(r === 0 ? '      {\n' : ',{\n');
    row.forEach((cell, i) => {
      if (i > 0) put(',\n');
      put('         ');
      put(keys[i]);
      put(': ');
      put(jsonValue(columns[i].json ?? 'string', cell));
    });
    put('\n      }');
  });
  put('\n   ]\n}\n');
  return Buffer.concat(parts);
}

function jsonValue(type: JsonType, data: Buffer): string | Buffer {
  switch (type) {
    case 'string':
      return data.length ? jsonQuote(data) : 'null';
    case 'number':
      return data.length ? data : 'null';
    case 'boolean': {
      const c = data[0];
      return data.length === 0 || c === 0x30 || c === 0x4e || c === 0x6e ? 'false' : 'true';
    }
  }
}

function asciiLower(s: Buffer): Buffer {
  return Buffer.from(s.map((b) => (b >= 0x41 && b <= 0x5a ? b + 0x20 : b)));
}

const JSON_SHORT: Record<number, string> = { 0x08: '\\b', 0x09: '\\t', 0x0a: '\\n', 0x0c: '\\f', 0x0d: '\\r' };

/** fputs_quoted_json(): only ", \ and bytes below 0x20 are escaped. */
function jsonQuote(s: Buffer): Buffer {
  const parts: Buffer[] = [Buffer.from('"')];
  let start = 0;
  const esc = (i: number, text: string): void => {
    parts.push(s.subarray(start, i), Buffer.from(text));
    start = i + 1;
  };
  s.forEach((b, i) => {
    if (b === 0x22 || b === 0x5c) esc(i, '\\' + String.fromCharCode(b));
    else if (b < 0x20) esc(i, JSON_SHORT[b] ?? '\\u00' + b.toString(16).padStart(2, '0'));
  });
  parts.push(s.subarray(start), Buffer.from('"'));
  return Buffer.concat(parts);
}

// ---------------------------------------------------------------------------------------
// Character classes of glibc 2.36's C.UTF-8 locale: iswprint() and wcwidth() for every code
// point. Generated by a C program iterating U+0000..U+10FFFF with setlocale(LC_ALL,
// "C.UTF-8"); each run is a class letter and a base-36 length:
//   N = not printable (hex-escaped), Z = width 0, S = width 1, W = width 2.

const CLASS_RUNS = [
  'NwS2nNxSgwZ34S8N2S6N4S7N1S1N1SkN1S68Z7S4mN1S12N2S1eN2S3N1Z19S1Z1S1Z2S1Z2S1Z1N8SrN4S6NbSgZbS1Z1S1',
  'aZlSgZ1S2tZ7S2Z6S2Z2S1Z4SwN1S2Z1SuZrN2S2hZbS1NeS17Z9S7N2Z1SoZ4S1Z9S1Z3S1Z5N2SfN1SpZ3N2S1N1SbN5Sv',
  'N1S2N6Z8S16ZoS1ZwS1jZ1S1Z1S4Z8S4Z1S3Z7SaZ2StZ1S2N1S8N2S2N2SmN1S7N1S1N3S4N2Z1S4Z4N2S2N2S2Z1S1N8S1',
  'N4S2N1S3Z2N2SoZ1N2Z2S1N1S6N4S2N2SmN1S7N1S2N1S2N1S2N2Z1N1S3Z2N4Z2N2Z3N3Z1N7S4N1S1N7SaZ2S3Z1S1NaZ2',
  'S1N1S9N1S3N1SmN1S7N1S2N1S5N2Z1S4Z5N1Z2S1N1S2Z1N2S1NfS2Z2N2ScN7S1Z6N1Z1S2N1S8N2S2N2SmN1S7N1S2N1S5',
  'N2Z1S2Z1S1Z4N2S2N2S2Z1N7Z2S1N4S2N1S3Z2N2SiNaZ1S1N1S6N3S3N1S4N3S2N1S1N1S2N3S2N3S3N3ScN4S2Z1S2N3S3',
  'N1S3Z1N2S1N6S1NeSlN5Z1S3Z1S8N1S3N1SnN1SgN2Z1S1Z3S4N1Z3N1Z4N7Z2N1S3N2S1N2S2Z2N2SaN7SaZ1SbN1S3N1Sn',
  'N1SaN1S5N2Z1S2Z1S5N1Z1S2N1S2Z2N7S2N6S2N1S2Z2N2SaN1S2NdZ2SbN1S3N1S15Z2S4Z4N1S3N1S3Z1S2N4SeZ2N2SqN',
  '1Z1S2N1SiN3SoN1S9N1S1N2S7N3Z1N4S3Z3N1Z1N1S8N6SaN2S3NcS1cZ1S2Z7N4S8Z8SdN11S2N1S1N1S5N1SoN1S1N1SaZ',
  '1S2Z9S1N2S5N1S1N1Z6N2SaN2S4NwSoZ2SrZ1S1Z1S1Z1SeN1S10N4ZeS1Z5S1Z2S5ZbN1Z10N1S8Z1S6N1SdN11S19Z4S1Z',
  '6S1Z2S2Z2SpZ2S4Z3SgZ4SdZ1S2Z2S6Z1SfZ1S14N1S1N5S1N2S1cW2oZ4gS21N1S4N2S7N1S1N1S4N2S15N1S4N2SxN1S4N',
  '2S7N1S1N1S4N2SfN1S1lN1S4N2S1vN2Z3StN3SqN6S2eN2S6N2SilN3S2hN7SiZ3S1N9SjZ2S3N9SiZ2NcSdN1S3N1Z2NcS1',
  'gZ2S1Z7S8Z1S2ZbS9Z1N2SaN6SaN6SbZ5SaN6S2hN7S5Z2SyZ1S1N5S1yNaSvN1Z3S4Z2S3N4S2Z1S6Z3N4S1N3S16N2S5Nb',
  'S18N4SqN6SbN3S1lZ2S2Z1N2S1kZ1S1Z7N1Z1S1Z1S2Z8S6ZaN2Z1SaN6SaN6SeN2ZvN1dZ4S1cZ1S1Z5S1Z1S5Z1SaN3SrZ',
  '9SbN1Z2SwZ4S2Z2S1Z3S1kZ1S1Z2S3Z1S1Z3S2N8S1cZ8S2Z2N3SfN3S1oN7S17N2SbN8Z3S1ZdS1Z7S4Z1S6Z1S3Z2S1N5S',
  '5cZ1sS7qN2S6N2S12N2S6N2S8N1S1N1S1N1S1N1SvN2S1hN1SfN1SeN2S6N1SjN2S3N1S9N1SbZ5SoN2Z5S1dZ5N1ZaS2N2S',
  'rN1SdN3SxNfZxNfS3wN4SayW2SdW2S5aW4S3W1S2W1S1fNpSbNlSbhW2SlW2S1eWcS17W1SjW1SdW1S8W2ShW2S5W2S8W1S5',
  'W1SlW1S7W2S1W1S4W1S2W1S7W1S4W2SsW1SzW1S1W1S4W3S1W1S1pW3SoW1SeW1SnvW2S1fW1S4W1SuN2SwN1S9kZ3S2N5S1',
  '9N1S1N5S1N2S1kN7S2NeZ1SnN9S7N1S7N1S7N1S7N1S7N1S7N1S7N1S7N1ZwS2mNyWqN1W2hNcW5yNqWcN4W16Z4WhS1N1W2',
  'eN2Z2W2tN5W17N1W2mN1W2cNcW1bN1WmlpN3W1jN9S9oNkS1bZ4S1ZaSwZ2S28Z2S6N8S5nN5S2N1S1N1S5NoSgZ1S3Z1S4Z',
  '1SpZ2S5Z1N3SaN6S1kN8S1wZ2N8ScN6ZiSdZ1S12Z8SpZbS2NbS1WtN3Z3S1cZ1S2Z4S2Z2SgN1SbN4S7Z1SpN1S15Z6S2Z2',
  'S2Z2N9S3Z1S8Z1S1N2SaN2SwZ1S1fZ1S1Z3S2Z2S5Z2S1Z1S1NoShZ2S8Z1NaS6N2S6N2S6N9S7N1S7N1S1oN4S39Z1S2Z1S',
  '4Z1N2SaN6W8mcNcZnN4Z1dN1l0S4xsWa6N2W2yN12S7NcS5N5S1Z1SoN1S5N1S1N1S2N1S2N1S3hNgScdN2S1iN7S1NwSgZg',
  'WaN6ZgWzN1WjN1W4N4S5N1S3rN2Z1N1W2oS2mN3S6N2S6N2S6N2S3N3W7N1S7NaZ3S2N2ScN1SqN1SjN1S2N1SfN2SeNyS3f',
  'N5S3N4S19N3S2gN1SdN3S1N1bS19Z1N3mStN3S1dNfZ1SrN4S10N9SuN5S12Z5N5SuN1S11N4SeN16S4eN2SaN6S10N4S10N',
  '4S14N8S1gNbScN1SfN1S7N1S2N1SbN1SfN1S7N1S2N1vS8nN9SmNaS8NoS6N1S16N1S9N1xS6N2S1N1S18N1S2N3S1N2SnN1',
  'S20N8S9N1cSjN1S2N5SxN3SrN5S1N1sS1kN4SkN2S1bZ3N1Z2N5Z4S4N1S3N1StN2Z3N4Z1S9N7S9N7S1sNwS11Z2N4ScN9S',
  '1iN3StN2SrN5SqN7S4NcS7N28S21N1jS1fNdS1fN7S16Z4N8SaN86SvN1S16N1Z2S1N2S2N26S14N8SmZbS9NmSiZ4S4N12S',
  'sNkSnN9S1Z1S1iZfS7N4SuZ1S2Z2S1N9Z3S1dZ4S2Z2S7Z1NaS1N2SpN7SaN6Z3S10Z5S1Z8N1SiN8SzZ1S3N9Z2S1gZ9SaZ',
  '4S2Z1SgN1SkNbSiN1SsZ3S2Z1S1Z2S6Z1N1tS7N1S1N1S4N1SfN1SbN6S1bZ1S3Z8N5SaN6Z2S2N1S8N2S2N2SmN1S7N1S2N',
  '1S5N1Z2S3Z1S4N2S2N2S3N2S1N6S1N5S7N2Z7N3Z5N3vS1kZ8S2Z3S1Z1SlN1S1Z1S3NuS1fZ6S1Z1S4Z2S1Z2S4N8SaN4mS',
  '1eZ4N2S4Z2S1Z2SrZ2NyS1fZ8S2Z1S1Z2S4NbSaN6SdNjS17Z1S1Z1S2Z6S1Z1S2N6SaN1iSrN2Z3S2Z4S1Z5N4SnN55S1bZ',
  '9S1Z2S1N2sS2bNcS8N2S1N2S8N1S2N1SuN1S2N2Z2S1Z1S4Z1S3N9SaN1yS8N2S16Z4N2Z2S4Z1S4NrS1ZaS14Z6S2Z4S8Z1',
  'N8S1Z6S2Z3S1aZdS1Z2S9NdS21N7bS9N1S12Z7N1Z6S1Z1S6NaStN3SwN2ZmN1S1Z7S1Z2S1Z2N21S7N1S2N1S12Z6N3Z1N1',
  'Z2N1Z7S1Z1N8SaN6S6N1S2N1S11N1Z2N1S2Z1S1Z1S1N7SaN8mSjZ2S4N53S1NfS1eNdSpnN2uS33N1S5NbS5gN218S2rNdS',
  'trN1Z9N347Sg7N6ntSftN7SvN1SaN4S29N1SaN6SuN2Z5S1NaS1cZ7SfNaSaN1S7N1SlN5SjNj4S2jN2tS23N4Z1S1kN7Z4S',
  'dN1sW4Z1NbW2NeW4qgN8WyeN16W9N6w7W4N1W7N1W2N1W83N19W3NhW4N8Wb0N1s4S2zN5SdN3S9N7SaN2S1Z2S1Z4N3mkZ1',
  'aN2ZnN9S38N1oS6uNaS13N2S1qZ3S9ZgS2Z7SuZ4S1pNlS1uZ3S1N4aSkNcS2fN9SpN3rS2dN1S1zN1S2N2S1N2S2N2S4N1S',
  'cN1S1N1S7N1S1tN1S4N2S8N1S7N1SsN1S4N1S5N1S1N3S7N1S9gN2S84N2SfmZ1jS4Z1eS8Z1SeZ1S7NfZ5N1ZfNuoSvN69Z',
  '7N1ZhN2Z7N1Z2N1Z5N5xS19N3Z7S7N2SaN4S2N8wSuZ1NhS18Z4SaN5S1NyoS7N1S4N1S2N1SfN1S5hN2S9Z7N15S1wZ7S1N',
  '4SaN4S2NltS1wN24S1pN5eS4N1SrN1S2N1S1N2S1N1SaN1S4N1S1N1S1N6S1N4S1N1S1N1S1N1S3N1S2N1S1N2S1N1S1N1S1',
  'N1S1N1S1N1S2N1S1N2S4N1S7N1S4N1S4N1S1N1SaN1ShN5S3N1S5N1ShN1gS2N7iS4W1S13N4S2sNcSfN2SfN1SeW1N1S11N',
  'aS3yW1S2WaSjN1kSqW3NdW18N4W9N7W2NeW6N4aWxScW9S1W1yS1WmScW17S4W5ScWhS3W1S3W1zS1W1S1W57S2W1rSdW4S1',
  'WoSiW1SqW2SdW1S2eW2dS1cW1yS6W1S3W3S2W3N5W3SbW2N3S4W9N3S38NcS2hN7WcN4W1NfScN4S1kN8SaN6S14N8SuN2S2',
  'N26ScW1bS1WaS1W55S2cNcSeN2W5N3W5N3W7N9WtN3WbN5W6NaWaN6W8N8W7N9S43N1S1jN11SaNsmWwyoNwW37dN7W66N2W',
  '4g2NeW5rlN2e7Wf2N15uW3t7NfcfqZ1NuZ2oN3kZ6oN1e6oS1ekeN2S1ekeN2',
].join('');

let runStarts: Uint32Array | undefined;
let runClasses: Int8Array | undefined;

function loadRuns(): void {
  const starts: number[] = [];
  const classes: number[] = [];
  let cp = 0;
  for (const m of CLASS_RUNS.matchAll(/([NZSW])([0-9a-z]+)/g)) {
    starts.push(cp);
    classes.push(m[1] === 'N' ? -1 : m[1] === 'Z' ? 0 : m[1] === 'S' ? 1 : 2);
    cp += parseInt(m[2], 36);
  }
  runStarts = Uint32Array.from(starts);
  runClasses = Int8Array.from(classes);
}

/** -1 when !iswprint(cp), else wcwidth(cp). */
function charClass(cp: number): number {
  if (!runStarts || !runClasses) loadRuns();
  const starts = runStarts as Uint32Array;
  if (cp < 0 || cp > 0x10ffff) return -1;
  let lo = 0;
  let hi = starts.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (starts[mid] <= cp) lo = mid;
    else hi = mid - 1;
  }
  return (runClasses as Int8Array)[lo];
}
