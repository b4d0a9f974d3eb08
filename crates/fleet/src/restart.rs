//! What a supervisor does when QEMU ends: a pure function of the restart policy, how the run
//! ended and the backoff so far. A VM that never became ready is `failed` and never restarted
//! (restarting it would only fail again, forever); a requested stop always ends it.

use crate::config::Restart;
use crate::record::VmState;
use std::time::Duration;

/// The first restart waits this long; each further one doubles it, up to [`BACKOFF_MAX`].
pub const BACKOFF_START: Duration = Duration::from_secs(1);
/// The longest wait between restarts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run this long resets the backoff.
pub const BACKOFF_RESET: Duration = Duration::from_secs(60);

/// How a run ended, as far as the decision cares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunSummary {
    /// The guest became ready.
    pub ready: bool,
    /// Its readiness deadline (for the message).
    pub ready_timeout: Duration,
    /// The deadline passed first.
    pub not_ready: bool,
    /// A stop was asked for.
    pub stopped: bool,
    /// etc/rc's status, or QEMU's exit code.
    pub exit_code: Option<i32>,
    /// The signal that killed QEMU (when rc reported nothing).
    pub signal: Option<i32>,
    /// How long it ran.
    pub ran: Duration,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Record the end in this state, with this error (if any), and stop supervising.
    End {
        /// The final state.
        state: VmState,
        /// Why, for a failure.
        error: Option<String>,
    },
    /// Restart after `delay`; `error` says why it ended.
    Restart {
        /// The wait.
        delay: Duration,
        /// Why the run ended.
        error: String,
    },
}

/// The backoff between restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay (and the one after a reset).
    pub start: Duration,
    /// The next delay.
    pub next: Duration,
}

impl Backoff {
    /// A backoff starting at `start`.
    pub fn new(start: Duration) -> Backoff {
        Backoff { start, next: start }
    }
}

/// Decide what follows `run` under `policy`, advancing `backoff`.
pub fn decide(policy: Restart, run: &RunSummary, backoff: &mut Backoff) -> Decision {
    if run.stopped {
        return Decision::End {
            state: VmState::Exited,
            error: None,
        };
    }
    let failure = run.signal.is_some() || run.exit_code != Some(0);
    let why = if let Some(s) = run.signal {
        format!("QEMU was killed by signal {s}")
    } else {
        format!("exited with status {}", run.exit_code.unwrap_or(-1))
    };
    if !run.ready {
        let error = if run.not_ready {
            format!(
                "the guest did not become ready within {} s; it was stopped",
                run.ready_timeout.as_secs()
            )
        } else {
            format!("the VM ended before it was ready ({why})")
        };
        return Decision::End {
            state: VmState::Failed,
            error: Some(error),
        };
    }
    let again = match policy {
        Restart::No => false,
        Restart::OnFailure => failure,
        Restart::Always => true,
    };
    if !again {
        return Decision::End {
            state: if run.signal.is_some() {
                VmState::Crashed
            } else {
                VmState::Exited
            },
            error: failure.then_some(why),
        };
    }
    if run.ran > BACKOFF_RESET || run.ran > backoff.next * 4 {
        backoff.next = backoff.start;
    }
    let delay = backoff.next;
    backoff.next = (backoff.next * 2).min(BACKOFF_MAX);
    Decision::Restart {
        delay,
        error: if failure { why } else { "VM ended".into() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ran(secs: u64) -> RunSummary {
        RunSummary {
            ready: true,
            ready_timeout: Duration::from_secs(30),
            ran: Duration::from_secs(secs),
            ..RunSummary::default()
        }
    }

    fn crashed(secs: u64) -> RunSummary {
        RunSummary {
            signal: Some(9),
            ..ran(secs)
        }
    }

    #[test]
    fn never_ready_is_failed_and_never_restarted() {
        let mut b = Backoff::new(BACKOFF_START);
        let rc_failed = RunSummary {
            ready: false,
            exit_code: Some(1),
            ..ran(0)
        };
        for policy in [Restart::No, Restart::OnFailure, Restart::Always] {
            match decide(policy, &rc_failed, &mut b) {
                Decision::End { state, error } => {
                    assert_eq!(state, VmState::Failed);
                    assert!(error
                        .unwrap_or_default()
                        .contains("before it was ready (exited with status 1)"));
                }
                d => panic!("{policy:?} restarted a VM that never became ready: {d:?}"),
            }
        }
        let late = RunSummary {
            ready: false,
            not_ready: true,
            ..ran(30)
        };
        assert!(matches!(
            decide(Restart::Always, &late, &mut b),
            Decision::End { state: VmState::Failed, error: Some(e) } if e.contains("within 30 s")
        ));
    }

    #[test]
    fn a_stop_ends_it_whatever_the_policy() {
        let mut b = Backoff::new(BACKOFF_START);
        let stopped = RunSummary {
            stopped: true,
            signal: Some(9),
            ..ran(5)
        };
        assert_eq!(
            decide(Restart::Always, &stopped, &mut b),
            Decision::End {
                state: VmState::Exited,
                error: None
            }
        );
    }

    #[test]
    fn policies() {
        let mut b = Backoff::new(BACKOFF_START);
        let clean = RunSummary {
            exit_code: Some(0),
            ..ran(5)
        };
        assert!(matches!(
            decide(Restart::No, &crashed(5), &mut b),
            Decision::End {
                state: VmState::Crashed,
                ..
            }
        ));
        assert!(matches!(
            decide(Restart::OnFailure, &clean, &mut b),
            Decision::End {
                state: VmState::Exited,
                error: None
            }
        ));
        assert!(matches!(
            decide(Restart::OnFailure, &crashed(5), &mut b),
            Decision::Restart { .. }
        ));
        assert!(matches!(
            decide(Restart::Always, &clean, &mut b),
            Decision::Restart { .. }
        ));
        let bad_exit = RunSummary {
            exit_code: Some(3),
            ..ran(5)
        };
        assert!(matches!(
            decide(Restart::No, &bad_exit, &mut b),
            Decision::End { state: VmState::Exited, error: Some(e) } if e == "exited with status 3"
        ));
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets_after_a_long_run() {
        let mut b = Backoff::new(BACKOFF_START);
        let delays: Vec<u64> = (0..7)
            .map(|_| match decide(Restart::Always, &crashed(1), &mut b) {
                Decision::Restart { delay, .. } => delay.as_secs(),
                d => panic!("{d:?}"),
            })
            .collect();
        // A 1 s run is short against every delay from 1 s on, except the first (1 s × 4 > 1 s).
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        match decide(Restart::Always, &crashed(61), &mut b) {
            Decision::Restart { delay, .. } => assert_eq!(delay, BACKOFF_START),
            d => panic!("{d:?}"),
        }
    }
}
