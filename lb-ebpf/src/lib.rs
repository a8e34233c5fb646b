//! The stickylb XDP data path, as a short pipeline (see `docs/ARCHITECTURE.md`):
//!
//! ```text
//! parse ─► service lookup ─► stick table ─► pick (new / expired / dead backend)
//!   │            │                              │
//!   │            └─ no service ─► reply lookup ─┴─► rewrite (nat | dsr | encap) ─► forward (fib) ─► stats
//!   │                                                              └─ over the MTU ─► toobig (ICMP back)
//!   └─ not parseable / not ours ─► XDP_PASS, bytes untouched
//! ```
//!
//! One module per stage: [`parse`], [`service`], [`sticky`], [`pick`], [`nat`], [`dsr`],
//! [`encap`] (with [`toobig`], the answer to packets over the MTU), [`forward`] (which
//! reports unresolved next hops through [`neigh`]), [`stats`]; side paths for ICMP errors
//! ([`icmp`]) and later IPv4 fragments
//! ([`fragment`]); the maps live in [`maps`], and [`balancer`] strings the stages
//! together. The entry point is in `main.rs`. Header layouts (from `network-types`,
//! [`hdr`]) and bounds-checked access ([`packet`]) come from `lb-packet`, shared with
//! `lb-decap`, the backends' decapsulation object.
#![no_std]

pub use lb_packet::{hdr, packet};

pub mod balancer;
pub mod dsr;
pub mod encap;
pub mod forward;
pub mod fragment;
pub mod icmp;
pub mod maps;
pub mod nat;
pub mod neigh;
pub mod parse;
pub mod pick;
pub mod service;
pub mod stats;
pub mod stick_apply;
pub mod sticky;
pub mod toobig;
