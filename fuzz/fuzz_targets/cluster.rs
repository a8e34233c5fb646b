//! The cluster peer protocol as a receiving node reads it: the input is the byte stream
//! of one inbound session (after TLS), cut into reads of varying sizes (the first byte
//! picks them), decoded by `wire::Codec` (length-delimited frames of postcard messages),
//! then handled as a session does: the first message must be a hello
//! (`wire::check_hello`), the rest go through `wire::InboundState` (dictionary, teach
//! accounting) and their entries are merged into a `store::Store`.
//!
//! Invariants: nothing panics; every decoded message encodes and decodes back to itself
//! and fits the frame limit; an error is final (the session ends) and names something
//! (non-empty text); the dictionary and the store stay within their bounds; entries for
//! services or backends the node does not have are counted, never stored.

#![no_main]

use bytes::BytesMut;
use lb_cluster::{
    catalog::{BackendDef, ServiceDef},
    identity::{BackendKey, Proto, ServiceKey},
    store::{Merge, Store},
    wire::{check_hello, decode_message, encode_message, Codec, InboundState, Message},
};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const MAX_FRAME: usize = 64 * 1024;
const CAPACITY: usize = 512;

fn services() -> Vec<ServiceDef> {
    let svc = |vip: &str, port, proto| ServiceKey {
        vip: vip.parse().unwrap(),
        port,
        proto,
    };
    let be = |a: &str, port| BackendDef {
        key: BackendKey {
            addr: a.parse().unwrap(),
            port,
        },
        weight: 1,
    };
    vec![
        ServiceDef {
            key: svc("10.0.0.100", 80, Proto::Tcp),
            expire: Some(std::time::Duration::from_secs(60)),
            scheduler: "roundrobin".into(),
            backends: vec![be("10.0.1.2", 8080), be("10.0.1.3", 8080)],
        },
        ServiceDef {
            key: svc("2001:db8::100", 0, Proto::Udp),
            expire: None,
            scheduler: "maglev 251".into(),
            backends: vec![be("2001:db8:1::2", 0)],
        },
    ]
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let mut codec = Codec::new(MAX_FRAME);
    let mut state = InboundState::default();
    let mut store = Store::new(CAPACITY, 1, 1024, 1000);
    store.set_services(&services());
    store.activate_peer(0);
    let mut buf = BytesMut::new();
    let mut hello_seen = false;
    let step = usize::from(cut % 64) + 1;
    let mut now = 1_000_000u64;
    let mut chunks = stream.chunks(step).peekable();
    'session: while let Some(chunk) = chunks.next() {
        buf.extend_from_slice(chunk);
        let last = chunks.peek().is_none();
        loop {
            let r = if last {
                codec.decode_eof(&mut buf)
            } else {
                codec.decode(&mut buf)
            };
            let msg = match r {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    break 'session;
                }
            };
            let body = encode_message(&msg);
            assert!(body.len() <= MAX_FRAME, "a decoded message fits its frame");
            assert_eq!(decode_message(&body).as_ref(), Ok(&msg), "round trip");
            if !hello_seen {
                match &msg {
                    Message::Hello(h) if check_hello(h).is_ok() => hello_seen = true,
                    _ => break 'session,
                }
                continue;
            }
            match state.handle(msg) {
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    break 'session;
                }
                Ok(lb_cluster::wire::Inbound::Entries(entries)) => {
                    for e in &entries {
                        now += 1;
                        let before = store.counters;
                        match store.merge_remote(now, 0, e) {
                            Merge::Ignored(_) => {
                                let after = store.counters;
                                assert!(
                                    after.unknown_service
                                        + after.unknown_backend
                                        + after.expired_ignored
                                        == before.unknown_service
                                            + before.unknown_backend
                                            + before.expired_ignored
                                            + 1,
                                    "an ignored entry is counted once"
                                );
                            }
                            Merge::Apply(a) => {
                                assert_eq!(a.service, e.service);
                                assert_eq!(a.client, e.client);
                                assert!(store.knows_service(&a.service));
                            }
                            Merge::Unchanged => {}
                        }
                        assert!(store.len() <= CAPACITY);
                    }
                    let d = store.drain(0, 4096, now);
                    assert!(d.entries.len() <= 1024);
                }
                Ok(_) => {}
            }
            if let Some((got, _)) = state.teach {
                assert!(got <= state.received);
            }
        }
    }
});
