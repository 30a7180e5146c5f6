//! Entry points for fuzzing the decoders that see network bytes: the Raft transport's frames and
//! messages, its handshake, the HTTP API's statement and parameter parsers, and the `Authorization`
//! header. Each takes arbitrary bytes and returns; an error is a fine outcome, a panic, an abort, a hang
//! or a huge allocation is a bug. The targets in `fuzz/` (cargo-afl, stable Rust) call these; so does the
//! test below, with the inputs the fuzzers' corpora start from ([`targets`]).

use std::sync::Arc;

use futures_util::FutureExt;

use crate::tcp::handshake::{ClusterId, ClusterIdentity, Hello, Welcome};
use crate::tcp::{decode, Reply, Request};
use crate::BopConfig;

/// Bytes as the transport's server reads them from a connection: frames (length, checksum, body), each
/// body decoded as a Raft request and as a reply.
pub fn raft_frames(bytes: &[u8]) {
    let mut stream = bytes;
    let mut reader = crate::tcp::frame::FrameReader::default();
    // Reading from memory never waits: every step is ready at once.
    while let Some(Ok(body)) = reader.next(&mut stream).now_or_never() {
        raft_message(&body);
    }
}

/// One frame's body, decoded as a Raft request and as a reply (the checksum is not in the way).
pub fn raft_message(body: &[u8]) {
    if let Ok(Request::SnapshotBegin { files, .. }) = decode::<Request<BopConfig>>(body) {
        for file in files {
            let _ = crate::state_machine::FileDescriptor::decode(&file.descriptor);
        }
    }
    let _ = decode::<Reply<BopConfig>>(body);
    // The snapshot's file descriptors are the transport's opaque bytes: the state machine decodes them.
    let _ = crate::state_machine::FileDescriptor::decode(body);
}

/// A connection's first frame as a node reads it: a hello, judged by node 1 of a known cluster; and the
/// client's side, a welcome.
pub fn handshake(body: &[u8]) {
    if let Ok(hello) = decode::<Hello>(body) {
        let identity = ClusterIdentity::new(1, Some(ClusterId::of_members([(1, "a:1"), (2, "b:1")])));
        let judged = identity.judge(&hello, None, |_| async { Ok(()) }).now_or_never();
        assert!(judged.is_some(), "judging a hello of a node with a cluster id never waits");
    }
    let _ = decode::<Welcome>(body);
}

/// A request body of `/db/execute`, `/db/query` or `/db/request`, and the same bytes as a query string.
pub fn http_input(bytes: &[u8]) {
    let _ = crate::node::parse_statements(bytes);
    let _ = crate::node::query_params(Some(&String::from_utf8_lossy(bytes)));
}

