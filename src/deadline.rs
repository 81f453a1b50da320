//! Per-request deadlines on one timer per connection: the client's request head (`forward`) and
//! the endpoint's response head (`upstream::h1`).
//!
//! A fresh tokio timer per request is registered in the runtime's timer wheel and removed again:
//! about 800 instructions a request (hyper's header-read timeout, which also allocates one, about
//! 1.5k), several percent of the proxy's user-space work. A [`Deadline`] keeps its timer armed at
//! an earlier request's deadline, which is no later than the current one (the timeouts are fixed
//! durations added to a clock that only moves forward), and moves it on only when it fires early.
//! So the wheel is touched about once per timeout period per connection, however many requests
//! the connection carries, and setting a deadline is a plain store.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::time::{Instant, Sleep};

/// A deadline that can be moved freely and costs a timer operation only when it fires.
#[derive(Debug, Default)]
pub struct Deadline {
    /// Allocated on the first wait, then kept for the connection's life.
    timer: Option<Pin<Box<Sleep>>>,
    at: Option<Instant>,
}

impl Deadline {
    /// Sets (or moves) the deadline.
    pub fn set(&mut self, at: Instant) {
        self.at = Some(at);
    }

    /// No deadline until the next [`set`](Self::set).
    pub fn clear(&mut self) {
        self.at = None;
    }

    /// The deadline, if one is set.
    pub fn at(&self) -> Option<Instant> {
        self.at
    }

    /// Ready once the deadline has passed; otherwise arranges for the task to be woken then.
    /// Never ready while no deadline is set.
    pub fn poll_passed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(at) = self.at else {
            return Poll::Pending;
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.deadline() > at {
            // Moved earlier than the armed timer (a shortened timeout): the rare case.
            timer.as_mut().reset(at);
        }
        loop {
            ready!(timer.as_mut().poll(cx));
            if timer.deadline() >= at {
                return Poll::Ready(());
            }
            // It fired for an earlier deadline: on to this one.
            timer.as_mut().reset(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn passed(deadline: &mut Deadline) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        deadline.poll_passed(&mut cx).is_ready()
    }

    async fn advance(by: Duration) {
        tokio::time::advance(by).await;
    }

    #[tokio::test(start_paused = true)]
    async fn passes_at_the_deadline_and_not_before() {
        let mut deadline = Deadline::default();
        assert!(!passed(&mut deadline), "no deadline set: never passed");
        deadline.set(Instant::now() + Duration::from_secs(10));
        assert!(!passed(&mut deadline));
        advance(Duration::from_millis(9_999)).await;
        assert!(!passed(&mut deadline));
        advance(Duration::from_millis(1)).await;
        assert!(passed(&mut deadline));
        deadline.clear();
        assert!(!passed(&mut deadline), "cleared: never passed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_moved_later_outlives_the_armed_timer() {
        let mut deadline = Deadline::default();
        deadline.set(Instant::now() + Duration::from_secs(10));
        assert!(!passed(&mut deadline), "arms the timer at +10s");
        advance(Duration::from_secs(6)).await;
        deadline.set(Instant::now() + Duration::from_secs(10));
        advance(Duration::from_secs(5)).await;
        // The timer armed for +10s has fired; the deadline is at +16s.
        assert!(
            !passed(&mut deadline),
            "an earlier request's deadline is not this one's"
        );
        advance(Duration::from_secs(5)).await;
        assert!(passed(&mut deadline));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_moved_earlier_is_kept() {
        let mut deadline = Deadline::default();
        deadline.set(Instant::now() + Duration::from_secs(30));
        assert!(!passed(&mut deadline));
        deadline.set(Instant::now() + Duration::from_secs(1));
        assert!(!passed(&mut deadline));
        advance(Duration::from_secs(1)).await;
        assert!(passed(&mut deadline));
    }

    #[tokio::test(start_paused = true)]
    async fn wakes_the_waiting_task_when_it_passes() {
        let mut deadline = Deadline::default();
        deadline.set(Instant::now() + Duration::from_secs(10));
        let started = Instant::now();
        std::future::poll_fn(|cx| deadline.poll_passed(cx)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }
}
