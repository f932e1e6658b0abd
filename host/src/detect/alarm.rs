//! The alarm state machine of one behavior.
//!
//! `consecutiveDatapointsToAlarm` violating datapoints in a row raise an
//! alarm; once raised, `consecutiveDatapointsToClear` conforming datapoints
//! in a row clear it. A sample that gives no datapoint (a custom metric a
//! plugin did not send, a baseline still learning, a traffic window not yet
//! conclusive) changes nothing, as a missing report changes nothing in the
//! cloud.

use serde::{Deserialize, Serialize};

/// An alarm in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ActiveViolation {
    /// Stable from the alarm to its clear.
    pub violation_id: String,
    /// When the alarm was raised, ms since the Unix epoch.
    pub since_ms: u64,
}

/// What a datapoint did to the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transition {
    Raised(ActiveViolation),
    Cleared(ActiveViolation),
}

/// Counts of consecutive datapoints and the active alarm, if any.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AlarmMachine {
    pub violations: u32,
    pub conforming: u32,
    #[serde(default)]
    pub active: Option<ActiveViolation>,
}

impl AlarmMachine {
    /// Feeds one datapoint. `new_id` makes the violation id when an alarm is
    /// raised.
    pub(crate) fn observe(
        &mut self,
        violated: bool,
        to_alarm: u32,
        to_clear: u32,
        now_ms: u64,
        new_id: impl FnOnce() -> String,
    ) -> Option<Transition> {
        if violated {
            self.conforming = 0;
            self.violations = self.violations.saturating_add(1);
            if self.active.is_none() && self.violations >= to_alarm {
                let violation = ActiveViolation {
                    violation_id: new_id(),
                    since_ms: now_ms,
                };
                self.active = Some(violation.clone());
                return Some(Transition::Raised(violation));
            }
        } else {
            self.violations = 0;
            if self.active.is_some() {
                self.conforming = self.conforming.saturating_add(1);
                if self.conforming >= to_clear {
                    self.conforming = 0;
                    return self.active.take().map(Transition::Cleared);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `datapoints` ('V' violating, 'o' conforming) and writes what
    /// happened after each: 'A' raised, 'C' cleared, '.' nothing.
    fn run(to_alarm: u32, to_clear: u32, datapoints: &str) -> String {
        let mut machine = AlarmMachine::default();
        let mut ids = 0;
        let mut raised_id = None;
        datapoints
            .chars()
            .enumerate()
            .map(|(i, c)| {
                match machine.observe(c == 'V', to_alarm, to_clear, i as u64, || {
                    ids += 1;
                    format!("v{ids}")
                }) {
                    Some(Transition::Raised(v)) => {
                        raised_id = Some(v.violation_id);
                        'A'
                    }
                    Some(Transition::Cleared(v)) => {
                        assert_eq!(Some(v.violation_id), raised_id.take(), "same id on clear");
                        'C'
                    }
                    None => '.',
                }
            })
            .collect()
    }

    #[test]
    fn consecutive_datapoints_to_alarm_and_to_clear() {
        let cases = [
            (1, 1, "oVVoo", ".A.C."),
            (2, 1, "VoVVVo", "...A.C"),
            (3, 2, "VVoVVVoVoo", ".....A...C"),
            (1, 3, "VoooVooo", "A..CA..C"),
            (2, 2, "VVoVoVVoo", ".A......C"),
            (10, 10, "VVVVVVVVVV", ".........A"),
        ];
        for (to_alarm, to_clear, input, expected) in cases {
            assert_eq!(
                run(to_alarm, to_clear, input),
                expected,
                "alarm after {to_alarm}, clear after {to_clear}: {input}"
            );
        }
    }
}
