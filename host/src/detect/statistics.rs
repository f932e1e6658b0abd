//! The device's own history: traffic windows and statistical baselines.
//!
//! Traffic arrives as a delta per sample. A [`TrafficWindow`] sums the deltas
//! of the last `durationSeconds` (sliding), so a profile's `count` keeps its
//! cloud meaning (bytes per duration) while it is judged every few seconds.
//!
//! A [`History`] keeps one value per period (`durationSeconds`, else 300 s,
//! one report interval): the traffic summed over the period, or for counts
//! the value at the end of the period. Statistical thresholds are percentiles
//! of these values. Periods never overlap, so the baseline describes the
//! same quantity as the cloud's per-report datapoints.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Traffic deltas of the last window, newest last.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrafficWindow {
    /// (end of the sample's span in ms, span in ms, amount).
    entries: VecDeque<(u64, u64, u64)>,
}

impl TrafficWindow {
    /// Adds a delta that covers `span_ms` up to `end_ms`, and forgets deltas
    /// that ended a whole window before it.
    pub(crate) fn push(&mut self, end_ms: u64, span_ms: u64, amount: u64, window_ms: u64) {
        self.entries.push_back((end_ms, span_ms, amount));
        let horizon = end_ms.saturating_sub(window_ms);
        while let Some(&(end, _, _)) = self.entries.front() {
            if end <= horizon {
                self.entries.pop_front();
            } else {
                break;
            }
        }
    }

    /// Forgets everything: the next deltas cannot be summed with the old
    /// ones (a counter reset, a gap, the clock stepping back).
    pub(crate) fn reset(&mut self) {
        self.entries.clear();
    }

    pub(crate) fn total(&self) -> u64 {
        self.entries
            .iter()
            .fold(0u64, |sum, (_, _, amount)| sum.saturating_add(*amount))
    }

    /// Whether the deltas kept cover a whole window.
    pub(crate) fn is_full(&self, window_ms: u64) -> bool {
        let covered = self
            .entries
            .iter()
            .fold(0u64, |sum, (_, span, _)| sum.saturating_add(*span));
        covered >= window_ms
    }
}

/// Traffic summed per report period, for behaviors judged once per period
/// (the default): the datapoint is the sum of the last `periods` whole
/// periods, as Device Defender sums the reports of `durationSeconds`.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeriodSums {
    /// Closed periods, newest last: (sum, whether the period was measured
    /// whole, with no counter reset or unknown span in it).
    closed: VecDeque<(u64, bool)>,
    open: u64,
    /// False until a period starts with a known delta.
    open_whole: bool,
}

impl PeriodSums {
    /// Adds a sample's delta to the open period.
    pub(crate) fn add(&mut self, amount: u64) {
        self.open = self.open.saturating_add(amount);
    }

    /// Forgets everything: a counter reset, a gap, the clock stepping back.
    /// The open period is whole only if it starts now (`at_boundary`: the
    /// sample that reset the sums also ended a period).
    pub(crate) fn reset(&mut self, at_boundary: bool) {
        self.closed.clear();
        self.open = 0;
        self.open_whole = at_boundary;
    }

    /// Closes the open period and returns the sum of the last `periods`
    /// closed periods and whether they were all measured whole.
    pub(crate) fn close(&mut self, periods: usize) -> (u64, bool) {
        let periods = periods.max(1);
        self.closed.push_back((self.open, self.open_whole));
        self.open = 0;
        self.open_whole = true;
        while self.closed.len() > periods {
            self.closed.pop_front();
        }
        let total = self
            .closed
            .iter()
            .fold(0u64, |sum, (amount, _)| sum.saturating_add(*amount));
        let whole = self.closed.len() == periods && self.closed.iter().all(|(_, whole)| *whole);
        (total, whole)
    }
}

/// One value per period, oldest first, at most `capacity` of them.
#[derive(Debug, Clone)]
pub(crate) struct History {
    values: VecDeque<f64>,
    capacity: usize,
    period_ms: u64,
    /// Start of the open period, once the first sample arrived.
    period_start_ms: Option<u64>,
    /// Traffic summed in the open period, or the latest count.
    period_value: Option<f64>,
    /// The sorted values, rebuilt when a value was added.
    sorted: Option<Vec<f64>>,
}

/// What [`History`] persists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SavedHistory {
    pub period_seconds: u64,
    pub values: Vec<f64>,
}

impl History {
    pub(crate) fn new(capacity: usize, period_ms: u64) -> History {
        History {
            values: VecDeque::new(),
            capacity: capacity.max(1),
            period_ms: period_ms.max(1),
            period_start_ms: None,
            period_value: None,
            sorted: None,
        }
    }

    /// Restores saved values if they were taken over the same period.
    pub(crate) fn restore(&mut self, saved: &SavedHistory) -> bool {
        if saved.period_seconds.checked_mul(1000) != Some(self.period_ms) {
            return false;
        }
        let skip = saved.values.len().saturating_sub(self.capacity);
        self.values = saved
            .values
            .iter()
            .skip(skip)
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        self.sorted = None;
        true
    }

