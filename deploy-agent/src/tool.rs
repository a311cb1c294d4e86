//! Tool templates: boards the agent does not speak to natively are flashed
//! by a command line (avrdude, esptool, arduino-cli) with placeholders for
//! the port, the board, the speed and the artefact; its output is captured
//! and its exit status decides.

use std::path::Path;
use std::process::Command;

/// The placeholders a template may use.
pub const PLACEHOLDERS: &[&str] = &["{port}", "{board}", "{mcu}", "{baud}", "{artefact}"];

/// A ready-made template for a known tool.
pub fn builtin(tool: &str) -> Option<&'static str> {
    match tool {
        "avrdude" => {
            Some("avrdude -c arduino -p {mcu} -P {port} -b {baud} -D -U flash:w:{artefact}:i")
        }
        "esptool" => Some("esptool.py --port {port} --baud {baud} write_flash 0x0 {artefact}"),
        "arduino-cli" => Some("arduino-cli upload -p {port} -b {board} -i {artefact}"),
        _ => None,
    }
}

/// Why a tool run failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// An empty template, or an unknown placeholder.
    #[error("tool template `{0}`: {1}")]
    Template(String, String),
    /// The program could not be started.
    #[error("cannot run `{0}`: {1}")]
    Start(String, String),
    /// It ran and failed.
    #[error("`{program}` failed ({status}): {output}")]
    Failed {
        program: String,
        status: String,
        output: String,
    },
}

/// The command line of `template` with its placeholders filled in.
pub fn render(
    template: &str,
    port: &Path,
    board: &crate::board::Board,
    baud: u32,
    artefact: &Path,
) -> Result<Vec<String>, ToolError> {
    let words: Vec<String> = template
        .split_whitespace()
        .map(|w| {
            w.replace("{port}", &port.display().to_string())
                .replace("{board}", board.name)
                .replace("{mcu}", board.mcu)
                .replace("{baud}", &baud.to_string())
                .replace("{artefact}", &artefact.display().to_string())
        })
        .collect();
    if words.is_empty() {
        return Err(ToolError::Template(template.into(), "it is empty".into()));
    }
    if let Some(w) = words.iter().find(|w| w.contains('{') && w.contains('}')) {
        return Err(ToolError::Template(
            template.into(),
            format!(
                "`{w}` holds an unknown placeholder; the known ones are {}",
                PLACEHOLDERS.join(", ")
            ),
        ));
    }
    Ok(words)
}

/// Runs a rendered command; its output (the last lines) on failure.
pub fn run(words: &[String]) -> Result<String, ToolError> {
    let out = Command::new(&words[0])
        .args(&words[1..])
        .output()
        .map_err(|e| ToolError::Start(words[0].clone(), e.to_string()))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        return Ok(text);
    }
    let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(3)..].join(" | ");
    Err(ToolError::Failed {
        program: words[0].clone(),
        status: out.status.to_string(),
        output: tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_and_unknown_ones_refused() {
        let uno = crate::board::board("uno").unwrap();
        let w = render(
            builtin("avrdude").unwrap(),
            Path::new("/dev/ttyACM0"),
            uno,
            115_200,
            Path::new("/tmp/fw.hex"),
        )
        .unwrap();
        assert!(w.contains(&"m328p".to_owned()));
        assert_eq!(w[0], "avrdude");
        assert!(w.contains(&"/dev/ttyACM0".to_owned()));
        assert!(w.contains(&"flash:w:/tmp/fw.hex:i".to_owned()));
        let e = render("flash {device}", Path::new("p"), uno, 1, Path::new("a")).unwrap_err();
        assert!(e.to_string().contains("unknown placeholder"), "{e}");
        assert!(render("  ", Path::new("p"), uno, 1, Path::new("a")).is_err());
        let e = run(&["sh".into(), "-c".into(), "echo nope >&2; exit 3".into()]).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
