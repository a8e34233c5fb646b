//! The data path's counters, each defined once: its field, its name in JSON answers, its
//! Prometheus family (and `reason` label), its help text and the `stickylb top` column it
//! adds to. [`counters!`] turns one list into the `#[repr(C)]` per-CPU struct the data path
//! increments (`st.drop_no_backend += 1`), the table [`CounterSet::COUNTERS`] every reader
//! walks (JSON, Prometheus, `top`), and the per-CPU sum.
//!
//! A new counter is one line in the list of its struct (in [`crate::maps`]) plus the
//! increment in the data path; the stats answer, the metrics endpoint and `top` pick it up.

/// What one counter is, for everything that shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counter {
    /// The field, and the key in JSON answers, e.g. `drop_no_backend`.
    pub key: &'static str,
    /// The metric family without its `_total` suffix, e.g. `stickylb_service_drops`.
    pub family: &'static str,
    /// The `reason` label telling the counters of one family apart (`no_backend`), if any.
    pub reason: Option<&'static str>,
    /// Help text of the family (the same for every counter of a family).
    pub help: &'static str,
    /// The rate column of `stickylb top` it adds to.
    pub column: Column,
}

/// The rate columns of `stickylb top` (a counter adds to at most one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Packets,
    Bytes,
    NewClients,
    /// Clients re-picked (entry expired, backend down).
    Repicks,
    /// Packets dropped.
    Drops,
    /// Packets handed to the kernel instead of forwarded.
    Passed,
    /// Not shown by `top` (JSON and Prometheus only).
    None,
}

/// A struct of counters made by [`counters!`].
pub trait CounterSet: Copy + Default {
    /// Every counter, in field order.
    const COUNTERS: &'static [Counter];
    /// Calls `f` with every counter and its value, in field order.
    fn for_each(&self, f: &mut dyn FnMut(&'static Counter, u64));
    /// Sets the counter `key`; false if there is none of that name.
    fn set(&mut self, key: &str, value: u64) -> bool;
    /// Adds another CPU's counters to these.
    fn accumulate(&mut self, other: &Self);
    /// The value of counter `key`, if there is one of that name.
    fn get(&self, key: &str) -> Option<u64> {
        let mut found = None;
        self.for_each(&mut |c, v| {
            if c.key == key {
                found = Some(v);
            }
        });
        found
    }
    /// The sum of the counters shown in `column`.
    fn column(&self, column: Column) -> u64 {
        let mut sum = 0u64;
        self.for_each(&mut |c, v| {
            if c.column == column {
                sum = sum.wrapping_add(v);
            }
        });
        sum
    }
}

/// Declares a `#[repr(C)]` struct of `u64` counters and its [`CounterSet`] impl. Each line:
/// `field: "family" [reason = "label"], Column, "help";` (doc comments allowed above it).
#[macro_export]
macro_rules! counters {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $field:ident: $family:literal $([reason = $reason:literal])?, $column:ident, $help:literal;
            )*
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: u64, )*
        }

        impl $crate::counters::CounterSet for $name {
            const COUNTERS: &'static [$crate::counters::Counter] = &[
                $(
                    $crate::counters::Counter {
                        key: stringify!($field),
                        family: $family,
                        reason: $crate::counters!(@reason $($reason)?),
                        help: $help,
                        column: $crate::counters::Column::$column,
                    },
                )*
            ];

            #[allow(unused_assignments, unused_mut, unused_variables)]
            fn for_each(&self, f: &mut dyn FnMut(&'static $crate::counters::Counter, u64)) {
                let mut i = 0;
                $(
                    f(&Self::COUNTERS[i], self.$field);
                    i += 1;
                )*
            }

            fn set(&mut self, key: &str, value: u64) -> bool {
                match key {
                    $( stringify!($field) => { self.$field = value; true } )*
                    _ => false,
                }
            }

            fn accumulate(&mut self, other: &Self) {
                $( self.$field = self.$field.wrapping_add(other.$field); )*
            }
        }
    };
    (@reason) => { None };
    (@reason $reason:literal) => { Some($reason) };
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use crate::{BackendStats, CounterSet, ServiceStats};

    fn check<T: CounterSet>() {
        let mut keys = std::collections::BTreeSet::new();
        for c in T::COUNTERS {
            assert!(keys.insert(c.key), "{} twice", c.key);
            assert!(c.family.starts_with("stickylb_"), "{}", c.family);
            assert!(!c.family.ends_with("_total"), "{}", c.family);
            assert!(c.help.ends_with('.'), "{}", c.help);
            // One help text and one labelling per family.
            for d in T::COUNTERS.iter().filter(|d| d.family == c.family) {
                assert_eq!(d.help, c.help, "{}", c.family);
                assert_eq!(d.reason.is_some(), c.reason.is_some(), "{}", c.family);
            }
        }
        let mut v = T::default();
        let mut n = 0;
        for (i, c) in T::COUNTERS.iter().enumerate() {
            assert!(v.set(c.key, i as u64 + 1));
            n += 1;
        }
        assert!(!v.set("nonsense", 1));
        let mut seen = 0;
        v.for_each(&mut |c, value| {
            assert_eq!(T::COUNTERS[seen], *c);
            assert_eq!(value, seen as u64 + 1);
            seen += 1;
        });
        assert_eq!(seen, n);
        let mut sum = v;
        sum.accumulate(&v);
        assert_eq!(sum.get(T::COUNTERS[0].key), Some(2));
        assert_eq!(
            std::mem::size_of::<T>(),
            8 * n,
            "only u64 fields, no padding"
        );
    }

    #[test]
    fn every_counter_is_described_once() {
        check::<ServiceStats>();
        check::<BackendStats>();
        check::<crate::DecapStats>();
        let s = ServiceStats {
            repick_expired: 2,
            repick_down: 3,
            fib_miss: 1,
            ..Default::default()
        };
        assert_eq!(s.column(crate::counters::Column::Repicks), 5);
        assert_eq!(s.column(crate::counters::Column::Passed), 1);
    }
}
