//! The docs test: every ```sh block of README.md, docs/PLUGINS.md and
//! docs/DEPLOY.md runs, as written, in an empty folder with this build's
//! `defender-edge` first on PATH, and must succeed; so the documented
//! commands cannot drift from the binary. A block that cannot run on this
//! machine (it needs a Pi, AWS, Greengrass, or builds for minutes) carries
//! the line `<!-- docs-test: not run: WHY -->` right above its fence; the
//! reason is required: a new command block runs, or says why not.

use std::process::Command;

use crate::support;

const DOCUMENTS: [&str; 3] = ["README.md", "docs/PLUGINS.md", "docs/DEPLOY.md"];
const NOT_RUN: &str = "<!-- docs-test: not run:";

/// A shell block: where it starts, its text, and why it is not run (if so).
struct Block {
    line: usize,
    text: String,
    not_run: Option<String>,
}

fn blocks(markdown: &str) -> Vec<Block> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let fence = lines[i].trim_end();
        if matches!(fence, "```sh" | "```bash" | "```shell" | "```console") {
            let not_run = i
                .checked_sub(1)
                .map(|j| lines[j].trim())
                .and_then(|l| l.strip_prefix(NOT_RUN))
                .map(|r| r.trim_end_matches("-->").trim().to_owned());
            let start = i + 1;
            let mut end = start;
            while end < lines.len() && !lines[end].starts_with("```") {
                end += 1;
            }
            found.push(Block {
                line: i + 1,
                text: lines[start..end].join("\n"),
                not_run,
            });
            i = end;
        }
        i += 1;
    }
    found
}

#[test]
fn documented_commands_run_as_written() {
    let bin_dir = tempfile::tempdir().expect("temp dir");
    std::os::unix::fs::symlink(support::bin(), bin_dir.path().join("defender-edge"))
        .expect("link the binary");
    let path = format!(
        "{}:{}",
        bin_dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut ran = 0;
    let mut failures = Vec::new();
    for document in DOCUMENTS {
        let markdown =
            std::fs::read_to_string(support::repo().join(document)).expect("read the document");
        for block in blocks(&markdown) {
            let at = format!("{document}:{}", block.line);
            match &block.not_run {
                Some(reason) => assert!(
                    reason.len() > 10,
                    "{at}: a block that is not run says why: {reason:?}"
                ),
                None => {
                    ran += 1;
                    if let Some(failure) = run_block(&block.text, &path) {
                        failures.push(format!("{at}:\n{}\n{failure}", block.text));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "documented commands that fail:\n\n{}",
        failures.join("\n\n")
    );
    assert!(ran >= 1, "no documented block was run");
}

/// Runs one block in a fresh folder; the failure, if any.
fn run_block(text: &str, path: &str) -> Option<String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new("bash")
        .args(["-e", "-o", "pipefail", "-c", text])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("AWS_IOT_THING_NAME", "docs-thing")
        .env_remove("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT")
        .env_remove("SVCUID")
        .env_remove("DEFENDER_EDGE_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .expect("run bash");
    (!out.status.success()).then(|| {
        format!(
            "exit {:?}; stderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn blocks_are_found_with_their_reasons() {
    let found = blocks(
        "text\n```sh\necho a\n```\n<!-- docs-test: not run: needs a Pi with Greengrass -->\n```sh\necho b\necho c\n```\n```json\n{}\n```\n",
    );
    assert_eq!(found.len(), 2);
    assert_eq!((found[0].line, found[0].text.as_str()), (2, "echo a"));
    assert!(found[0].not_run.is_none());
    assert_eq!(found[1].text, "echo b\necho c");
    assert_eq!(
        found[1].not_run.as_deref(),
        Some("needs a Pi with Greengrass")
    );
}
