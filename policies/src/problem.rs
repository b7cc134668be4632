//! A validation problem names the file and the field, so `stroom policy check` can list them all.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.file.display(),
            self.field,
            self.message
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems {
    file: PathBuf,
    pub items: Vec<Problem>,
}

impl Problems {
    pub fn new(file: &Path) -> Self {
        Problems {
            file: file.to_path_buf(),
            items: Vec::new(),
        }
    }

    pub fn push(&mut self, field: &str, message: String) {
        self.items.push(Problem {
            file: self.file.clone(),
            field: field.to_string(),
            message,
        });
    }

    pub fn last_mut_message(&mut self, f: impl FnOnce(&str) -> String) {
        if let Some(last) = self.items.last_mut() {
            last.message = f(&last.message);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.items.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}
