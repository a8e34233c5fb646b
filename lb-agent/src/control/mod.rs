//! The control socket (protocol and checks: `lb_model::control`): its client, used by the
//! `stickylb` subcommands, `top` and the bench.

pub mod client;

pub use client::{request, request_value, ClientError};
