//! The outbox against a model queue, under random sequences of pushes, acks,
//! reopens, crashes in the middle of a write (the file cut at any byte of
//! the record being written) and lost fsyncs (a card that ignored the
//! flush: the last record gone whole, its ack possibly kept).
//!
//! After every step: exactly the entries the model holds are waiting, in
//! order, with their payloads (none lost, none resurrected); an id is never
//! handed out twice; the segments stay within `maxBytes`; evictions take the
//! oldest entries and are counted.
//!
//! The cases run in a tmpfs when `/dev/shm` exists (fsync is then free: this
//! checks the logic, the real-disk tests check the disk). `PROPTEST_CASES`
//! raises the count for a longer search.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;

const LIMITS: OutboxLimits = OutboxLimits {
    max_bytes: 3 * 4096,
    segment_bytes: 4096,
};

#[derive(Debug, Clone)]
enum Op {
    /// Push a payload of this length (its bytes derive from the id).
    Push(usize),
    /// Acknowledge the n-th waiting entry (modulo the depth).
    Ack(usize),
    /// Close and open again.
    Reopen,
    /// A crash in the middle of the last write: the file it went to is cut
    /// at byte `k` (modulo the record's length) of that record, and the
    /// outbox opened again. The write had not returned, so its effect is
    /// undone: a pushed entry was never stored, an acked one waits again.
    CrashDuringLastWrite(usize),
    /// The last record of the active segment never reached the card,
    /// although `push` returned (the card ignored the flush); its ack, if
    /// any, survived, and so did the id reservation unless the flag says it
    /// was lost too. The outbox is opened again.
    LostFlush(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..700).prop_map(Op::Push),
        4 => any::<usize>().prop_map(Op::Ack),
        1 => Just(Op::Reopen),
        1 => any::<usize>().prop_map(Op::CrashDuringLastWrite),
        1 => any::<bool>().prop_map(Op::LostFlush),
    ]
}

/// The last write the outbox made, for the crash operations.
#[derive(Debug, Clone)]
enum LastWrite {
    Record {
        id: u64,
        path: PathBuf,
        offset: u64,
        len: u64,
    },
    Ack {
        id: u64,
        payload: Vec<u8>,
        path: PathBuf,
        offset: u64,
    },
}

fn payload(id: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (id as usize * 31 + i) as u8).collect()
}

fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).expect("tempdir in /dev/shm")
    } else {
        tempfile::tempdir().expect("tempdir")
    }
}

fn open(dir: &Path) -> (Outbox, Status) {
    let status = Status::new();
    let outbox = Outbox::open(dir, LIMITS, "outbox", status.clone()).expect("outbox opens");
    (outbox, status)
}

fn cut_file(path: &Path, len: u64) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for the crash");
    file.set_len(len).expect("cut");
}

