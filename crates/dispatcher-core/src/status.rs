//! The dispatch state machine.
//!
//! ```text
//! queued ◄─► processing ──► completed
//!  │  │            │            ▲
//!  │  └────────────┼────────────┘
//!  └───────────────┴──────► failed
//! ```
//! `processing → processing` is allowed: a worker that died mid-dispatch leaves the row in
//! `processing`, and the redelivered message must be able to pick it up again. `processing →
//! queued` puts a dispatch back in line after a transient provider failure (its retry waits in a
//! broker delay queue). `queued → completed` is a dispatch rendered and stored in one write, with
//! no `processing` step in between (the worker's quick path for the `store` provider). Finished
//! states are final, which is what makes a redelivered `dispatch.requested` harmless.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DispatchStatus {
    Queued,
    Processing,
    Completed,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal dispatch transition {from} -> {to}")]
pub struct TransitionError {
    pub from: DispatchStatus,
    pub to: DispatchStatus,
}

impl DispatchStatus {
    pub const ALL: [DispatchStatus; 4] = [
        DispatchStatus::Queued,
        DispatchStatus::Processing,
        DispatchStatus::Completed,
        DispatchStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DispatchStatus::Queued => "queued",
            DispatchStatus::Processing => "processing",
            DispatchStatus::Completed => "completed",
            DispatchStatus::Failed => "failed",
        }
    }

    /// A finished dispatch never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(self, DispatchStatus::Completed | DispatchStatus::Failed)
    }

    /// The states from which a move to `to` is legal. The SQL layer uses this list in its
    /// `WHERE status = ANY(...)` guards so the database enforces the same rule as this module.
    pub fn sources_of(to: DispatchStatus) -> &'static [DispatchStatus] {
        match to {
            DispatchStatus::Queued => &[DispatchStatus::Processing],
            DispatchStatus::Processing => &[DispatchStatus::Queued, DispatchStatus::Processing],
            DispatchStatus::Completed => &[DispatchStatus::Queued, DispatchStatus::Processing],
            DispatchStatus::Failed => &[DispatchStatus::Queued, DispatchStatus::Processing],
        }
    }

    pub fn can_transition(self, to: DispatchStatus) -> bool {
        Self::sources_of(to).contains(&self)
    }

    pub fn transition(self, to: DispatchStatus) -> Result<DispatchStatus, TransitionError> {
        if self.can_transition(to) {
            Ok(to)
        } else {
            Err(TransitionError { from: self, to })
        }
    }
}

impl fmt::Display for DispatchStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DispatchStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown dispatch status `{s}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::DispatchStatus::*;
    use super::*;

    #[test]
    fn happy_path_is_legal() {
        assert_eq!(Queued.transition(Processing), Ok(Processing));
        assert_eq!(Processing.transition(Completed), Ok(Completed));
    }

    #[test]
    fn failures_are_legal_before_completion() {
        assert!(Queued.can_transition(Failed));
        assert!(Processing.can_transition(Failed));
    }

    #[test]
    fn a_crashed_worker_can_be_resumed() {
        assert!(Processing.can_transition(Processing));
    }

    #[test]
    fn terminal_states_never_move() {
        for from in [Completed, Failed] {
            assert!(from.is_terminal());
            for to in DispatchStatus::ALL {
                assert_eq!(
                    from.transition(to),
                    Err(TransitionError { from, to }),
                    "{from} -> {to} must be refused"
                );
            }
        }
    }

    #[test]
    fn only_a_retry_returns_to_queued() {
        for from in DispatchStatus::ALL {
            assert_eq!(
                from.can_transition(Queued),
                from == Processing,
                "{from} -> queued"
            );
        }
    }

    #[test]
    fn a_dispatch_read_but_not_claimed_finishes_straight_from_queued() {
        assert!(Queued.can_transition(Completed));
        // One guard serves both outcomes when a batch is settled.
        assert_eq!(
            DispatchStatus::sources_of(Completed),
            DispatchStatus::sources_of(Failed)
        );
    }

    #[test]
    fn round_trips_through_strings() {
        for st in DispatchStatus::ALL {
            assert_eq!(st.as_str().parse::<DispatchStatus>(), Ok(st));
            assert_eq!(serde_json::to_string(&st).unwrap(), format!("\"{st}\""));
        }
        assert!("done".parse::<DispatchStatus>().is_err());
    }
}
