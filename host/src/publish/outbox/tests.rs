use std::fs::OpenOptions;

use super::storage::inject;
use super::*;

const SMALL: OutboxLimits = OutboxLimits {
    max_bytes: 8192,
    segment_bytes: 4096,
};

fn open(dir: &Path, limits: OutboxLimits) -> (Outbox, Status) {
    let status = Status::new();
    let outbox = Outbox::open(dir, limits, "outbox", status.clone()).expect("outbox opens");
    (outbox, status)
}

fn contents(outbox: &Outbox) -> Vec<Vec<u8>> {
    outbox
        .pending()
        .into_iter()
        .map(|id| outbox.read(id).expect("entry reads"))
        .collect()
}

fn payloads(range: std::ops::Range<u32>) -> Vec<Vec<u8>> {
    range.map(|i| format!("report {i}").into_bytes()).collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("dir lists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == SEGMENT_EXT))
        .collect();
    files.sort();
    files
}

#[test]
fn reopen_resumes_waiting_entries_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut outbox, status) = open(dir.path(), OutboxLimits::default());
    let ids: Vec<EntryId> = payloads(0..5)
        .iter()
        .map(|p| outbox.push(p).expect("push"))
        .collect();
    outbox.acknowledge(ids[0]).expect("ack");
    outbox.acknowledge(ids[2]).expect("ack out of order");
    assert_eq!(outbox.depth(), 3);
    assert_eq!(status.number("outbox.depth"), 3);
    assert_eq!(status.number("outbox.acknowledged"), 2);
    drop(outbox);

    let (mut outbox, status) = open(dir.path(), OutboxLimits::default());
    assert_eq!(outbox.pending(), vec![ids[1], ids[3], ids[4]]);
    let expected = payloads(0..5);
    assert_eq!(
        contents(&outbox),
        vec![
            expected[1].clone(),
            expected[3].clone(),
            expected[4].clone()
        ]
    );
    assert_eq!(status.number("outbox.depth"), 3);
    assert_eq!(outbox.bytes(), (8 * 3) as u64);
    let next = outbox.push(b"after restart").expect("push");
    assert!(next > ids[4], "ids keep increasing across restarts");
    assert!(matches!(
        outbox.acknowledge(ids[0]),
        Err(OutboxError::UnknownEntry { .. })
    ));
}

#[test]
fn torn_tail_is_truncated_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut outbox, _) = open(dir.path(), OutboxLimits::default());
    for p in payloads(0..3) {
        outbox.push(&p).expect("push");
    }
    drop(outbox);
    // A crash in the middle of the third record's write.
    let segment = &segment_files(dir.path())[0];
    let len = std::fs::metadata(segment).expect("stat").len();
    let file = OpenOptions::new().write(true).open(segment).expect("open");
    file.set_len(len - 3).expect("truncate");
    drop(file);

    let (mut outbox, status) = open(dir.path(), OutboxLimits::default());
    assert_eq!(contents(&outbox), payloads(0..2));
    assert_eq!(status.number("outbox.recovered_torn"), 1);
    // The log stays appendable after the cut, and survives another reopen.
    let id = outbox.push(b"next").expect("push");
    assert!(
        id > EntryId(3),
        "ids are never reused, not even the torn entry's"
    );
    drop(outbox);
    let (outbox, status) = open(dir.path(), OutboxLimits::default());
    assert_eq!(
        contents(&outbox).last().map(Vec::as_slice),
        Some(&b"next"[..])
    );
    assert_eq!(status.number("outbox.recovered_torn"), 0);
}

/// Flips one byte of a record's checksum: the last record is a torn tail
/// (cut), a record in the middle is skipped and the ones after it kept.
#[test]
fn corrupt_checksums_are_recovered_and_counted() {
    let cases = [
        // (record to damage, expected survivors, torn, corrupt)
        (3usize, vec![0u32, 1, 2], 1u64, 0u64),
        (1, vec![0, 2, 3], 0, 1),
        (0, vec![1, 2, 3], 0, 1),
    ];
    for (damaged, survivors, torn, corrupt) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut outbox, _) = open(dir.path(), OutboxLimits::default());
        for p in payloads(0..4) {
            outbox.push(&p).expect("push");
        }
        drop(outbox);
        let segment = &segment_files(dir.path())[0];
        let mut bytes = std::fs::read(segment).expect("read");
        // Every payload here is 8 bytes long, so records are 24 bytes.
        bytes[damaged * (HEADER + 8) + 12] ^= 0x40;
        std::fs::write(segment, &bytes).expect("write");

        let (outbox, status) = open(dir.path(), OutboxLimits::default());
        let expected: Vec<Vec<u8>> = survivors
            .iter()
            .map(|i| format!("report {i}").into_bytes())
            .collect();
        assert_eq!(contents(&outbox), expected, "damaged record {damaged}");
        assert_eq!(status.number("outbox.recovered_torn"), torn);
        assert_eq!(status.number("outbox.corrupt_records"), corrupt);
    }
}

