//! Finding the line and column of a JSON path in the source text.
//!
//! Only used when reporting problems, so it re-scans the text instead of making the
//! fast path keep positions for every value.

use crate::diagnostic::{JsonPath, Segment};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Position of the value at `path` — of its key when the path ends in an object
/// member that exists. When the path leads nowhere (a missing field), the position
/// of the deepest value that exists on the way.
pub fn locate(text: &str, path: &JsonPath) -> Option<Position> {
    let mut scanner = Scanner {
        bytes: text.as_bytes(),
        pos: 0,
    };
    scanner.skip_ws();
    let offset = scanner.find(&path.0)?;
    Some(position_of(text, offset))
}

/// Line and column (1-based, in characters) of a byte offset.
pub fn position_of(text: &str, offset: usize) -> Position {
    let before = &text[..offset.min(text.len())];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    Position { line, column }
}

struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.pos += 1;
        }
    }

    /// At the start of a value: returns the offset that best matches `path`.
    fn find(&mut self, path: &[Segment]) -> Option<usize> {
        let here = self.pos;
        let Some((seg, rest)) = path.split_first() else {
            return Some(here);
        };
        match (seg, self.peek()?) {
            (Segment::Key(want), b'{') => {
                self.pos += 1;
                loop {
                    self.skip_ws();
                    match self.peek()? {
                        b'}' => return Some(here),
                        b',' => {
                            self.pos += 1;
                            continue;
                        }
                        b'"' => {}
                        _ => return Some(here),
                    }
                    let key_at = self.pos;
                    let key = self.string()?;
                    self.skip_ws();
                    if self.peek()? != b':' {
                        return Some(here);
                    }
                    self.pos += 1;
                    self.skip_ws();
                    if key == *want {
                        if rest.is_empty() {
                            return Some(key_at);
                        }
                        return self.find(rest);
                    }
                    self.skip_value()?;
                }
            }
            (Segment::Index(want), b'[') => {
                self.pos += 1;
                let mut i = 0;
                loop {
                    self.skip_ws();
                    match self.peek()? {
                        b']' => return Some(here),
                        b',' => {
                            self.pos += 1;
                            continue;
                        }
                        _ => {}
                    }
                    if i == *want {
                        return self.find(rest);
                    }
                    self.skip_value()?;
                    i += 1;
                }
            }
            _ => Some(here),
        }
    }

    /// Reads a string at the cursor and returns it decoded (escapes kept simple).
    fn string(&mut self) -> Option<String> {
        debug_assert_eq!(self.peek(), Some(b'"'));
        self.pos += 1;
        let start = self.pos;
        let mut escaped = false;
        while let Some(b) = self.peek() {
            self.pos += 1;
            match b {
                b'\\' => {
                    escaped = true;
                    self.pos += 1;
                }
                b'"' => {
                    let raw = std::str::from_utf8(&self.bytes[start..self.pos - 1]).ok()?;
                    if !escaped {
                        return Some(raw.to_owned());
                    }
                    return serde_json::from_str(&format!("\"{raw}\"")).ok();
                }
                _ => {}
            }
        }
        None
    }

    fn skip_value(&mut self) -> Option<()> {
        self.skip_ws();
        match self.peek()? {
            b'"' => {
                self.string()?;
            }
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.pos += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.pos += 1;
                }
            }
            _ => {
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t')
                ) {
                    self.pos += 1;
                }
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(segs: &[&str]) -> JsonPath {
        JsonPath(
            segs.iter()
                .map(|s| match s.parse::<usize>() {
                    Ok(n) => Segment::Index(n),
                    Err(_) => Segment::Key((*s).to_owned().into()),
                })
                .collect(),
        )
    }

    const DOC: &str = "{\n  \"a\": \"x\\\"y\",\n  \"b\": [1, {\"c\": [true, {\"d\": null}]}],\n  \"é\": {\"f\": 2}\n}";

    #[test]
    fn finds_keys_and_indices() {
        assert_eq!(
            locate(DOC, &path(&["a"])),
            Some(Position { line: 2, column: 3 })
        );
        assert_eq!(
            locate(DOC, &path(&["b", "1", "c", "1", "d"])),
            Some(Position {
                line: 3,
                column: 26
            })
        );
        assert_eq!(
            locate(DOC, &path(&["é", "f"])),
            Some(Position { line: 4, column: 9 })
        );
    }

    #[test]
    fn missing_member_points_at_its_parent() {
        assert_eq!(
            locate(DOC, &path(&["b", "1", "zzz"])),
            Some(Position {
                line: 3,
                column: 12
            })
        );
        assert_eq!(
            locate(DOC, &path(&[])),
            Some(Position { line: 1, column: 1 })
        );
    }

    #[test]
    fn truncated_text_gives_none_not_a_panic() {
        assert_eq!(locate("{\"a\": [1, 2", &path(&["a", "5"])), None);
        assert_eq!(locate("{\"a", &path(&["a"])), None);
    }
}
