//! The control protocol between `stickylb` subcommands and the running agent (JSON lines
//! over a Unix socket, docs/CONTROL.md), without the socket: the messages and their
//! decoding ([`protocol`]) and the map-free checks of a request against the configuration
//! ([`check`]). The socket's client and server are the agent's (`lb-agent`'s `control`).

pub mod check;
pub mod protocol;

pub use check::{
    backend_needs_service, check, client_and_backend, client_entry, find_backend, find_service,
    parse_client, Edit,
};
pub use protocol::{
    commands, decode_line, encode_line, parse_request, too_long, usage, Request, Response,
    ServiceDef, DEFAULT_SOCKET, MAX_REQUEST,
};
