//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, nightly): each
//! takes arbitrary bytes, must not panic, and checks an invariant of its
//! parser beyond "no panic" where one exists (a decoded frame encodes back to
//! the same bytes, a fitted report is within its budget, a recovered outbox
//! reads back every entry it lists).
//!
//! They are plain functions of the library so that the normal test suite runs
//! them on stable over the seed corpora and over every input a fuzzing run
//! found (`fuzz/seeds/`, `fuzz/regressions/`): a finding becomes a regression
//! test by dropping its file there. `scripts/fuzz.sh` runs the fuzzers.
//!
//! The first byte of an input often selects a variant (a parser, a format,
//! how reads are chunked); the layout of each input is documented on its
//! function so that seeds can be written by hand.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use crate::collect::parse;
use crate::greengrass::ipc::frame;
use crate::publish::outbox::{EntryId, Outbox, OutboxLimits};
use crate::report::{self, Format};
use crate::status::Status;

/// The frame limit the frame target decodes with: small enough that the
/// fuzzer reaches the size check, large enough for every real reply.
const FRAME_LIMIT: usize = 64 * 1024;

/// Event-stream frame decoding, whole and through chunked reads.
///
/// Layout: byte 0 seeds the read pattern (chunk sizes 1 to 8 bytes,
/// sometimes a read that is not ready yet); the rest is the stream. A frame
/// that decodes must encode back to exactly its bytes, and reading it in
/// chunks must give the same frame as decoding it whole.
pub fn event_stream_frame(data: &[u8]) {
    let Some((&pattern, bytes)) = data.split_first() else {
        return;
    };
    let whole = frame::decode(bytes, FRAME_LIMIT);
    if let Ok(decoded) = &whole {
        let encoded = decoded
            .encode()
            .expect("a decoded frame encodes within the limit it was decoded with");
        assert_eq!(encoded, bytes, "decode then encode must be the identity");
    }
    let mut reader = ChunkedReader {
        data: bytes,
        pattern,
        reads: 0,
    };
    let read = block_on(frame::read_frame(&mut reader, FRAME_LIMIT));
    match (&whole, read) {
        (Ok(a), Ok(b)) => assert_eq!(*a, b, "chunked read differs from whole decode"),
        (Ok(_), Err(e)) => panic!("whole frame decodes but the chunked read failed: {e:?}"),
        // The stream may hold a valid frame followed by more bytes, which
        // `decode` (exactly one frame) refuses and `read_frame` accepts; the
        // frame read must then be a prefix of the stream.
        (Err(_), Ok(b)) => {
            let encoded = b.encode().expect("a read frame encodes");
            assert!(bytes.starts_with(&encoded), "read frame is not a prefix");
            assert!(
                encoded.len() < bytes.len(),
                "whole decode refused one frame"
            );
        }
        (Err(_), Err(_)) => {}
    }
}

/// Replies of the IPC protocol: frames, error bodies, subscription messages.
///
/// Layout: byte 0 picks the decoder: 0 a whole frame then its error body, 1
/// an IoT Core subscription message body, 2 a configuration update event
/// body, 3 an error body carried in an ApplicationError frame.
pub fn ipc_reply(data: &[u8]) {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(f) = frame::decode(bytes, FRAME_LIMIT) {
                let _ = crate::greengrass::ipc::error_of(&f);
            }
        }
        1 => {
            if let Ok(message) = crate::greengrass::ipc::decode_iot_core_message(bytes) {
                assert!(message.payload.len() <= bytes.len(), "base64 only shrinks");
            }
        }
        2 => {
            if let Ok(path) = crate::greengrass::ipc::decode_configuration_update(bytes) {
                assert!(path.iter().map(String::len).sum::<usize>() <= bytes.len());
            }
        }
        _ => {
            let f = frame::Frame {
                headers: vec![frame::Header::string(
                    "service-model-type",
                    "aws.greengrass#ServiceError",
                )],
                payload: bytes.to_vec(),
            };
            let (kind, message) = crate::greengrass::ipc::error_of(&f);
            assert!(!kind.is_empty());
            let _ = message;
        }
    }
}

