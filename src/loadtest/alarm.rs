//! A precise wake-up for the open-loop schedule. tokio's timer has millisecond ticks and fires up
//! to a tick late, which would land in every latency counted from the intended start; spinning
//! the last stretch instead costs a core at 1,000 req/s. A Linux timerfd is a kernel hrtimer: it
//! fires within microseconds, and the connection task waits for it through the runtime's epoll
//! like any socket, with no thread of its own and no spinning.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Instant;

use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// One connection task's timer; re-armed for each request.
pub(super) struct Alarm {
    fd: AsyncFd<OwnedFd>,
}

impl Alarm {
    pub fn new() -> io::Result<Self> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // Deprecated because a generic `AsRawFd` may name a different or closed descriptor over
        // time; an `OwnedFd` moved in names the same open timerfd until the `AsyncFd` drops it,
        // which is exactly what `register`'s safety contract asks (and the crate forbids
        // `unsafe`).
        #[allow(deprecated)]
        let fd = AsyncFd::with_interest(fd, Interest::READABLE)?;
        Ok(Self { fd })
    }

    /// Returns at `at` (at once if it has passed).
    pub async fn wait_until(&self, at: Instant) -> io::Result<()> {
        let left = at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        // Relative: `Instant` cannot be turned into the clock's absolute time, and the
        // nanoseconds between the two calls are far below what is measured.
        let value = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(left.subsec_nanos()),
            },
        };
        timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::empty(), &value)?;
        loop {
            let mut ready = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            match ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut expirations)?)) {
                Ok(result) => return result.map(drop),
                // Readiness left over from an earlier expiry: wait for this one.
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn wakes_at_the_instant_not_a_tick_later() {
        let alarm = Alarm::new().unwrap();
        for _ in 0..20 {
            let at = Instant::now() + Duration::from_micros(1500);
            alarm.wait_until(at).await.unwrap();
            assert!(Instant::now() >= at, "never early");
        }
        let past = Instant::now() - Duration::from_millis(5);
        alarm.wait_until(past).await.unwrap();
    }
}