fn segments_on_disk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == SEGMENT_EXT))
        .map(|p| std::fs::metadata(p).expect("stat").len())
        .sum()
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = scratch();
    let (mut outbox, mut status) = open(dir.path());
    let mut model: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
    let mut highest_id = 0u64;
    // The highest id whose ack reached the disk: a lost record's id is
    // still known from its ack.
    let mut acked = std::collections::BTreeSet::new();
    // `next-id` is gone until the next push writes it again.
    let mut reservation_lost = false;
    let mut last_write: Option<LastWrite> = None;

    for op in ops {
        match op {
            Op::Push(len) => {
                let evicted_before = status.number("outbox.evicted");
                let bytes = payload(highest_id, *len);
                let id = outbox.push(&bytes).expect("push").0;
                prop_assert!(
                    id > highest_id,
                    "id {id} reused (highest so far {highest_id})"
                );
                highest_id = id;
                reservation_lost = false;
                let slot = outbox.slot(EntryId(id)).expect("just pushed");
                last_write = Some(LastWrite::Record {
                    id,
                    path: outbox.segments[&slot.segment].path.clone(),
                    offset: u64::from(slot.offset),
                    len: HEADER as u64 + *len as u64,
                });
                model.push_back((id, bytes));
                let waiting = outbox.pending();
                let mut evicted = 0;
                while model
                    .front()
                    .is_some_and(|(i, _)| !waiting.contains(&EntryId(*i)))
                {
                    model.pop_front();
                    evicted += 1;
                }
                prop_assert_eq!(
                    status.number("outbox.evicted") - evicted_before,
                    evicted,
                    "evictions are the oldest entries, and counted"
                );
            }
            Op::Ack(n) => {
                if model.is_empty() {
                    continue;
                }
                let (id, bytes) = model.remove(n % model.len()).expect("in range");
                let slot = outbox.slot(EntryId(id)).expect("waiting");
                outbox.acknowledge(EntryId(id)).expect("ack");
                acked.insert(id);
                last_write = outbox.segments.get(&slot.segment).map(|s| LastWrite::Ack {
                    id,
                    payload: bytes,
                    path: s.ack_path.clone(),
                    offset: s.ack_len - ACK_RECORD as u64,
                });
            }
            Op::Reopen => {
                drop(outbox);
                (outbox, status) = open(dir.path());
                last_write = None;
            }
            Op::CrashDuringLastWrite(k) => {
                let Some(write) = last_write.take() else {
                    continue;
                };
                drop(outbox);
                match write {
                    LastWrite::Record {
                        id,
                        path,
                        offset,
                        len,
                    } => {
                        cut_file(&path, offset + (*k as u64 % len));
                        model.retain(|(i, _)| *i != id);
                    }
                    LastWrite::Ack {
                        id,
                        payload,
                        path,
                        offset,
                    } => {
                        cut_file(&path, offset + (*k as u64 % ACK_RECORD as u64));
                        acked.remove(&id);
                        let at = model.partition_point(|(i, _)| *i < id);
                        model.insert(at, (id, payload));
                    }
                }
                (outbox, status) = open(dir.path());
            }
            Op::LostFlush(lose_reservation) => {
                let Some((_, segment)) = outbox.segments.last_key_value() else {
                    continue;
                };
                let path = segment.path.clone();
                drop(outbox);
                if let Some((offset, id)) = last_record(&path) {
                    cut_file(&path, offset);
                    model.retain(|(i, _)| *i != id);
                }
                reservation_lost |= *lose_reservation;
                if reservation_lost {
                    let _ = std::fs::remove_file(dir.path().join(storage::RESERVATION_FILE));
                    // With the record and the reservation gone, nothing on
                    // disk names the lost id: handing it out again cannot
                    // confuse anything. Ids that something on disk names
                    // must still never come back.
                    let on_disk = model.iter().map(|(i, _)| *i).max().unwrap_or(0);
                    highest_id = on_disk.max(acked.last().copied().unwrap_or(0));
                }
                (outbox, status) = open(dir.path());
                last_write = None;
            }
        }

        let expected: Vec<EntryId> = model.iter().map(|(i, _)| EntryId(*i)).collect();
        prop_assert_eq!(outbox.pending(), expected, "after {:?}", op);
        for (id, bytes) in &model {
            prop_assert_eq!(&outbox.read(EntryId(*id)).expect("reads"), bytes);
        }
        prop_assert!(outbox.disk_bytes() <= LIMITS.max_bytes);
        prop_assert!(segments_on_disk(dir.path()) <= LIMITS.max_bytes);
    }
    Ok(())
}

/// The offset and id of the last record of a segment file.
fn last_record(path: &Path) -> Option<(u64, u64)> {
    let data = std::fs::read(path).expect("read segment");
    let mut offset = 0;
    let mut last = None;
    while let Some((id, len, _)) = recover::parse_entry(&data, offset) {
        last = Some((offset as u64, id));
        offset += HEADER + len;
    }
    last
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn outbox_matches_a_model_queue(ops in proptest::collection::vec(op(), 1..60)) {
        run(&ops)?;
    }
}
