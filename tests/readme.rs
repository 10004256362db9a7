//! The README is the front door: every command and flag it names must exist in that command's
//! `--help`, and it stays a page a user reads (at most 300 lines) that points to docs that exist.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README.md")
}

/// The pieces of the README that name one command each: table rows, and code lines with their
/// indented continuation lines.
fn segments(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        let rest = line.trim_start();
        let continuation = in_code && line.starts_with(' ') && (rest.starts_with("--") || rest.starts_with("[--"));
        match out.last_mut() {
            Some(last) if continuation => last.push_str(line),
            _ => out.push(line.to_string()),
        }
    }
    out
}

/// A binary and its subcommand, if any: `("autopath", Some("train"))`, `("autopath-run", None)`.
type Named = (String, Option<String>);

/// The command named at the start of a command in `segment`, and the flags after it.
fn command_and_flags(segment: &str) -> Option<(Named, Vec<String>)> {
    if segment.contains("cargo ") {
        return None; // build lines name the binary as a Cargo target, not as a command
    }
    let words: Vec<&str> = segment.split(|c: char| c.is_whitespace() || c == '`' || c == '|').collect();
    let at = words.iter().position(|w| *w == "autopath" || *w == "autopath-run")?;
    let binary = words[at].to_string();
    let next = words.get(at + 1).copied().unwrap_or("");
    let sub = match binary.as_str() {
        "autopath" => Some(next.to_string()).filter(|s| !s.is_empty() && !s.starts_with('-')),
        _ => Some(next.to_string()).filter(|s| s == "serve"),
    };
    let flags = words[at + 1..]
        .iter()
        .flat_map(|w| w.split(['[', ']', '(', ')', ',']))
        .filter_map(|w| w.strip_prefix("--"))
        .map(|f| f.split(['=', '\u{2026}']).next().unwrap_or(f).trim_end_matches('.'))
        .filter(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .map(|f| format!("--{f}"))
        .collect();
    Some(((binary, sub), flags))
}

fn help(binary: &str, sub: Option<&str>) -> String {
    let exe = match binary {
        "autopath" => env!("CARGO_BIN_EXE_autopath"),
        _ => env!("CARGO_BIN_EXE_autopath-run"),
    };
    let out = Command::new(exe).args(sub).arg("--help").output().expect("the binary runs");
    assert!(
        out.status.success(),
        "`{binary} {} --help` failed: the README names a command that does not exist",
        sub.unwrap_or("")
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_command_and_flag_the_readme_names_exists() {
    let mut named: BTreeMap<Named, Vec<String>> = BTreeMap::new();
    for segment in segments(&readme()) {
        if let Some((command, flags)) = command_and_flags(&segment) {
            named.entry(command).or_default().extend(flags);
        }
    }
    for required in ["train", "train-policy", "eval", "compile", "bench", "demo"] {
        assert!(
            named.contains_key(&("autopath".into(), Some(required.into()))),
            "the README does not show `autopath {required}`"
        );
    }
    assert!(named.contains_key(&("autopath-run".into(), Some("serve".into()))), "the README does not show serve");
    let mut checked = 0;
    for ((binary, sub), flags) in &named {
        let text = help(binary, sub.as_deref());
        for flag in flags {
            let found = text.split(|c: char| c.is_whitespace() || c == ',').any(|w| w == flag);
            assert!(
                found,
                "the README names `{binary} {} {flag}`, which its --help does not list",
                sub.as_deref().unwrap_or("")
            );
            checked += 1;
        }
    }
    assert!(checked > 60, "only {checked} flags found in the README: the parser lost them");
}

#[test]
fn the_readme_is_a_front_door() {
    let text = readme();
    let lines = text.lines().count();
    assert!(lines <= 300, "README.md has {lines} lines; details belong in docs/");
    for link in text.split("](").skip(1).filter_map(|s| s.split(')').next()) {
        if link.starts_with("http") {
            continue;
        }
        let file = link.split('#').next().unwrap_or(link);
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(file).exists(),
            "README links to {link}, which does not exist"
        );
    }
    assert!(!text.contains("../shared"), "the README points outside the repository");
}
