//! Tests over Baton's own source: the architecture invariants ARCHITECTURE.md states that the
//! compiler cannot check (rust-analyzer keeps its own in a `tidy` test the same way).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/` but `bin/` (other programs, such as the demo backend), by
/// its path from `src/`, without its tests.
fn sources() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut pending: Vec<PathBuf> = vec![src.clone()];
    let mut files = Vec::new();
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                if name != "bin" {
                    pending.push(path);
                }
            } else if name.ends_with(".rs") && name != "tidy.rs" {
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap_or("").to_owned();
                files.push((name, code));
            }
        }
    }
    files.sort();
    files
}

/// The code of a file without its comments (they may name any module).
fn without_comments(code: &str) -> String {
    code.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module a file belongs to (`auth/middleware.rs` is in `auth`).
fn module_of(file: &str) -> &str {
    file.split('/').next().unwrap().trim_end_matches(".rs")
}

/// Outside `http_error.rs` and the webhook protocol's table, handlers name only the success
/// statuses they answer with: every error's status is picked in one place.
#[test]
fn no_other_module_picks_an_error_status() {
    const SUCCESS: &[&str] = &["OK", "CREATED", "ACCEPTED", "NO_CONTENT"];
    const OWNERS: &[&str] = &["http_error.rs", "webhooks/answer.rs"];
    let mut offenders = Vec::new();
    for (file, code) in sources() {
        if OWNERS.contains(&file.as_str()) {
            continue;
        }
        let code = without_comments(&code);
        for (at, _) in code.match_indices("StatusCode::") {
            let status: String = code[at + "StatusCode::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !SUCCESS.contains(&status.as_str()) {
                offenders.push(format!("{file}: StatusCode::{status}"));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "error statuses are picked outside http_error.rs: {offenders:#?}"
    );
}

/// Top-level modules use each other in one direction only: no module reaches, through the
/// modules it uses, back to itself (the configuration does not import what it configures,
/// handlers do not import the module that builds the router out of them, error types do not
/// import the module that maps them to statuses).
#[test]
fn top_level_modules_import_each_other_in_one_direction() {
    let files = sources();
    let modules: BTreeSet<&str> = files
        .iter()
        .map(|(file, _)| module_of(file))
        .filter(|module| !matches!(*module, "lib" | "main" | "tidy"))
        .collect();
    let mut uses: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (file, code) in &files {
        let from = module_of(file);
        if !modules.contains(from) {
            continue;
        }
        let code = without_comments(code);
        let mut named = BTreeSet::new();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a, b::c};`
                let group = &group[..group.find('}').unwrap_or(group.len())];
                named.extend(
                    group
                        .split(',')
                        .map(|part| part.trim().split("::").next().unwrap().to_owned()),
                );
            } else {
                named.insert(
                    rest.chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect(),
                );
            }
        }
        let entry = uses.entry(from).or_default();
        for module in named {
            if let Some(&module) = modules.get(module.as_str())
                && module != from
            {
                entry.insert(module);
            }
        }
    }
    // A path back to `start` through what it uses.
    fn path_back<'a>(
        uses: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        start: &'a str,
        at: &'a str,
        seen: &mut BTreeSet<&'a str>,
        path: &mut Vec<&'a str>,
    ) -> bool {
        for &next in uses.get(at).into_iter().flatten() {
            if next == start {
                path.push(next);
                return true;
            }
            if seen.insert(next) {
                path.push(next);
                if path_back(uses, start, next, seen, path) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut cycles = Vec::new();
    for &module in &modules {
        let mut path = vec![module];
        if path_back(&uses, module, module, &mut BTreeSet::new(), &mut path) {
            cycles.push(path.join(" -> "));
        }
    }
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}
