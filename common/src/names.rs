//! `Names`: a process-wide set of queue or prefix names, for what a process
//! does once per name (a check, a log line, a declaration it can skip).

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

/// A set of names behind a lock, usable as a `static`.
#[derive(Debug)]
pub struct Names(Mutex<BTreeSet<String>>);

impl Names {
    /// An empty set.
    pub const fn new() -> Self {
        Self(Mutex::new(BTreeSet::new()))
    }

    /// Whether `name` is in the set.
    pub fn contains(&self, name: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(name)
    }

    /// Adds `name`; whether it was new.
    pub fn insert(&self, name: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned())
    }

    /// Removes `name`.
    pub fn remove(&self, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }
}

impl Default for Names {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_new_once_until_removed() {
        static SEEN: Names = Names::new();
        assert!(!SEEN.contains("a"));
        assert!(SEEN.insert("a"));
        assert!(!SEEN.insert("a"));
        assert!(SEEN.contains("a"));
        SEEN.remove("a");
        assert!(!SEEN.contains("a"));
    }
}
