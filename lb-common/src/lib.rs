//! Shared between the XDP data path (`lb-ebpf`) and userspace (`lb-userspace`).
//!
//! This crate owns:
//! - the `#[repr(C)]` keys and values of every BPF map ([`maps`]),
//! - the constants both sides must agree on ([`consts`]),
//! - pure logic that both sides run: checksum arithmetic ([`csum`]), the client hash
//!   ([`hash`]), the stickiness decision ([`sticky`]), the exact service index and the
//!   reply filter ([`index`]), and — userspace only, behind the
//!   `user` feature — the selection-table builders ([`maglev`], [`wrr`]).
//!
//! It is `no_std`; the `user` feature adds `std`, the builders and `aya::Pod` impls.
#![cfg_attr(not(feature = "user"), no_std)]

pub mod consts;
pub mod csum;
pub mod hash;
pub mod index;
pub mod maps;
pub mod sticky;

#[cfg(feature = "user")]
pub mod maglev;
#[cfg(feature = "user")]
pub mod wrr;

pub use consts::*;
pub use maps::*;
