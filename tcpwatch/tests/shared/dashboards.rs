//! The shipped Grafana dashboards (`deploy/grafana/dashboards`) and the
//! PromQL each sends, once its variables have values, as Grafana sends it.
use std::path::{Path, PathBuf};

use serde_json::Value;

pub fn dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana")).to_path_buf()
}

/// Every dashboard: its file name and its JSON, in name order.
pub fn all() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir().join("dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no dashboards in deploy/grafana/dashboards"
    );
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), json)
        })
        .collect()
}

/// Every panel, those inside collapsed rows too.
pub fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// (panel title, expr) of every query of every panel.
pub fn queries(d: &Value) -> Vec<(String, String)> {
    panels(d)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            p["targets"].as_array().into_iter().flatten().map(move |t| {
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{title}: a target without expr"));
                (title.clone(), expr.to_string())
            })
        })
        .collect()
}

/// (name, query) of each query variable (`label_values(...)`).
pub fn variables(d: &Value) -> Vec<(String, String)> {
    d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let q = &v["query"];
            let q = q["query"]
                .as_str()
                .or(q.as_str())
                .expect("a variable query");
            (v["name"].as_str().unwrap().to_string(), q.to_string())
        })
        .collect()
}

/// Every variable's name (data source and query variables).
pub fn variable_names(d: &Value) -> Vec<String> {
    d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

/// `expr` with each `$name` or `${name}` replaced by its value in `vars`;
/// a variable without one is an error naming it.
pub fn expand(expr: &str, vars: &[(&str, &str)]) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = match after.strip_prefix('{') {
            Some(inner) => {
                let end = inner.find('}').ok_or(format!("unclosed ${{ in {expr}"))?;
                (&inner[..end], end + 2)
            }
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        let value = vars
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or(format!("${name} has no value in {expr}"))?
            .1;
        out.push_str(value);
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Grafana's `label_values(selector, label)` as the PromQL that lists the
/// same values.
pub fn label_values_promql(query: &str) -> String {
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not label_values(selector, label): {query}"));
    let (selector, label) = inner
        .rsplit_once(',')
        .expect("label_values(selector, label)");
    format!("group by ({}) ({})", label.trim(), selector.trim())
}
