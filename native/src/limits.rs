//! One cluster's circuit-breaker counters (issue 25): the integer state of
//! `resilience.ClusterResources`, each operation one crossing under one
//! mutex, so the common admission (`admit_now`) needs no Python lock. The
//! queue of waiting tickets stays Python's; `pending` is its length, kept
//! here by the owner under its own lock. `resilience._counters.Counters` is
//! the same in Python; tests/property/test_native_limits_props.py demands
//! both give the same answers on generated limits and operation sequences.

use std::sync::Mutex;

use pyo3::prelude::*;

/// (max_requests, max_pending_requests, max_retries, retry budget as
/// (budget_percent, min_retry_concurrency) or None)
type LimitsSpec = (i64, i64, i64, Option<(f64, i64)>);

#[derive(Default)]
struct State {
    active: i64,
    pending: i64,
    retries: i64,
    request_overflows: i64,
    retry_overflows: i64,
    max_requests: i64,
    max_pending: i64,
    max_retries: i64,
    budget: Option<(f64, i64)>,
}

#[pyclass(frozen, module = "proxyless_mesh_native")]
pub struct ClusterCounters {
    state: Mutex<State>,
}

impl ClusterCounters {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut state)
    }
}

#[pymethods]
impl ClusterCounters {
    #[new]
    fn new(limits: LimitsSpec) -> Self {
        let counters = ClusterCounters {
            state: Mutex::new(State::default()),
        };
        counters.set_limits(limits);
        counters
    }

    /// New thresholds; the counters carry over.
    fn set_limits(&self, limits: LimitsSpec) {
        let (max_requests, max_pending, max_retries, budget) = limits;
        self.with(|s| {
            s.max_requests = max_requests;
            s.max_pending = max_pending;
            s.max_retries = max_retries;
            s.budget = budget;
        })
    }

    /// Take an active slot if one is free and nobody waits.
    fn admit_now(&self) -> bool {
        self.with(|s| {
            if s.active < s.max_requests && s.pending == 0 {
                s.active += 1;
                true
            } else {
                false
            }
        })
    }

    /// 0: admitted (active + 1); 1: wait in line (pending + 1); 2: overflow.
    fn admit(&self) -> u8 {
        self.with(|s| {
            if s.active < s.max_requests && s.pending == 0 {
                s.active += 1;
                0
            } else if s.pending < s.max_pending {
                s.pending += 1;
                1
            } else {
                s.request_overflows += 1;
                2
            }
        })
    }

    /// An active request ended. True: its slot goes to the oldest waiting
    /// request (pending - 1, active unchanged); False: active - 1.
    fn release_request(&self) -> bool {
        self.with(|s| {
            if s.pending > 0 && s.active <= s.max_requests {
                s.pending -= 1;
                true
            } else {
                s.active -= 1;
                false
            }
        })
    }

    /// An active request ended and nobody waits: active - 1 (True). False
    /// when a request waits: the owner then calls `release_request` under
    /// its lock, to hand the slot to the oldest ticket.
    fn release_now(&self) -> bool {
        self.with(|s| {
            if s.pending > 0 {
                false
            } else {
                s.active -= 1;
                true
            }
        })
    }

    /// One waiting request takes a free slot (after the limits rose).
    fn take_waiting(&self) -> bool {
        self.with(|s| {
            if s.pending > 0 && s.active < s.max_requests {
                s.pending -= 1;
                s.active += 1;
                true
            } else {
                false
            }
        })
    }

    /// A waiting request left the line without a slot.
    fn leave_line(&self) {
        self.with(|s| s.pending -= 1)
    }

    /// Admit one more concurrent retry, or count a retry overflow.
    fn try_acquire_retry(&self) -> bool {
        self.with(|s| {
            let allowed = match s.budget {
                Some((percent, min_concurrency)) => {
                    // Whole retries, rounded down (Python's int() of the same product).
                    let share = (percent / 100.0 * (s.active + s.pending) as f64) as i64;
                    min_concurrency.max(share)
                }
                None => s.max_retries,
            };
            if s.retries < allowed {
                s.retries += 1;
                true
            } else {
                s.retry_overflows += 1;
                false
            }
        })
    }

    fn release_retry(&self) {
        self.with(|s| s.retries -= 1)
    }

    /// (active, pending, retries, request_overflows, retry_overflows)
    fn snapshot(&self) -> (i64, i64, i64, i64, i64) {
        self.with(|s| {
            (
                s.active,
                s.pending,
                s.retries,
                s.request_overflows,
                s.retry_overflows,
            )
        })
    }
}
