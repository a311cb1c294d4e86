//! The README's command list says what the CLI really takes: every command it
//! shows exists, every flag it gives that command is in the command's `--help`,
//! and every command of `continuum --help` is shown.

use std::collections::BTreeSet;
use std::process::Command;

fn help(path: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_continuum"))
        .args(path)
        .arg("--help")
        .output()
        .expect("runs continuum");
    assert!(
        o.status.success(),
        "`continuum {} --help` failed: {}",
        path.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The `continuum ...` lines of the README's CLI section, continuation lines
/// joined, comments cut.
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("\n## The CLI")
        .nth(1)
        .expect("a `## The CLI` section")
        .split("\n## ")
        .next()
        .unwrap();
    let mut commands: Vec<String> = Vec::new();
    let mut in_sh = false;
    for line in section.lines() {
        if line.starts_with("```") {
            in_sh = line.trim() == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let code = line.split(" #").next().unwrap_or("").trim_end();
        if let Some(rest) = code.strip_prefix("continuum ") {
            commands.push(rest.to_owned());
        } else if code.starts_with(char::is_whitespace) && !code.trim().is_empty() {
            commands
                .last_mut()
                .expect("a continuation follows a command")
                .push_str(code);
        }
    }
    commands
}

/// The subcommand words of a README line: `import genesis FILE` → [import, genesis].
fn path_of(line: &str) -> Vec<&str> {
    line.split_whitespace()
        .take_while(|w| {
            !w.starts_with('-') && w.chars().all(|c| c.is_ascii_lowercase() || c == '-')
        })
        .collect()
}

fn flags_of(line: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    for word in line.split(|c: char| c.is_whitespace() || "[]|=".contains(c)) {
        let word = word.trim_end_matches(['.', ',']);
        let long = word.starts_with("--") && word.len() > 2;
        let short =
            word.len() == 2 && word.starts_with('-') && word.as_bytes()[1].is_ascii_alphabetic();
        if long || short {
            flags.insert(word.to_owned());
        }
    }
    flags
}

#[test]
fn the_readme_command_list_matches_the_cli() {
    let commands = readme_commands();
    assert!(commands.len() > 10, "{commands:#?}");
    let mut shown = BTreeSet::new();
    for line in &commands {
        let path = path_of(line);
        assert!(!path.is_empty(), "no command in `continuum {line}`");
        shown.insert(path[0].to_owned());
        let text = help(&path);
        for flag in flags_of(line) {
            let listed = text.split_whitespace().any(|w| {
                w.trim_end_matches([',', '.']) == flag
                    || w.starts_with(&format!("{flag}="))
                    || w.starts_with(&format!("{flag}["))
            });
            assert!(
                listed,
                "README shows `continuum {}` with {flag}, which its --help does not list:\n{text}",
                path.join(" ")
            );
        }
    }
    let top = help(&[]);
    let listed: Vec<&str> = top
        .split("Commands:")
        .nth(1)
        .expect("a command list")
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| *w != "help")
        .collect();
    for command in listed {
        assert!(
            shown.contains(command),
            "`continuum {command}` is missing from the README's command list"
        );
    }
}
