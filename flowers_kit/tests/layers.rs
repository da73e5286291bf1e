//! The crate's layers point one way (README, "Design"): data → models → weights → backend →
//! features → train → plot → display, with the utilities (error, files, digest, progress)
//! below them all. A module may name (`crate::…` in code, not in comments) only modules at
//! its own level or below. Inside the native backend, no two files import each other
//! through a cycle, so a reader finds a kernel by its file and each file by what it needs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module's level; a module may use those at its level or below.
fn level(module: &str) -> Option<usize> {
    Some(match module {
        "error" | "files" | "digest" | "progress" => 0,
        "data" => 1,
        "models" => 2,
        "weights" => 3,
        "backend" | "device" => 4,
        "features" => 5,
        "train" => 6,
        "plot" => 7,
        "display" => 8,
        _ => return None,
    })
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comments (line comments and doc comments).
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let code = line.split("//").next().unwrap_or("");
        (!code.trim().is_empty()).then_some((i + 1, code))
    })
}

/// Every `crate::<name>` the code names, with the line it is on, `use crate::{a, b}` groups
/// spanning several lines included.
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(offset) = code[at..].find("crate::") {
        let start = at + offset;
        let line = code[..start].matches('\n').count() + 1;
        let after = &code[start + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for part in group.split(',') {
                let module: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !module.is_empty() {
                    found.push((line, module));
                }
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push((line, name));
            }
        }
        at = start + "crate::".len();
    }
    found
}

/// The file's code with comments blanked out, lines kept, up to its unit tests (a
/// `#[cfg(test)]` module, whose `super::` is the file itself).
fn code_of(text: &str) -> String {
    text.lines()
        .take_while(|line| line.trim() != "#[cfg(test)]")
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// How deep a file's module sits below the crate root (`files.rs` 1, `data/fetch.rs` 2,
/// `backend/native/mod.rs` 2).
fn depth(relative: &Path) -> usize {
    let parts = relative.components().count();
    if relative.ends_with("mod.rs") {
        parts - 1
    } else {
        parts
    }
}

#[test]
fn modules_only_use_the_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut broken = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        // The crate root (re-exports, the prelude) and the command line sit above everything.
        let Some(own) = level(&top) else {
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        let code = code_of(&text);
        // `super::super::…` climbing to the crate root escapes this check: refuse it.
        let chain = "super::".repeat(depth(relative));
        if code.contains(&chain) {
            broken.push(format!(
                "{}: reaches the crate root through `{chain}`; write crate:: instead",
                relative.display()
            ));
        }
        // Training uses the backend's public network API, not one implementation's module.
        if top == "train" {
            for inner in ["crate::backend::dfdx", "crate::backend::native"] {
                if code.contains(inner) {
                    broken.push(format!(
                        "{}: train reaches into {inner}; use crate::backend's API",
                        relative.display()
                    ));
                }
            }
        }
        for (number, used) in crate_paths(&code) {
            // Error, Result and the like re-exported at the root are the error module's.
            let Some(theirs) = level(&used).or(match used.as_str() {
                "Error" | "Result" => Some(0),
                _ => None,
            }) else {
                broken.push(format!(
                    "{}:{number}: crate::{used} is not a known module",
                    relative.display()
                ));
                continue;
            };
            if theirs > own {
                broken.push(format!(
                    "{}:{number}: {top} uses crate::{used}, a layer above it",
                    relative.display()
                ));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn the_native_backend_has_no_import_cycle() {
    let native = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/backend/native");
    let mut files = Vec::new();
    sources(&native, &mut files);
    // File (as a module name relative to native/) → the sibling modules it imports.
    let name = |path: &Path| {
        let relative = path.strip_prefix(&native).unwrap().with_extension("");
        let name = relative.to_string_lossy().replace('/', "::");
        name.trim_end_matches("::mod").to_string()
    };
    let modules: BTreeSet<String> = files.iter().map(|f| name(f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let me = name(file);
        let text = std::fs::read_to_string(file).unwrap();
        // What `super` is for this file: its folder's module (`mod` for native/ itself).
        let own = if file.ends_with("mod.rs") {
            me.as_str()
        } else {
            me.rsplit_once("::").map_or("mod", |(p, _)| p)
        };
        let parent = if own == "mod" {
            None // `super` of native/mod.rs is the backend, outside this graph.
        } else {
            Some(own.rsplit_once("::").map_or("mod", |(p, _)| p).to_string())
        };
        let Some(parent) = (if file.ends_with("mod.rs") {
            parent
        } else {
            Some(own.to_string())
        }) else {
            continue;
        };
        let edges = graph.entry(me.clone()).or_default();
        for (_, line) in code_lines(&text) {
            let Some(path) = line.trim().strip_prefix("use super::") else {
                continue;
            };
            let first: String = path
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `use super::packed::…` names a sibling module; `use super::Depthwise` an item
            // of the parent module.
            let sibling = if parent == "mod" {
                first.clone()
            } else {
                format!("{parent}::{first}")
            };
            let target = if modules.contains(&sibling) {
                sibling
            } else {
                parent.clone()
            };
            if target != me {
                edges.insert(target);
            }
        }
    }
    // Depth-first search for a cycle.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            return Some(stack[at..].to_vec());
        }
        if !done.insert(node.to_string()) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        let cycle = visit(node, &graph, &mut Vec::new(), &mut done);
        assert!(cycle.is_none(), "import cycle: {cycle:?} in {graph:?}");
    }
    assert!(graph.contains_key("packed") && graph.contains_key("depthwise::avx2"));
}
