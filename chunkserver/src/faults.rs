//! Fault injection: latency, bandwidth caps, hangs, errors and corruption that
//! a chunkserver applies to its own data requests, settable at run time.
//!
//! Only a chunkserver started with `--enable-fault-injection` exposes the
//! control API; without it these hooks see the default (no faults) forever.
//! Tests, the demo and the benchmarks use it to make one server slow, hung,
//! flaky or a liar.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tessera_proto::cs;
use tokio::sync::watch;
use tokio::time::Instant;

/// The faults in force.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    pub latency: Duration,
    pub bandwidth_bytes_per_sec: u64,
    pub hang: bool,
    pub error_rate: f64,
    pub corrupt_rate: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FaultError {
    #[error("faults.{field} must be within [0, 1], got {value}")]
    Rate { field: &'static str, value: f64 },
}

impl Faults {
    pub fn from_wire(f: &cs::Faults) -> Result<Self, FaultError> {
        for (field, value) in [("error_rate", f.error_rate), ("corrupt_rate", f.corrupt_rate)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(FaultError::Rate { field, value });
            }
        }
        Ok(Self {
            latency: Duration::from_millis(f.latency_ms),
            bandwidth_bytes_per_sec: f.bandwidth_bytes_per_sec,
            hang: f.hang,
            error_rate: f.error_rate,
            corrupt_rate: f.corrupt_rate,
        })
    }

    pub fn to_wire(self) -> cs::Faults {
        cs::Faults {
            latency_ms: self.latency.as_millis() as u64,
            bandwidth_bytes_per_sec: self.bandwidth_bytes_per_sec,
            hang: self.hang,
            error_rate: self.error_rate,
            corrupt_rate: self.corrupt_rate,
        }
    }
}

/// What the request should do after the entry hooks ran.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    Proceed,
    /// Fail with UNAVAILABLE (injected error).
    Fail,
}

/// The fault switchboard of one chunkserver.
#[derive(Debug)]
pub struct FaultInjector {
    tx: watch::Sender<Faults>,
    /// Next instant the bandwidth cap lets bytes out.
    pace: std::sync::Mutex<Instant>,
}

impl Default for FaultInjector {
    fn default() -> Self {
        Self { tx: watch::channel(Faults::default()).0, pace: std::sync::Mutex::new(Instant::now()) }
    }
}

impl FaultInjector {
    pub fn get(&self) -> Faults {
        *self.tx.borrow()
    }

    pub fn set(&self, f: Faults) {
        self.tx.send_replace(f);
    }

    /// Runs before a request does any work: waits out a hang (until cleared;
    /// the caller's cancellation drops this future), adds the latency, and
    /// rolls for an injected error.
    pub async fn on_entry(&self) -> Entry {
        let mut rx = self.tx.subscribe();
        let f = *rx.wait_for(|f| !f.hang).await.expect("the sender lives as long as self");
        if !f.latency.is_zero() {
            tokio::time::sleep(f.latency).await;
        }
        if f.error_rate > 0.0 && rand::random::<f64>() < f.error_rate {
            return Entry::Fail;
        }
        Entry::Proceed
    }

    /// The time the bandwidth cap stands for: what a device of that
    /// bandwidth takes to read `bytes` (none without a cap).
    pub fn device_time(&self, bytes: usize) -> Duration {
        match self.get().bandwidth_bytes_per_sec {
            0 => Duration::ZERO,
            cap => Duration::from_secs_f64(bytes as f64 / cap as f64),
        }
    }

    /// Holds back `bytes` as the bandwidth cap requires (shared by all
    /// requests of the server, like a real device).
    pub async fn pace(&self, bytes: usize) {
        let cap = self.get().bandwidth_bytes_per_sec;
        if cap == 0 {
            return;
        }
        let wait_until = {
            let mut next = self.pace.lock().unwrap();
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(bytes as f64 / cap as f64);
            *next
        };
        tokio::time::sleep_until(wait_until).await;
    }

    /// With probability `corrupt_rate`, flips one byte of `data` (after the
    /// disk checksum passed, so only the reader's check can catch it).
    pub fn maybe_corrupt(&self, data: Bytes) -> (Bytes, bool) {
        let rate = self.get().corrupt_rate;
        if data.is_empty() || rate <= 0.0 || rand::random::<f64>() >= rate {
            return (data, false);
        }
        let mut m = BytesMut::from(&data[..]);
        let at = rand::random_range(0..m.len());
        m[at] ^= 0x5a;
        (m.freeze(), true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_hang_lasts_until_cleared() {
        let f = std::sync::Arc::new(FaultInjector::default());
        f.set(Faults { hang: true, ..Default::default() });
        let entry = tokio::spawn({
            let f = f.clone();
            async move { f.on_entry().await }
        });
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!entry.is_finished(), "still hung an hour later");
        f.set(Faults::default());
        assert_eq!(entry.await.unwrap(), Entry::Proceed);
    }

    #[tokio::test(start_paused = true)]
    async fn latency_is_added_and_errors_are_injected() {
        let f = FaultInjector::default();
        f.set(Faults { latency: Duration::from_millis(50), error_rate: 1.0, ..Default::default() });
        let t0 = Instant::now();
        assert_eq!(f.on_entry().await, Entry::Fail);
        assert_eq!(t0.elapsed(), Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn the_bandwidth_cap_spaces_out_bytes() {
        let f = FaultInjector::default();
        f.set(Faults { bandwidth_bytes_per_sec: 1000, ..Default::default() });
        let t0 = Instant::now();
        f.pace(500).await;
        f.pace(1500).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
    }

    #[test]
    fn corruption_flips_exactly_one_byte() {
        let f = FaultInjector::default();
        f.set(Faults { corrupt_rate: 1.0, ..Default::default() });
        let data = Bytes::from(vec![7u8; 4096]);
        let (out, hit) = f.maybe_corrupt(data.clone());
        assert!(hit);
        assert_eq!(out.iter().zip(data.iter()).filter(|(a, b)| a != b).count(), 1);
    }

    #[test]
    fn rates_outside_zero_to_one_are_rejected() {
        let bad = cs::Faults { error_rate: 1.5, ..Default::default() };
        assert_eq!(Faults::from_wire(&bad), Err(FaultError::Rate { field: "error_rate", value: 1.5 }));
    }
}
