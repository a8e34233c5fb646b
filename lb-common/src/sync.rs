//! The one lock helper: a lock whose holder panicked (a bug) is taken over rather than
//! taking every later request, health change and signal down with it.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking it over if a holder panicked.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
