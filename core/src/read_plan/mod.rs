//! Read planning: which stripes to fetch for a read, which to add when, and how
//! to finish from any k.
//!
//! A [`ReadSession`] is a state machine for one range of stripe offsets that a
//! set of data stripes ("wants") must deliver. The stripe client feeds it events
//! (a fetch arrived, a fetch failed, the hedge timer fired) and performs the
//! fetches it asks for; the session decides. Every fetch of a session covers the
//! same stripe range, so any k arrivals can rebuild the missing wants.
//!
//! - `normal` fetches only the wants; on a failure it adds stripes until k
//!   can arrive (a degraded read).
//! - `hedged` starts like normal (plus `extra_stripes` at once), treats wants
//!   on servers known to be slow as already late, and when the hedge timer
//!   fires it treats every outstanding want as late and adds stripes until k
//!   that are not late are on their way.
//! - `accelerated` asks for more than k stripes at once (all n by default) and
//!   finishes as soon as k distinct stripes have arrived.
//!
//! After the session finishes, later events are ignored: a late stripe is never
//! merged, and the caller cancels whatever is still in flight.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ReadMode {
    /// Only the data stripes holding the range; rebuild on failure.
    #[default]
    Normal,
    /// Normal, plus reconstruction fetches once a hedge delay has passed.
    Hedged,
    /// More than k stripes at once; the first k distinct win.
    Accelerated,
}

impl ReadMode {
    pub const ALL: [ReadMode; 3] = [ReadMode::Normal, ReadMode::Hedged, ReadMode::Accelerated];

    pub fn as_str(&self) -> &'static str {
        match self {
            ReadMode::Normal => "normal",
            ReadMode::Hedged => "hedged",
            ReadMode::Accelerated => "accelerated",
        }
    }
}

impl fmt::Display for ReadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown read mode {0:?}: expected normal, hedged or accelerated")]
pub struct UnknownReadMode(pub String);

impl FromStr for ReadMode {
    type Err = UnknownReadMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "normal" => Ok(ReadMode::Normal),
            "hedged" => Ok(ReadMode::Hedged),
            "accelerated" => Ok(ReadMode::Accelerated),
            _ => Err(UnknownReadMode(s.to_string())),
        }
    }
}

/// What the planner knows of one stripe's source before the read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StripeSource {
    /// The stripe has a reachable location at all.
    pub available: bool,
    /// Its server has recently missed hedge deadlines more often than not.
    pub slow: bool,
    /// Rank among the sources by expected fetch time (lower is faster).
    pub rank: u32,
}

impl Default for StripeSource {
    fn default() -> Self {
        Self { available: true, slow: false, rank: 0 }
    }
}

/// Mode-specific knobs the session needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPolicy {
    pub mode: ReadMode,
    /// Hedged: stripes requested beyond the wants at the start.
    pub extra_stripes: usize,
    /// Accelerated: how many stripes to request at once (clamped to k..=n).
    pub accelerated_stripes: usize,
}

impl SessionPolicy {
    pub fn new(mode: ReadMode) -> Self {
        Self { mode, extra_stripes: 0, accelerated_stripes: usize::MAX }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FetchState {
    Idle,
    InFlight { late: bool },
    Arrived,
    Failed,
}

/// A fetch the caller must start: `range` of stripe `stripe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub stripe: usize,
    pub range: Range<usize>,
}

/// How a finished session produces the wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// Every want arrived as itself.
    Direct,
    /// Decode `outputs` (the wants that did not arrive) from `inputs` (k
    /// arrived stripes).
    Rebuild { inputs: Vec<usize>, outputs: Vec<usize> },
}

/// Why a read cannot finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// Stripes that failed or have no location.
    pub missing: Vec<usize>,
    /// Stripes that arrived or may still arrive.
    pub reachable: usize,
    pub k: usize,
}

