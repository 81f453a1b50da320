//! Per-request deadlines on one timer per connection: the client's request head (`forward`) and
//! the endpoint's response head (`upstream::h1`).
//!
//! A fresh tokio timer per request is registered in the runtime's timer wheel and removed again:
//! about 800 instructions a request (hyper's header-read timeout, which also allocates one, about
//! 1.5k), several percent of the proxy's user-space work. A [`Deadline`] keeps its timer armed at
//! an earlier request's deadline, which is no later than the current one (the timeouts are fixed
//! durations added to a clock that only moves forward), and moves it on only when it fires early.
//! So the wheel is touched about once per timeout period per connection, however many requests
//! the connection carries, and setting a deadline is a plain store. Polling again while the timer
//! is armed for the same task is a few loads: polling the timer itself re-registers its waker,
//! about 120 instructions, and a busy connection polls its deadlines three times a request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::time::{Instant, Sleep};

/// A deadline that can be moved freely and costs a timer operation only when it fires.
#[derive(Debug, Default)]
pub struct Deadline {
    /// Allocated on the first wait, then kept for the connection's life.
    timer: Option<Pin<Box<Sleep>>>,
    at: Option<Instant>,
    /// The waker the timer was last left pending with: it wakes that task when it fires.
    waiting: Option<Waker>,
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
        if let (Some(timer), Some(waiting)) = (&self.timer, &self.waiting) {
            // Armed no later than the deadline, not fired, and the same task waits: nothing to do.
            if timer.deadline() <= at && !timer.is_elapsed() && waiting.will_wake(cx.waker()) {
                return Poll::Pending;
            }
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.deadline() > at {
            // Moved earlier than the armed timer (a shortened timeout): the rare case.
            timer.as_mut().reset(at);
        }
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                if !self
                    .waiting
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    self.waiting = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
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
        let waited = std::future::poll_fn(|cx| deadline.poll_passed(cx));
        tokio::time::timeout(Duration::from_secs(60), waited)
            .await
            .expect("woken and passed when the deadline came, not left waiting");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    /// Counts its wakes.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_from_another_task_moves_the_wake_there() {
        let mut deadline = Deadline::default();
        deadline.set(Instant::now() + Duration::from_secs(10));
        let (first, second) = (
            std::sync::Arc::new(Wakes::default()),
            std::sync::Arc::new(Wakes::default()),
        );
        for wakes in [&first, &second] {
            let waker = Waker::from(wakes.clone());
            let polled = deadline.poll_passed(&mut Context::from_waker(&waker));
            assert!(polled.is_pending());
        }
        advance(Duration::from_secs(10)).await;
        assert_eq!(second.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(passed(&mut deadline));
    }
}