/// The `/proc` line parsers.
///
/// Layout: byte 0 picks the parser (socket lines of `net/tcp*`/`net/udp*`,
/// `net/if_inet6`, `net/route`, `net/fib_trie`, `net/dev`, `net/igmp`); the
/// rest is the file, parsed line by line.
pub fn proc_lines(data: &[u8]) {
    let Some((&which, text)) = data.split_first() else {
        return;
    };
    for line in text.split(|b| *b == b'\n') {
        match which % 6 {
            0 => {
                if let Some(socket) = parse::parse_socket_line(line) {
                    assert_eq!(socket.local.is_ipv4(), socket.remote.is_ipv4());
                }
            }
            1 => {
                let _ = parse::parse_if_inet6_line(line);
            }
            2 => {
                let _ = parse::parse_route_line(line);
            }
            3 => {
                let _ = parse::parse_fib_trie_line(line);
            }
            4 => {
                if let Some(dev) = parse::parse_dev_line(line) {
                    assert!(!dev.name.is_empty());
                }
            }
            _ => {
                if let Ok(Some((_, name))) = parse::parse_igmp_line(line) {
                    assert!(!name.is_empty());
                }
            }
        }
    }
}

/// `Config::from_json`. A configuration that loads must survive a round
/// trip through its own serialisation unchanged (what `config show` prints
/// is what runs).
pub fn config_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = crate::config::Config::from_json(text, "fuzz") else {
        return;
    };
    let value = serde_json::to_value(&config).expect("a loaded configuration serialises");
    let again = crate::config::Config::from_value(value, "fuzz round trip")
        .expect("a serialised configuration loads again");
    assert_eq!(config, again, "configuration round trip");
}

/// Security-profile parsing (AWS's CreateSecurityProfile document). A
/// profile that loads gives behaviors whose derived values (period, key)
/// can be computed without overflow.
pub fn security_profile(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(profile) = crate::detect::profile::parse_text(text, "fuzz") else {
        return;
    };
    for behavior in &profile.behaviors {
        let _ = behavior.period_ms();
        let _ = behavior.key();
    }
}

/// Report decode, validate and fit.
///
/// Layout: byte 0 picks the format (JSON, short-key JSON, CBOR), bytes 1-2
/// (little endian) the byte budget; the rest is the report. A report that
/// decodes and validates and is fitted is within its budget, and what was
/// fitted decodes and validates again.
pub fn report_fit(data: &[u8]) {
    let [which, b0, b1, bytes @ ..] = data else {
        return;
    };
    let format = [Format::Json, Format::JsonShort, Format::Cbor][usize::from(*which % 3)];
    let budget = usize::from(u16::from_le_bytes([*b0, *b1]));
    let Ok(decoded) = report::decode(bytes, format) else {
        return;
    };
    if report::validate(&decoded).is_err() {
        return;
    }
    let Ok(prepared) = report::fit(decoded, format, budget) else {
        return;
    };
    assert!(
        prepared.bytes.len() <= budget,
        "fitted report of {} bytes exceeds its budget of {budget}",
        prepared.bytes.len()
    );
    let again = report::decode(&prepared.bytes, format).expect("a fitted report decodes");
    report::validate(&again).expect("a fitted report validates");
    assert_eq!(again, prepared.report, "the bytes are the fitted report");
}

