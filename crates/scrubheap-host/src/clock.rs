//! The calling thread's CPU time, for measurements that must not count time the thread
//! spent descheduled (DESIGN section 4: preemption gaps are measured in thread CPU time).

use std::time::Duration;

/// CPU time the calling thread has consumed (`CLOCK_THREAD_CPUTIME_ID`).
///
/// ```
/// let a = scrubheap_host::thread_cpu_time();
/// let b = scrubheap_host::thread_cpu_time();
/// assert!(b >= a);
/// ```
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call, and
    // CLOCK_THREAD_CPUTIME_ID is a clock every supported Unix provides.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed: {}", std::io::Error::last_os_error());
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_advances_with_work() {
        let a = thread_cpu_time();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        let b = thread_cpu_time();
        assert!(b > a);
    }
}