#[test]
fn torn_ack_record_only_resends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut outbox, _) = open(dir.path(), OutboxLimits::default());
    let ids: Vec<EntryId> = payloads(0..3)
        .iter()
        .map(|p| outbox.push(p).expect("push"))
        .collect();
    outbox.acknowledge(ids[0]).expect("ack");
    outbox.acknowledge(ids[1]).expect("ack");
    drop(outbox);
    let ack = segment_files(dir.path())[0].with_extension(ACK_EXT);
    let file = OpenOptions::new().write(true).open(&ack).expect("open");
    file.set_len((ACK_RECORD + 5) as u64).expect("truncate");
    drop(file);

    let (outbox, status) = open(dir.path(), OutboxLimits::default());
    assert_eq!(outbox.pending(), vec![ids[1], ids[2]]);
    assert_eq!(status.number("outbox.recovered_torn"), 1);
}

#[test]
fn full_outbox_evicts_the_oldest_and_counts_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut outbox, status) = open(dir.path(), SMALL);
    let payload = [7u8; 1000];
    let ids: Vec<EntryId> = (0..20)
        .map(|_| outbox.push(&payload).expect("push"))
        .collect();
    assert!(outbox.disk_bytes() <= SMALL.max_bytes);
    let evicted = status.number("outbox.evicted");
    assert!(evicted > 0, "the outbox had to make room");
    assert_eq!(
        evicted as usize + outbox.depth(),
        20,
        "every entry is waiting or evicted"
    );
    assert_eq!(
        outbox.pending(),
        ids[evicted as usize..].to_vec(),
        "the newest stay"
    );
    drop(outbox);

    let (outbox, _) = open(dir.path(), SMALL);
    assert_eq!(outbox.pending(), ids[evicted as usize..].to_vec());
    assert!(outbox.disk_bytes() <= SMALL.max_bytes);
    assert!(matches!(
        Outbox::open(dir.path(), SMALL, "outbox", Status::new()),
        Err(OutboxError::Locked { .. })
    ));
}

#[test]
fn acknowledged_segments_are_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut outbox, _) = open(dir.path(), SMALL);
    let payload = [1u8; 1000];
    let ids: Vec<EntryId> = (0..7)
        .map(|_| outbox.push(&payload).expect("push"))
        .collect();
    assert_eq!(segment_files(dir.path()).len(), 2);
    for id in &ids {
        outbox.acknowledge(*id).expect("ack");
    }
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "only the active segment stays"
    );
    assert_eq!(outbox.depth(), 0);
    assert_eq!(outbox.bytes(), 0);
}

#[test]
fn oversized_payload_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut outbox, _) = open(dir.path(), SMALL);
    let error = outbox.push(&[0u8; 5000]).expect_err("too large");
    assert!(matches!(error, OutboxError::TooLarge { size: 5000, .. }));
    assert!(
        error
            .to_string()
            .contains(&dir.path().display().to_string())
    );
}

/// Pushes `count` entries of `len` bytes (record `HEADER + len`).
fn fill(outbox: &mut Outbox, count: usize, len: usize) -> Vec<EntryId> {
    (0..count)
        .map(|i| {
            let payload = vec![b'a' + (i % 26) as u8; len];
            outbox.push(&payload).expect("push")
        })
        .collect()
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").len()
}

