//! The raw `bpf(2)` commands the agent needs and aya 0.16 does not offer, in one place:
//! `BPF_MAP_UPDATE_BATCH` (selection tables, the service index, the reply filter),
//! `BPF_MAP_LOOKUP_BATCH` (the census's walk of the stick table) and `BPF_PROG_TEST_RUN`
//! on a program file descriptor the caller owns (the cluster sink's batch writer, run
//! outside the agent's lock, where aya's `TestRun` would need the `Ebpf` object).
//! Hand-written because no library does them; each is the kernel's documented command
//! with the `batch` / `test` member of `union bpf_attr`.

use std::os::fd::{AsRawFd as _, BorrowedFd};

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The `test` member of `union bpf_attr` (up to `batch_size`, as in Linux 5.18+; older
/// kernels take the shorter attr as long as the tail is zero).
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Entries per `BPF_MAP_LOOKUP_BATCH` call (to start with; more if a hash bucket holds
/// more).
const LOOKUP_BATCH: usize = 4096;

fn sys_bpf<A>(cmd: libc::c_long, attr: &mut A) -> libc::c_long {
    // SAFETY: bpf(2) with an attr of the command's layout; every pointer in it is set by
    // the callers to buffers of the sizes the attr announces, alive for the call.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut A,
            std::mem::size_of::<A>() as u32,
        )
    }
}

/// `BPF_MAP_UPDATE_BATCH` of `keys[i] → values[i]` (plain-data types of the map's key and
/// value sizes), `elem_flags` 0 (the kernel accepts no `BPF_NOEXIST` / `BPF_EXIST` here).
/// Returns how many elements the kernel wrote (all, unless it failed part way: the caller
/// writes the rest one by one); an error when the kernel has no batch operations for the
/// map or wrote none.
pub fn update_batch<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> std::io::Result<usize> {
    assert_eq!(keys.len(), values.len());
    if keys.is_empty() {
        return Ok(0);
    }
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: u32::try_from(keys.len()).unwrap_or(u32::MAX),
        map_fd: map.as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    if sys_bpf(BPF_MAP_UPDATE_BATCH, &mut attr) == 0 {
        return Ok(keys.len());
    }
    let e = std::io::Error::last_os_error();
    // Failed part way: `count` says how many were written.
    if (attr.count as usize) < keys.len() && attr.count > 0 {
        return Ok(attr.count as usize);
    }
    Err(e)
}

/// Every entry of a hash map of `K → V`, read with `BPF_MAP_LOOKUP_BATCH` and handed to
/// `f` (a snapshot: the table changes while it is read). An error when the kernel has
/// no batch lookup (the caller walks entry by entry).
pub fn lookup_batch<K: aya::Pod + Default, V: aya::Pod + Default>(
    map: BorrowedFd<'_>,
    f: &mut dyn FnMut(&K, &V),
) -> std::io::Result<()> {
    let mut size = LOOKUP_BATCH;
    let mut keys = vec![K::default(); size];
    let mut values = vec![V::default(); size];
    // The position in the table (a bucket index for hash maps); the first call has none.
    let mut token_in = 0u64;
    let mut token_out = 0u64;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &token_in as *const u64 as u64
            },
            out_batch: &mut token_out as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: size as u32,
            map_fd: map.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        let rc = sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let err = (rc != 0).then(std::io::Error::last_os_error);
        let n = (attr.count as usize).min(size);
        for i in 0..n {
            f(&keys[i], &values[i]);
        }
        match err {
            None => {}
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            // A bucket holds more entries than the buffer: a bigger one, same position.
            Some(e) if e.raw_os_error() == Some(libc::ENOSPC) && n == 0 && size < 1 << 20 => {
                size *= 2;
                keys.resize(size, K::default());
                values.resize(size, V::default());
                continue;
            }
            Some(e) => return Err(e),
        }
        token_in = token_out;
        first = false;
    }
}

/// `BPF_PROG_TEST_RUN` of a loaded XDP program once, with `data` as the packet; the
/// packet as the program left it is written back into `data` (same length: the caller's
/// programs do not resize it). Returns the program's return value.
pub fn test_run_in_place(prog: BorrowedFd<'_>, data: &mut [u8]) -> std::io::Result<u32> {
    let len =
        u32::try_from(data.len()).map_err(|_| std::io::Error::from_raw_os_error(libc::E2BIG))?;
    let buf = data.as_mut_ptr() as u64;
    let mut attr = TestAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: len,
        data_size_out: len,
        data_in: buf,
        data_out: buf,
        repeat: 1,
        ..Default::default()
    };
    // The kernel reads `data_in` before it writes `data_out` (it copies the input into a
    // page of its own first), so one buffer serves both.
    if sys_bpf(BPF_PROG_TEST_RUN, &mut attr) != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if attr.data_size_out != len {
        return Err(std::io::Error::other(format!(
            "the program returned {} bytes of the {len} it was given",
            attr.data_size_out
        )));
    }
    Ok(attr.retval)
}
