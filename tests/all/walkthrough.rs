//! The newcomer walk-through of `docs/operations.md`, run as written
//! (issue 17): every ```` ```sh walkthrough ```` block, in order, in one
//! bash process, with this build's `agentfed` first in `PATH`, temp homes
//! and free ports in `$ALPHA`, `$BETA`, `$ALPHA_PORT`, `$BETA_PORT`, and a
//! temp directory as the working directory. Each command must exit 0 (or
//! the `N` of a `# → exit N` comment) and print the text after `# →`. The
//! daemons the document starts with `&` are stopped with SIGTERM at the
//! end (they must stop cleanly) and killed if the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{bin, free_port, run_with_timeout};
use crate::support::private_tempdir;

const DOC: &str = include_str!("../../docs/operations.md");
/// Longest the whole walk-through may take.
const WALK_TIMEOUT: Duration = Duration::from_secs(300);

/// One command of the walk-through.
#[derive(Debug)]
struct Step {
    /// The command as written (continuation lines joined).
    line: String,
    /// The exit status it must have.
    exit: i32,
    /// Text its output must contain.
    shows: Option<String>,
}

/// The commands of the `sh walkthrough` blocks, in document order.
fn steps(doc: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in doc.lines() {
        let trimmed = line.trim_end();
        if !in_block {
            in_block = trimmed == "```sh walkthrough";
            continue;
        }
        if trimmed == "```" {
            assert!(
                pending.is_empty(),
                "a walkthrough block ends in a continuation"
            );
            in_block = false;
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            continue;
        }
        pending.push_str(trimmed);
        let command = std::mem::take(&mut pending);
        if command.trim().is_empty() || command.trim_start().starts_with('#') {
            continue;
        }
        let (exit, shows) = match command.rfind("# → ") {
            Some(at) => {
                let expect = command[at + "# → ".len()..].trim();
                match expect.strip_prefix("exit ") {
                    Some(rest) => {
                        let (code, text) = rest.split_once(':').unwrap_or((rest, ""));
                        let code = code.trim().parse().expect("`# → exit N` needs a number");
                        let text = text.trim();
                        (code, (!text.is_empty()).then(|| text.to_string()))
                    }
                    None => (0, Some(expect.to_string())),
                }
            }
            None => (0, None),
        };
        steps.push(Step {
            line: command,
            exit,
            shows,
        });
    }
    assert!(!in_block, "an unterminated walkthrough block");
    steps
}

/// The bash script that runs `steps`, recording each command's exit
/// status in `.walk/code.N` and its output in `.walk/out.N`, stopping at
/// the first unexpected status. Background daemons' pids go to
/// `.walk/pids`; their stdout goes to a file, so they do not hold the
/// test's pipe open.
fn script(steps: &[Step]) -> String {
    let mut s = String::from("set -u\nmkdir -p .walk\n");
    for (i, step) in steps.iter().enumerate() {
        let line = &step.line;
        let trimmed = line.trim_end();
        if let Some(background) = trimmed.strip_suffix('&') {
            let home = background
                .split("--home \"$")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .expect("a background line names its home as --home \"$VAR\"");
            s.push_str(&format!(
                "{background} > .walk/bg.{i} < /dev/null &\necho $! >> .walk/pids\necho 0 > .walk/code.{i}\n\
                 for _ in $(seq 1 900); do agentfed --home \"${home}\" status >/dev/null 2>&1 && break; sleep 0.1; done\n\
                 agentfed --home \"${home}\" status > .walk/out.{i} 2>&1 || {{ echo 1 > .walk/code.{i}; exit 1; }}\n"
            ));
        } else if line.split('=').next().is_some_and(|name| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }) {
            // An assignment: run in this shell so later commands see it.
            s.push_str(&format!(
                "{line}\ncode=$?; echo $code > .walk/code.{i}; [ $code -eq {} ] || exit 1\n",
                step.exit
            ));
        } else {
            s.push_str(&format!(
                "{{ {line}\n}} > .walk/out.{i} 2>&1 < /dev/null\ncode=$?; echo $code > .walk/code.{i}; [ $code -eq {} ] || exit 1\n",
                step.exit
            ));
        }
    }
    s
}