/// Issue 12 item 3: a corrupt length field (or any bad record) costs that
/// record only, in the last segment and in older ones; an older segment is
/// never cut, even when its damage runs to its end.
#[test]
fn recovery_resynchronises_after_a_corrupt_length_field() {
    // Records of 100-byte payloads are 116 bytes; 35 fit a 4096-byte segment.
    let limits = OutboxLimits {
        max_bytes: 64 * 1024,
        segment_bytes: 4096,
    };
    // (segment to damage, record in it, what to overwrite, expected lost)
    type Damage = (usize, usize, fn(&mut [u8]), usize);
    let cases: [Damage; 4] = [
        // The length field says 2^31: it leads nowhere.
        (0, 3, |r| r[3] = 0x80, 1),
        // The length field says 4: it leads into the record's own payload.
        (0, 3, |r| r[0..4].copy_from_slice(&4u32.to_le_bytes()), 1),
        // The same in the last segment.
        (1, 2, |r| r[3] = 0x80, 1),
        // The last record of an older segment: damage up to its end.
        (0, 34, |r| r[20] ^= 1, 1),
    ];
    for (seg, record, damage, lost) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut outbox, _) = open(dir.path(), limits);
        let ids = fill(&mut outbox, 40, 100);
        drop(outbox);
        let files = segment_files(dir.path());
        assert_eq!(files.len(), 2);
        let path = &files[seg];
        let before = file_len(path);
        let mut bytes = std::fs::read(path).expect("read");
        let at = record * (HEADER + 100);
        damage(&mut bytes[at..at + HEADER + 100]);
        std::fs::write(path, &bytes).expect("write");

        let (outbox, status) = open(dir.path(), limits);
        let damaged = ids[seg * 35 + record];
        let expected: Vec<EntryId> = ids.iter().copied().filter(|i| *i != damaged).collect();
        assert_eq!(
            outbox.pending(),
            expected,
            "segment {seg} record {record}: only the damaged entry is lost"
        );
        assert_eq!(ids.len() - outbox.depth(), lost);
        assert_eq!(status.number("outbox.corrupt_records"), 1);
        assert_eq!(status.number("outbox.recovered_torn"), 0);
        assert_eq!(file_len(path), before, "nothing was cut");
        for id in outbox.pending() {
            outbox.read(id).expect("every entry left reads");
        }
    }
}

/// A bad record at the very end of the last segment is a torn write: cut,
/// and the log goes on after it.
#[test]
fn torn_tail_of_the_last_segment_is_cut_and_appending_continues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut outbox, _) = open(dir.path(), SMALL);
    let ids = fill(&mut outbox, 3, 100);
    drop(outbox);
    let path = &segment_files(dir.path())[0];
    let mut bytes = std::fs::read(path).expect("read");
    bytes[2 * (HEADER + 100)] = 0xff; // length field of the last record
    std::fs::write(path, &bytes).expect("write");
    let (mut outbox, status) = open(dir.path(), SMALL);
    assert_eq!(outbox.pending(), ids[..2].to_vec());
    assert_eq!(status.number("outbox.recovered_torn"), 1);
    assert_eq!(file_len(path), 2 * (HEADER as u64 + 100));
    let next = outbox.push(b"next").expect("push");
    drop(outbox);
    let (outbox, _) = open(dir.path(), SMALL);
    assert_eq!(outbox.pending(), vec![ids[0], ids[1], next]);
}

/// Issue 12 item 4: the last records and the `next-id` reservation are lost
/// (a card that ignored flushes) while their acks survived. The next entry
/// gets a new id and no stale ack hides it.
#[test]
fn lost_records_never_let_an_id_be_reused_or_an_ack_hide_an_entry() {
    for lose_reservation in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut outbox, _) = open(dir.path(), SMALL);
        let ids = fill(&mut outbox, 3, 10);
        for id in &ids {
            outbox.acknowledge(*id).expect("ack");
        }
        drop(outbox);
        let path = &segment_files(dir.path())[0];
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .expect("open");
        file.set_len(HEADER as u64 + 10)
            .expect("lose the last two records");
        drop(file);
        if lose_reservation {
            std::fs::remove_file(dir.path().join(storage::RESERVATION_FILE))
                .expect("lose the reservation");
        }

        let (mut outbox, _) = open(dir.path(), SMALL);
        assert!(outbox.pending().is_empty());
        let new = outbox.push(b"new").expect("push");
        assert!(new > ids[2], "id {new} reuses an id handed out before");
        assert_eq!(outbox.pending(), vec![new]);
        drop(outbox);
        let (outbox, _) = open(dir.path(), SMALL);
        assert_eq!(
            outbox.pending(),
            vec![new],
            "no stale ack hides the new entry (reservation lost: {lose_reservation})"
        );
    }
}