    pub(crate) fn save(&self) -> SavedHistory {
        SavedHistory {
            period_seconds: self.period_ms / 1000,
            values: self.values.iter().copied().collect(),
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    /// Adds traffic seen up to `now_ms` to the open period. Returns whether
    /// a period closed (and a value was recorded).
    pub(crate) fn add_traffic(&mut self, now_ms: u64, amount: f64) -> bool {
        if self.period_start_ms.is_some() {
            self.period_value = Some(self.period_value.unwrap_or(0.0) + amount);
        }
        self.close_if_due(now_ms)
    }

    /// Notes a count seen at `now_ms`. Returns whether a value was recorded.
    pub(crate) fn add_count(&mut self, now_ms: u64, value: f64) -> bool {
        self.period_value = Some(value);
        self.close_if_due(now_ms)
    }

    /// Starts a period at `now_ms` without a value: the first traffic
    /// sample (whose span is unknown), or after a gap, which costs the open
    /// period rather than recording a partial sum.
    pub(crate) fn start(&mut self, now_ms: u64) {
        self.period_start_ms = Some(now_ms);
        self.period_value = None;
    }

    fn close_if_due(&mut self, now_ms: u64) -> bool {
        let Some(start) = self.period_start_ms else {
            self.start(now_ms);
            return false;
        };
        if now_ms < start {
            // The clock stepped back: this period cannot be measured.
            self.start(now_ms);
            return false;
        }
        if now_ms - start < self.period_ms {
            return false;
        }
        let recorded = match self.period_value {
            Some(v) if v.is_finite() => {
                if self.values.len() == self.capacity {
                    self.values.pop_front();
                }
                self.values.push_back(v);
                self.sorted = None;
                true
            }
            _ => false,
        };
        self.start(now_ms);
        recorded
    }

    /// The value at `quantile` (0..=1), linearly interpolated between the
    /// closest ranks; `None` before `min_datapoints` values exist.
    pub(crate) fn percentile(&mut self, quantile: f64, min_datapoints: usize) -> Option<f64> {
        if self.values.is_empty() || self.values.len() < min_datapoints {
            return None;
        }
        let sorted = self.sorted.get_or_insert_with(|| {
            let mut v: Vec<f64> = self.values.iter().copied().collect();
            v.sort_unstable_by(f64::total_cmp);
            v
        });
        Some(percentile_of_sorted(sorted, quantile))
    }
}

/// Linear interpolation between closest ranks (the "R-7" definition, as
/// numpy and most spreadsheets compute it).
pub(crate) fn percentile_of_sorted(sorted: &[f64], quantile: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return f64::NAN;
    };
    let rank = quantile.clamp(0.0, 1.0) * last as f64;
    let low = rank.floor() as usize;
    let high = rank.ceil() as usize;
    let fraction = rank - low as f64;
    sorted[low] + (sorted[high.min(last)] - sorted[low]) * fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12 item 7: a restored period so large that it overflows in
    /// milliseconds is not this history's period; it must not panic.
    #[test]
    fn restore_refuses_a_period_that_overflows() {
        let mut history = History::new(10, 300_000);
        let absurd = SavedHistory {
            period_seconds: u64::MAX / 10,
            values: vec![1.0, 2.0],
        };
        assert!(!history.restore(&absurd));
        assert_eq!(history.len(), 0);
        let fine = SavedHistory {
            period_seconds: 300,
            values: vec![1.0, 2.0],
        };
        assert!(history.restore(&fine));
        assert_eq!(history.len(), 2);
    }

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let cases = [
            (0.0, 1.0),
            (0.5, 50.5),
            (0.9, 90.1),
            (0.99, 99.01),
            (0.9999, 99.9901),
            (1.0, 100.0),
        ];
        for (q, expected) in cases {
            let got = percentile_of_sorted(&values, q);
            assert!((got - expected).abs() < 1e-9, "q={q}: {got} != {expected}");
        }
        assert_eq!(percentile_of_sorted(&[7.0], 0.5), 7.0);
    }

    #[test]
    fn traffic_window_slides_and_knows_when_it_is_full() {
        let mut w = TrafficWindow::default();
        let window = 30_000;
        w.push(10_000, 10_000, 5, window);
        assert!(!w.is_full(window));
        w.push(20_000, 10_000, 7, window);
        w.push(30_000, 10_000, 1, window);
        assert!(w.is_full(window));
        assert_eq!(w.total(), 13);
        w.push(40_000, 10_000, 100, window);
        assert_eq!(w.total(), 108, "the delta ending at 10 s left the window");
        w.reset();
        assert_eq!(w.total(), 0);
        assert!(!w.is_full(window));
    }

    #[test]
    fn history_records_one_value_per_period_and_skips_gaps() {
        let mut h = History::new(3, 300_000);
        h.start(0);
        assert!(!h.add_traffic(100_000, 10.0));
        assert!(h.add_traffic(300_000, 5.0), "period closed");
        assert!(!h.add_traffic(400_000, 1.0));
        h.start(450_000);
        assert!(
            !h.add_traffic(600_000, 1.0),
            "a gap restarts the open period"
        );
        assert!(h.add_traffic(750_000, 0.0));
        assert_eq!(h.save().values, vec![15.0, 1.0]);
        for (i, t) in [1_050_000, 1_350_000, 1_650_000].into_iter().enumerate() {
            assert!(h.add_traffic(t, i as f64));
        }
        assert_eq!(h.len(), 3, "capacity bounds the history");
        assert_eq!(h.save().values, vec![0.0, 1.0, 2.0]);
        assert_eq!(h.percentile(1.0, 3), Some(2.0));
        assert_eq!(h.percentile(1.0, 4), None, "not enough datapoints yet");
    }
}