/// The daemons the walk-through started: SIGKILLed on drop (a failed
/// test), after checking each pid still is an agentfed daemon of this
/// test's homes.
struct Daemons {
    pids_file: PathBuf,
    work: PathBuf,
}

impl Daemons {
    fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(&self.pids_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Whether `pid` is still one of our daemons.
    fn ours(&self, pid: i32) -> bool {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("daemon") && c.contains(&*self.work.to_string_lossy())
            })
            .unwrap_or(false)
    }

    fn signal_all(&self, signal: rustix::process::Signal) {
        for pid in self.pids() {
            if self.ours(pid)
                && let Some(pid) = rustix::process::Pid::from_raw(pid)
            {
                let _ = rustix::process::kill_process(pid, signal);
            }
        }
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        self.signal_all(rustix::process::Signal::KILL);
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn operations_md_walkthrough_runs_as_written() {
    let steps = steps(DOC);
    assert!(
        steps.len() >= 10,
        "the walk-through lost its commands: {steps:?}"
    );
    let dir = private_tempdir();
    let work = dir.path().to_path_buf();
    let daemons = Daemons {
        pids_file: work.join(".walk/pids"),
        work: work.clone(),
    };
    let bin_dir = Path::new(bin()).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(script(&steps))
        .current_dir(&work)
        .env("PATH", path)
        .env("ALPHA", work.join("alpha"))
        .env("BETA", work.join("beta"))
        .env("ALPHA_PORT", free_port().to_string())
        .env("BETA_PORT", free_port().to_string())
        .env_remove("AGENTFED_HOME");
    let out = run_with_timeout(cmd, "the operations.md walk-through", WALK_TIMEOUT);
    let logs = || {
        format!(
            "alpha.log:\n{}\nbeta.log:\n{}",
            read(&work.join("alpha.log")),
            read(&work.join("beta.log"))
        )
    };
    for (i, step) in steps.iter().enumerate() {
        let code = read(&work.join(format!(".walk/code.{i}")));
        let output = read(&work.join(format!(".walk/out.{i}")));
        let code: i32 = code.trim().parse().unwrap_or_else(|_| {
            panic!(
                "step {i} never ran: {}\nbash: {}{}\n{}",
                step.line,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                logs()
            )
        });
        assert_eq!(
            code,
            step.exit,
            "step {i}: {}\nexited {code}, the document says {}; output:\n{output}\n{}",
            step.line,
            step.exit,
            logs()
        );
        if let Some(text) = &step.shows {
            assert!(
                output.contains(text.as_str()),
                "step {i}: {}\nthe document says it shows {text:?}; output:\n{output}",
                step.line
            );
        }
    }
    assert!(out.status.success(), "bash: {:?}", out.status);

    // `kill %1 %2`, as the document ends: both daemons stop cleanly.
    let pids = daemons.pids();
    assert_eq!(pids.len(), 2, "the walk-through starts two daemons");
    daemons.signal_all(rustix::process::Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(30);
    while pids.iter().any(|&pid| daemons.ours(pid)) {
        assert!(
            Instant::now() < deadline,
            "the daemons did not stop on SIGTERM\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for log in ["alpha.log", "beta.log"] {
        let text = read(&work.join(log));
        assert!(text.contains("daemon stopped cleanly"), "{log}:\n{text}");
    }
}

#[test]
fn walkthrough_annotations_parse() {
    let doc = "```sh walkthrough\nagentfed a \\\n  --x   # → exit 1: CODE\nX=$(y)\nagentfed b   # → shown text\n```\n```sh\nnot run\n```\n";
    let steps = steps(doc);
    assert_eq!(steps.len(), 3, "{steps:?}");
    assert_eq!(steps[0].exit, 1);
    assert_eq!(steps[0].shows.as_deref(), Some("CODE"));
    assert!(
        steps[0].line.starts_with("agentfed a   --x"),
        "{:?}",
        steps[0].line
    );
    assert_eq!(steps[1].shows, None);
    assert_eq!(steps[2].shows.as_deref(), Some("shown text"));
    assert!(script(&steps).contains("X=$(y)\ncode=$?"));
}
