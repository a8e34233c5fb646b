//! The peer protocol on the wire: frames, messages, and the receiving side's state
//! machine (pure, so the fuzz target runs exactly what a session runs).
//!
//! # Frames
//!
//! Inside the TLS stream, each message is one frame: a 4-byte big-endian length, then
//! the message encoded with postcard (a compact, documented serde format: varint
//! integers, enum variants as a varint index, sequences prefixed by their length).
//! `tokio-util`'s `LengthDelimitedCodec` does the framing and refuses any frame over the
//! configured maximum before reading it; a message must use its whole frame.
//!
//! # Messages and their order
//!
//! Each node dials every peer and *pushes* its own table over that connection; the
//! peer answers on the same connection only with its hello, acknowledgements and
//! heartbeats. So between two nodes there are two connections, one per direction.
//!
//! 1. Both sides send [`Hello`] first: magic, protocol version, node name, the digest
//!    of their service definitions. A mismatch in magic or version, or an unknown name,
//!    is answered with [`Message::Refuse`] and the connection closed. `Message::Hello`
//!    stays variant 0 and `magic`, `version` its first fields in every version, so any
//!    version can read another's and say what it speaks.
//! 2. The dialer teaches: [`Message::TeachBegin`] (how many entries), [`Message::Entries`]
//!    batches, [`Message::TeachEnd`]; then incremental `Entries` as the table changes.
//!    A later `TeachBegin` (a resync after the sender fell behind) starts a new teach.
//! 3. Entries name services and backends by a per-connection index, defined once by
//!    [`Message::DefineService`] / [`Message::DefineBackend`] before first use: each
//!    index stands for an identity (VIP:port/proto, address:port), never for a node-local
//!    id. This keeps an IPv4 entry near 16 bytes.
//! 4. [`Message::Heartbeat`] from the dialer when it has had nothing to send for a
//!    heartbeat interval; [`Message::Ack`] from the receiver every interval, with what
//!    it has received. Silence for `peer_timeout` ends a session.
//!
//! # An entry
//!
//! `WireEntry`: service index, client (address and prefix length), backend index, age
//! in ms since last seen (the receiver sets last-seen = now − age), and the pick stamp
//! that decides between competing values (see `store`).

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::identity::{BackendKey, ClientKey, ServiceKey};
use crate::store::Remote;

/// First field of every hello: "SLBC".
pub const MAGIC: u32 = 0x534c_4243;
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Most entries in one `Entries` message a sender makes.
pub const BATCH: usize = 2048;
/// Most dictionary indexes one session may define (each kind).
pub const MAX_DICTIONARY: usize = 1 << 16;
/// Longest node name and refusal reason accepted.
pub const MAX_TEXT: usize = 256;

/// The hello each side sends first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub magic: u32,
    pub version: u16,
    pub node: String,
    /// Services defined on the sender.
    pub services: u32,
    /// `catalog::digest` of the sender's service definitions.
    pub digest: [u8; 32],
}

/// One replicated entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEntry {
    pub service: u32,
    pub client: ClientKey,
    pub backend: u32,
    pub age_ms: u64,
    pub stamp: u64,
}

/// Every message of the protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Hello(Hello),
    Refuse {
        reason: String,
    },
    DefineService {
        index: u32,
        key: ServiceKey,
    },
    DefineBackend {
        index: u32,
        key: BackendKey,
    },
    /// The sender's service definitions changed (a reload): new count and digest.
    Services {
        services: u32,
        digest: [u8; 32],
    },
    TeachBegin {
        total: u64,
    },
    /// Entries of the teach in progress.
    Teach {
        entries: Vec<WireEntry>,
    },
    TeachEnd {
        sent: u64,
    },
    /// Incremental entries (new, re-picked, refreshed, or an answer to a losing value).
    Entries {
        entries: Vec<WireEntry>,
    },
    Heartbeat {
        queued: u64,
    },
    Ack {
        received: u64,
    },
}

/// What went wrong with a frame or a message. Every variant ends the session and is
/// counted as a refusal of the peer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {0} bytes is over the limit of {1} bytes")]
    Oversized(usize, usize),
    #[error("the connection ended inside a frame of {0} bytes ({1} bytes of it received)")]
    Truncated(usize, usize),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the message in its frame")]
    Trailing(usize),
    #[error("not a stickylb cluster peer (magic {0:#010x}, expected {MAGIC:#010x})")]
    BadMagic(u32),
    #[error("peer speaks protocol version {0}; this node speaks {PROTOCOL_VERSION}")]
    Version(u16),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("i/o: {0}")]
    Io(String),
}

