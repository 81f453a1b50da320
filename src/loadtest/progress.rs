//! The live progress line on stderr (indicatif): elapsed/total, the last second's rate, failures so
//! far and the last second's version shares. Hidden when stderr is not a terminal or when asked.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::tally::Live;

/// Follows a run's [`Live`] until the run ends, then clears the line.
pub struct Progress {
    task: JoinHandle<()>,
}

impl Progress {
    /// Starts drawing; `hidden` draws nothing (for `--quiet`).
    pub fn start(mut live: watch::Receiver<Live>, duration: Duration, hidden: bool) -> Self {
        let target = if hidden {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let total = duration.as_secs().max(1);
        let bar = ProgressBar::with_draw_target(Some(total), target);
        if let Ok(style) = ProgressStyle::with_template("{prefix} [{bar:24}] {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        let task = tokio::spawn(async move {
            // Ends when the recorder drops the sender, at the end of the run.
            while live.changed().await.is_ok() {
                let now = live.borrow_and_update().clone();
                bar.set_position(now.elapsed.as_secs().min(total));
                bar.set_prefix(format!("{:>4}s/{total}s", now.elapsed.as_secs()));
                bar.set_message(line(&now));
            }
            bar.finish_and_clear();
        });
        Self { task }
    }

    /// Waits until the line is cleared, so the summary prints on a clean terminal.
    pub async fn finish(self) {
        let _ = self.task.await;
    }
}

/// `498 req/s · 0 failed · v1 90% · v2 10%`
fn line(live: &Live) -> String {
    let Some(second) = &live.last_second else {
        return format!("{} requests · {} failed", live.requests, live.failed);
    };
    let responses: u64 = second.by_version.iter().sum();
    let mut line = format!("{} req/s · {} failed", second.requests, live.failed);
    if live.late > 0 {
        line.push_str(&format!(" · {} late", live.late));
    }
    for (name, n) in live.versions.iter().zip(&second.by_version) {
        if *n > 0 {
            line.push_str(&format!(
                " · {name} {:.0}%",
                *n as f64 * 100.0 / responses as f64
            ));
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::super::summary::SecondStats;
    use super::*;

    #[test]
    fn the_line_shows_rate_failures_and_shares_of_the_last_second() {
        let mut live = Live {
            requests: 7,
            ..Live::default()
        };
        assert_eq!(line(&live), "7 requests · 0 failed");
        live.versions = vec!["v1".into(), "v2".into(), "v3".into()];
        live.failed = 2;
        live.late = 1;
        live.last_second = Some(SecondStats {
            requests: 200,
            by_version: vec![180, 20, 0],
            ..SecondStats::default()
        });
        assert_eq!(
            line(&live),
            "200 req/s · 2 failed · 1 late · v1 90% · v2 10%"
        );
    }
}
