//! Maglev consistent-hashing table builder (weighted). Userspace only.
//! TODO(helper): implement.

/// One backend as the builder sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaglevBackend {
    /// Backend id written into the table.
    pub id: u32,
    /// Stable identity used to derive the permutation (e.g. "10.0.0.2:80").
    pub key: String,
    /// Relative weight (> 0; zero-weight backends must be left out by the caller).
    pub weight: u32,
}

/// Builds a table of `size` slots (size must be prime). Empty input → empty table.
pub fn build(backends: &[MaglevBackend], size: u32) -> Vec<u32> {
    let _ = (backends, size);
    todo!()
}