/// Decodes one message from a whole frame.
pub fn decode_message(frame: &[u8]) -> Result<Message, WireError> {
    let r = postcard::take_from_bytes::<Message>(frame);
    if let Ok((m, rest)) = &r {
        if rest.is_empty() {
            return Ok(m.clone());
        }
    }
    // Say what a hello from another version (which may carry more fields) or from
    // another program is.
    if let Ok((head, _)) = postcard::take_from_bytes::<HelloHead>(frame) {
        if head.variant == 0 && head.magic != MAGIC {
            return Err(WireError::BadMagic(head.magic));
        }
        if head.variant == 0 && head.version != PROTOCOL_VERSION {
            return Err(WireError::Version(head.version));
        }
    }
    match r {
        Ok((_, rest)) => Err(WireError::Trailing(rest.len())),
        Err(e) => Err(WireError::Malformed(e.to_string())),
    }
}

/// The part of a hello every version shares.
#[derive(Deserialize)]
struct HelloHead {
    variant: u32,
    magic: u32,
    version: u16,
}

/// Encodes a message into a frame body.
pub fn encode_message(m: &Message) -> Vec<u8> {
    postcard::to_stdvec(m).expect("messages always encode")
}

/// The frame codec: length-delimited frames of postcard messages.
pub struct Codec {
    frames: LengthDelimitedCodec,
    max_frame: usize,
    /// Length of the frame being read (its header was seen).
    pending: Option<usize>,
}

impl Codec {
    pub fn new(max_frame: usize) -> Codec {
        Codec {
            frames: LengthDelimitedCodec::builder()
                .length_field_length(4)
                .max_frame_length(max_frame)
                .new_codec(),
            max_frame,
            pending: None,
        }
    }
}

