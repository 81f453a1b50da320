//! The dashboard as Grafana reads it: every target's query, the variables (with "All" or a
//! selection) substituted as Grafana does, and the variables' own `label_values` queries.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::server::Prometheus;

/// Grafana's built-in interval variables. `$__rate_interval` is 4 scrape intervals in Grafana;
/// 10s keeps several samples in every window at the 1s scrape interval used here.
const BUILTINS: [(&str, &str); 3] = [
    ("__rate_interval", "10s"),
    ("__interval", "1s"),
    ("__range", "1m"),
];

/// `(panel title, expr)` of every query target, panels inside rows included.
pub(super) fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    let title = panel["title"].as_str().unwrap_or("untitled");
                    out.push((title.to_owned(), expr.to_owned()));
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    assert!(
        out.len() >= 15,
        "the dashboard's queries are found: {out:?}"
    );
    out
}

/// The query variables as `(name, label_values query)`, in dashboard order.
fn query_variables(dashboard: &Value) -> Vec<(String, String)> {
    let list = dashboard["templating"]["list"].as_array().cloned();
    list.unwrap_or_default()
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let name = v["name"].as_str().unwrap().to_owned();
            let query = v["query"]["query"].as_str().or(v["query"].as_str());
            (name, query.expect("a variable query").to_owned())
        })
        .collect()
}

/// Variable values as Grafana substitutes them: "All" is each variable's `allValue` (which must
/// be `.*`, so that series without the label still match), or `[namespace, service, instance]`
/// selected and every other variable on "All".
pub(super) fn values(dashboard: &Value, selected: Option<[&str; 3]>) -> BTreeMap<String, String> {
    let mut values: BTreeMap<String, String> = BUILTINS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    values.insert("datasource".into(), "prometheus".into());
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if v["type"] != "query" {
            continue;
        }
        let name = v["name"].as_str().unwrap();
        assert!(
            v["includeAll"] == true && v["allValue"] == ".*",
            "variable {name} must offer All as `.*`: tidegate's series have no namespace or \
             service label outside Kubernetes"
        );
        values.insert(name.to_owned(), ".*".to_owned());
    }
    if let Some(chosen) = selected {
        for (name, value) in ["namespace", "service", "instance"].iter().zip(chosen) {
            assert!(
                values.contains_key(*name),
                "the dashboard has a {name} variable"
            );
            values.insert((*name).to_owned(), value.to_owned());
        }
    }
    values
}

/// Replaces `$name` and `${name}` / `${name:format}`; an undefined variable fails the test.
pub(super) fn substitute(expr: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = match after.strip_prefix('{') {
            Some(braced) => {
                let end = braced.find('}').expect("a closing brace");
                (braced[..end].split(':').next().unwrap_or(""), end + 2)
            }
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        let value = values
            .get(name)
            .unwrap_or_else(|| panic!("undefined variable ${name} in {expr}"));
        out.push_str(value);
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// Each variable's `label_values(selector, label)` as the series query Grafana sends, with the
/// variables before it substituted: it must offer the selected value (or any value).
pub(super) async fn check_variables(
    prom: &Prometheus,
    dashboard: &Value,
    all: &BTreeMap<String, String>,
    selected: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut failed = Vec::new();
    for (name, query) in query_variables(dashboard) {
        let (selector, label) = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
            .unwrap_or_else(|| panic!("variable {name}: expected label_values(...): {query}"));
        let label = label.trim();
        for (pass, values) in [("All", all), ("selected", selected)] {
            let expr = substitute(&format!("count by ({label}) ({selector})"), values);
            let offered: BTreeSet<String> = match prom.query(&expr).await {
                Ok(series) => series
                    .iter()
                    .filter_map(|s| s["metric"][label].as_str().map(str::to_owned))
                    .collect(),
                Err(e) => {
                    failed.push(format!("variable {name} ({pass}) failed: {e}: {expr}"));
                    continue;
                }
            };
            let wanted = selected.get(&name).filter(|v| *v != ".*");
            let ok = match wanted {
                Some(value) => offered.contains(value),
                None => !offered.is_empty(),
            };
            if !ok {
                failed.push(format!(
                    "variable {name} ({pass}) offers {offered:?}, not {wanted:?}: {expr}"
                ));
            }
        }
    }
    failed
}
