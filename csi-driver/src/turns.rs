//! One operation at a time per volume. A CSI call (or a promotion) takes
//! its volume's turn for as long as it runs; a second call on the same
//! volume meanwhile is answered `ABORTED` at once, as the CSI spec asks of
//! an operation already in progress, and the container orchestrator retries
//! it later. Nothing is undone afterwards: the second call never starts.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The volumes with an operation in progress.
#[derive(Debug, Default, Clone)]
pub struct Turns {
    busy: Arc<Mutex<HashSet<String>>>,
}

/// A volume's turn, given back when dropped (also when its call fails or
/// is cancelled).
#[derive(Debug)]
pub struct Turn {
    busy: Arc<Mutex<HashSet<String>>>,
    volume: String,
}

/// Another operation on the volume is in progress.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an operation on volume {0} is in progress; try again when it is done")]
pub struct Busy(pub String);

impl Turns {
    /// The volume's turn, or [`Busy`] if another operation has it.
    pub fn take(&self, volume: &str) -> Result<Turn, Busy> {
        if !self.busy.lock().unwrap().insert(volume.to_string()) {
            return Err(Busy(volume.to_string()));
        }
        Ok(Turn { busy: self.busy.clone(), volume: volume.to_string() })
    }

    /// Whether an operation on the volume is in progress.
    pub fn is_busy(&self, volume: &str) -> bool {
        self.busy.lock().unwrap().contains(volume)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.busy.lock().unwrap().remove(&self.volume);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_turn_per_volume_and_it_comes_back() {
        let turns = Turns::default();
        let a = turns.take("models@3").unwrap();
        assert_eq!(turns.take("models@3").unwrap_err(), Busy("models@3".into()));
        let b = turns.take("leaf-1").expect("other volumes are not held up");
        assert!(turns.is_busy("models@3") && turns.is_busy("leaf-1"));
        drop(a);
        assert!(!turns.is_busy("models@3"));
        let _again = turns.take("models@3").expect("free once the first is done");
        drop(b);
        assert!(!turns.is_busy("leaf-1"));
    }
}
