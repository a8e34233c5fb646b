//! Weighted round-robin sequence builder. Userspace only.
//! TODO(helper): implement.

/// Builds the repeating pick order for `(id, weight)` pairs.
pub fn sequence(backends: &[(u32, u32)], max_len: u32) -> Vec<u32> {
    let _ = (backends, max_len);
    todo!()
}
