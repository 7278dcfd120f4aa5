// Adapters under their base: the served model cards (GET /v1/models, whose adapters carry "parent") and
// the registry's LoRA models (params.method lora/qlora, params.base the base's ref) are listed with each
// base followed by its adapters.

/** [{item, depth, parent}] with every item once: each root (no parent among `items`) followed by its
 * descendants, depth 1 for an adapter under its base. `parent` is the item's parent id even when that
 * parent is not listed (an adapter of a base that is not served shows at depth 0, still marked). */
export function groupByParent(items, idOf = (c) => c.id, parentOf = (c) => c.parent) {
  const ids = new Set(items.map(idOf));
  const children = new Map();
  const roots = [];
  for (const item of items) {
    const parent = parentOf(item);
    if (parent && parent !== idOf(item) && ids.has(parent)) {
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(item);
    } else {
      roots.push(item);
    }
  }
  const out = [];
  const seen = new Set();
  const visit = (item, depth) => {
    if (seen.has(item)) return;
    seen.add(item);
    out.push({ item, depth, parent: parentOf(item) || null });
    for (const child of children.get(idOf(item)) || []) visit(child, depth + 1);
  };
  roots.forEach((item) => visit(item, 0));
  items.forEach((item) => visit(item, 0)); // a parent cycle has no root: still list each of its items
  return out;
}

/** The base ref of a registry model record that is a LoRA adapter, else null. */
export function adapterBase(record) {
  const params = record.params || {};
  return ["lora", "qlora"].includes(params.method) && params.base ? String(params.base) : null;
}
