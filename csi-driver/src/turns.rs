//! One operation at a time per volume. A CSI call (or a promotion) takes
//! its volume's turn for as long as it runs; a second call on the same
//! volume meanwhile is answered `ABORTED` at once, as the CSI spec asks of
//! an operation already in progress, and the container orchestrator retries
//! it later. Nothing is undone afterwards: the second call never starts.
//!
//! Volumes share root mounts (every volume of a version on the node uses
//! one), so a call also waits for [`RootLocks`] on the one root it mounts or
//! releases; calls on volumes of other roots never wait for each other.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

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

/// One holder at a time per root (by its key, `fileset@version`); others
/// wait their turn. An entry goes when its last holder lets go with no one
/// waiting (a wait cancelled just as the holder left may leave it until
/// that root is next locked: one idle mutex, never a wrong one).
#[derive(Debug, Default, Clone)]
pub struct RootLocks {
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// A root's lock, given back when dropped.
#[derive(Debug)]
pub struct RootLock {
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl RootLocks {
    /// Waits for the root's lock.
    pub async fn lock(&self, key: &str) -> RootLock {
        let mutex = self.locks.lock().unwrap().entry(key.to_string()).or_default().clone();
        let guard = mutex.lock_owned().await;
        RootLock { locks: self.locks.clone(), key: key.to_string(), guard: Some(guard) }
    }

    /// Roots with an entry (held, awaited, or left by a cancelled wait).
    pub fn len(&self) -> usize {
        self.locks.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for RootLock {
    fn drop(&mut self) {
        // Under the map's lock, so no one can start waiting in between:
        // with the guard gone, only the map holds the mutex if no one waits.
        let mut locks = self.locks.lock().unwrap();
        drop(self.guard.take());
        if locks.get(&self.key).is_some_and(|m| Arc::strong_count(m) == 1) {
            locks.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn roots_lock_one_at_a_time_and_others_go_on() {
        let locks = RootLocks::default();
        let a = locks.lock("models@3").await;
        let _b = tokio::time::timeout(std::time::Duration::from_secs(5), locks.lock("data@1"))
            .await
            .expect("another root's lock is free");
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.lock("models@3").await })
        };
        // The waiter registers before it can be granted; let it reach the wait.
        while Arc::strong_count(&locks.locks.lock().unwrap()["models@3"]) < 3 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished(), "the same root waits");
        drop(a);
        let again = waiter.await.unwrap();
        assert_eq!(locks.len(), 2, "models@3 held again, data@1 held");
        drop(again);
        drop(_b);
        assert!(locks.is_empty(), "no entry outlives its holders");
    }

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
