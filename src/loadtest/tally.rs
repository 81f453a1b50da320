//! The recorder: the one task that owns every count. Connections send it one `Record` per request
//! over an unbounded channel (never blocking the load); it folds them into totals and per-second
//! buckets, publishes [`Live`] on a watch, and builds the [`Summary`] when the run ends.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch};

use super::record::{FailureCounts, Outcome, Record};
use super::summary::{ms, Mark, Percentiles, SecondStats, Summary, VersionSummary};

/// What the recorder is told.
pub(super) enum Event {
    Record(Record),
    Mark(Mark),
    /// Every connection has finished: build the summary.
    Done {
        stopped_early: bool,
    },
}

/// The run so far, republished a few times a second: what a progress line or the demo shows.
#[derive(Clone, Debug, Default)]
pub struct Live {
    pub elapsed: Duration,
    pub requests: u64,
    pub failed: u64,
    pub failures: FailureCounts,
    pub late: u64,
    /// Versions in order of first appearance; `by_version` and `last_second.by_version` are
    /// indexed the same way.
    pub versions: Vec<Arc<str>>,
    /// Responses by version so far.
    pub by_version: Vec<u64>,
    /// The latest second that is complete.
    pub last_second: Option<SecondStats>,
}

/// The parts of the plan a summary repeats.
pub(super) struct RunInfo {
    pub target: String,
    pub protocol: &'static str,
    pub rate: u32,
    pub stages: Vec<super::plan::Stage>,
    pub connections: usize,
    pub duration: Duration,
}

/// Distinct versions kept; more (a regex capturing pod names, say) are counted as `(other)`.
const MAX_VERSIONS: usize = 32;
const UNVERSIONED: &str = "(none)";
const OTHER: &str = "(other)";

/// A second is closed (its percentiles computed, published as `last_second`) this long after it
/// ended, so records racing across the boundary still land in it.
const CLOSE_GRACE: Duration = Duration::from_millis(50);

/// How often `Live` is republished.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);

/// Runs until [`Event::Done`] (or every sender is gone) and returns the summary.
pub(super) async fn record(
    mut events: mpsc::UnboundedReceiver<Event>,
    live: watch::Sender<Live>,
    start: Instant,
    info: RunInfo,
    mut csv: Option<super::csv::Csv>,
) -> Summary {
    let mut tally = Tally::default();
    // A row per record (buffered: one small write per 64 KiB). A failed write stops the file, not
    // the run; the summary says so.
    let mut csv_failed = false;
    let finish_csv = |csv: Option<super::csv::Csv>, failed: bool| {
        if let Some(csv) = csv {
            if csv.finish().is_err() || failed {
                tracing::warn!("the --csv file is incomplete: a write failed");
            }
        }
    };
    let mut publish = tokio::time::interval(PUBLISH_EVERY);
    publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Record(record)) => {
                    if let Some(file) = &mut csv {
                        if file.row(&record).is_err() {
                            csv_failed = true;
                        }
                    }
                    tally.add(record);
                }
                Some(Event::Mark(mark)) => tally.marks.push(mark),
                Some(Event::Done { stopped_early }) => {
                    finish_csv(csv.take(), csv_failed);
                    return tally.finish(info, start.elapsed(), stopped_early);
                }
                None => {
                    finish_csv(csv.take(), csv_failed);
                    return tally.finish(info, start.elapsed(), true);
                }
            },
            _ = publish.tick() => {
                let now = start.elapsed();
                tally.close_until(now);
                live.send_replace(tally.live(now));
            }
        }
    }
}

/// Every count of the run, owned by the recorder task.
#[derive(Default)]
pub(super) struct Tally {
    versions: Vec<Arc<str>>,
    by_version: Vec<u64>,
    version_failed: Vec<u64>,
    requests: u64,
    responses: u64,
    late: u64,
    failures: FailureCounts,
    statuses: BTreeMap<u16, u64>,
    /// Microseconds, over every response.
    latency: Option<Histogram<u64>>,
    /// Microseconds from the actual send, over every response.
    service: Option<Histogram<u64>>,
    /// Microseconds an on-time request started after its intended start, over every sent one.
    start_lag: Option<Histogram<u64>>,
    /// Latency (from the intended start) per version, indexed like `versions`: the canary's p99
    /// beside stable's.
    version_latency: Vec<Histogram<u64>>,
    seconds: Vec<SecondStats>,
    /// Latency histograms of the seconds not closed yet, from `seconds[first_open]` on.
    open: VecDeque<OpenSecond>,
    first_open: usize,
    /// Histograms of closed seconds, cleared, for reuse.
    spare: Vec<Histogram<u64>>,
    marks: Vec<Mark>,
}

