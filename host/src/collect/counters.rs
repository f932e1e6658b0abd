//! Interface counters and the traffic delta between two samples.
//!
//! Device Defender wants traffic since the previous report. The counters of
//! one sample are the baseline of the next (the caller persists them, so the
//! delta survives restarts). A delta is only given when it is certainly one:
//! - no baseline, or a baseline without interfaces (its `net/dev` was
//!   unreadable): none;
//! - a different boot (`boot_id` differs, or is known on one side only): none;
//! - a counted interface whose counter went down (32-bit wrap in a driver,
//!   reset) or whose ifindex changed (deleted and re-created): none for the
//!   whole sample, since a partial sum would look like a real total;
//! - an interface that appeared since the baseline is not counted this time:
//!   it may have been moved in from another namespace with old counters, so
//!   its first counters become its baseline and it counts from the next
//!   sample on;
//! - an interface that disappeared since the baseline is not counted: its
//!   last traffic is unknowable. Both cases under-count rather than invent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::sample::NetworkStats;

/// What a sample's network counters were; the baseline for the next sample.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counters {
    /// `/proc/sys/kernel/random/boot_id`, when the kernel has it.
    pub boot_id: Option<String>,
    /// Every interface of `/proc/net/dev`, loopback included (whether it is
    /// counted is decided when the delta is computed, so changing
    /// `includeLoopbackTraffic` needs no new baseline).
    pub interfaces: BTreeMap<String, InterfaceCounters>,
}

/// The cumulative counters of one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceCounters {
    /// Kernel interface index (from `net/igmp` or `net/if_inet6`), which
    /// changes when an interface is deleted and created again.
    pub ifindex: Option<u32>,
    pub bytes_in: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub packets_out: u64,
}

/// Why a sample has, or has not, `network_stats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaOutcome {
    /// A delta was computed over the interfaces present in both samples.
    Computed,
    /// No baseline was given, or it holds no interfaces.
    NoBaseline,
    /// `/proc/net/dev` could not be read in this sample.
    CountersUnreadable,
    /// The baseline is from another boot.
    BootChanged,
    /// A counter of this interface is lower than in the baseline.
    CounterWentDown { interface: String },
    /// This interface has another index than in the baseline.
    InterfaceRecreated { interface: String },
    /// No counted interface is in both samples, so there is nothing to compare.
    NoCommonInterface,
}

impl std::fmt::Display for DeltaOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeltaOutcome::Computed => write!(f, "computed"),
            DeltaOutcome::NoBaseline => write!(f, "no baseline"),
            DeltaOutcome::CountersUnreadable => write!(f, "interface counters unreadable"),
            DeltaOutcome::BootChanged => write!(f, "baseline is from another boot"),
            DeltaOutcome::CounterWentDown { interface } => {
                write!(f, "a counter of {interface} went down")
            }
            DeltaOutcome::InterfaceRecreated { interface } => {
                write!(f, "interface {interface} was re-created")
            }
            DeltaOutcome::NoCommonInterface => {
                write!(f, "no counted interface is in both samples")
            }
        }
    }
}

/// The traffic between `baseline` and `now`, or why there is none.
pub(crate) fn delta(
    baseline: Option<&Counters>,
    now: &Counters,
    include_loopback: bool,
) -> Result<NetworkStats, DeltaOutcome> {
    let Some(base) = baseline.filter(|b| !b.interfaces.is_empty()) else {
        return Err(DeltaOutcome::NoBaseline);
    };
    if now.interfaces.is_empty() {
        return Err(DeltaOutcome::CountersUnreadable);
    }
    if base.boot_id != now.boot_id {
        return Err(DeltaOutcome::BootChanged);
    }
    let counted = |name: &str| include_loopback || name != super::interfaces::LOOPBACK;
    let mut sum = NetworkStats::default();
    let mut common = 0usize;
    let mut any_counted = false;
    for (name, cur) in now.interfaces.iter().filter(|(n, _)| counted(n)) {
        any_counted = true;
        let Some(old) = base.interfaces.get(name) else {
            continue;
        };
        if let (Some(a), Some(b)) = (old.ifindex, cur.ifindex)
            && a != b
        {
            return Err(DeltaOutcome::InterfaceRecreated {
                interface: name.clone(),
            });
        }
        let went_down = || DeltaOutcome::CounterWentDown {
            interface: name.clone(),
        };
        let add = |total: &mut u64, now: u64, then: u64| -> Result<(), DeltaOutcome> {
            let d = now.checked_sub(then).ok_or_else(went_down)?;
            // Summing real counters cannot overflow u64; if it did, the
            // input is not real counters and no delta is honest.
            *total = total.checked_add(d).ok_or_else(went_down)?;
            Ok(())
        };
        add(&mut sum.bytes_in, cur.bytes_in, old.bytes_in)?;
        add(&mut sum.packets_in, cur.packets_in, old.packets_in)?;
        add(&mut sum.bytes_out, cur.bytes_out, old.bytes_out)?;
        add(&mut sum.packets_out, cur.packets_out, old.packets_out)?;
        common += 1;
    }
    let base_counted = base.interfaces.keys().any(|n| counted(n));
    if common == 0 && (any_counted || base_counted) {
        return Err(DeltaOutcome::NoCommonInterface);
    }
    Ok(sum)
}

