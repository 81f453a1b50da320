//! The two families every request writes — its status counter and its latency histogram — kept in
//! per-thread shards and summed when scraped. (The retry budget counts requests the same way.)
//!
//! A `prometheus` counter or histogram is one set of shared atomics: when every worker thread
//! writes it on every request, its cache lines move between cores each time. Measured on the 2-core
//! bench machine, with two threads writing at once: `Histogram::observe` 8.7 → 134 ns, a counter's
//! `inc` 1.8 → 21 ns; a counter in a per-thread shard stays at 1.8 ns. Here each thread writes its
//! own cache-line-aligned shard, and only a scrape reads them all.
//!
//! A scrape may see a request in one shard's bucket and not yet in another's: each series' count
//! is the sum of its buckets, so `_count` and the `+Inf` bucket always agree.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};

use super::LATENCY_BUCKETS;

/// Shards per series: the machine's parallelism rounded up to a power of two, at most 16. More
/// threads than that share shards, still correctly (they are atomics).
fn shards() -> usize {
    static SHARDS: OnceLock<usize> = OnceLock::new();
    *SHARDS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(16)
            .next_power_of_two()
    })
}

thread_local! {
    /// This thread's shard, handed out round-robin as threads first write.
    static SHARD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) & (shards() - 1)
    };
}

fn shard() -> usize {
    SHARD.with(|shard| *shard)
}

/// A value on a cache line (and its neighbour, which x86 prefetches in pairs) of its own.
#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

/// One zeroed shard per [`shards`].
fn per_thread<T: Default>() -> Box<[Padded<T>]> {
    (0..shards()).map(|_| Padded::default()).collect()
}

/// One series of a [`Family`].
pub trait Series: Default + Send + Sync + 'static {
    const KIND: MetricType;
    /// Writes the series' current value into `metric`.
    fn fill(&self, metric: &mut proto::Metric);
}

/// A monotonic counter.
pub struct Counter {
    shards: Box<[Padded<AtomicU64>]>,
}

impl Default for Counter {
    fn default() -> Self {
        Self {
            shards: per_thread(),
        }
    }
}

impl Counter {
    #[inline]
    pub fn inc(&self) {
        // Relaxed: a count, read only by summing; no other memory hangs on it.
        self.shards[shard()].0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }

    /// Back to zero: for counts that are not Prometheus counters (the retry budget's epochs). An
    /// `inc` racing with it may survive it.
    pub fn reset(&self) {
        for shard in self.shards.iter() {
            shard.0.store(0, Ordering::Relaxed);
        }
    }
}

impl Series for Counter {
    const KIND: MetricType = MetricType::COUNTER;

    fn fill(&self, metric: &mut proto::Metric) {
        let mut counter = proto::Counter::default();
        counter.set_value(self.get() as f64);
        metric.set_counter(counter);
    }
}

/// Request latencies in [`LATENCY_BUCKETS`] (the last bucket is beyond them all).
pub struct Latency {
    shards: Box<[Padded<LatencyShard>]>,
}

#[derive(Default)]
struct LatencyShard {
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Kept in nanoseconds, so that adding is one integer instruction (exact for 584 years).
    sum_nanos: AtomicU64,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            shards: per_thread(),
        }
    }
}

impl Latency {
    #[inline]
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        // `<=`, as Prometheus buckets are upper bounds inclusive.
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        let shard = &self.shards[shard()].0;
        shard.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        shard.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Per bucket, summed over the shards.
    fn counts(&self) -> [u64; LATENCY_BUCKETS.len() + 1] {
        let mut counts = [0; LATENCY_BUCKETS.len() + 1];
        for shard in self.shards.iter() {
            for (count, bucket) in counts.iter_mut().zip(&shard.0.counts) {
                *count += bucket.load(Ordering::Relaxed);
            }
        }
        counts
    }
}

impl Series for Latency {
    const KIND: MetricType = MetricType::HISTOGRAM;

    fn fill(&self, metric: &mut proto::Metric) {
        let counts = self.counts();
        let sum_nanos: u64 = self
            .shards
            .iter()
            .map(|s| s.0.sum_nanos.load(Ordering::Relaxed))
            .sum();
        let mut cumulative = 0;
        let buckets = LATENCY_BUCKETS
            .iter()
            .zip(counts)
            .map(|(bound, count)| {
                cumulative += count;
                let mut bucket = proto::Bucket::default();
                bucket.set_upper_bound(*bound);
                bucket.set_cumulative_count(cumulative);
                bucket
            })
            .collect();
        let mut histogram = proto::Histogram::default();
        histogram.set_bucket(buckets);
        histogram.set_sample_count(counts.iter().sum());
        histogram.set_sample_sum(sum_nanos as f64 / 1e9);
        metric.set_histogram(histogram);
    }
}

/// A family of labelled series. Series are resolved (under a lock) when a version or status is
/// first seen, never per request: the request path holds the returned `Arc`.
pub struct Family<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Family<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<S> {
    desc: Desc,
    /// Label names, sorted, and where each sits in the caller's label values.
    sorted: Vec<(String, usize)>,
    #[allow(clippy::disallowed_types)] // resolution only (see `Family`), never per request
    series: std::sync::Mutex<BTreeMap<Vec<String>, Arc<S>>>,
}