/// An `Authorization` header, parsed and checked against a user with a plain-text password.
pub fn auth_header(bytes: &[u8]) {
    thread_local! {
        static AUTH: Arc<crate::auth::Auth> = Arc::new(
            crate::auth::Auth::from_json(br#"[{"username": "u", "password": "p", "perms": ["all"]}]"#)
                .expect("a valid auth file"),
        );
    }
    let _ = crate::auth::parse_basic(bytes);
    AUTH.with(|auth| {
        // Plain passwords are checked without waiting.
        let identified = auth.identify(Some(bytes)).now_or_never();
        assert!(identified.is_some(), "a plain password check never waits");
    });
}

/// A fuzz target: its name, its entry point, and its seed inputs.
pub type Target = (&'static str, fn(&[u8]), Vec<Vec<u8>>);

/// The fuzz targets, by name, and the inputs their corpora start from: real encodings of what peers and
/// clients send (`fuzz/run` writes them out before it starts a fuzzer).
pub fn targets() -> Vec<Target> {
    use openraft::entry::RaftEntry;
    use openraft::raft::{AppendEntriesRequest, VoteRequest};
    use openraft::testing::{blank_ent, log_id};
    type C = BopConfig;
    let vote = openraft::type_config::alias::VoteOf::<C>::new_committed(3, 1);
    let create = openraft::type_config::alias::EntryOf::<C>::new_normal(
        log_id::<C>(3, 1, 7),
        crate::Command::CreateDatabase { name: "main".into() },
    );
    let append = AppendEntriesRequest::<C> {
        vote,
        prev_log_id: Some(log_id::<C>(3, 1, 6)),
        entries: vec![blank_ent::<C>(3, 1, 7), create],
        leader_commit: Some(log_id::<C>(3, 1, 5)),
    };
    let encode = |value: &Request<C>| crate::tcp::encode(value).expect("encode");
    let messages = vec![
        encode(&Request::Vote(VoteRequest::new(openraft::type_config::alias::VoteOf::<C>::new(4, 2), None))),
        encode(&Request::Append(append.clone())),
        encode(&Request::StreamAppend(append)),
        encode(&Request::SnapshotChunk { file: 0, offset: 4096, bytes: vec![1, 2, 3, 4] }),
        encode(&Request::SnapshotEnd),
        crate::tcp::encode(&Reply::<C>::Ack(Err("refused".into()))).expect("encode"),
    ];
    let framed = |bodies: &[Vec<u8>]| {
        let mut out = Vec::new();
        for body in bodies {
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
            out.extend_from_slice(body);
        }
        out
    };
    let identity = ClusterIdentity::new(2, Some(ClusterId::of_members([(1, "a:1"), (2, "b:1")])));
    let hellos = vec![
        crate::tcp::encode(&Hello::new(&identity, 1)).expect("encode"),
        crate::tcp::encode(&Hello::new(&ClusterIdentity::new(2, None), 1)).expect("encode"),
        crate::tcp::encode(&Welcome::Refused("this is node 1, not node 9".into())).expect("encode"),
    ];
    let http = [
        r#"["INSERT INTO t VALUES (1)", ["INSERT INTO t VALUES (?, ?)", 1, "x"], ["SELECT * FROM t WHERE a = :a", {"a": 1.5}]]"#,
        r#"[["INSERT INTO b VALUES (?)", [1, 2, 255]], ["SELECT ?", null, true, -9223372036854775808]]"#,
        "level=strong&timeout=1m30s&db=main&pretty&q=SELECT%201&freshness=0&retries=3",
    ];
    let headers = [
        crate::auth::basic_header("u", "p"),
        crate::auth::basic_header("u", "wrong"),
        "Basic dTpwOmV4dHJh".to_owned(),
        "Bearer token".to_owned(),
    ];
    vec![
        ("raft_frames", raft_frames as fn(&[u8]), vec![framed(&messages[..2]), framed(&messages[2..])]),
        ("raft_message", raft_message, messages),
        ("handshake", handshake, hellos),
        ("http_input", http_input, http.iter().map(|s| s.as_bytes().to_vec()).collect()),
        ("auth_header", auth_header, headers.into_iter().map(String::into_bytes).collect()),
    ]
}

#[cfg(test)]
mod tests {
    /// Every target takes its seeds (real frames, hellos, bodies and headers) and some hostile inputs
    /// without a panic.
    #[test]
    fn the_fuzz_targets_take_their_seeds_and_hostile_input() {
        for (name, run, seeds) in super::targets() {
            assert!(!seeds.is_empty(), "{name} has seeds");
            for seed in &seeds {
                run(seed);
                // Every prefix too: a connection can end anywhere.
                for end in 0..seed.len() {
                    run(&seed[..end]);
                }
            }
            for hostile in [&b""[..], &[0xff; 64], &[0; 9], b"\xff\xff\xff\xff\xff\xff\xff\xff\x0f"] {
                run(hostile);
            }
        }
    }

    /// A snapshot file's descriptor (sent by the leader, decoded by the state machine) whose database name
    /// claims a length past memory is an error; before, the same decoding without a limit panicked or
    /// aborted (as the transport's did, `tcp::tests::a_claimed_length_past_the_frame_is_an_error_not_a_crash`).
    #[test]
    fn a_snapshot_descriptor_claiming_a_huge_name_is_an_error() {
        // db: 1, then the name's length as a u64 varint (253 + 8 bytes), one byte of it, a checksum.
        for claimed in [u64::MAX, 1 << 40, 2 << 20] {
            let mut bytes = vec![1, 253];
            bytes.extend_from_slice(&claimed.to_le_bytes());
            bytes.extend_from_slice(b"m\x00");
            assert!(crate::state_machine::FileDescriptor::decode(&bytes).is_err(), "{claimed}");
        }
        assert!(crate::state_machine::FileDescriptor::decode(&[1, 4, b'm', b'a', b'i', b'n', 9]).is_ok());
    }
}
