//! `docs/protocol.md` is normative: every requirement (MUST / MUST NOT)
//! carries an identifier, and §11 maps each identifier to the tests that
//! check it. This test keeps the document and the test suite in step.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Every `[W-…]` identifier in `text`.
fn identifiers(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("[W-") {
        let after = &rest[at + 1..];
        let end = after.find(']').expect("an identifier ends with ]");
        out.push(after[..end].to_string());
        rest = &after[end..];
    }
    out
}

/// The source of every Rust file under `dir`, concatenated.
fn sources(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).expect("read source"));
        }
    }
}

#[test]
fn protocol_md_requirements_are_all_mapped_to_existing_tests() {
    let doc = std::fs::read_to_string(repo().join("docs/protocol.md")).expect("protocol.md");
    let (body, conformance) = doc
        .split_once("\n## 11. Conformance")
        .expect("protocol.md has its conformance section");

    // Every requirement line names its identifier; each is defined once.
    let mut defined = BTreeSet::new();
    for line in body.lines() {
        if line.contains("MUST") {
            let ids = identifiers(line);
            assert!(!ids.is_empty(), "a MUST without an identifier: {line}");
        }
        if let Some(rest) = line.strip_prefix("* [W-") {
            let id = format!("W-{}", &rest[..rest.find(']').expect("]")]);
            assert!(
                line.contains("MUST"),
                "requirement {id} states no MUST: {line}"
            );
            assert!(defined.insert(id.clone()), "{id} is defined twice");
        }
    }
    assert!(
        defined.len() >= 30,
        "only {} requirements found",
        defined.len()
    );

    // The table: one row per requirement, naming tests that exist.
    let mut code = String::new();
    sources(&repo().join("tests/all"), &mut code);
    sources(&repo().join("host/src"), &mut code);
    let mut mapped: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in conformance.lines() {
        let Some(row) = line.strip_prefix("| W-") else {
            continue;
        };
        let (id, tests) = row.split_once('|').expect("two columns");
        let id = format!("W-{}", id.trim());
        let names: Vec<String> = tests
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        if names.is_empty() {
            assert!(
                tests.contains("not covered"),
                "{id}: name its tests or say it is not covered"
            );
        }
        for name in &names {
            assert!(
                code.contains(&format!("fn {name}(")),
                "{id} names the test `{name}`, which does not exist"
            );
        }
        assert!(
            mapped.insert(id.clone(), names).is_none(),
            "{id} is listed twice in §11"
        );
    }
    let listed: BTreeSet<String> = mapped.keys().cloned().collect();
    assert_eq!(
        defined, listed,
        "§11 must list exactly the requirements the document defines"
    );
}