#[cfg(test)]
#[allow(
    clippy::type_complexity,
    reason = "test tables spell out each case's expected tuple inline"
)]
mod tests {
    use super::*;

    fn counters(boot: Option<&str>, ifs: &[(&str, Option<u32>, [u64; 4])]) -> Counters {
        Counters {
            boot_id: boot.map(str::to_owned),
            interfaces: ifs
                .iter()
                .map(|(n, i, [bi, pi, bo, po])| {
                    (
                        (*n).to_owned(),
                        InterfaceCounters {
                            ifindex: *i,
                            bytes_in: *bi,
                            packets_in: *pi,
                            bytes_out: *bo,
                            packets_out: *po,
                        },
                    )
                })
                .collect(),
        }
    }

    fn stats(v: [u64; 4]) -> NetworkStats {
        NetworkStats {
            bytes_in: v[0],
            packets_in: v[1],
            bytes_out: v[2],
            packets_out: v[3],
        }
    }

    #[test]
    fn deltas() {
        let b = Some("b1");
        let base = counters(
            b,
            &[
                ("lo", Some(1), [100, 1, 100, 1]),
                ("eth0", Some(2), [1000, 10, 500, 5]),
                ("wlan0", Some(3), [u64::from(u32::MAX), 1, 1, 1]),
            ],
        );
        let grown = counters(
            b,
            &[
                ("lo", Some(1), [900, 9, 900, 9]),
                ("eth0", Some(2), [1500, 15, 800, 8]),
                // Past 32 bits: a u64 counter simply keeps growing.
                ("wlan0", Some(3), [u64::from(u32::MAX) + 10, 2, 2, 2]),
            ],
        );
        let cases: Vec<(
            &str,
            Option<Counters>,
            Counters,
            bool,
            Result<NetworkStats, DeltaOutcome>,
        )> = vec![
            (
                "no baseline",
                None,
                grown.clone(),
                false,
                Err(DeltaOutcome::NoBaseline),
            ),
            (
                "empty baseline",
                Some(Counters::default()),
                grown.clone(),
                false,
                Err(DeltaOutcome::NoBaseline),
            ),
            (
                "loopback excluded",
                Some(base.clone()),
                grown.clone(),
                false,
                Ok(stats([510, 6, 301, 4])),
            ),
            (
                "loopback included",
                Some(base.clone()),
                grown.clone(),
                true,
                Ok(stats([1310, 14, 1101, 12])),
            ),
            (
                "unreadable now",
                Some(base.clone()),
                counters(b, &[]),
                false,
                Err(DeltaOutcome::CountersUnreadable),
            ),
            (
                "other boot",
                Some(base.clone()),
                counters(Some("b2"), &[("eth0", Some(2), [2000, 20, 900, 9])]),
                false,
                Err(DeltaOutcome::BootChanged),
            ),
            (
                "boot id lost",
                Some(base.clone()),
                counters(None, &[("eth0", Some(2), [2000, 20, 900, 9])]),
                false,
                Err(DeltaOutcome::BootChanged),
            ),
            (
                "counter reset",
                Some(base.clone()),
                counters(b, &[("eth0", Some(2), [10, 20, 900, 9])]),
                false,
                Err(DeltaOutcome::CounterWentDown {
                    interface: "eth0".into(),
                }),
            ),
            (
                "re-created",
                Some(base.clone()),
                counters(b, &[("eth0", Some(7), [2000, 20, 900, 9])]),
                false,
                Err(DeltaOutcome::InterfaceRecreated {
                    interface: "eth0".into(),
                }),
            ),
            // lo went down but is not counted, so it does not void the sample.
            (
                "uncounted lo reset",
                Some(base.clone()),
                counters(
                    b,
                    &[
                        ("lo", Some(1), [0, 0, 0, 0]),
                        ("eth0", Some(2), [1001, 11, 501, 6]),
                    ],
                ),
                false,
                Ok(stats([1, 1, 1, 1])),
            ),
            // wlan0 disappeared, usb0 appeared: only eth0 is counted.
            (
                "appeared and disappeared",
                Some(base.clone()),
                counters(
                    b,
                    &[
                        ("eth0", Some(2), [1001, 11, 501, 6]),
                        ("usb0", Some(9), [7, 7, 7, 7]),
                    ],
                ),
                false,
                Ok(stats([1, 1, 1, 1])),
            ),
            (
                "nothing in common",
                Some(base.clone()),
                counters(b, &[("usb0", Some(9), [7, 7, 7, 7])]),
                false,
                Err(DeltaOutcome::NoCommonInterface),
            ),
            // Only lo on both sides and lo not counted: truly no traffic.
            (
                "loopback only",
                Some(counters(b, &[("lo", None, [1, 1, 1, 1])])),
                counters(b, &[("lo", None, [5, 5, 5, 5])]),
                false,
                Ok(stats([0, 0, 0, 0])),
            ),
        ];
        for (name, base, now, lo, expected) in cases {
            assert_eq!(delta(base.as_ref(), &now, lo), expected, "case {name}");
        }
    }
}
