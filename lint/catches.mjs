// A `catch {` without a binding swallows every error, the expected one and the bug alike. The
// rule: such a block says why in a comment inside it (which error it expects, or why any
// error is acceptable there), or turns the error into one of its own (a `throw` in the block:
// "not JSON"); otherwise bind the error and test its code (hasCode).
const rule = {
  meta: {
    type: 'suggestion',
    docs: { description: 'a catch that swallows every error says why, or names the errno it expects' },
    schema: [],
  },
  create(context) {
    const source = context.sourceCode;
    return {
      CatchClause(node) {
        if (node.param) return;
        if (source.getCommentsInside(node.body).length > 0) return;
        if (node.body.body.some((st) => st.type === 'ThrowStatement')) return;
        context.report({
          node,
          message: 'this catch swallows every error without saying why: name the errno it expects (catch (e) { if (!hasCode(e, …)) throw e; }) or say in a comment why any error is fine here',
        });
      },
    };
  },
};

export default { meta: { name: 'loopfs-catches' }, rules: { 'says-why': rule } };