/// The session's answer to an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Start these fetches (possibly none) and keep waiting.
    Fetch(Vec<Fetch>),
    /// The read is done; cancel everything still in flight.
    Complete(Completion),
    /// The read cannot be completed.
    Fail(Unreadable),
    /// The session already finished; the event changes nothing.
    Ignored,
}

/// One range of stripe offsets wanted from a set of data stripes.
#[derive(Debug, Clone)]
pub struct ReadSession {
    k: usize,
    range: Range<usize>,
    wants: Vec<usize>,
    policy: SessionPolicy,
    sources: Vec<StripeSource>,
    state: Vec<FetchState>,
    /// Stripes to add for a rebuild, best first.
    preference: Vec<usize>,
    hedge_fired: bool,
    finished: bool,
}

impl ReadSession {
    /// `sources` has one entry per stripe (n = k + m). `wants` are data stripe
    /// indices (< k), each wanting `range`.
    pub fn new(
        k: usize,
        range: Range<usize>,
        wants: Vec<usize>,
        policy: SessionPolicy,
        sources: Vec<StripeSource>,
    ) -> Self {
        let n = sources.len();
        assert!(k >= 1 && k < n, "a session needs 1 <= k < n");
        assert!(!wants.is_empty() && wants.iter().all(|&w| w < k), "wants must be data stripes");
        let mut preference: Vec<usize> = (0..n).filter(|i| !wants.contains(i)).collect();
        preference.sort_by_key(|&i| (sources[i].slow, sources[i].rank, i));
        Self {
            k,
            range,
            wants,
            policy,
            sources,
            state: vec![FetchState::Idle; n],
            preference,
            hedge_fired: false,
            finished: false,
        }
    }

    pub fn range(&self) -> &Range<usize> {
        &self.range
    }

