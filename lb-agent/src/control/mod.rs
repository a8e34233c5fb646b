//! The control socket (its protocol and checks are `lb_model::control`'s): the client,
//! used by the `stickylb` subcommands, `top` and the bench, and the agent's server.

pub mod client;
pub mod peers;
pub mod server;
pub mod status;

pub use client::{request, request_value, ClientError};
pub use peers::peers_text;
pub use status::status_text;
