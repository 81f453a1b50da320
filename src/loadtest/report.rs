//! `--report`: one self-contained HTML file (inline SVG charts from `chart`, inline CSS, no
//! external asset) that shows a run to a person: requests/s stacked by version, failures by kind,
//! latency percentiles per second, phase marks, and the summary tables.

use std::fmt::Write as _;
use std::path::Path;

use plotters::style::RGBColor;

use super::chart::{
    distribution, lines, stacked, Limit, Series, FAILURE_COLORS, P50_COLOR, P99_COLOR, PALETTE,
};
use super::record::FailureKind;
use super::summary::{write_file, SecondStats, Summary};
use super::LoadtestError;

/// Writes [`render`]'s page to `path`.
pub fn write(summary: &Summary, title: &str, path: &Path) -> Result<(), LoadtestError> {
    write_file(path, render(summary, title)?.as_bytes())
}

/// The report page for `summary`, titled `title`.
pub fn render(summary: &Summary, title: &str) -> Result<String, LoadtestError> {
    let versions = by_version(summary, |s, i| s.version(i) as f64);
    let failures: Vec<Series> = FailureKind::ALL
        .iter()
        .filter(|kind| summary.failures.get(**kind) > 0)
        .map(|kind| Series {
            name: kind.as_str(),
            color: FAILURE_COLORS[kind.index()],
            values: summary
                .seconds
                .iter()
                .map(|s| s.failures.get(*kind) as f64)
                .collect(),
        })
        .collect();
    let latency = [
        Series {
            name: "p50",
            color: P50_COLOR,
            values: summary
                .seconds
                .iter()
                .map(|s| s.p50_ms.unwrap_or(f64::NAN))
                .collect(),
        },
        Series {
            name: "p99",
            color: P99_COLOR,
            values: summary
                .seconds
                .iter()
                .map(|s| s.p99_ms.unwrap_or(f64::NAN))
                .collect(),
        },
    ];

    let p99_by_version = by_version(summary, |s, i| {
        s.p99_by_version
            .get(i)
            .copied()
            .flatten()
            .unwrap_or(f64::NAN)
    });
    let limits: Vec<Limit> = summary
        .thresholds
        .iter()
        .filter_map(|v| {
            Some(Limit {
                y: v.latency_limit_ms?,
                label: format!(
                    "{} {}",
                    v.threshold,
                    if v.passed { "passed" } else { "CROSSED" }
                ),
                color: if v.passed { PASSED } else { CROSSED },
            })
        })
        .collect();
    let mut curves: Vec<(Series, &[(f64, f64)])> =
        vec![(legend("all", ALL_COLOR), &summary.distribution)];
    if summary.versions.len() > 1 {
        for (i, v) in summary.versions.iter().enumerate() {
            curves.push((legend(&v.name, PALETTE[i % PALETTE.len()]), &v.distribution));
        }
    }
    let curve_legend: Vec<Series> = curves
        .iter()
        .map(|(s, _)| legend(s.name, s.color))
        .collect();

    let mut page = String::with_capacity(64 * 1024);
    head(&mut page, summary, title);
    chart_section(
        &mut page,
        "Responses per second by version",
        &versions,
        stacked(summary, &versions, "responses/s", "no responses")?,
    );
    chart_section(
        &mut page,
        "Failures per second",
        &failures,
        stacked(summary, &failures, "failures/s", "no failures")?,
    );
    chart_section(
        &mut page,
        "Latency per second (from intended start)",
        &latency,
        lines(summary, &latency, &[], "ms")?,
    );
    chart_section(
        &mut page,
        "p99 per second by version (thresholds dashed)",
        &p99_by_version,
        lines(summary, &p99_by_version, &limits, "ms")?,
    );
    chart_section(
        &mut page,
        "Latency distribution by percentile (HDR: the tail stretched)",
        &curve_legend,
        distribution(&curves, &limits)?,
    );
    tables(&mut page, summary);
    page.push_str("</body>\n</html>\n");
    Ok(page)
}

