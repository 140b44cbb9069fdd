// Loads the native addon. lib/native.ts describes its runtime entries; lib/generated/native_ops.ts
// (from the op table) wraps its op entries.
import bindings from 'bindings';

// DUALROUTE_ADDON_DIR points at another build folder (a second build tree, a packed copy).
const loaded: object = process.env.DUALROUTE_ADDON_DIR
  ? require(require('path').resolve(process.env.DUALROUTE_ADDON_DIR, 'dualroute.node'))
  : bindings('dualroute');

// A plain copy of the exports: the addon's own exports object holds its ~80 functions as a
// dictionary, which makes every `addon.fn(...)` a hash lookup; the copy has fast properties.
export const addon: unknown = { ...loaded };