/// Outbox recovery on arbitrary segment and ack bytes.
///
/// Layout: a `u16` (little endian) length, that many bytes of the first
/// segment, a `u16` length, that many bytes of its ack sidecar, and the rest
/// as a second segment. Recovery must open any such directory, list only
/// entries that read back, keep the intact records before any damage, hand
/// out ids above every id it saw, and give the same result when opened again.
pub fn outbox_recovery(data: &[u8]) {
    let (first, rest) = take_prefixed(data);
    let (ack, second) = take_prefixed(rest);
    let dir = ScratchDir::new();
    let write = |name: &str, bytes: &[u8]| {
        let mut f = std::fs::File::create(dir.path().join(name)).expect("create");
        f.write_all(bytes).expect("write");
    };
    write("00000000000000000001.seg", first);
    write("00000000000000000001.ack", ack);
    if !second.is_empty() {
        write("00000000000000001000.seg", second);
    }
    let limits = OutboxLimits {
        max_bytes: 1 << 20,
        segment_bytes: 64 * 1024,
    };
    let intact = crate::publish::outbox::intact_prefix(first);
    let acked = crate::publish::outbox::ack_ids(ack);
    let highest_seen = intact
        .iter()
        .chain(acked.iter())
        .copied()
        .chain(crate::publish::outbox::intact_prefix(second))
        .max()
        .unwrap_or(0);

    let mut outbox =
        Outbox::open(dir.path(), limits, "outbox", Status::new()).expect("recovery opens");
    let pending = outbox.pending();
    assert!(pending.windows(2).all(|w| w[0] < w[1]), "pending in order");
    for id in &pending {
        outbox.read(*id).expect("every listed entry reads back");
    }
    for id in intact.iter().filter(|id| !acked.contains(*id)) {
        assert!(
            pending.contains(&EntryId(*id)),
            "intact record {id} before any damage was lost"
        );
    }
    let new = match outbox.push(b"after recovery") {
        Ok(new) => new,
        // Records forged with a valid checksum on an id near 2^63.
        Err(crate::publish::outbox::OutboxError::Limits { .. }) => return,
        Err(e) => panic!("push after recovery: {e}"),
    };
    assert!(new.0 > highest_seen, "id {new} reuses an id seen on disk");
    let mut expected = pending.clone();
    expected.push(new);
    drop(outbox);
    let outbox = Outbox::open(dir.path(), limits, "outbox", Status::new()).expect("second open");
    assert_eq!(outbox.pending(), expected, "recovery is idempotent");
    assert!(outbox.disk_bytes() <= limits.max_bytes);
}

/// A directory of its own under the system temporary directory, removed
/// when dropped (the library does not depend on `tempfile`).
struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    fn new() -> ScratchDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("defender-edge-fuzz-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("scratch directory");
        ScratchDir(path)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn take_prefixed(data: &[u8]) -> (&[u8], &[u8]) {
    let [a, b, rest @ ..] = data else {
        return (&[], &[]);
    };
    let len = usize::from(u16::from_le_bytes([*a, *b])).min(rest.len());
    rest.split_at(len)
}

/// An in-memory stream that hands out its bytes in small chunks, now and
/// then answering "not ready" first, as a socket under load does.
struct ChunkedReader<'a> {
    data: &'a [u8],
    pattern: u8,
    reads: u32,
}

impl AsyncRead for ChunkedReader<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.reads = self.reads.wrapping_add(1);
        let turn = self.pattern.rotate_left(self.reads % 8);
        if turn & 0x80 != 0 && self.reads.is_multiple_of(3) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let chunk = usize::from(turn & 7) + 1;
        let n = chunk.min(buf.remaining()).min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = tail;
        Poll::Ready(Ok(()))
    }
}

/// Drives a future whose I/O is all in memory: poll until ready.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

/// A fuzz entry point.
pub type Target = fn(&[u8]);

/// The fuzz targets by name (the file names in `fuzz/fuzz_targets/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("event_stream_frame", event_stream_frame),
    ("ipc_reply", ipc_reply),
    ("proc_lines", proc_lines),
    ("config_json", config_json),
    ("security_profile", security_profile),
    ("report_fit", report_fit),
    ("outbox_recovery", outbox_recovery),
];

