//! The cap on HTTP/1.1 connections to one endpoint (`upstream.max_connections_per_endpoint`): a
//! count of open connections, the [`Permit`] each connection holds for its whole life, and the
//! wake-up of requests that found the endpoint full. A connection served from the idle pool pays
//! nothing; a new one pays a compare-and-swap (and its decrement when it closes); a connection
//! going idle or closing checks for waiters with one atomic load, and only wakes one if there are.
//! Knows nothing of the pools themselves (see `Pool::room`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// Open HTTP/1.1 connections to one endpoint (in use and idle), and the requests waiting for room.
#[derive(Default)]
pub(super) struct Limit {
    open: AtomicUsize,
    /// Requests waiting for a connection to go idle or to close.
    waiting: AtomicUsize,
    room: Notify,
}

// Orderings: `open` and `waiting` are SeqCst on both sides of each handshake. A waiter registers
// (`waiting` + 1), then re-checks (`open`, and the idle queues, whose push publishes through a
// SeqCst update that pop checks after a SeqCst fence); a releaser updates `open` (or pushes), then
// loads `waiting`. In the single order of SeqCst operations either the releaser sees the waiter
// and notifies it, or the waiter's re-check sees what was released; `Notify` keeps a notification
// that arrives before the waiter listens.

impl Limit {
    /// A permit for one more connection if fewer than `max` are open.
    pub(super) fn try_acquire(self: &Arc<Self>, max: usize) -> Option<Permit> {
        self.open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()
            .map(|_| Permit(self.clone()))
    }

    /// Room may have come free (a connection went idle or closed): wakes one waiting request.
    pub(super) fn wake(&self) {
        if self.waiting.load(Ordering::SeqCst) != 0 {
            self.room.notify_one();
        }
    }

    /// Registers a request that waits for room until the returned guard is dropped.
    pub(super) fn waiter(&self) -> Waiter<'_> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        Waiter(self)
    }

    /// Connections open now.
    pub(super) fn open(&self) -> usize {
        // Relaxed: a reading for views and tests; nothing is published through it.
        self.open.load(Ordering::Relaxed)
    }
}

/// One open connection's share of its endpoint's limit, given back when the connection closes.
pub struct Permit(Arc<Limit>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.wake();
    }
}

/// A request waiting for room; deregisters on drop, also when the request is cancelled.
pub(super) struct Waiter<'a>(&'a Limit);

impl Waiter<'_> {
    /// Resolves at the next wake-up, or at once for one that came while nobody listened. Enable
    /// it before re-checking for room, so that a wake-up during the check is not lost.
    pub(super) fn notified(&self) -> Notified<'_> {
        self.0.room.notified()
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn permits_stop_at_the_limit_and_come_back_when_dropped() {
        let limit = Arc::new(Limit::default());
        let first = limit.try_acquire(2).expect("room for the first");
        let second = limit.try_acquire(2).expect("room for the second");
        assert!(limit.try_acquire(2).is_none(), "the third must wait");
        assert!(
            limit.try_acquire(3).is_some(),
            "a raised limit has room at once"
        );
        assert_eq!(limit.open(), 2, "the permit made and dropped is given back");
        drop(first);
        let third = limit
            .try_acquire(2)
            .expect("a closed connection makes room");
        drop((second, third));
        assert_eq!(limit.open(), 0);
    }

    #[tokio::test]
    async fn a_closing_connection_wakes_a_waiter_and_nobody_is_woken_when_none_waits() {
        let limit = Arc::new(Limit::default());
        let permit = limit.try_acquire(1).unwrap();
        {
            let waiter = limit.waiter();
            let mut notified = std::pin::pin!(waiter.notified());
            notified.as_mut().enable();
            let releaser = tokio::spawn(async move { drop(permit) });
            tokio::time::timeout(Duration::from_secs(5), notified)
                .await
                .expect("the dropped permit must wake the waiter");
            releaser.await.unwrap();
        }
        assert_eq!(limit.waiting.load(Ordering::SeqCst), 0, "the waiter left");

        // With nobody waiting, a release notifies nobody: no wake-up is stored for later.
        drop(limit.try_acquire(1));
        let waiter = limit.waiter();
        let notified = waiter.notified();
        let waited = tokio::time::timeout(Duration::from_millis(20), notified).await;
        assert!(waited.is_err(), "no stale wake-up may be left");
    }
}
