//! Problems found in a model, with where they are and what was expected.

use std::borrow::Cow;
use std::fmt;

use crate::locate::{locate, Position};

/// One step of a path into a JSON document.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A member of an object (most names are the schema's own: borrowed,
    /// so that a path costs one allocation however deep it is).
    Key(Cow<'static, str>),
    /// An element of an array.
    Index(usize),
}

/// A path into a JSON document, displayed as `subsystems[0].components[2].id`
/// (the document root displays as an empty string).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct JsonPath(pub Vec<Segment>);

impl JsonPath {
    /// The document itself.
    pub fn root() -> Self {
        JsonPath(Vec::new())
    }

    /// This path, then a member.
    pub fn key(&self, key: impl Into<Cow<'static, str>>) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Key(key.into()));
        p
    }

    /// This path, then an element.
    pub fn index(&self, index: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Index(index));
        p
    }

    /// The path one level up.
    pub fn parent(&self) -> Self {
        let mut p = self.clone();
        p.0.pop();
        p
    }

    /// The last member name on the path.
    pub fn last_key(&self) -> Option<&str> {
        match self.0.last() {
            Some(Segment::Key(k)) => Some(k),
            _ => None,
        }
    }

    /// Whether this is the document itself.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Key(k) if i == 0 => write!(f, "{k}")?,
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A problem in a model, located by JSON path only (the pure checks do not see text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where in the document.
    pub path: JsonPath,
    /// What is wrong.
    pub message: String,
    /// What would have been valid here.
    pub expected: Option<String>,
}

impl Problem {
    /// A problem at `path`.
    pub fn new(path: JsonPath, message: impl Into<String>) -> Self {
        Problem {
            path,
            message: message.into(),
            expected: None,
        }
    }

    /// Says what was expected.
    pub fn expected(mut self, expected: impl Into<String>) -> Self {
        self.expected = Some(expected.into());
        self
    }
}

/// A problem located in a file: file, line and column, JSON path, message, expectation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    /// The file.
    pub file: String,
    /// 1-based line; 0 when the position is unknown.
    pub line: usize,
    /// 1-based column in characters; 0 when the position is unknown.
    pub column: usize,
    /// The JSON path, as displayed (`subsystems[0].components[2].id`).
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// What was expected, when that helps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
}

impl Diagnostic {
    /// Locates a problem in the text it was found in.
    pub fn locate(file: &str, text: &str, problem: Problem) -> Self {
        let pos = locate(text, &problem.path).unwrap_or(Position { line: 0, column: 0 });
        Diagnostic {
            file: file.to_owned(),
            line: pos.line,
            column: pos.column,
            path: problem.path.to_string(),
            message: problem.message,
            expected: problem.expected,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        } else {
            write!(f, "{}: ", self.file)?;
        }
        if !self.path.is_empty() {
            write!(f, "at {}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(e) = &self.expected {
            write!(f, "\n    expected: {e}")?;
        }
        Ok(())
    }
}

/// A model that cannot be used, with every problem found in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Invalid {
    /// Every problem found, in document order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Invalid {
    /// A problem with the file as a whole (it cannot be read, say).
    pub fn file(file: &str, message: impl Into<String>) -> Self {
        Invalid {
            diagnostics: vec![Diagnostic {
                file: file.to_owned(),
                line: 0,
                column: 0,
                path: String::new(),
                message: message.into(),
                expected: None,
            }],
        }
    }

    /// Locates problems in the text they were found in.
    pub fn from_problems(file: &str, text: &str, problems: Vec<Problem>) -> Self {
        let mut diagnostics: Vec<Diagnostic> = problems
            .into_iter()
            .map(|p| Diagnostic::locate(file, text, p))
            .collect();
        // Reading order; problems without a position keep their place at the end.
        diagnostics.sort_by_key(|d| (d.line == 0, d.line, d.column));
        Invalid { diagnostics }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.diagnostics.len();
        for d in &self.diagnostics {
            writeln!(f, "error: {d}")?;
        }
        write!(f, "{n} problem{} found", if n == 1 { "" } else { "s" })
    }
}
