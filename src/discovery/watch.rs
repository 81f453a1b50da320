//! One resource's watch stream, kept alive through API server trouble: a watch cut after it worked
//! retries at once; failures in a row wait a capped backoff while the API server is away; and every
//! failed watch retries at once as soon as any of them gets an answer again ([`Recovery`]), so that
//! after an outage the resources come back together rather than each at its own backoff (pods two
//! seconds before EndpointSlices, say).

use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use kube::runtime::watcher::{self, Event};
use kube::Api;
use tokio::sync::watch;

/// Shared by the watches of one discovery source: each says when it got through after a failure,
/// which wakes the others from their backoff.
#[derive(Clone)]
pub struct Recovery {
    tx: watch::Sender<u64>,
}

impl Default for Recovery {
    fn default() -> Self {
        Self {
            tx: watch::channel(0).0,
        }
    }
}

impl Recovery {
    fn signal(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// A watcher that retries with [`CappedBackoff`] (or at once when another watch recovers), and
/// starts over with a fresh list when the API server answers a watch request with HTTP `410 Gone`
/// (kube's watcher would retry the expired resourceVersion forever; a `410` error *event* it
/// handles itself).
pub fn watch_resource<K>(
    api: Api<K>,
    config: watcher::Config,
    recovery: Recovery,
) -> BoxStream<'static, watcher::Result<Event<K>>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    retrying(
        move || watcher::watcher(api.clone(), config.clone()).boxed(),
        recovery,
    )
}

/// The watch stream `start` makes, retried as [`watch_resource`] says.
fn retrying<K, F>(start: F, recovery: Recovery) -> BoxStream<'static, watcher::Result<Event<K>>>
where
    K: Send + 'static,
    F: Fn() -> BoxStream<'static, watcher::Result<Event<K>>> + Clone + Send + 'static,
{
    let state = Retrying {
        inner: start(),
        backoff: CappedBackoff::default(),
        failures: 0,
        woken: recovery.tx.subscribe(),
        recovery,
    };
    futures::stream::unfold(state, move |mut s| {
        let start = start.clone();
        async move {
            // A watch cut after it worked (a dropped connection, an expired history) is retried at
            // once: it has been blind since. Only failures in a row wait.
            if s.failures > 1 {
                s.pause().await;
            }
            let item = s.inner.next().await?;
            match &item {
                Err(_) => {
                    if is_gone(&item) {
                        s.inner = start();
                    }
                    s.failures += 1;
                }
                Ok(_) if s.failures > 0 => {
                    s.failures = 0;
                    s.backoff = CappedBackoff::default();
                    s.recovery.signal();
                }
                Ok(_) => {}
            }
            Some((item, s))
        }
    })
    .boxed()
}

/// One watch's retry state.
struct Retrying<K> {
    inner: BoxStream<'static, watcher::Result<Event<K>>>,
    backoff: CappedBackoff,
    /// Errors since the last success.
    failures: u32,
    /// Other watches' recoveries.
    woken: watch::Receiver<u64>,
    recovery: Recovery,
}

impl<K> Retrying<K> {
    /// Waits out the next backoff step, or less if another watch recovers meanwhile. Recoveries
    /// from before the wait do not count: they did not help this watch.
    async fn pause(&mut self) {
        self.woken.borrow_and_update();
        let delay = self.backoff.step();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = self.woken.changed() => {}
        }
    }
}

fn is_gone<K>(item: &watcher::Result<Event<K>>) -> bool {
    matches!(
        item,
        Err(watcher::Error::WatchStartFailed(kube::Error::Api(status))) if status.code == 410
    )
}

/// Exponential backoff from 100 ms, capped at 750 ms, with up to 25% jitter: while the API server
/// is away each watch asks about once a second (kube's default grows to 30 s), so the first one
/// through after an outage is at most about a second late, and it wakes the rest.
pub struct CappedBackoff {
    next: Duration,
}

pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_millis(750);

impl Default for CappedBackoff {
    fn default() -> Self {
        Self { next: BACKOFF_MIN }
    }
}

impl CappedBackoff {
    /// The next delay.
    pub fn step(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        // Jitter so that many replicas do not reconnect in lockstep.
        delay + delay.mul_f64(fastrand::f64() * 0.25)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_under_a_second() {
        let mut b = CappedBackoff::default();
        let delays: Vec<_> = (0..10).map(|_| b.step()).collect();
        assert!(delays[0] >= BACKOFF_MIN && delays[0] < BACKOFF_MIN * 2);
        assert!(
            delays.iter().all(|d| *d <= Duration::from_millis(950)),
            "{delays:?}"
        );
        assert!(delays[9] >= BACKOFF_MAX, "it grows to the cap");
    }

    /// A stream that yields `errors` watch errors, then one event, then ends.
    fn flaky(errors: usize) -> BoxStream<'static, watcher::Result<Event<()>>> {
        let items = (0..errors)
            .map(|_| Err(watcher::Error::NoResourceVersion))
            .chain([Ok(Event::Init)]);
        futures::stream::iter(items).boxed()
    }

    /// How long the retrying stream takes to yield all of `flaky(errors)`.
    async fn time_through(errors: usize) -> Duration {
        let start = tokio::time::Instant::now();
        let items: Vec<_> = retrying(move || flaky(errors), Recovery::default())
            .collect()
            .await;
        assert_eq!(items.len(), errors + 1);
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_watch_retries_at_once_and_failures_in_a_row_back_off() {
        assert_eq!(
            time_through(1).await,
            Duration::ZERO,
            "one error: retried at once"
        );
        let three = time_through(3).await;
        // The second and third errors wait 100 ms and 200 ms (plus jitter up to 25%).
        assert!(
            three >= Duration::from_millis(300) && three <= Duration::from_millis(375),
            "{three:?}"
        );
    }

    fn waiting(recovery: &Recovery, backoff: Duration) -> Retrying<()> {
        Retrying {
            inner: futures::stream::empty().boxed(),
            backoff: CappedBackoff { next: backoff },
            failures: 2,
            woken: recovery.tx.subscribe(),
            recovery: recovery.clone(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn another_watch_recovering_ends_the_wait_and_an_earlier_recovery_does_not() {
        let recovery = Recovery::default();
        let mut paused = waiting(&recovery, Duration::from_secs(60));
        // A recovery before the wait began did not help this watch: it waits on.
        recovery.signal();
        let start = tokio::time::Instant::now();
        let other = recovery.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            other.signal();
        });
        paused.pause().await;
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
            "woken by the recovery 5 s in, not before, not at the 60 s backoff: {waited:?}"
        );
    }
}
