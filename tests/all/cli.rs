//! The `agentfed plugin` command line, run as a real process.

use std::path::Path;
use std::process::{Command, Output};

use agentfed_test_artifacts as artifacts;
use serde_json::Value;

/// Runs agentfed. `plugin run` gets a generous deadline unless the test
/// sets one: these tests are about the CLI, not about scheduling on a
/// loaded 2-core machine.
fn agentfed(home: &Path, args: &[&str]) -> Output {
    let mut args: Vec<&str> = args.to_vec();
    if args.starts_with(&["plugin", "run"]) && !args.contains(&"--deadline-ms") {
        args.extend(["--deadline-ms", "10000"]);
    }
    Command::new(env!("CARGO_BIN_EXE_agentfed"))
        .arg("--home")
        .arg(home)
        .args(&args)
        .env_remove("RUST_LOG")
        .output()
        .expect("running agentfed")
}

/// A temp dir to use as the home: private (0700), as every command that
/// opens a home requires (`plugin run` caches compiled code in it).
fn private_home() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .expect("temp dir")
}

fn stdout_json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "agentfed failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stdout is JSON")
}

/// A failure: the exit code, and stderr as exactly one `error:` line.
fn one_line_error(output: &Output) -> (i32, String) {
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected one line, got: {stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    (output.status.code().unwrap_or(-1), stderr)
}

const REFERENCE_TEXT: &str = "contact me at bob@example.com or 555-123-4567, ssn 123-45-6789 ";

#[test]
fn run_default_pii_policy_on_a_payload() {
    let home = private_home();
    let input = serde_json::json!({
        "peer_level": "attested",
        "payload": {"note": "mail bob@example.com today", "n": 3},
    })
    .to_string();
    let out = agentfed(
        home.path(),
        &["plugin", "run", "pii", "default", "--input", &input],
    );
    let json = stdout_json(&out);
    assert_eq!(json["result"]["blocked"], false);
    assert_eq!(json["payload"]["note"], "mail [REDACTED:email] today");
    assert_eq!(json["payload"]["n"], 3);
    assert_eq!(json["result"]["detections"][0]["pii_type"], "email");
}

#[test]
fn reference_text_is_blocked_for_its_ssn() {
    let home = private_home();
    let input = serde_json::json!({
        "peer_level": "ATTESTED",
        "payload": {"text": REFERENCE_TEXT.repeat(20)},
    })
    .to_string();
    let out = agentfed(
        home.path(),
        &["plugin", "run", "pii", "default", "--input", &input],
    );
    let json = stdout_json(&out);
    assert_eq!(json["result"]["blocked"], true);
    assert_eq!(json["payload"], Value::Null);
    let detections = json["result"]["detections"].as_array().unwrap();
    for kind in ["email", "phone", "ssn"] {
        let n = detections.iter().filter(|d| d["pii_type"] == kind).count();
        assert_eq!(n, 20, "{kind} detections");
    }
}

#[test]
fn input_can_come_from_a_file() {
    let home = private_home();
    let file = home.path().join("input.json");
    std::fs::write(&file, r#"{"message_type": "ping", "payload": {}}"#).unwrap();
    let arg = format!("@{}", file.display());
    let out = agentfed(
        home.path(),
        &["plugin", "run", "handler", "default", "--input", &arg],
    );
    let json = stdout_json(&out);
    let reply: Value = serde_json::from_str(json["reply"].as_str().expect("a reply")).unwrap();
    assert_eq!(reply["type"], "pong");
}

#[test]
fn malformed_input_is_one_clear_line_and_exit_2() {
    let home = private_home();
    let out = agentfed(
        home.path(),
        &["plugin", "run", "pii", "default", "--input", "{oops"],
    );
    let (code, line) = one_line_error(&out);
    assert_eq!(code, 2);
    assert!(line.contains("--input is not valid JSON"), "{line}");

    let out = agentfed(
        home.path(),
        &[
            "plugin",
            "run",
            "trust",
            "default",
            "--input",
            r#"{"level":"sideways"}"#,
        ],
    );
    let (code, line) = one_line_error(&out);
    assert_eq!(code, 2);
    assert!(line.contains("does not fit a trust request"), "{line}");

    let out = agentfed(
        home.path(),
        &[
            "plugin",
            "run",
            "trust",
            "default",
            "--input",
            "@/nonexistent.json",
        ],
    );
    assert_eq!(one_line_error(&out).0, 2);
}

#[test]
fn not_a_component_and_wrong_world_exit_2() {
    let home = private_home();
    let junk = home.path().join("junk.wasm");
    std::fs::write(&junk, b"this is not wasm").unwrap();
    let out = agentfed(
        home.path(),
        &[
            "plugin",
            "run",
            "trust",
            junk.to_str().unwrap(),
            "--input",
            "{}",
        ],
    );
    let (code, line) = one_line_error(&out);
    assert_eq!(code, 2);
    assert!(line.contains("not a valid WebAssembly component"), "{line}");

    let out = agentfed(
        home.path(),
        &[
            "plugin",
            "run",
            "pii",
            artifacts::PANICS,
            "--input",
            r#"{"peer_level":"verified","values":[]}"#,
        ],
    );
    let (code, line) = one_line_error(&out);
    assert_eq!(code, 2);
    assert!(line.contains("it is a trust plugin"), "{line}");

    let out = agentfed(home.path(), &["plugin", "inspect", junk.to_str().unwrap()]);
    assert_eq!(one_line_error(&out).0, 2);
}

#[test]
fn a_trapping_plugin_exits_1() {
    let home = private_home();
    let out = agentfed(
        home.path(),
        &[
            "plugin",
            "run",
            "trust",
            artifacts::ENDLESS_LOOP,
            "--input",
            r#"{"node_id":"loop"}"#,
            "--deadline-ms",
            "50",
        ],
    );
    let (code, line) = one_line_error(&out);
    assert_eq!(code, 1);
    assert!(line.contains("timed out after 50 ms"), "{line}");
}

#[test]
fn plugin_config_values_reach_the_plugin() {
    let home = private_home();
    let input =
        r#"{"node_id":"lab-7","level":"verified","metrics":{"interactions":40,"successes":40}}"#;
    let run = |allow: &str| {
        let config = format!("allow={allow}");
        let out = agentfed(
            home.path(),
            &[
                "plugin",
                "run",
                "trust",
                artifacts::ALLOWLIST_TRUST,
                "--config",
                &config,
                "--input",
                input,
            ],
        );
        stdout_json(&out)
    };
    assert_eq!(run("lab-*")["action"]["promote"], "ATTESTED");
    assert_eq!(run("alice")["action"], "keep");
}

#[test]
fn inspect_reports_kind_world_and_imports() {
    let home = private_home();
    let out = agentfed(
        home.path(),
        &["plugin", "inspect", "--json", artifacts::HIPAA_PII],
    );
    let json = stdout_json(&out);
    assert_eq!(json["kind"], "pii");
    assert_eq!(json["world"], "agentfed:plugin/pii@0.1.0");
    assert_eq!(json["metadata"]["name"], "hipaa-pii");
    let imports: Vec<&str> = json["imports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        imports.contains(&"agentfed:plugin/host@0.1.0"),
        "{imports:?}"
    );
    let text = agentfed(home.path(), &["plugin", "inspect", artifacts::HIPAA_PII]);
    assert!(
        String::from_utf8_lossy(&text.stdout)
            .contains("kind:     pii (world agentfed:plugin/pii@0.1.0)")
    );
}

#[test]
fn list_shows_defaults_and_configured_plugins() {
    let home = private_home();
    let out = agentfed(home.path(), &["plugin", "list", "--json"]);
    let rows = stdout_json(&out);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    assert!(
        rows.iter()
            .all(|r| r["embedded"] == true && r["error"].is_null())
    );

    std::fs::write(
        home.path().join("agentfed.toml"),
        format!(
            "[plugins.trust]\npath = {:?}\n[plugins.trust.config]\nallow = \"lab-*\"\n",
            artifacts::ALLOWLIST_TRUST
        ),
    )
    .unwrap();
    let rows = stdout_json(&agentfed(home.path(), &["plugin", "list", "--json"]));
    assert_eq!(rows[0]["kind"], "trust");
    assert_eq!(rows[0]["name"], "allowlist-trust");
    assert_eq!(rows[0]["embedded"], false);

    // A broken configured plugin is reported in its row and exits 1.
    std::fs::write(
        home.path().join("agentfed.toml"),
        "[plugins.pii]\npath = \"missing.wasm\"\nreplace_default = true\n",
    )
    .unwrap();
    let out = agentfed(home.path(), &["plugin", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ERROR: cannot read plugin"));

    // A config with a typo is refused with its location.
    std::fs::write(
        home.path().join("agentfed.toml"),
        "[plugins.pii]\npaht = \"x\"\n",
    )
    .unwrap();
    let (code, line) = one_line_error(&agentfed(home.path(), &["plugin", "list"]));
    assert_eq!(code, 2);
    assert!(line.contains("paht"), "{line}");
}

/// `plugin new` must produce a crate that passes its own tests and builds
/// a component the host runs. Slow (it compiles wit-bindgen), so it uses a
/// target directory shared across runs.
#[test]
fn scaffolded_plugins_build_test_and_run() {
    let work = private_home();
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/scaffold-test");
    let cases = [
        (
            "trust",
            r#"{"node_id":"p","level":"verified","metrics":{"interactions":30,"successes":30}}"#,
            "promote",
        ),
        (
            "pii",
            r#"{"peer_level":"attested","payload":{"t":"see TICKET-9"}}"#,
            "ticket",
        ),
        ("spend", r#"{"last_day":{"usd":3.0}}"#, "suspend"),
        ("handler", r#"{"message_type":"ping"}"#, "pong"),
    ];
    for (kind, input, expect) in cases {
        let name = format!("my-{kind}-policy");
        let out = agentfed(
            work.path(),
            &[
                "plugin",
                "new",
                kind,
                &name,
                "--dir",
                work.path().to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = work.path().join(&name);
        // Output is captured (and shown on failure) so the scaffold's own
        // test summary does not mix with this test binary's.
        let cargo = |args: &[&str]| {
            let out = Command::new(env!("CARGO"))
                .args(args)
                .current_dir(&dir)
                .env("CARGO_TARGET_DIR", &target)
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .output()
                .expect("running cargo");
            assert!(
                out.status.success(),
                "cargo {args:?} failed in the {kind} scaffold:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        cargo(&["test", "--quiet"]);
        cargo(&["build", "--quiet", "--release", "--target", "wasm32-wasip2"]);
        let wasm = target
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        let out = agentfed(
            work.path(),
            &[
                "plugin",
                "run",
                kind,
                wasm.to_str().unwrap(),
                "--input",
                input,
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(expect), "{kind}: {stdout}");
    }
}

#[test]
fn wg_mesh_ip_assigns_in_order_around_collisions_and_names_the_id_that_exhausts() {
    let home = private_home();
    // In a /30, gamma's first address (.1) is alpha's: it probes on to .2.
    let out = agentfed(
        home.path(),
        &[
            "wg",
            "mesh-ip",
            "--subnet",
            "198.18.0.0/30",
            "alpha",
            "beta",
            "gamma",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "alpha\t198.18.0.1\nbeta\t198.18.0.3\ngamma\t198.18.0.2\n"
    );
    let alone = agentfed(
        home.path(),
        &["wg", "mesh-ip", "--subnet", "198.18.0.0/30", "gamma"],
    );
    assert_eq!(
        String::from_utf8_lossy(&alone.stdout),
        "gamma\t198.18.0.1\n"
    );
    // A fourth id finds no free address: exit 1, naming it, nothing printed.
    let full = agentfed(
        home.path(),
        &[
            "wg",
            "mesh-ip",
            "--subnet",
            "198.18.0.0/30",
            "alpha",
            "beta",
            "gamma",
            "delta",
        ],
    );
    let (code, line) = one_line_error(&full);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.contains("delta") && line.contains("exhausted"),
        "{line}"
    );
    assert!(full.stdout.is_empty());
    // Bad input: exit 2.
    for args in [
        &["wg", "mesh-ip", "--subnet", "198.18.0.0/31", "a"][..],
        &["wg", "mesh-ip", "alpha", "alpha"][..],
        &["wg", "mesh-ip", "Not-An-Id"][..],
    ] {
        let (code, line) = one_line_error(&agentfed(home.path(), args));
        assert_eq!(code, 2, "{args:?}: {line}");
    }
    // JSON, default subnet 10.50.0.0/16.
    let json = stdout_json(&agentfed(
        home.path(),
        &["wg", "mesh-ip", "--json", "alpha"],
    ));
    let ip = json[0]["mesh_ip"].as_str().expect("mesh_ip");
    assert!(ip.starts_with("10.50."), "{json}");
    assert_eq!(json[0]["node_id"], "alpha");
}
