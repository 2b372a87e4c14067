// parseExact (src/oci/exact-json.ts): seccomp argument values are 64-bit, and the
// wrapper's edit must write back every number exactly as the engine wrote it.
import { describe, expect, it } from 'vitest';
import { parseExact } from '../../src/oci/exact-json.js';

describe('parseExact', () => {
  it('keeps integers beyond 2^53 verbatim, and everything else as JSON.parse/stringify do', () => {
    const text =
      '{"args":[{"value":18446744073709551615,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"},{"value":-9223372036854775808}],' +
      '"s":"18446744073709551615 \\" 99999999999999999999","n":[9007199254740991,9007199254740993,1.5,2e3,-0,true,null]}';
    const j = parseExact(text);
    expect(JSON.stringify(JSON.parse(text))).not.toBe(text); // what plain JSON does to it
    expect(j.stringify(j.doc)).toBe(text.replace('2e3', '2000').replace('-0,', '0,'));
    const d = j.doc as any;
    expect([d.s, d.n[0], d.n[2]]).toEqual(['18446744073709551615 " 99999999999999999999', 9007199254740991, 1.5]);
    // an edit moves things around: the literals follow their values
    d.args.reverse();
    expect(j.stringify({ first: d.args }, 1)).toBe('{\n "first": [\n  {\n   "value": -9223372036854775808\n  },\n  {\n   "value": 18446744073709551615,\n   "valueTwo": 0,\n   "op": "SCMP_CMP_MASKED_EQ"\n  }\n ]\n}');
  });

  it('throws on malformed JSON as JSON.parse does', () => {
    for (const t of ['{"a": ', '[1,]', '{"a": 18446744073709551615', '']) expect(() => parseExact(t)).toThrow(SyntaxError);
  });
});
