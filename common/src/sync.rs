//! Mutexes that a panicking holder does not poison for everyone else.
//!
//! Every mutex in era5-mirror guards data that is consistent whenever the lock is released
//! (critical sections are short and update whole values), so a panic in one thread must not
//! turn every later `lock` in the process into a second panic. This is the one place that
//! decides it; call sites use [`MutexExt::lock_unpoisoned`] and
//! [`CondvarExt::wait_unpoisoned`] instead of repeating `unwrap_or_else(PoisonError::into_inner)`.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// Locking that ignores poisoning.
pub trait MutexExt<T: ?Sized> {
    /// The guard, whether or not an earlier holder panicked.
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> MutexExt<T> for Mutex<T> {
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Waiting that ignores poisoning.
pub trait CondvarExt {
    /// Waits for a notification, whether or not an earlier holder of the lock panicked.
    fn wait_unpoisoned<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T>;
}

impl CondvarExt for Condvar {
    fn wait_unpoisoned<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.wait(guard).unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_holder_does_not_poison_the_lock_for_others() {
        let shared = std::sync::Arc::new(Mutex::new(1));
        let holder = shared.clone();
        let panicked = std::thread::spawn(move || {
            let mut guard = holder.lock().unwrap();
            *guard = 2;
            panic!("the holder dies with the lock held");
        })
        .join();
        assert!(panicked.is_err());
        assert!(shared.is_poisoned());
        assert_eq!(*shared.lock_unpoisoned(), 2);
    }
}
