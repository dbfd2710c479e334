//! Configuration errors: each names its place, key path, bad value and what is allowed.

use std::fmt;

/// One problem found in a configuration file.
///
/// Displayed on one line as
/// `FILE:LINE:COLUMN: KEY.PATH: MESSAGE (got VALUE; allowed: ALLOWED)`; the parenthesis is left out
/// when there is neither a value nor an allowance to show, and `KEY.PATH: ` when the error is not
/// about one key (a TOML syntax error). Lines and columns count from 1; columns count characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub(crate) origin: String,
    pub(crate) position: Option<(usize, usize)>,
    pub(crate) path: String,
    pub(crate) message: String,
    pub(crate) got: Option<String>,
    pub(crate) allowed: Option<String>,
}

impl Error {
    /// The file (or the origin name given to [`Config::from_str`](crate::Config::from_str)).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The 1-based line, if the error has a place in the text.
    pub fn line(&self) -> Option<usize> {
        self.position.map(|(line, _)| line)
    }

    /// The 1-based column, in characters, if the error has a place in the text.
    pub fn column(&self) -> Option<usize> {
        self.position.map(|(_, column)| column)
    }

    /// The key path, like `upstreams.orders.breaker.window` or `routes[0].timeout`; empty for a
    /// syntax error.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The offending value as written in the file, if there is one.
    pub fn got(&self) -> Option<&str> {
        self.got.as_deref()
    }

    /// What would have been accepted, if that can be said.
    pub fn allowed(&self) -> Option<&str> {
        self.allowed.as_deref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.origin)?;
        if let Some((line, column)) = self.position {
            write!(f, "{line}:{column}:")?;
        }
        if !self.path.is_empty() {
            write!(f, " {}:", self.path)?;
        }
        write!(f, " {}", self.message)?;
        match (&self.got, &self.allowed) {
            (Some(got), Some(allowed)) => write!(f, " (got {got}; allowed: {allowed})"),
            (Some(got), None) => write!(f, " (got {got})"),
            (None, Some(allowed)) => write!(f, " (allowed: {allowed})"),
            (None, None) => Ok(()),
        }
    }
}

impl std::error::Error for Error {}

/// Every problem found in a configuration file, in the order they appear in it.
///
/// Displays one error per line (see [`Error`] for the format), without a trailing newline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Errors(pub(crate) Vec<Error>);

impl Errors {
    /// The errors, in file order.
    pub fn iter(&self) -> std::slice::Iter<'_, Error> {
        self.0.iter()
    }

    /// How many errors there are (at least one).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: an `Errors` holds at least one error.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a Errors {
    type Item = &'a Error;
    type IntoIter = std::slice::Iter<'a, Error>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}

/// 1-based line and column (in characters) of a byte offset in `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    Lines::new(text).place(offset)
}

/// Where each line of a text starts: places of many offsets without a scan of the text for each
/// (a file of 60,000 errors took 30 s to report when each scanned it from its start).
pub(crate) struct Lines<'a> {
    text: &'a str,
    /// The byte offset of each line's first byte; the first is 0.
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    pub(crate) fn new(text: &'a str) -> Lines<'a> {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Lines { text, starts }
    }

    /// 1-based line and column (in characters) of the byte offset `offset`.
    pub(crate) fn place(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        // The lines starting at or before the offset: the last of them holds it.
        let line = self.starts.partition_point(|&start| start <= offset);
        let start = self.starts[line - 1];
        (line, self.text[start..offset].chars().count() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_from_one_in_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 4), (1, 5));
        assert_eq!(line_column(text, 6), (2, 1));
        // "é" is two bytes but one column.
        assert_eq!(line_column(text, 9), (2, 3));
        assert_eq!(line_column(text, 1000), (3, 1));
    }

    #[test]
    fn display_format() {
        let error = Error {
            origin: "rampart.toml".into(),
            position: Some((3, 11)),
            path: "routes[0].timeout".into(),
            message: "expected a duration".into(),
            got: Some("\"2 s\"".into()),
            allowed: Some("\"2s\"".into()),
        };
        assert_eq!(
            error.to_string(),
            "rampart.toml:3:11: routes[0].timeout: expected a duration (got \"2 s\"; allowed: \"2s\")"
        );
        let syntax = Error {
            path: String::new(),
            got: None,
            allowed: None,
            message: "invalid key".into(),
            ..error
        };
        assert_eq!(syntax.to_string(), "rampart.toml:3:11: invalid key");
    }
}