impl Decoder for Codec {
    type Item = Message;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, WireError> {
        if src.len() >= 4 {
            let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
            if self.pending.is_none() {
                if len > self.max_frame {
                    return Err(WireError::Oversized(len, self.max_frame));
                }
                self.pending = Some(len);
            }
        }
        match self.frames.decode(src) {
            Ok(Some(frame)) => {
                self.pending = None;
                decode_message(&frame).map(Some)
            }
            Ok(None) => Ok(None),
            Err(e) => Err(WireError::Io(e.to_string())),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, WireError> {
        match self.decode(src)? {
            Some(m) => Ok(Some(m)),
            None if src.is_empty() && self.pending.is_none() => Ok(None),
            None => Err(WireError::Truncated(self.pending.unwrap_or(4), src.len())),
        }
    }
}

impl Encoder<Message> for Codec {
    type Error = WireError;

    fn encode(&mut self, m: Message, dst: &mut BytesMut) -> Result<(), WireError> {
        let body = encode_message(&m);
        if body.len() > self.max_frame {
            return Err(WireError::Oversized(body.len(), self.max_frame));
        }
        self.frames
            .encode(Bytes::from(body), dst)
            .map_err(|e| WireError::Io(e.to_string()))
    }
}

impl From<std::io::Error> for WireError {
    fn from(e: std::io::Error) -> Self {
        WireError::Io(e.to_string())
    }
}

/// Checks a hello: magic, version, name length.
pub fn check_hello(h: &Hello) -> Result<(), WireError> {
    if h.magic != MAGIC {
        return Err(WireError::BadMagic(h.magic));
    }
    if h.version != PROTOCOL_VERSION {
        return Err(WireError::Version(h.version));
    }
    if h.node.is_empty() || h.node.len() > MAX_TEXT {
        return Err(WireError::Protocol(format!(
            "node name of {} bytes (1 to {MAX_TEXT} accepted)",
            h.node.len()
        )));
    }
    Ok(())
}

/// What the receiving session makes of one message after the hello.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Entries to merge (dictionary indexes resolved to identities).
    Entries(Vec<Remote>),
    /// A teach started: the sender has `total` entries.
    TeachBegin(u64),
    /// A teach is complete.
    TeachEnd { received: u64 },
    /// A heartbeat (the sender's queue length).
    Heartbeat(u64),
    /// The sender's services changed: count and digest.
    Services(u32, [u8; 32]),
    /// A dictionary definition or another message with nothing to hand on.
    Nothing,
    /// The peer refused us, with its reason.
    Refused(String),
}

/// The receiving side of one session: the dictionary and the teach in progress.
#[derive(Debug, Default)]
pub struct InboundState {
    services: HashMap<u32, ServiceKey>,
    backends: HashMap<u32, BackendKey>,
    /// Entries received in the current teach, and its announced total.
    pub teach: Option<(u64, u64)>,
    /// Entries received on this session.
    pub received: u64,
    /// Teaches completed on this session.
    pub teaches: u64,
}

impl InboundState {
    /// Handles one message (after the hello). An error ends the session.
    pub fn handle(&mut self, m: Message) -> Result<Inbound, WireError> {
        match m {
            Message::Hello(_) => Err(WireError::Protocol("a second hello".into())),
            Message::Refuse { reason } => Ok(Inbound::Refused(truncate(&reason))),
            Message::DefineService { index, key } => {
                if self.services.len() >= MAX_DICTIONARY && !self.services.contains_key(&index) {
                    return Err(WireError::Protocol(format!(
                        "more than {MAX_DICTIONARY} service definitions"
                    )));
                }
                self.services.insert(index, key);
                Ok(Inbound::Nothing)
            }
            Message::DefineBackend { index, key } => {
                if self.backends.len() >= MAX_DICTIONARY && !self.backends.contains_key(&index) {
                    return Err(WireError::Protocol(format!(
                        "more than {MAX_DICTIONARY} backend definitions"
                    )));
                }
                self.backends.insert(index, key);
                Ok(Inbound::Nothing)
            }
            Message::TeachBegin { total } => {
                self.teach = Some((0, total));
                Ok(Inbound::TeachBegin(total))
            }
            Message::TeachEnd { sent } => {
                let Some((got, _)) = self.teach.take() else {
                    return Err(WireError::Protocol("teach end without a teach".into()));
                };
                if got != sent {
                    return Err(WireError::Protocol(format!(
                        "teach end says {sent} entries, {got} arrived"
                    )));
                }
                self.teaches += 1;
                Ok(Inbound::TeachEnd { received: got })
            }
            Message::Teach { entries } => {
                let Some((got, _)) = &mut self.teach else {
                    return Err(WireError::Protocol("teach entries without a teach".into()));
                };
                *got += entries.len() as u64;
                self.resolve(&entries).map(Inbound::Entries)
            }
            Message::Entries { entries } => self.resolve(&entries).map(Inbound::Entries),
            Message::Services { services, digest } => Ok(Inbound::Services(services, digest)),
            Message::Heartbeat { queued } => Ok(Inbound::Heartbeat(queued)),
            Message::Ack { .. } => Err(WireError::Protocol(
                "an acknowledgement from the sending side".into(),
            )),
        }
    }
}

impl InboundState {
    fn resolve(&mut self, entries: &[WireEntry]) -> Result<Vec<Remote>, WireError> {
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let service = *self.services.get(&e.service).ok_or_else(|| {
                WireError::Protocol(format!("service index {} not defined", e.service))
            })?;
            let backend = *self.backends.get(&e.backend).ok_or_else(|| {
                WireError::Protocol(format!("backend index {} not defined", e.backend))
            })?;
            if !e.client.is_valid() {
                return Err(WireError::Protocol(format!(
                    "client {}/{} has bits past its prefix or a prefix too long",
                    e.client.addr, e.client.prefix
                )));
            }
            out.push(Remote {
                service,
                client: e.client,
                backend,
                age_ms: e.age_ms,
                stamp: e.stamp,
            });
        }
        self.received += out.len() as u64;
        Ok(out)
    }
}

/// The sending side's dictionary of one session: which store ordinals it defined.
#[derive(Debug, Default)]
pub struct OutboundDictionary {
    services: std::collections::HashSet<u32>,
    backends: std::collections::HashSet<u32>,
}

impl OutboundDictionary {
    /// Appends to `out` the definitions the entries need and then the entries as one
    /// `Teach` or `Entries` message, with ages relative to `now`.
    pub fn encode(
        &mut self,
        entries: &[crate::store::Outgoing],
        teach: bool,
        now: u64,
        out: &mut Vec<Message>,
    ) {
        let mut wire = Vec::with_capacity(entries.len());
        for e in entries {
            if self.services.insert(e.service_ord) {
                out.push(Message::DefineService {
                    index: e.service_ord,
                    key: e.service,
                });
            }
            if self.backends.insert(e.backend_ord) {
                out.push(Message::DefineBackend {
                    index: e.backend_ord,
                    key: e.backend,
                });
            }
            wire.push(WireEntry {
                service: e.service_ord,
                client: e.client,
                backend: e.backend_ord,
                age_ms: now.saturating_sub(e.last_seen_ms),
                stamp: e.stamp,
            });
        }
        if !wire.is_empty() {
            out.push(if teach {
                Message::Teach { entries: wire }
            } else {
                Message::Entries { entries: wire }
            });
        }
    }
}