/// A second's latencies until it is closed: all of them, and each version's.
struct OpenSecond {
    all: Histogram<u64>,
    by_version: Vec<Histogram<u64>>,
}

/// Quantiles of the latency distribution plot: dense in the tail, HDR style.
const DISTRIBUTION: [f64; 16] = [
    0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99995, 0.99999,
    0.999995, 0.999999,
];

/// A histogram's [`Percentiles`], and its points at each of [`DISTRIBUTION`].
fn percentiles(h: &Histogram<u64>) -> Percentiles {
    Percentiles {
        min_ms: ms(h.min()),
        p50_ms: ms(h.value_at_quantile(0.5)),
        p90_ms: ms(h.value_at_quantile(0.9)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    }
}

fn distribution(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    // Past the last recorded quantile (1 − 1/len) the points would only repeat the max.
    let resolved = 1.0 - 1.0 / h.len().max(1) as f64;
    DISTRIBUTION
        .iter()
        .take_while(|q| **q <= resolved.max(0.5))
        .map(|q| (q * 100.0, ms(h.value_at_quantile(*q))))
        .chain(std::iter::once((100.0, ms(h.max()))))
        .collect()
}

fn histogram() -> Histogram<u64> {
    // Auto-resizing with 3 significant digits: any latency fits, to within 0.1%.
    Histogram::new(3).expect("3 significant digits is in the supported range")
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Records `us`, growing the histogram as needed.
fn sample(h: &mut Histogram<u64>, us: u64) {
    if h.record(us).is_err() {
        // Only past what auto-resizing can reach (about 2^63 µs).
        h.saturating_record(us);
    }
}

impl Tally {
    pub fn add(&mut self, record: Record) {
        let second = usize::try_from(record.done.as_secs()).unwrap_or(usize::MAX);
        self.cover(second + 1);
        self.requests += 1;
        self.seconds[second].requests += 1;
        if record.late {
            self.late += 1;
            self.seconds[second].late += 1;
        }
        if let Some(kind) = record.outcome.failure() {
            self.failures.add(kind);
            self.seconds[second].failures.add(kind);
        }
        if let Some(lag) = record.start_lag {
            sample(self.start_lag.get_or_insert_with(histogram), micros(lag));
        }
        let Outcome::Status(status) = record.outcome else {
            return;
        };
        if let Some(service) = record.service {
            sample(self.service.get_or_insert_with(histogram), micros(service));
        }
        self.responses += 1;
        *self.statuses.entry(status).or_default() += 1;
        let version = self.version_index(record.version);
        self.by_version[version] += 1;
        if status >= 500 {
            self.version_failed[version] += 1;
        }
        let by_version = &mut self.seconds[second].by_version;
        if by_version.len() <= version {
            by_version.resize(version + 1, 0);
        }
        by_version[version] += 1;

        let us = micros(record.latency);
        sample(self.latency.get_or_insert_with(histogram), us);
        sample(&mut self.version_latency[version], us);
        if second >= self.first_open {
            while self.open.len() <= second - self.first_open {
                let all = self.spare.pop().unwrap_or_else(histogram);
                self.open.push_back(OpenSecond {
                    all,
                    by_version: Vec::new(),
                });
            }
            let open = &mut self.open[second - self.first_open];
            sample(&mut open.all, us);
            while open.by_version.len() <= version {
                open.by_version
                    .push(self.spare.pop().unwrap_or_else(histogram));
            }
            sample(&mut open.by_version[version], us);
        }
        // A record for a closed second counts above, but is not in that second's percentiles.
    }

    /// Makes sure `seconds` has at least `len` entries.
    fn cover(&mut self, len: usize) {
        let from = self.seconds.len();
        self.seconds.extend((from..len).map(|s| SecondStats {
            second: s as u64,
            ..SecondStats::default()
        }));
    }

    fn version_index(&mut self, version: Option<Bytes>) -> usize {
        let name: &[u8] = match &version {
            Some(v) => v,
            None => UNVERSIONED.as_bytes(),
        };
        if let Some(i) = self.versions.iter().position(|v| v.as_bytes() == name) {
            return i;
        }
        let name: Arc<str> = if self.versions.len() < MAX_VERSIONS {
            Arc::from(String::from_utf8_lossy(name))
        } else if let Some(i) = self.versions.iter().position(|v| &**v == OTHER) {
            return i;
        } else {
            Arc::from(OTHER)
        };
        self.versions.push(name);
        self.by_version.push(0);
        self.version_failed.push(0);
        self.version_latency.push(histogram());
        self.versions.len() - 1
    }

    /// Closes every second that ended at least [`CLOSE_GRACE`] before `now` (seconds without any
    /// outcome included: a silent second is news too).
    pub fn close_until(&mut self, now: Duration) {
        let closed =
            usize::try_from(now.saturating_sub(CLOSE_GRACE).as_secs()).unwrap_or(usize::MAX);
        self.cover(closed);
        while self.first_open < closed {
            let open = self.open.pop_front();
            if let (Some(open), Some(stats)) = (&open, self.seconds.get_mut(self.first_open)) {
                let h = &open.all;
                if !h.is_empty() {
                    stats.p50_ms = Some(ms(h.value_at_quantile(0.5)));
                    stats.p99_ms = Some(ms(h.value_at_quantile(0.99)));
                    stats.max_ms = Some(ms(h.max()));
                }
                stats.p99_by_version = open
                    .by_version
                    .iter()
                    .map(|h| (!h.is_empty()).then(|| ms(h.value_at_quantile(0.99))))
                    .collect();
            }
            if let Some(open) = open {
                for mut h in std::iter::once(open.all).chain(open.by_version) {
                    h.reset();
                    self.spare.push(h);
                }
            }
            self.first_open += 1;
        }
    }

    pub fn live(&self, elapsed: Duration) -> Live {
        Live {
            elapsed,
            requests: self.requests,
            failed: self.failures.total(),
            failures: self.failures,
            late: self.late,
            versions: self.versions.clone(),
            by_version: self.by_version.clone(),
            last_second: self
                .first_open
                .checked_sub(1)
                .and_then(|s| self.seconds.get(s))
                .cloned(),
        }
    }

    pub fn finish(mut self, info: RunInfo, elapsed: Duration, stopped_early: bool) -> Summary {
        // Every record has arrived: close the last, partial second too.
        self.close_until(elapsed + Duration::from_secs(1) + CLOSE_GRACE);
        let versions = self
            .versions
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let served = |s: &&SecondStats| s.version(i) > 0;
                let first = self.seconds.iter().find(served).map_or(0, |s| s.second);
                let last = self
                    .seconds
                    .iter()
                    .rev()
                    .find(served)
                    .map_or(0, |s| s.second);
                VersionSummary {
                    name: name.to_string(),
                    responses: self.by_version[i],
                    failed: self.version_failed[i],
                    share: self.by_version[i] as f64 / self.responses.max(1) as f64,
                    first_second: first,
                    last_second: last,
                    latency: self
                        .version_latency
                        .get(i)
                        .filter(|h| !h.is_empty())
                        .map(percentiles),
                    distribution: self
                        .version_latency
                        .get(i)
                        .filter(|h| !h.is_empty())
                        .map(distribution)
                        .unwrap_or_default(),
                }
            })
            .collect();
        let latency = self.latency.as_ref().map(percentiles);
        let service = self.service.as_ref().map(percentiles);
        let start_lag = self.start_lag.as_ref().map(percentiles);
        let width = self.versions.len();
        for second in &mut self.seconds {
            second.by_version.resize(width, 0);
            second.p99_by_version.resize(width, None);
        }
        Summary {
            target: info.target,
            protocol: info.protocol,
            rate: info.rate,
            stages: info.stages,
            connections: info.connections,
            duration_s: info.duration.as_secs_f64(),
            elapsed_s: elapsed.as_secs_f64(),
            stopped_early,
            requests: self.requests,
            responses: self.responses,
            failed: self.failures.total(),
            late: self.late,
            failures: self.failures,
            statuses: self.statuses,
            latency,
            distribution: self.latency.as_ref().map(distribution).unwrap_or_default(),
            service,
            start_lag,
            versions,
            seconds: self.seconds,
            marks: self.marks,
            thresholds: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::{ErrorKind, FailureKind};
    use super::*;

    fn info() -> RunInfo {
        RunInfo {
            target: "http://127.0.0.1:1/".to_owned(),
            protocol: "HTTP/1.1",
            rate: 10,
            stages: Vec::new(),
            connections: 1,
            duration: Duration::from_secs(3),
        }
    }

    fn response(done_ms: u64, latency_ms: u64, status: u16, version: &'static str) -> Record {
        Record {
            intended: Duration::from_millis(done_ms.saturating_sub(latency_ms)),
            done: Duration::from_millis(done_ms),
            latency: Duration::from_millis(latency_ms),
            // Sent 1 ms late: service is the latency less that lag.
            service: Some(Duration::from_millis(latency_ms.saturating_sub(1))),
            start_lag: Some(Duration::from_millis(1)),
            outcome: Outcome::Status(status),
            late: false,
            version: Some(Bytes::from_static(version.as_bytes())),
        }
    }

    #[test]
    fn counts_versions_windows_and_failures() {
        let mut t = Tally::default();
        t.add(response(100, 1, 200, "v1"));
        t.add(response(1100, 1, 200, "v1"));
        t.add(response(1200, 1, 200, "v2"));
        t.add(response(2500, 1, 503, "v2"));
        t.add(Record {
            intended: Duration::from_millis(2599),
            done: Duration::from_millis(2600),
            latency: Duration::from_millis(1),
            service: None,
            start_lag: None,
            outcome: Outcome::Error(ErrorKind::Connect),
            late: true,
            version: None,
        });
        let s = t.finish(info(), Duration::from_millis(2700), false);
        assert_eq!((s.requests, s.responses, s.failed, s.late), (5, 4, 2, 1));
        assert_eq!(s.failures.get(FailureKind::Status5xx), 1);
        assert_eq!(s.failures.get(FailureKind::Error(ErrorKind::Connect)), 1);
        assert_eq!(s.statuses, BTreeMap::from([(200, 3), (503, 1)]));
        let v: Vec<_> = s
            .versions
            .iter()
            .map(|v| {
                (
                    v.name.as_str(),
                    v.responses,
                    v.failed,
                    v.first_second,
                    v.last_second,
                )
            })
            .collect();
        assert_eq!(v, [("v1", 2, 0, 0, 1), ("v2", 2, 1, 1, 2)]);
        assert_eq!(s.versions[0].share, 0.5);
        let per_second: Vec<_> = s.seconds.iter().map(|s| s.by_version.clone()).collect();
        assert_eq!(per_second, [vec![1, 0], vec![1, 1], vec![0, 1]]);
        assert_eq!(s.seconds[2].requests, 2, "the connect failure counts too");
        assert_eq!(s.seconds[2].failures.total(), 2);
    }

    #[test]
    fn per_second_and_total_percentiles() {
        let mut t = Tally::default();
        for latency in 1..=100 {
            t.add(response(500, latency, 200, "v1"));
        }
        t.add(response(1500, 7, 200, "v1"));
        t.close_until(Duration::from_millis(1010));
        assert_eq!(t.live(Duration::ZERO).last_second, None, "within the grace");
        t.close_until(Duration::from_millis(1100));
        let first = t.live(Duration::ZERO).last_second.unwrap();
        assert_eq!(first.second, 0);
        // HdrHistogram with 3 significant digits: within 0.1%.
        let near = |got: Option<f64>, want: f64| {
            got.is_some_and(|got| (got - want).abs() <= want / 1000.0)
        };
        assert!(
            near(first.p50_ms, 50.0) && near(first.p99_ms, 99.0) && near(first.max_ms, 100.0),
            "{first:?}"
        );
        let s = t.finish(info(), Duration::from_secs(2), false);
        assert!(
            near(s.seconds[1].p50_ms, 7.0),
            "second 1 has only its own sample"
        );
        let l = s.latency.unwrap();
        assert!(
            near(Some(l.p50_ms), 50.0) && near(Some(l.p99_ms), 99.0) && near(Some(l.max_ms), 100.0),
            "{l:?}"
        );
        // Service time and the scheduler's lag are kept apart from the latency.
        let service = s.service.unwrap();
        assert!(near(Some(service.p50_ms), 49.0), "{service:?}");
        let lag = s.start_lag.unwrap();
        assert!(
            near(Some(lag.p50_ms), 1.0) && near(Some(lag.max_ms), 1.0),
            "{lag:?}"
        );
    }

    #[test]
    fn a_record_for_a_closed_second_still_counts() {
        let mut t = Tally::default();
        t.add(response(500, 1, 200, "v1"));
        t.close_until(Duration::from_secs(3));
        t.add(response(900, 1, 200, "v1"));
        let s = t.finish(info(), Duration::from_secs(3), false);
        assert_eq!(s.seconds[0].requests, 2);
        assert_eq!(s.responses, 2);
    }

    #[test]
    fn unversioned_and_too_many_versions() {
        let mut t = Tally::default();
        t.add(Record {
            version: None,
            ..response(0, 1, 200, "")
        });
        for i in 0..40u8 {
            let name = Bytes::from(format!("pod-{i}"));
            t.add(Record {
                version: Some(name),
                ..response(0, 1, 200, "")
            });
        }
        let s = t.finish(info(), Duration::from_secs(1), false);
        assert_eq!(s.versions[0].name, UNVERSIONED);
        assert_eq!(s.versions.len(), MAX_VERSIONS + 1);
        let other = s.versions.last().unwrap();
        assert_eq!((other.name.as_str(), other.responses), (OTHER, 9));
    }
}
