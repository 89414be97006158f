//! The module structure holds: the layers of `src/lib.rs`'s module map are used one way only,
//! and no import cycle exists between modules, nor between the files of one module.
//!
//! It reads the `crate::` and `super::` paths of every file under `src/` as text (comments
//! included, so a doc link counts as a use: a link points the reader the same way an import
//! does).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `src/lib.rs`'s layers, top (foundations) to bottom (edges). A module may use modules of
/// its own layer or of layers above; never one below.
const LAYERS: &[&[&str]] = &[
    &[
        "reason", "refusal", "rpc", "digest", "clock", "fold", "report", "shutdown",
    ],
    &["signature"],
    &["keys", "auth", "quota"],
    &["redis"],
    &["store", "audit", "notify"],
    &["service"],
    &["metrics"],
    &["proto", "api"],
    &["tls", "server", "reload"],
    &["config", "telemetry", "runner", "cli", "client"],
];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| panic!("module `{module}` is in no layer: add it to LAYERS and lib.rs"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/store/redis.rs` → `["store", "redis"]`; `src/store/mod.rs` → `["store"]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The first path segment after each occurrence of `prefix` (`crate::store::X` → `store`),
/// and each one of a group (`crate::{store::X, audit::{A, B}}` → `store`, `audit`).
fn segments_after<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    let ident_end = |s: &str| {
        s.find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(s.len())
    };
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // The group's items, split at the commas of its own level.
            let mut depth = 0usize;
            let mut item_start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.extend(first_segment(&group[item_start..i], ident_end));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.extend(first_segment(&group[item_start..i], ident_end));
                        item_start = i + 1;
                    }
                    _ => {}
                }
            }
            continue;
        }
        let end = ident_end(rest);
        if end > 0 {
            found.push(&rest[..end]);
        }
    }
    found
}

/// The first segment of a grouped import's item (`store::X` → `store`); none for `self`.
fn first_segment(item: &str, ident_end: impl Fn(&str) -> usize) -> Option<&str> {
    let item = item.trim_start();
    let segment = &item[..ident_end(item)];
    (!segment.is_empty() && segment != "self").then_some(segment)
}

/// A cycle in `graph`, if there is one, as the list of nodes around it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let start = stack.iter().position(|n| n == next).unwrap();
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(cycle) = visit(next, graph, state, stack) {
                        return Some(cycle);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if !state.contains_key(node.as_str()) {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(node, graph, &mut state, &mut stack) {
                return Some(cycle);
            }
        }
    }
    None
}

struct Structure {
    /// Top-level module → the top-level modules it uses.
    modules: BTreeMap<String, BTreeSet<String>>,
    /// Within each top-level module with files of its own: file → sibling files it uses.
    files: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

fn read_structure() -> Structure {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut structure = Structure {
        modules: BTreeMap::new(),
        files: BTreeMap::new(),
    };
    for file in files {
        let path = module_path(&src, &file);
        let Some(top) = path.first().cloned() else {
            continue; // lib.rs
        };
        if top == "main" {
            continue; // the binary uses the library from outside
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let uses = structure.modules.entry(top.clone()).or_default();
        for used in segments_after(&text, "crate::") {
            if used != top {
                uses.insert(used.to_owned());
            }
        }
        // Files of one module: `super::sibling` from a child file, `crate::top::sibling`.
        if path.len() == 2 {
            let siblings = structure.files.entry(top.clone()).or_default();
            let me = siblings.entry(path[1].clone()).or_default();
            let from_super = segments_after(&text, "super::");
            let from_crate = segments_after(&text, &format!("crate::{top}::"));
            for used in from_super.into_iter().chain(from_crate) {
                if used != path[1] {
                    me.insert(used.to_owned());
                }
            }
        }
    }
    // Only sibling files count as nodes; `super::Item` of the parent's own items is the
    // parent, which every child may use.
    for siblings in structure.files.values_mut() {
        let names: BTreeSet<String> = siblings.keys().cloned().collect();
        for uses in siblings.values_mut() {
            uses.retain(|u| names.contains(u));
        }
    }
    structure
}

#[test]
fn no_module_imports_a_lower_layer() {
    let structure = read_structure();
    let mut upward = Vec::new();
    for (module, uses) in &structure.modules {
        for used in uses {
            if layer_of(used) > layer_of(module) {
                upward.push(format!("{module} -> {used}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports against the layers of src/lib.rs: {upward:?}"
    );
}

#[test]
fn no_import_cycles_between_modules_or_files() {
    let structure = read_structure();
    if let Some(cycle) = find_cycle(&structure.modules) {
        panic!("import cycle between modules: {}", cycle.join(" -> "));
    }
    for (module, siblings) in &structure.files {
        if let Some(cycle) = find_cycle(siblings) {
            panic!(
                "import cycle between the files of {module}: {}",
                cycle.join(" -> ")
            );
        }
    }
}

#[test]
fn the_checker_finds_cycles_and_paths() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph).unwrap(),
        vec!["a".to_owned(), "b".into(), "c".into(), "a".into()]
    );
    let acyclic: BTreeMap<String, BTreeSet<String>> =
        [("a".to_owned(), BTreeSet::from(["b".to_owned()]))].into();
    assert!(find_cycle(&acyclic).is_none());
    assert_eq!(
        segments_after(
            "use crate::store::{A}; x_crate::no; crate::redis::Conn",
            "crate::"
        ),
        vec!["store", "redis"]
    );
}

#[test]
fn grouped_imports_count_as_uses() {
    assert_eq!(
        segments_after(
            "use crate::{\n    store::{Store, outbox::{A, B}},\n    audit::Event, self,\n};",
            "crate::"
        ),
        vec!["store", "audit"]
    );
    assert_eq!(
        segments_after("use super::{record::Record, Store};", "super::"),
        vec!["record", "Store"]
    );
    // And the layer check sees them: a lower module importing an upper one in a group.
    fn upward(text: &str) -> Vec<&str> {
        segments_after(text, "crate::")
            .into_iter()
            .filter(|used| layer_of(used) > layer_of("store"))
            .collect()
    }
    assert_eq!(
        upward("use crate::{clock::Clock, api::SignatureApi};"),
        vec!["api"]
    );
}
