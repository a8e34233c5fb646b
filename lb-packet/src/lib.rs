//! Packet access shared by the two eBPF objects — the balancer (`lb-ebpf`) and the
//! backends' decapsulation program (`lb-decap`): header layouts and field offsets from
//! `network-types` ([`hdr`]) and bounds-checked access ([`packet`]). It defines no maps:
//! everything a crate links ends up in its object, so the maps live in the program crates.
#![no_std]

pub mod hdr;
pub mod packet;