/// An ack names the record it acknowledges: an ack with the right id for
/// another record (same id, other content) hides nothing.
#[test]
fn an_ack_for_another_record_with_the_same_id_hides_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut outbox, _) = open(dir.path(), SMALL);
    let id = outbox.push(b"current").expect("push");
    drop(outbox);
    let ack = segment_files(dir.path())[0].with_extension(ACK_EXT);
    let other_crc = recover::entry_crc(5, id.0, b"stale");
    std::fs::write(&ack, recover::ack_record(id.0, other_crc)).expect("stale ack");
    let (outbox, _) = open(dir.path(), SMALL);
    assert_eq!(outbox.pending(), vec![id]);
}

/// Issue 12 item 5: a write that puts part of a record down and fails, and
/// whose partial record cannot even be cut: the segment is sealed, later
/// entries land where the outbox says they are, and all survive a reopen.
#[test]
fn a_failed_write_leaves_offsets_right() {
    for refuse_cuts in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut outbox, status) = open(dir.path(), OutboxLimits::default());
        let before = fill(&mut outbox, 2, 50);
        inject::set(inject::TEAR_NEXT_WRITE | if refuse_cuts { inject::REFUSE_CUTS } else { 0 });
        let error = outbox.push(&[9u8; 50]).expect_err("the write fails");
        inject::set(0);
        assert_eq!(error.storage_fault(), Some(StorageFault::Failing));
        assert_eq!(outbox.storage_fault(), Some(StorageFault::Failing));
        assert_eq!(status.number("outbox.write_failures"), 1);
        let after = fill(&mut outbox, 2, 60);
        assert_eq!(
            outbox.storage_fault(),
            None,
            "a good write clears the fault"
        );
        assert_eq!(
            segment_files(dir.path()).len(),
            if refuse_cuts { 2 } else { 1 },
            "sealed only when the partial record stayed"
        );
        let all: Vec<EntryId> = before.iter().chain(&after).copied().collect();
        assert_eq!(outbox.pending(), all);
        let expected: Vec<Vec<u8>> = [
            vec![b'a'; 50],
            vec![b'b'; 50],
            vec![b'a'; 60],
            vec![b'b'; 60],
        ]
        .to_vec();
        assert_eq!(contents(&outbox), expected);
        drop(outbox);
        let (outbox, _) = open(dir.path(), OutboxLimits::default());
        assert_eq!(outbox.pending(), all);
        assert_eq!(contents(&outbox), expected);
    }
}

/// Issue 12 item 6: evicting many entries to make room costs a few syncs,
/// not one per entry.
#[test]
fn eviction_syncs_once_per_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut outbox, status) = open(dir.path(), SMALL);
    // 2 segments of 4096 bytes: 8192 bytes of 26-byte records.
    let ids = fill(&mut outbox, 300, 10);
    let evicted_before = status.number("outbox.evicted");
    let syncs_before = status.number("outbox.fsyncs");
    outbox
        .push(&[0u8; 4000])
        .expect("a large push evicts a batch");
    let evicted = status.number("outbox.evicted") - evicted_before;
    let syncs = status.number("outbox.fsyncs") - syncs_before;
    assert!(evicted > 100, "{evicted} evicted");
    assert!(
        syncs <= 8,
        "{syncs} fsyncs to evict {evicted} entries and push one"
    );
    assert!(outbox.disk_bytes() <= SMALL.max_bytes);
    assert!(!outbox.pending().contains(&ids[0]));
}

/// Acks the file system refuses are kept in memory, and written before the
/// next write succeeds.
#[test]
fn refused_acks_wait_in_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut outbox, status) = open(dir.path(), SMALL);
    let ids = fill(&mut outbox, 3, 10);
    let ack = segment_files(dir.path())[0].with_extension(ACK_EXT);
    // Make the sidecar unwritable: a directory in its place.
    std::fs::remove_file(&ack).expect("rm");
    std::fs::create_dir(&ack).expect("mkdir");
    outbox.acknowledge(ids[0]).expect("ack works in memory");
    assert_eq!(outbox.pending(), ids[1..].to_vec());
    assert_eq!(status.number("outbox.acks_unwritten"), 1);
    assert_eq!(outbox.storage_fault(), Some(StorageFault::Failing));
    std::fs::remove_dir(&ack).expect("rmdir");
    std::fs::write(&ack, b"").expect("sidecar back");
    outbox.recover_storage().expect("writable again");
    assert_eq!(status.number("outbox.acks_unwritten"), 0);
    assert_eq!(outbox.storage_fault(), None);
    drop(outbox);
    let (outbox, _) = open(dir.path(), SMALL);
    assert_eq!(outbox.pending(), ids[1..].to_vec());
}
