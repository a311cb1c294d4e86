//! Terminal colours, only where they help and only on a terminal.

use anstyle::{AnsiColor, Effects, Style as Ansi};

/// Whether colour is wanted when the user did not say: anstream's detection
/// (stdout is a terminal that takes colour; NO_COLOR, CLICOLOR and
/// CLICOLOR_FORCE honoured).
pub fn auto() -> bool {
    anstream::AutoStream::choice(&std::io::stdout()) != anstream::ColorChoice::Never
}

#[derive(Debug, Clone, Copy)]
pub struct Style {
    color: bool,
}

impl Style {
    pub fn new(color: bool) -> Self {
        Style { color }
    }

    fn paint(&self, style: Ansi, s: &str) -> String {
        if self.color {
            format!("{}{s}{}", style.render(), style.render_reset())
        } else {
            s.to_owned()
        }
    }

    fn fg(&self, color: AnsiColor, s: &str) -> String {
        self.paint(Ansi::new().fg_color(Some(color.into())), s)
    }

    pub fn red(&self, s: &str) -> String {
        self.fg(AnsiColor::Red, s)
    }

    pub fn green(&self, s: &str) -> String {
        self.fg(AnsiColor::Green, s)
    }

    pub fn yellow(&self, s: &str) -> String {
        self.fg(AnsiColor::Yellow, s)
    }

    pub fn cyan(&self, s: &str) -> String {
        self.fg(AnsiColor::Cyan, s)
    }

    pub fn bold(&self, s: &str) -> String {
        self.paint(Ansi::new().effects(Effects::BOLD), s)
    }

    pub fn dim(&self, s: &str) -> String {
        self.paint(Ansi::new().effects(Effects::DIMMED), s)
    }
}

/// Text from outside (notes, authors, reasons and details gateways report) as
/// it may reach a terminal: control characters escaped, so none can move the
/// cursor, recolour or retitle the terminal, or forge a line.
pub fn clean(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_when_asked() {
        assert_eq!(Style::new(false).red("x"), "x");
        assert_eq!(Style::new(true).red("x"), "\x1b[31mx\x1b[0m");
        assert_eq!(Style::new(true).bold("x"), "\x1b[1mx\x1b[0m");
    }

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(clean("plain note"), "plain note");
        assert_eq!(
            clean("a\u{1b}]0;pwned\u{7}b\nc"),
            "a\\u{1b}]0;pwned\\u{7}b\\nc"
        );
        assert_eq!(clean("\u{9b}31m"), "\\u{9b}31m");
    }
}