/// The seed inputs of `target`, made from the repository's fixtures under
/// `repo` (proc trees, reports, profiles, the configuration examples of
/// docs/CONFIGURATION.md) and from frames and outboxes built here. Named
/// `<what>`; `fuzz/seeds/<target>/` holds them as files.
pub fn seeds(target: &str, repo: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let fixture = |rel: &str| {
        std::fs::read(repo.join("tests/fixtures").join(rel))
            .unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
    };
    let report_json = fixture("report/report.json");
    let mut seeds = Vec::new();
    match target {
        "event_stream_frame" => {
            for (name, frame) in sample_frames(&report_json) {
                let bytes = frame.encode().expect("sample frame encodes");
                for pattern in [0x00u8, 0xa5] {
                    let mut input = vec![pattern];
                    input.extend_from_slice(&bytes);
                    seeds.push((format!("{name}-{pattern:02x}"), input));
                }
            }
        }
        "ipc_reply" => {
            use base64::Engine as _;
            let error = frame::Frame {
                headers: vec![
                    frame::Header::int32(":message-type", 1),
                    frame::Header::int32(":message-flags", 2),
                    frame::Header::int32(":stream-id", 1),
                    frame::Header::string("service-model-type", "aws.greengrass#UnauthorizedError"),
                ],
                payload: br#"{"message":"not authorized","_errorCode":"UnauthorizedError"}"#
                    .to_vec(),
            };
            let message = serde_json::json!({"message": {"topicName": "$aws/things/t/defender/metrics/json/accepted",
                "payload": base64::engine::general_purpose::STANDARD.encode(&report_json)}});
            let update = serde_json::json!({"configurationUpdateEvent": {"componentName": "c", "keyPath": ["detection", "profiles"]}});
            let mut frame_input = vec![0];
            frame_input.extend(error.encode().expect("encodes"));
            seeds.push(("error-frame".to_owned(), frame_input));
            seeds.push((
                "iot-core-message".to_owned(),
                [&[1u8][..], message.to_string().as_bytes()].concat(),
            ));
            seeds.push((
                "configuration-update".to_owned(),
                [&[2u8][..], update.to_string().as_bytes()].concat(),
            ));
            seeds.push((
                "error-body".to_owned(),
                [&[3u8][..], &error.payload[..]].concat(),
            ));
        }
        "proc_lines" => {
            let files = ["tcp", "if_inet6", "route", "fib_trie", "dev", "igmp"];
            for tree in ["captured", "malformed", "ipv6-only", "no-ipv6"] {
                for (selector, file) in files.iter().enumerate() {
                    let path = repo
                        .join("tests/fixtures/proc")
                        .join(tree)
                        .join("net")
                        .join(file);
                    if let Ok(text) = std::fs::read(&path) {
                        let mut input = vec![selector as u8];
                        input.extend(text);
                        seeds.push((format!("{tree}-{file}"), input));
                    }
                }
            }
        }
        "config_json" => {
            let doc = std::fs::read_to_string(repo.join("docs/CONFIGURATION.md"))
                .expect("docs/CONFIGURATION.md");
            for (i, block) in doc.split("```json\n").skip(1).enumerate() {
                let json = block.split("```").next().unwrap_or_default();
                seeds.push((format!("configuration-md-{i}"), json.as_bytes().to_vec()));
            }
            let default = serde_json::to_vec_pretty(&crate::config::Config::default())
                .expect("the default serialises");
            seeds.push(("default".to_owned(), default));
        }
        "security_profile" => {
            for name in ["data-exfiltration-check.json", "device-rule-baseline.json"] {
                seeds.push((name.to_owned(), fixture(&format!("detect/profiles/{name}"))));
            }
        }
        "report_fit" => {
            let reports = [
                ("json", 0u8, report_json.clone()),
                ("json-short", 1, fixture("report/report-short.json")),
                ("cbor", 2, fixture("report/report.cbor")),
            ];
            for (name, format, bytes) in reports {
                for budget in [u16::MAX, 600, 200] {
                    let mut input = vec![format];
                    input.extend(budget.to_le_bytes());
                    input.extend(&bytes);
                    seeds.push((format!("{name}-{budget}"), input));
                }
            }
        }
        "outbox_recovery" => {
            let payloads = [
                report_json.clone(),
                fixture("report/report.cbor"),
                b"x".to_vec(),
            ];
            seeds.push((
                "three-entries-one-acked".to_owned(),
                outbox_seed(&payloads, 1),
            ));
            seeds.push(("none-acked".to_owned(), outbox_seed(&payloads, 0)));
        }
        other => panic!("no fuzz target {other}"),
    }
    seeds
}

