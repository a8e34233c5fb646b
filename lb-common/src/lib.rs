//! Shared between the XDP data path (`lb-ebpf`) and userspace (`lb-model`, `lb-agent`).
//!
//! This crate owns:
//! - the `#[repr(C)]` keys and values of every BPF map ([`maps`]), with each data-path
//!   counter defined once, name and help text included ([`counters`]),
//! - the constants both sides must agree on ([`consts`]), and the data path's clock
//!   ([`clock`]: jiffies, calibrated by the loader),
//! - pure logic that both sides run: checksum arithmetic ([`csum`]), the client hash
//!   ([`hash`]), the stickiness decision ([`sticky`]), the exact service index and the
//!   reply filter ([`index`]), the events ring's positions ([`event_ring`]), and — userspace only, behind the
//!   `std` feature — the selection-table builders ([`maglev`], [`wrr`]),
//! - and, behind `std`, the vocabulary every userspace crate shares (the model, the agent,
//!   the cluster crate, which the model depends on): the one duration grammar
//!   ([`duration`]), the clocks ([`clock`]) and the lock helper ([`sync`]).
//!
//! It is `no_std`; the `std` feature adds `std`, the builders and address conversions
//! (what the pure model crate `lb-model` needs), `user` adds the `aya::Pod` impls too.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod clock;
pub mod consts;
pub mod counters;
pub mod csum;
pub mod event_ring;
pub mod hash;
pub mod index;
pub mod maps;
pub mod sticky;

#[cfg(feature = "std")]
pub mod duration;
#[cfg(feature = "std")]
pub mod maglev;
#[cfg(feature = "std")]
pub mod sync;
#[cfg(feature = "std")]
pub mod wrr;

pub use consts::*;
pub use counters::CounterSet;
pub use maps::*;
