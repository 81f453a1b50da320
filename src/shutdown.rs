//! Shutdown signalling that servers select on and tests can drive.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;
use tokio::sync::watch;

/// Fires shutdown when [`Trigger::fire`] is called or the trigger is dropped.
pub struct Trigger(watch::Sender<bool>);

/// A cloneable shutdown listener.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Completes once shutdown has been requested.
    pub async fn wait(&mut self) {
        // An error means the trigger is gone, which also means shut down.
        let _ = self.0.wait_for(|fired| *fired).await;
    }

    /// [`wait`](Self::wait) for a select beside a busy future: polled only once it has been woken.
    ///
    /// A client connection selects on the listener's drain signal; polled directly, the signal
    /// would re-register with tokio's `Notify` (under its lock) on every wake of the connection,
    /// twice per request.
    pub fn quiet(self) -> Quiet<impl Future<Output = ()>> {
        let mut this = self;
        Quiet::new(async move { this.wait().await })
    }
}

/// A future that polls the one inside only after that one's own waker fired (or on first poll).
pub struct Quiet<F> {
    inner: Pin<Box<F>>,
    woken: Arc<Woken>,
    waker: Waker,
}

/// The inner future's waker: notes the wake, then wakes the task that polls [`Quiet`].
struct Woken {
    flag: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.flag.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> Quiet<F> {
    fn new(inner: F) -> Self {
        let woken = Arc::new(Woken {
            flag: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            inner: Box::pin(inner),
            waker: Waker::from(woken.clone()),
            woken,
        }
    }
}

impl<F: Future> Future for Quiet<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        this.woken.task.register(cx.waker());
        if !this.woken.flag.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker))
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C) and names the signal.
pub async fn signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops tidegate");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts the wakes it gets.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_quiet_wait_polls_the_signal_only_after_it_fired_and_wakes_its_task() {
        let (trigger, mut shutdown) = channel();
        let polls = Arc::new(AtomicUsize::new(0));
        let counted = polls.clone();
        let mut wait = Box::pin(async move { shutdown.wait().await });
        let inner = std::future::poll_fn(move |cx| {
            counted.fetch_add(1, Ordering::SeqCst);
            wait.as_mut().poll(cx)
        });
        let mut quiet = std::pin::pin!(Quiet::new(inner));
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);

        for _ in 0..10 {
            assert!(quiet.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "polled again without a wake"
        );
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);

        trigger.fire();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "the task was not woken");
        assert!(quiet.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }
}