impl<S: Series> Family<S> {
    /// A family `name` with `labels`, given in the order `with_label_values` takes their values.
    ///
    /// # Panics
    /// On an invalid metric or label name: the names are the program's constants.
    pub fn new(name: &str, help: &str, labels: &[&str]) -> Self {
        let desc = Desc::new(
            name.to_owned(),
            help.to_owned(),
            labels.iter().map(|l| (*l).to_owned()).collect(),
            Default::default(),
        )
        .expect("valid metric definition");
        let mut sorted: Vec<(String, usize)> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| ((*l).to_owned(), i))
            .collect();
        sorted.sort();
        Self {
            inner: Arc::new(Inner {
                desc,
                sorted,
                series: Default::default(),
            }),
        }
    }

    /// The series for these label values, created on first use.
    pub fn with_label_values(&self, values: &[&str]) -> Arc<S> {
        let key: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        self.lock().entry(key).or_default().clone()
    }

    /// Drops every series whose label `name` is `value`. Handles still held keep counting, unseen.
    pub fn remove_where(&self, name: &str, value: &str) {
        let Some(&(_, at)) = self.inner.sorted.iter().find(|(n, _)| n == name) else {
            return;
        };
        self.lock().retain(|values, _| values[at] != value);
    }

    #[allow(clippy::disallowed_types)] // see `Inner::series`
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<String>, Arc<S>>> {
        self.inner
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<S: Series> Collector for Family<S> {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.inner.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let series: Vec<(Vec<String>, Arc<S>)> = self
            .lock()
            .iter()
            .map(|(values, series)| (values.clone(), series.clone()))
            .collect();
        let metrics = series
            .into_iter()
            .map(|(values, series)| {
                // Label pairs sorted by name, as the crate's own families write them.
                let labels = self
                    .inner
                    .sorted
                    .iter()
                    .map(|(name, at)| {
                        let mut pair = LabelPair::default();
                        pair.set_name(name.clone());
                        pair.set_value(values[*at].clone());
                        pair
                    })
                    .collect();
                let mut metric = proto::Metric::from_label(labels);
                series.fill(&mut metric);
                metric
            })
            .collect();
        let mut family = MetricFamily::default();
        family.set_name(self.inner.desc.fq_name.clone());
        family.set_help(self.inner.desc.help.clone());
        family.set_field_type(S::KIND);
        family.set_metric(metrics);
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

    use super::*;

    fn text(collector: impl Collector + 'static) -> String {
        let registry = Registry::new();
        registry.register(Box::new(collector)).unwrap();
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Latencies on and around every bucket bound.
    fn latencies() -> Vec<Duration> {
        let mut all = vec![Duration::ZERO, Duration::from_secs(60)];
        for bound in LATENCY_BUCKETS {
            let at = Duration::from_secs_f64(*bound);
            all.extend([at, at + Duration::from_nanos(1), at / 2]);
        }
        all
    }

    #[test]
    fn families_read_as_the_crate_s_own_from_threads_writing_at_once() {
        let labels = ["version", "role"];
        let ours: Family<Latency> = Family::new("t_seconds", "help", &labels);
        let theirs = HistogramVec::new(
            HistogramOpts::new("t_seconds", "help").buckets(LATENCY_BUCKETS.to_vec()),
            &labels,
        )
        .unwrap();
        let counted: Family<Counter> = Family::new("t_total", "help", &["version", "code"]);
        let reference =
            IntCounterVec::new(Opts::new("t_total", "help"), &["version", "code"]).unwrap();
        std::thread::scope(|s| {
            for thread in 0..4 {
                let (ours, theirs) = (&ours, &theirs);
                let (counted, reference) = (&counted, &reference);
                s.spawn(move || {
                    let role = if thread % 2 == 0 { "stable" } else { "canary" };
                    let mine = ours.with_label_values(&["v1", role]);
                    let count = counted.with_label_values(&["v1", "200"]);
                    for latency in latencies() {
                        mine.observe(latency);
                        theirs
                            .with_label_values(&["v1", role])
                            .observe(latency.as_secs_f64());
                        count.inc();
                        reference.with_label_values(&["v1", "200"]).inc();
                    }
                });
            }
        });
        // Sums in nanoseconds against sums of f64 seconds: compare all but the `_sum` lines exactly.
        let exact = |t: String| -> Vec<String> {
            t.lines()
                .filter(|l| !l.contains("_sum{"))
                .map(str::to_owned)
                .collect()
        };
        let (ours_text, theirs_text) = (text(ours.clone()), text(theirs));
        assert_eq!(exact(ours_text.clone()), exact(theirs_text.clone()));
        assert!(
            ours_text.contains(r#"t_seconds_count{role="canary",version="v1"} 94"#),
            "{ours_text}"
        );
        let sum = |t: &str| -> f64 {
            t.lines()
                .find(|l| l.starts_with(r#"t_seconds_sum{role="stable""#))
                .and_then(|l| l.rsplit(' ').next())
                .unwrap()
                .parse()
                .unwrap()
        };
        assert!((sum(&ours_text) - sum(&theirs_text)).abs() < 1e-6);
        assert_eq!(text(counted), text(reference));
    }

    #[test]
    fn a_removed_version_leaves_the_others() {
        let family: Family<Counter> = Family::new("t_total", "help", &["code", "version"]);
        family.with_label_values(&["200", "v1"]).inc();
        family.with_label_values(&["200", "v2"]).inc();
        let kept = family.with_label_values(&["503", "v2"]);
        family.remove_where("version", "v2");
        kept.inc();
        let out = text(family.clone());
        assert!(
            out.contains(r#"t_total{code="200",version="v1"} 1"#),
            "{out}"
        );
        assert!(!out.contains("v2"), "{out}");
        assert_eq!(
            family.with_label_values(&["200", "v2"]).get(),
            0,
            "a fresh series"
        );
    }
}
