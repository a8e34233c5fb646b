//! The cluster sink's batch writer, `stickylb_stick_apply` (not on the packet path: never
//! attached). The agent runs it with `BPF_PROG_TEST_RUN`, a batch of peers' entries as
//! its "packet" ([`lb_common::StickRecord`]s, up to [`STICK_APPLY_RECORDS`]), so that a
//! batch costs one syscall instead of two per entry (a lookup, for the keep rule, then an
//! update): the kernel has no keyed batch lookup, and `BPF_MAP_UPDATE_BATCH` takes no
//! `BPF_NOEXIST` (its `elem_flags` accepts only `BPF_F_LOCK`), so the rule has to run in
//! the kernel. For each record: the table's entry stays if [`stick_keeps`] says so, else
//! the peer's is written; the outcome goes back into the record's `result` (the test
//! run copies the packet out).

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    sticky::stick_keeps, StickKey, StickRecord, StickValue, STICK_APPLY_FAILED, STICK_APPLY_KEPT,
    STICK_APPLY_RECORDS, STICK_APPLY_WRITTEN,
};

use crate::{maps::STICK, packet::Packet};

const KEY: usize = core::mem::offset_of!(StickRecord, key);
const RESULT: usize = core::mem::offset_of!(StickRecord, result);
const VALUE: usize = core::mem::offset_of!(StickRecord, value);

/// Writes every whole record of the packet; a trailing partial record is ignored.
#[inline(always)]
pub fn apply(ctx: &XdpContext) -> u32 {
    let pkt = Packet::new(ctx);
    for i in 0..STICK_APPLY_RECORDS {
        let Some(rec) = pkt.region::<StickRecord>(i * core::mem::size_of::<StickRecord>()) else {
            break;
        };
        // SAFETY: `region` checked that the packet holds a whole record at `rec`.
        let (key, value) = unsafe {
            (
                crate::packet::get::<StickKey>(rec, KEY),
                crate::packet::get::<StickValue>(rec, VALUE),
            )
        };
        // SAFETY: a copy of the value is read at once; the data path writes only whole
        // aligned fields.
        let kept = unsafe { STICK.get(&key) }.is_some_and(|current| stick_keeps(current, &value));
        let result = if kept {
            STICK_APPLY_KEPT
        } else if STICK.insert(&key, &value, 0).is_ok() {
            STICK_APPLY_WRITTEN
        } else {
            STICK_APPLY_FAILED
        };
        // SAFETY: as above (map helpers do not move the packet).
        unsafe { crate::packet::set::<u32>(rec, RESULT, result) };
    }
    xdp_action::XDP_DROP
}