/// One series per version, in the versions' colours, with `value(second, version index)`.
fn by_version<'a>(
    summary: &'a Summary,
    value: impl Fn(&SecondStats, usize) -> f64,
) -> Vec<Series<'a>> {
    summary
        .versions
        .iter()
        .enumerate()
        .map(|(i, v)| Series {
            name: &v.name,
            color: PALETTE[i % PALETTE.len()],
            values: summary.seconds.iter().map(|s| value(s, i)).collect(),
        })
        .collect()
}

/// A legend entry with no per-second values.
fn legend(name: &str, color: RGBColor) -> Series<'_> {
    Series {
        name,
        color,
        values: Vec::new(),
    }
}

const PASSED: RGBColor = RGBColor(0x2e, 0x7d, 0x32);
const CROSSED: RGBColor = RGBColor(0xc6, 0x28, 0x28);
const ALL_COLOR: RGBColor = RGBColor(0x22, 0x22, 0x22);

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn hex(color: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", color.0, color.1, color.2)
}

fn head(page: &mut String, summary: &Summary, title: &str) {
    let title = escape(title);
    let _ = write!(
        page,
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 24px auto; max-width: 1240px; color: #222; }}
h1 {{ font-size: 24px; margin-bottom: 4px; }}
h2 {{ font-size: 18px; margin: 24px 0 4px; }}
.sub {{ color: #555; margin-top: 0; }}
.headline {{ font-size: 20px; margin: 12px 0; }}
.bad {{ color: #c62828; font-weight: bold; }}
.good {{ color: #2e7d32; font-weight: bold; }}
.legend span {{ display: inline-block; margin-right: 18px; }}
.legend i {{ display: inline-block; width: 12px; height: 12px; margin-right: 6px; vertical-align: -1px; }}
svg {{ max-width: 100%; height: auto; }}
table {{ border-collapse: collapse; margin: 8px 24px 16px 0; display: inline-table; vertical-align: top; }}
th, td {{ border: 1px solid #ddd; padding: 4px 12px; text-align: right; }}
th {{ background: #f4f4f4; }}
td:first-child, th:first-child {{ text-align: left; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p class="sub">{target} · {protocol} · {load}{early}</p>
<p class="headline">{requests} requests, <span class="{class}">{failed} failed</span>, {late} late · p99 {p99}{thresholds}</p>
"#,
        target = escape(&summary.target),
        protocol = summary.protocol,
        load = escape(&summary.load_description()),
        early = if summary.stopped_early {
            " · stopped early"
        } else {
            ""
        },
        requests = summary.requests,
        class = if summary.failed == 0 { "good" } else { "bad" },
        failed = summary.failed,
        late = summary.late,
        p99 = summary
            .latency
            .map_or("–".to_owned(), |l| format!("{:.2} ms", l.p99_ms)),
        thresholds = match summary.thresholds.iter().filter(|v| !v.passed).count() {
            _ if summary.thresholds.is_empty() => String::new(),
            0 => format!(
                " · <span class=\"good\">all {} thresholds passed</span>",
                summary.thresholds.len()
            ),
            crossed => format!(
                " · <span class=\"bad\">{crossed} of {} thresholds crossed</span>",
                summary.thresholds.len()
            ),
        },
    );
}

fn chart_section(page: &mut String, title: &str, series: &[Series], svg: String) {
    let _ = write!(page, "<h2>{}</h2>\n<div class=\"legend\">", escape(title));
    for s in series {
        let _ = write!(
            page,
            "<span><i style=\"background:{}\"></i>{}</span>",
            hex(s.color),
            escape(s.name)
        );
    }
    page.push_str("</div>\n");
    page.push_str(&svg);
    page.push('\n');
}

fn tables(page: &mut String, summary: &Summary) {
    page.push_str("<h2>Summary</h2>\n<table>\n");
    let rows = [
        ("requests", summary.requests.to_string()),
        ("responses", summary.responses.to_string()),
        ("failed", summary.failed.to_string()),
        (
            "late (no free connection on time)",
            summary.late.to_string(),
        ),
        ("elapsed", format!("{:.2} s", summary.elapsed_s)),
        (
            "achieved rate",
            format!("{:.1} req/s", summary.achieved_rate()),
        ),
    ];
    for (name, value) in rows {
        let _ = writeln!(page, "<tr><th>{name}</th><td>{value}</td></tr>");
    }
    page.push_str("</table>\n<table>\n<tr><th>failures</th>");
    for (kind, _) in summary.failures.iter() {
        let _ = write!(page, "<th>{}</th>", kind.as_str());
    }
    page.push_str("</tr>\n<tr><td>requests</td>");
    for (_, n) in summary.failures.iter() {
        let _ = write!(page, "<td>{n}</td>");
    }
    page.push_str("</tr>\n</table>\n");
    latency_table(page, summary);
    if !summary.thresholds.is_empty() {
        page.push_str("<table>\n<tr><th>threshold</th><th>measured</th><th>result</th></tr>\n");
        for v in &summary.thresholds {
            let _ = writeln!(
                page,
                "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
                escape(&v.threshold),
                escape(&v.measured),
                if v.passed { "good" } else { "bad" },
                if v.passed { "passed" } else { "crossed" }
            );
        }
        page.push_str("</table>\n");
    }
    page.push_str("<table>\n<tr><th>version</th><th>responses</th><th>share</th><th>5xx</th><th>served from</th><th>until</th></tr>\n");
    for v in &summary.versions {
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{:.1}%</td><td>{}</td><td>{} s</td><td>{} s</td></tr>",
            escape(&v.name),
            v.responses,
            v.share * 100.0,
            v.failed,
            v.first_second,
            v.last_second
        );
    }
    page.push_str("</table>\n");
    if !summary.statuses.is_empty() {
        page.push_str("<table>\n<tr><th>status</th><th>responses</th></tr>\n");
        for (status, n) in &summary.statuses {
            let _ = writeln!(page, "<tr><td>{status}</td><td>{n}</td></tr>");
        }
        page.push_str("</table>\n");
    }
    if !summary.marks.is_empty() {
        page.push_str("<table>\n<tr><th>phase</th><th>at</th></tr>\n");
        for mark in &summary.marks {
            let _ = writeln!(
                page,
                "<tr><td>{}</td><td>{:.1} s</td></tr>",
                escape(&mark.label),
                mark.at_s
            );
        }
        page.push_str("</table>\n");
    }
}

/// Latency in ms from the intended start (and service time), for the run and each version.
fn latency_table(page: &mut String, summary: &Summary) {
    let rows = [
        ("all (latency)", summary.latency),
        ("all (service)", summary.service),
    ]
    .into_iter()
    .chain(
        summary
            .versions
            .iter()
            .map(|v| (v.name.as_str(), v.latency)),
    );
    page.push_str(
        "<table>\n<tr><th>latency, ms</th><th>min</th><th>p50</th><th>p90</th><th>p99</th>\
         <th>p99.9</th><th>max</th></tr>\n",
    );
    for (name, l) in rows {
        let Some(l) = l else { continue };
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td>\
             <td>{:.3}</td></tr>",
            escape(name),
            l.min_ms,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.p999_ms,
            l.max_ms
        );
    }
    page.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::summary::Mark;
    use super::super::tally::{RunInfo, Tally};
    use super::*;

    fn empty_run() -> Summary {
        let info = RunInfo {
            target: "http://127.0.0.1:1/?a=<b>".to_owned(),
            protocol: "HTTP/1.1",
            rate: 10,
            stages: Vec::new(),
            connections: 1,
            duration: Duration::ZERO,
        };
        Tally::default().finish(info, Duration::ZERO, false)
    }

    #[test]
    fn a_run_without_responses_still_renders_every_chart() {
        let mut summary = empty_run();
        summary.marks.push(Mark {
            at_s: 0.5,
            label: "<start>".to_owned(),
        });
        let page = render(&summary, "empty & fine").unwrap();
        assert_eq!(page.matches("<svg").count(), 5);
        assert!(page.contains("no responses") && page.contains("no failures"));
        assert!(page.contains("empty &amp; fine") && page.contains("?a=&lt;b&gt;"));
        assert!(
            page.contains("&lt;start&gt;"),
            "labels are escaped in the table"
        );
        assert!(!page.contains("<start>"));
    }
}
