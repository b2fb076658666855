//! The canonical text form of a stack: what `berth config` prints.
//!
//! It is Compose's long form, and it loads back to the same [`Stack`] (the round-trip
//! property tested in `tests/data_files.rs`): values are printed interpolated, so a
//! literal `$` is written `$$` lest it be interpolated a second time.

use serde_norway::Value;

use crate::model::Stack;

/// The stack as YAML.
pub fn to_yaml(stack: &Stack) -> Result<String, serde_norway::Error> {
    serde_norway::to_string(&escaped_tree(stack)?)
}

/// The stack as pretty-printed JSON (which is also valid YAML, so it loads back too).
pub fn to_json(stack: &Stack) -> Result<String, serde_norway::Error> {
    let tree = escaped_tree(stack)?;
    serde_json::to_string_pretty(&tree)
        .map(|s| s + "\n")
        .map_err(|e| serde::ser::Error::custom(e.to_string()))
}

fn escaped_tree(stack: &Stack) -> Result<Value, serde_norway::Error> {
    let mut tree = serde_norway::to_value(stack)?;
    escape_dollars(&mut tree);
    Ok(tree)
}

fn escape_dollars(v: &mut Value) {
    match v {
        Value::String(s) if s.contains('$') => *s = s.replace('$', "$$"),
        Value::Sequence(items) => items.iter_mut().for_each(escape_dollars),
        Value::Mapping(m) => m.iter_mut().for_each(|(_, v)| escape_dollars(v)),
        Value::Tagged(t) => escape_dollars(&mut t.value),
        _ => {}
    }
}