    pub fn wants(&self) -> &[usize] {
        &self.wants
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Whether the caller should run the hedge timer for this session now.
    pub fn wants_hedge_timer(&self) -> bool {
        self.policy.mode == ReadMode::Hedged && !self.hedge_fired && !self.finished
    }

    /// Whether the hedge timer fired during this session.
    pub fn hedge_fired(&self) -> bool {
        self.hedge_fired
    }

    /// Stripes requested but not yet arrived or failed: the losers to cancel
    /// once the session is finished.
    pub fn in_flight(&self) -> Vec<usize> {
        (0..self.state.len()).filter(|&i| matches!(self.state[i], FetchState::InFlight { .. })).collect()
    }

    /// The initial fetches.
    pub fn start(&mut self) -> Step {
        let mut out = Vec::new();
        match self.policy.mode {
            ReadMode::Normal | ReadMode::Hedged => {
                for w in self.wants.clone() {
                    if self.sources[w].available {
                        // A want on a slow server is still asked for (it may
                        // recover, and its answer tells us so) but counted late.
                        let late = self.policy.mode == ReadMode::Hedged && self.sources[w].slow;
                        self.state[w] = FetchState::InFlight { late };
                        out.push(self.fetch(w));
                    } else {
                        self.state[w] = FetchState::Failed;
                    }
                }
                if self.policy.mode == ReadMode::Hedged {
                    for _ in 0..self.policy.extra_stripes {
                        match self.next_candidate() {
                            Some(s) => out.push(self.request(s)),
                            None => break,
                        }
                    }
                }
            }
            ReadMode::Accelerated => {
                let n = self.state.len();
                let count = self.policy.accelerated_stripes.clamp(self.k, n);
                for w in self.wants.clone() {
                    if self.sources[w].available {
                        out.push(self.request(w));
                    } else {
                        self.state[w] = FetchState::Failed;
                    }
                }
                while out.len() < count {
                    match self.next_candidate() {
                        Some(s) => out.push(self.request(s)),
                        None => break,
                    }
                }
            }
        }
        self.advance(out)
    }

    /// `stripe` arrived, its bytes verified.
    pub fn on_arrival(&mut self, stripe: usize) -> Step {
        if self.finished {
            return Step::Ignored;
        }
        match self.state.get(stripe) {
            // Copies of a stripe count once; an arrival nobody asked for is noise.
            Some(FetchState::InFlight { .. }) => self.state[stripe] = FetchState::Arrived,
            _ => return Step::Fetch(Vec::new()),
        }
        self.advance(Vec::new())
    }

    /// `stripe` failed: error, timeout or checksum mismatch.
    pub fn on_failure(&mut self, stripe: usize) -> Step {
        if self.finished {
            return Step::Ignored;
        }
        match self.state.get(stripe) {
            Some(FetchState::InFlight { .. }) => self.state[stripe] = FetchState::Failed,
            _ => return Step::Fetch(Vec::new()),
        }
        self.advance(Vec::new())
    }

    /// The hedge delay passed with wants still outstanding.
    pub fn on_hedge_timer(&mut self) -> Step {
        if self.finished {
            return Step::Ignored;
        }
        if self.hedge_fired || self.policy.mode != ReadMode::Hedged {
            return Step::Fetch(Vec::new());
        }
        self.hedge_fired = true;
        for w in &self.wants {
            if let FetchState::InFlight { late } = &mut self.state[*w] {
                *late = true;
            }
        }
        self.advance(Vec::new())
    }

    fn fetch(&self, stripe: usize) -> Fetch {
        Fetch { stripe, range: self.range.clone() }
    }

    fn request(&mut self, stripe: usize) -> Fetch {
        self.state[stripe] = FetchState::InFlight { late: false };
        self.fetch(stripe)
    }

    fn next_candidate(&self) -> Option<usize> {
        self.preference.iter().copied().find(|&s| self.state[s] == FetchState::Idle && self.sources[s].available)
    }

    fn count(&self, pred: impl Fn(FetchState) -> bool) -> usize {
        self.state.iter().filter(|s| pred(**s)).count()
    }

    /// Decides what follows from the current state; `out` holds fetches
    /// already chosen by the caller of this function.
    fn advance(&mut self, mut out: Vec<Fetch>) -> Step {
        if self.wants.iter().all(|&w| self.state[w] == FetchState::Arrived) {
            return self.finish(Step::Complete(Completion::Direct));
        }
        let arrived = self.count(|s| s == FetchState::Arrived);
        if arrived >= self.k {
            let inputs: Vec<usize> =
                (0..self.state.len()).filter(|&i| self.state[i] == FetchState::Arrived).take(self.k).collect();
            let outputs: Vec<usize> =
                self.wants.iter().copied().filter(|&w| self.state[w] != FetchState::Arrived).collect();
            return self.finish(Step::Complete(Completion::Rebuild { inputs, outputs }));
        }
        let rebuild_needed = self.wants.iter().any(|&w| match self.state[w] {
            FetchState::Failed => true,
            FetchState::InFlight { late } => late,
            _ => false,
        });
        if rebuild_needed {
            // Enough stripes that are neither failed nor late must be on their way.
            let mut on_time = self.count(|s| matches!(s, FetchState::Arrived | FetchState::InFlight { late: false }));
            while on_time < self.k {
                match self.next_candidate() {
                    Some(s) => {
                        out.push(self.request(s));
                        on_time += 1;
                    }
                    None => break,
                }
            }
        }
        let reachable = self.count(|s| matches!(s, FetchState::Arrived | FetchState::InFlight { .. }));
        let wants_failed = self.wants.iter().any(|&w| self.state[w] == FetchState::Failed);
        if wants_failed && reachable < self.k {
            let missing: Vec<usize> = (0..self.state.len())
                .filter(|&i| self.state[i] == FetchState::Failed || !self.sources[i].available)
                .collect();
            return self.finish(Step::Fail(Unreadable { missing, reachable, k: self.k }));
        }
        Step::Fetch(out)
    }

    fn finish(&mut self, step: Step) -> Step {
        self.finished = true;
        step
    }
}

#[cfg(test)]
mod tests;
