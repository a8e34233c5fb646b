//! Bounds-checked access to packet bytes. Every read or write of the packet goes through
//! here, so the verifier sees a bounds check before each access.

use aya_ebpf::programs::XdpContext;

/// The packet as a (start, end) byte range.
#[derive(Clone, Copy)]
pub struct Packet {
    pub start: usize,
    pub end: usize,
}

impl Packet {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// A packet between two addresses from a context (a tc program's `data`/`data_end`).
    #[inline(always)]
    pub fn from_bounds(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    /// The bounds read again from the context (volatile loads). Pointers taken from it
    /// get bounds checks of their own that the compiler cannot merge with (or replace by)
    /// earlier ones: use it to write after helper calls.
    #[inline(always)]
    pub fn reload(ctx: &XdpContext) -> Self {
        // SAFETY: `ctx.ctx` is the program's context pointer, valid for the whole run.
        unsafe {
            Self {
                start: core::ptr::read_volatile(&(*ctx.ctx).data) as usize,
                end: core::ptr::read_volatile(&(*ctx.ctx).data_end) as usize,
            }
        }
    }

    /// Total length in bytes.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// A pointer to a `T` at byte offset `off`, if the packet holds all of it.
    #[inline(always)]
    pub fn ptr<T>(&self, off: usize) -> Option<*mut T> {
        let p = self.start + off;
        if p + core::mem::size_of::<T>() > self.end {
            return None;
        }
        Some(p as *mut T)
    }

    /// The start of a `T` (a header layout from [`crate::hdr`], or a byte array) at `off`,
    /// if the packet holds all of it: the pointer to read fields from with [`get`] /
    /// [`set`] at constant offsets.
    #[inline(always)]
    pub fn region<T>(&self, off: usize) -> Option<*mut u8> {
        self.ptr::<T>(off).map(|p| p as *mut u8)
    }

    /// Reads a `T` at `off`. Headers are at most 2-byte aligned; the kernel allows
    /// unaligned packet access on the architectures we target.
    #[inline(always)]
    pub fn read<T: Copy>(&self, off: usize) -> Option<T> {
        // SAFETY: `ptr` checked that the packet holds a whole `T` at `off`.
        self.ptr::<T>(off).map(|p| unsafe { *p })
    }
}

/// Reads a `T` at byte `off` of a bounds-checked region (`off` a constant: the verifier
/// sees one access at a fixed offset from the checked pointer).
///
/// # Safety
/// `region` must come from [`Packet::ptr`] for a type at least `off + size_of::<T>()`
/// bytes long.
#[inline(always)]
pub unsafe fn get<T: Copy>(region: *mut u8, off: usize) -> T {
    unsafe { core::ptr::read_unaligned(region.add(off) as *const T) }
}

/// Writes a `T` at byte `off` of a bounds-checked region; see [`get`].
///
/// # Safety
/// As for [`get`].
#[inline(always)]
pub unsafe fn set<T: Copy>(region: *mut u8, off: usize, value: T) {
    unsafe { core::ptr::write_unaligned(region.add(off) as *mut T, value) }
}
