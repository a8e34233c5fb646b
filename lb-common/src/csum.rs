//! Incremental Internet checksum updates (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`).
//!
//! All values are 16-bit words exactly as read from the packet in native byte order:
//! the one's complement sum is byte-order independent, so the data path never swaps.

use crate::Addr;

/// Folds a 32-bit one's complement partial sum into 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Adds to a partial sum the change of a 32-bit field from `old` to `new`.
#[inline(always)]
pub fn diff32(sum: u32, old: u32, new: u32) -> u32 {
    sum + (!old & 0xffff) + (!old >> 16) + (new & 0xffff) + (new >> 16)
}

/// Adds to a partial sum the change of a 16-bit field from `old` to `new`.
#[inline(always)]
pub fn diff16(sum: u32, old: u16, new: u16) -> u32 {
    sum + (!old as u32) + (new as u32)
}

/// Adds to a partial sum the change of the first `words` words of an address.
#[inline(always)]
pub fn diff_addr(mut sum: u32, old: &Addr, new: &Addr, words: usize) -> u32 {
    let mut i = 0;
    while i < 4 {
        if i < words {
            sum = diff32(sum, old[i], new[i]);
        }
        i += 1;
    }
    sum
}

/// Starts an update of the checksum `check` (as stored in the header).
#[inline(always)]
pub fn begin(check: u16) -> u32 {
    !check as u32
}

/// Finishes an update started with [`begin`]: the new checksum to store.
#[inline(always)]
pub fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// The new checksum after a 16-bit field changed from `old` to `new`.
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    finish(diff16(begin(check), old, new))
}

/// The new checksum after a 32-bit field changed from `old` to `new`.
#[inline(always)]
pub fn replace32(check: u16, old: u32, new: u32) -> u16 {
    finish(diff32(begin(check), old, new))
}

/// A UDP checksum that computes to zero is sent as all ones (RFC 768); zero means "none".
#[inline(always)]
pub fn udp_nonzero(check: u16) -> u16 {
    if check == 0 {
        0xffff
    } else {
        check
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;

    /// Full checksum over 16-bit big-endian words, the textbook way.
    fn full(words: &[u16]) -> u16 {
        let mut s: u32 = 0;
        for w in words {
            s += *w as u32;
        }
        !fold(s)
    }

    #[test]
    fn incremental_matches_full_recompute() {
        let mut state = 0x1234_5678u32;
        let mut rnd = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        for _ in 0..10_000 {
            let mut words: Vec<u16> = (0..20).map(|_| rnd() as u16).collect();
            let check = full(&words);
            let old = ((words[3] as u32) << 16) | words[4] as u32;
            let new = rnd();
            words[3] = (new >> 16) as u16;
            words[4] = new as u16;
            let inc = replace32(check, old.swap_bytes().swap_bytes(), new);
            // Both +0 and -0 verify; compare by verifying the sum.
            let mut s: u32 = inc as u32;
            for w in &words {
                s += *w as u32;
            }
            assert_eq!(fold(s), 0xffff, "incremental checksum does not verify");
            let old16 = words[7];
            let new16 = rnd() as u16;
            words[7] = new16;
            let inc2 = replace16(inc, old16, new16);
            let mut s: u32 = inc2 as u32;
            for w in &words {
                s += *w as u32;
            }
            assert_eq!(fold(s), 0xffff);
        }
    }

    #[test]
    fn udp_zero_becomes_ones() {
        assert_eq!(udp_nonzero(0), 0xffff);
        assert_eq!(udp_nonzero(0x1234), 0x1234);
    }
}