fn truncate(s: &str) -> String {
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Proto;

    fn svc() -> ServiceKey {
        ServiceKey {
            vip: "10.0.0.100".parse().unwrap(),
            port: 80,
            proto: Proto::Tcp,
        }
    }

    fn hello() -> Hello {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            node: "lb1".into(),
            services: 1,
            digest: [7; 32],
        }
    }

    #[test]
    fn round_trip_every_message() {
        let msgs = vec![
            Message::Hello(hello()),
            Message::Refuse {
                reason: "no".into(),
            },
            Message::DefineService {
                index: 3,
                key: svc(),
            },
            Message::DefineBackend {
                index: 9,
                key: BackendKey {
                    addr: "2001:db8::1".parse().unwrap(),
                    port: 0,
                },
            },
            Message::TeachBegin { total: 1_000_000 },
            Message::Services {
                services: 2,
                digest: [1; 32],
            },
            Message::Teach { entries: vec![] },
            Message::Entries {
                entries: vec![WireEntry {
                    service: 3,
                    client: ClientKey::host("198.51.100.7".parse().unwrap()),
                    backend: 9,
                    age_ms: 1234,
                    stamp: 1_700_000_000_000,
                }],
            },
            Message::TeachEnd { sent: 1 },
            Message::Heartbeat { queued: 0 },
            Message::Ack { received: 5 },
        ];
        let mut codec = Codec::new(1 << 20);
        let mut buf = BytesMut::new();
        for m in &msgs {
            codec.encode(m.clone(), &mut buf).unwrap();
        }
        let mut got = Vec::new();
        while let Some(m) = codec.decode(&mut buf).unwrap() {
            got.push(m);
        }
        assert_eq!(got, msgs);
    }

    #[test]
    fn an_ipv4_entry_is_small() {
        let e = WireEntry {
            service: 3,
            client: ClientKey::host("198.51.100.7".parse().unwrap()),
            backend: 200,
            age_ms: 15_000,
            stamp: 1_700_000_000_000,
        };
        let n = postcard::to_stdvec(&e).unwrap().len();
        assert!(n <= 20, "{n} bytes");
        let v6 = WireEntry {
            client: ClientKey::host("2001:db8::7".parse().unwrap()),
            ..e
        };
        let n6 = postcard::to_stdvec(&v6).unwrap().len();
        assert!(n6 <= 32, "{n6} bytes");
    }

    #[test]
    fn bad_frames_are_named() {
        let mut codec = Codec::new(64);
        let mut buf = BytesMut::from(&[0u8, 0, 1, 0][..]);
        assert_eq!(codec.decode(&mut buf), Err(WireError::Oversized(256, 64)));
        let mut codec = Codec::new(64);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 10, 1, 2][..]);
        assert_eq!(codec.decode(&mut buf), Ok(None));
        assert_eq!(codec.decode_eof(&mut buf), Err(WireError::Truncated(10, 2)));
        let mut garbage = BytesMut::from(&[0u8, 0, 0, 3, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            Codec::new(64).decode(&mut garbage),
            Err(WireError::Malformed(_))
        ));
        // A valid message with bytes after it in its frame.
        let mut body = encode_message(&Message::Ack { received: 1 });
        body.push(0);
        assert_eq!(decode_message(&body), Err(WireError::Trailing(1)));
    }

    #[test]
    fn another_version_or_program_is_named() {
        let mut h = hello();
        h.version = 7;
        // A future hello may carry more fields: decode only its head.
        let mut body = encode_message(&Message::Hello(h));
        body.extend_from_slice(&[1, 2, 3]);
        assert_eq!(decode_message(&body), Err(WireError::Version(7)));
        let mut h = hello();
        h.magic = 0x4854_5450;
        let mut body = encode_message(&Message::Hello(h));
        body.push(9);
        assert_eq!(decode_message(&body), Err(WireError::BadMagic(0x4854_5450)));
        assert_eq!(check_hello(&hello()), Ok(()));
    }

    #[test]
    fn inbound_needs_definitions_and_counts_teach() {
        let mut st = InboundState::default();
        let e = WireEntry {
            service: 1,
            client: ClientKey::host("198.51.100.7".parse().unwrap()),
            backend: 2,
            age_ms: 0,
            stamp: 1,
        };
        assert!(matches!(
            st.handle(Message::Entries { entries: vec![e] }),
            Err(WireError::Protocol(_))
        ));
        st.handle(Message::DefineService {
            index: 1,
            key: svc(),
        })
        .unwrap();
        st.handle(Message::DefineBackend {
            index: 2,
            key: BackendKey {
                addr: "10.0.1.2".parse().unwrap(),
                port: 80,
            },
        })
        .unwrap();
        assert_eq!(
            st.handle(Message::TeachBegin { total: 2 }),
            Ok(Inbound::TeachBegin(2))
        );
        assert!(matches!(
            st.handle(Message::Teach { entries: vec![e, e] }),
            Ok(Inbound::Entries(v)) if v.len() == 2
        ));
        // Incremental entries during a teach do not count towards it.
        assert!(matches!(
            st.handle(Message::Entries { entries: vec![e] }),
            Ok(Inbound::Entries(v)) if v.len() == 1
        ));
        assert_eq!(
            st.handle(Message::TeachEnd { sent: 2 }),
            Ok(Inbound::TeachEnd { received: 2 })
        );
        assert!(st.handle(Message::TeachEnd { sent: 2 }).is_err());
        assert!(
            st.handle(Message::Teach { entries: vec![e] }).is_err(),
            "no teach"
        );
        assert_eq!(st.received, 3);
        let bad = WireEntry {
            client: ClientKey {
                addr: "198.51.100.7".parse().unwrap(),
                prefix: 24,
            },
            ..e
        };
        assert!(st.handle(Message::Entries { entries: vec![bad] }).is_err());
        assert!(st.handle(Message::Hello(hello())).is_err());
    }

    /// A whole session as a sender writes it: hello, definitions, a teach, incremental
    /// entries, a heartbeat. The fuzz target's seed (`fuzz/seeds/cluster/session.bin`,
    /// after one byte that picks the read sizes) is exactly this.
    fn seed_session() -> Vec<u8> {
        let v4 = ClientKey::host("198.51.100.7".parse().unwrap());
        let net = ClientKey::network("2001:db8:c::".parse().unwrap(), 64).unwrap();
        let e = |service, client, backend| WireEntry {
            service,
            client,
            backend,
            age_ms: 1500,
            stamp: 1_700_000_000_000,
        };
        let msgs = vec![
            Message::Hello(hello()),
            Message::DefineService {
                index: 0,
                key: svc(),
            },
            Message::DefineBackend {
                index: 0,
                key: BackendKey {
                    addr: "10.0.1.2".parse().unwrap(),
                    port: 8080,
                },
            },
            Message::DefineService {
                index: 1,
                key: ServiceKey {
                    vip: "2001:db8::100".parse().unwrap(),
                    port: 0,
                    proto: Proto::Udp,
                },
            },
            Message::DefineBackend {
                index: 1,
                key: BackendKey {
                    addr: "2001:db8:1::2".parse().unwrap(),
                    port: 0,
                },
            },
            Message::TeachBegin { total: 2 },
            Message::Teach {
                entries: vec![e(0, v4, 0), e(1, net, 1)],
            },
            Message::TeachEnd { sent: 2 },
            Message::Entries {
                entries: vec![e(0, v4, 0)],
            },
            Message::Services {
                services: 2,
                digest: [3; 32],
            },
            Message::Heartbeat { queued: 0 },
        ];
        let mut codec = Codec::new(1 << 20);
        let mut buf = BytesMut::new();
        for m in msgs {
            codec.encode(m, &mut buf).unwrap();
        }
        let mut out = vec![0x0f];
        out.extend_from_slice(&buf);
        out
    }

    #[test]
    fn fuzz_seed_is_a_whole_session() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/seeds/cluster/session.bin");
        let want = seed_session();
        if std::env::var_os("STICKYLB_WRITE_SEEDS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &want).unwrap();
        }
        let got = std::fs::read(&path).unwrap_or_default();
        assert!(
            got == want,
            "{} is not the current session seed: regenerate it with \
             STICKYLB_WRITE_SEEDS=1 cargo test -p lb-cluster fuzz_seed",
            path.display()
        );
        // And it is a session a receiver takes whole.
        let mut codec = Codec::new(1 << 20);
        let mut buf = BytesMut::from(&got[1..]);
        let mut st = InboundState::default();
        let first = codec.decode(&mut buf).unwrap().unwrap();
        assert!(matches!(first, Message::Hello(_)));
        while let Some(m) = codec.decode_eof(&mut buf).unwrap() {
            st.handle(m).unwrap();
        }
        assert_eq!((st.teaches, st.received), (1, 3));
    }
}
