//! The stickylb XDP data path, as a short pipeline (see `docs/ARCHITECTURE.md`):
//!
//! ```text
//! parse ─► service lookup ─► stick table ─► pick (new / expired / dead backend)
//!   │            │                              │
//!   │            └─ no service ─► reply lookup ─┴─► rewrite (nat | dsr) ─► forward (fib) ─► stats
//!   └─ not parseable / not ours ─► XDP_PASS, bytes untouched
//! ```
//!
//! One module per stage: [`parse`], [`service`], [`sticky`], [`pick`], [`nat`], [`dsr`],
//! [`forward`] (which reports unresolved next hops through [`neigh`]), [`stats`]; side paths for ICMP errors ([`icmp`]) and later IPv4 fragments
//! ([`fragment`]); the maps live in [`maps`], and [`balancer`] strings the stages
//! together. The entry point is in `main.rs`.
#![no_std]

pub mod balancer;
pub mod dsr;
pub mod forward;
pub mod fragment;
pub mod icmp;
pub mod maps;
pub mod nat;
pub mod neigh;
pub mod packet;
pub mod parse;
pub mod pick;
pub mod service;
pub mod stats;
pub mod sticky;
