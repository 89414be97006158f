//! An error told with its causes, for the last line a process prints and for log lines.

use std::error::Error;
use std::fmt;

/// Displays an error, then each of its [`Error::source`]s as `: caused by: ...`.
///
/// A cause whose text the message already holds is left out: some errors (third-party ones,
/// and a few of this crate's that name their cause inline) say it twice otherwise.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut told = self.0.to_string();
        f.write_str(&told)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            let text = error.to_string();
            if !told.contains(&text) {
                write!(f, ": caused by: {text}")?;
                told.push_str(&text);
            }
            cause = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot load keys")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read /k: {0}")]
    struct Inline(#[source] std::io::Error);

    #[test]
    fn every_cause_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        assert_eq!(
            Chain(&Outer(io())).to_string(),
            "cannot load keys: caused by: no such file"
        );
        assert_eq!(
            Chain(&Inline(io())).to_string(),
            "cannot read /k: no such file"
        );
    }
}
