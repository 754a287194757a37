//! What a failed reconcile means and when it is tried again.
//!
//! An object the master or the apiserver refuses as it is (a bad field) is
//! *invalid*: retrying cannot help, so it gets a Warning event naming the
//! field and waits for its next change. Anything else (the apiserver
//! unreachable or conflicting, the master unable to write its record) is
//! *transient*: retried with a back-off that doubles per failure of that
//! object, from [`Backoff::BASE`] to [`Backoff::MAX`], and starts over
//! after a success.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http::StatusCode;
use tessera_master::MasterError;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("master: {0}")]
    Master(#[from] MasterError),
}

/// Failures by what can be done about them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The object as written cannot be applied.
    Invalid,
    Apiserver,
    Master,
}

impl ErrorKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::Apiserver => "apiserver",
            ErrorKind::Master => "master",
        }
    }
}

/// Whether `e` is an apiserver answer with status `code`.
pub fn is_status(e: &kube::Error, code: StatusCode) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code.as_u16())
}

impl ReconcileError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ReconcileError::Master(MasterError::InvalidSpec { .. } | MasterError::FilesetExists(_)) => {
                ErrorKind::Invalid
            }
            ReconcileError::Master(_) => ErrorKind::Master,
            ReconcileError::Kube(e)
                if is_status(e, StatusCode::UNPROCESSABLE_ENTITY) || is_status(e, StatusCode::BAD_REQUEST) =>
            {
                ErrorKind::Invalid
            }
            ReconcileError::Kube(_) => ErrorKind::Apiserver,
        }
    }
}

/// Consecutive failures per object, and the wait they call for.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    pub const BASE: Duration = Duration::from_secs(1);
    pub const MAX: Duration = Duration::from_secs(300);

    /// A failure of `key`: how long to wait before trying it again, or
    /// `None` to wait for the object to change.
    pub fn failed(&self, key: &str, kind: ErrorKind) -> Option<Duration> {
        if kind == ErrorKind::Invalid {
            self.failures.lock().unwrap().remove(key);
            return None;
        }
        let mut failures = self.failures.lock().unwrap();
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let wait = Self::BASE.saturating_mul(1u32 << (*n - 1).min(16));
        Some(wait.min(Self::MAX))
    }

    /// A success of `key`: its next failure waits the least again.
    pub fn succeeded(&self, key: &str) {
        self.failures.lock().unwrap().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: StatusCode) -> ReconcileError {
        ReconcileError::Kube(kube::Error::Api(
            kube::core::Status::failure("test", "Test").with_code(code.as_u16()).boxed(),
        ))
    }

    #[test]
    fn invalid_objects_wait_for_a_change_and_transient_failures_back_off() {
        let b = Backoff::default();
        let waits: Vec<_> = (0..12).map(|_| b.failed("ns/web", ErrorKind::Apiserver).unwrap()).collect();
        assert_eq!(waits[..4], [1, 2, 4, 8].map(Duration::from_secs));
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "never shorter: {waits:?}");
        assert_eq!(*waits.last().unwrap(), Backoff::MAX);
        assert_eq!(b.failed("ns/other", ErrorKind::Master), Some(Backoff::BASE), "per object");
        b.succeeded("ns/web");
        assert_eq!(b.failed("ns/web", ErrorKind::Apiserver), Some(Backoff::BASE), "a success starts over");
        assert_eq!(b.failed("ns/web", ErrorKind::Invalid), None, "no retry until the object changes");
        assert_eq!(b.failed("ns/web", ErrorKind::Master), Some(Backoff::BASE));
    }

    #[test]
    fn errors_are_sorted_by_what_can_be_done() {
        let invalid = ReconcileError::Master(MasterError::InvalidSpec { field: "name", reason: "bad".into() });
        assert_eq!(invalid.kind(), ErrorKind::Invalid);
        assert_eq!(api(StatusCode::UNPROCESSABLE_ENTITY).kind(), ErrorKind::Invalid);
        assert_eq!(api(StatusCode::CONFLICT).kind(), ErrorKind::Apiserver);
        assert_eq!(api(StatusCode::SERVICE_UNAVAILABLE).kind(), ErrorKind::Apiserver);
        let store = tessera_master::store::StoreError::Stopped("gone".into());
        assert_eq!(ReconcileError::Master(MasterError::Store(store)).kind(), ErrorKind::Master);
        assert!(is_status(&api(StatusCode::NOT_FOUND).into_kube(), StatusCode::NOT_FOUND));
    }

    impl ReconcileError {
        fn into_kube(self) -> kube::Error {
            match self {
                ReconcileError::Kube(e) => e,
                ReconcileError::Master(_) => unreachable!("built from an apiserver answer"),
            }
        }
    }
}