/// Frames of each kind the IPC client meets, for the frame seeds.
fn sample_frames(report: &[u8]) -> Vec<(&'static str, frame::Frame)> {
    let rpc = |kind: i32, flags: i32, stream: i32| {
        vec![
            frame::Header::int32(":message-type", kind),
            frame::Header::int32(":message-flags", flags),
            frame::Header::int32(":stream-id", stream),
        ]
    };
    let mut connect = rpc(4, 0, 0);
    connect.push(frame::Header::string(":version", "0.1.0"));
    let mut publish = rpc(0, 0, 1);
    publish.push(frame::Header::string(
        "operation",
        "aws.greengrass#PublishToIoTCore",
    ));
    publish.push(frame::Header::string(":content-type", "application/json"));
    vec![
        (
            "connect",
            frame::Frame {
                headers: connect,
                payload: br#"{"authToken":"t"}"#.to_vec(),
            },
        ),
        (
            "publish",
            frame::Frame {
                headers: publish,
                payload: report.to_vec(),
            },
        ),
        (
            "response",
            frame::Frame {
                headers: rpc(0, 2, 1),
                payload: b"{}".to_vec(),
            },
        ),
        (
            "ping",
            frame::Frame {
                headers: rpc(2, 0, 0),
                payload: Vec::new(),
            },
        ),
    ]
}

/// An `outbox_recovery` input: a real outbox's first segment and ack
/// sidecar after pushing `payloads` and acknowledging the first `acked`.
fn outbox_seed(payloads: &[Vec<u8>], acked: usize) -> Vec<u8> {
    let dir = ScratchDir::new();
    let limits = OutboxLimits {
        max_bytes: 1 << 20,
        segment_bytes: 64 * 1024,
    };
    let mut outbox = Outbox::open(dir.path(), limits, "seed", Status::new()).expect("open");
    let ids: Vec<EntryId> = payloads
        .iter()
        .map(|p| outbox.push(p).expect("push"))
        .collect();
    for id in &ids[..acked] {
        outbox.acknowledge(*id).expect("ack");
    }
    drop(outbox);
    let first = format!("{:020}", ids[0].0);
    let segment = std::fs::read(dir.path().join(format!("{first}.seg"))).expect("segment");
    let ack = std::fs::read(dir.path().join(format!("{first}.ack"))).expect("sidecar");
    let mut input = Vec::new();
    for part in [&segment, &ack] {
        input.extend((part.len() as u16).to_le_bytes());
        input.extend(part);
    }
    input
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let Ok(list) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut files: Vec<(String, Vec<u8>)> = list
            .map(|e| e.expect("entry").path())
            .filter(|p| p.is_file())
            .map(|p| (p.display().to_string(), std::fs::read(&p).expect("read")))
            .collect();
        files.sort();
        files
    }

    /// The fuzz entry points on stable: every seed and every input a fuzzing
    /// run found and that was kept as a regression (`fuzz/regressions/`).
    #[test]
    fn entry_points_pass_on_seeds_and_regressions() {
        for (target, run) in TARGETS {
            let mut inputs = seeds(target, &repo());
            inputs.extend(files(&repo().join("fuzz/seeds").join(target)));
            inputs.extend(files(&repo().join("fuzz/regressions").join(target)));
            assert!(!inputs.is_empty(), "{target} has no inputs");
            for (name, input) in inputs {
                let outcome = std::panic::catch_unwind(|| run(&input));
                assert!(outcome.is_ok(), "fuzz target {target} fails on {name}");
            }
        }
    }

    /// `fuzz/seeds/` holds the seeds made from the current fixtures; set
    /// `DEFENDER_EDGE_WRITE_FUZZ_SEEDS=1` to write them after a fixture
    /// changed.
    #[test]
    fn committed_seeds_match_the_fixtures() {
        let write = std::env::var_os("DEFENDER_EDGE_WRITE_FUZZ_SEEDS").is_some();
        for (target, _) in TARGETS {
            let dir = repo().join("fuzz/seeds").join(target);
            for (name, bytes) in seeds(target, &repo()) {
                let path = dir.join(&name);
                if write {
                    std::fs::create_dir_all(&dir).expect("seed dir");
                    std::fs::write(&path, &bytes).expect("write seed");
                }
                // Outbox seeds carry fresh ids only in their reservation,
                // never in the files: they are reproducible too.
                let committed = std::fs::read(&path).unwrap_or_default();
                assert!(
                    committed == bytes,
                    "{} is missing or stale: run DEFENDER_EDGE_WRITE_FUZZ_SEEDS=1 cargo test -p defender-edge --lib fuzz",
                    path.display()
                );
            }
        }
    }
}
