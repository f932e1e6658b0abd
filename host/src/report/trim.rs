//! Fitting a report into a byte budget by dropping list entries in a fixed,
//! documented order (docs/REPORT.md), never by sampling: the same sample
//! and budget always give the same bytes.
//!
//! The order: established connections, then listening UDP ports, then
//! listening TCP ports, then the values of list-typed custom metrics (the
//! metric whose name sorts last first); within each list, entries are
//! dropped from the end of its sorted order. Totals keep the true counts.
//!
//! Cost: one encoding to learn the size, one size computation per dropped
//! entry (entries are measured from the end of a list only as far as the
//! cut goes), and one final encoding that is checked against the budget.

use std::collections::BTreeMap;

use super::Format;
use super::encode::{Number, Styled, encode, encoded_len};
use super::model::Report;
use super::validate::ValidationError;
use crate::sample::CustomMetricValue;

/// A report ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// The report as sent, after trimming.
    pub report: Report,
    /// Its encoding; never longer than the budget.
    pub bytes: Vec<u8>,
    /// What was dropped to fit the budget.
    pub trimmed: Trimmed,
}

/// Entries dropped from each list to fit the budget.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Trimmed {
    pub established_connections: u64,
    pub listening_udp_ports: u64,
    pub listening_tcp_ports: u64,
    /// Values dropped per list-typed custom metric; metrics with nothing
    /// dropped are absent.
    pub custom_metrics: BTreeMap<String, u64>,
}

impl Trimmed {
    /// All entries dropped, over every list.
    pub fn total(&self) -> u64 {
        self.established_connections
            + self.listening_udp_ports
            + self.listening_tcp_ports
            + self.custom_metrics.values().sum::<u64>()
    }
}

/// Encodes an already validated report in `format`, trimming it to at most
/// `max_bytes`. Fails when the report does not fit even with every list
/// emptied (header, totals, network stats and single-number custom metrics
/// are never dropped).
pub fn fit(
    mut report: Report,
    format: Format,
    max_bytes: usize,
) -> Result<Prepared, ValidationError> {
    let mut trimmed = Trimmed::default();
    let mut bytes = encode(&report, format);
    // One cut normally suffices because entry sizes are exact; the loop only
    // guards against a miscount, and ends because each pass over budget
    // either drops at least one entry or gives up.
    while bytes.len() > max_bytes {
        let excess = bytes.len() - max_bytes;
        if !cut(&mut report, format, excess, &mut trimmed) {
            return Err(ValidationError::DoesNotFit {
                format: format.label(),
                minimal: bytes.len(),
                max_bytes,
            });
        }
        bytes = encode(&report, format);
    }
    Ok(Prepared {
        report,
        bytes,
        trimmed,
    })
}

/// Drops entries worth at least `excess` bytes, in the trimming order.
/// Returns false when nothing was left to drop.
fn cut(report: &mut Report, format: Format, excess: usize, trimmed: &mut Trimmed) -> bool {
    let style = format.key_style();
    let mut excess = excess;
    let mut dropped_any = false;
    let mut note = |dropped: usize, counter: &mut u64| {
        dropped_any |= dropped > 0;
        *counter += dropped as u64;
    };

    if let Some(metrics) = &mut report.metrics {
        let conns = &mut metrics.tcp_connections.established_connections.connections;
        let dropped = cut_tail(conns, &mut excess, format, |c| {
            encoded_len(&Styled(c, style), format)
        });
        note(dropped, &mut trimmed.established_connections);
        let udp = &mut metrics.listening_udp_ports.ports;
        let dropped = cut_tail(udp, &mut excess, format, |p| {
            encoded_len(&Styled(p, style), format)
        });
        note(dropped, &mut trimmed.listening_udp_ports);
        let tcp = &mut metrics.listening_tcp_ports.ports;
        let dropped = cut_tail(tcp, &mut excess, format, |p| {
            encoded_len(&Styled(p, style), format)
        });
        note(dropped, &mut trimmed.listening_tcp_ports);
    }
    for (name, value) in report.custom_metrics.iter_mut().rev() {
        let dropped = match value {
            CustomMetricValue::Number(_) => 0,
            CustomMetricValue::NumberList(list) => cut_tail(list, &mut excess, format, |n| {
                encoded_len(&Number(*n), format)
            }),
            CustomMetricValue::StringList(list) | CustomMetricValue::IpList(list) => {
                cut_tail(list, &mut excess, format, |s| encoded_len(s, format))
            }
        };
        if dropped > 0 {
            let counter = trimmed.custom_metrics.entry(name.clone()).or_default();
            note(dropped, counter);
        }
    }
    dropped_any
}

/// Drops the fewest entries from the end of `items` that save `excess`
/// bytes (or all of them), lowers `excess` by what was saved, and returns
/// the number dropped.
fn cut_tail<T>(
    items: &mut Vec<T>,
    excess: &mut usize,
    format: Format,
    entry_len: impl Fn(&T) -> usize,
) -> usize {
    if *excess == 0 {
        return 0;
    }
    let n = items.len();
    let mut entries_len = 0;
    let mut saved = 0;
    let mut k = 0;
    while k < n && saved < *excess {
        entries_len += entry_len(&items[n - 1 - k]);
        k += 1;
        saved = entries_len + separators_len(format, n) - separators_len(format, n - k);
    }
    items.truncate(n - k);
    *excess -= saved.min(*excess);
    k
}

/// Bytes an array of `n` entries spends besides the entries themselves,
/// apart from the brackets or type byte that every length shares: JSON's
/// commas, or the length bytes of a CBOR array header.
fn separators_len(format: Format, n: usize) -> usize {
    match format {
        Format::Json | Format::JsonShort => n.saturating_sub(1),
        Format::Cbor => match n {
            0..=23 => 0,
            24..=0xff => 1,
            0x100..=0xffff => 2,
            0x1_0000..=0xffff_ffff => 4,
            _ => 8,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_match_the_encoders() {
        for format in [Format::Json, Format::JsonShort, Format::Cbor] {
            let empty: Vec<u32> = Vec::new();
            let base = encoded_len(&empty, format);
            for n in [0usize, 1, 2, 23, 24, 255, 256, 65_535, 65_536] {
                let list = vec![7u32; n];
                let entries = n * encoded_len(&7u32, format);
                assert_eq!(
                    encoded_len(&list, format),
                    base + entries + separators_len(format, n),
                    "{format:?} with {n} entries"
                );
            }
        }
    }
}
