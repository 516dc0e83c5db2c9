//! Istio's request metrics kept natively (issue 25), as an Envoy sidecar
//! keeps its stats: always on, aggregated in place, read on a scrape.
//!
//! Python registers a label group once: for each of the six request metrics
//! (requests, duration, request bytes, response bytes, request messages,
//! response messages) either None (disabled) or its label pairs, after the
//! Telemetry API's overrides. The answer is an id; a request is then one
//! `record(id, ...)` call that adds to the counters and histograms of that
//! group, with no allocation. `render()` writes the Prometheus text
//! exposition (version 0.0.4). One mutex guards the numbers; it is held
//! only for the additions and for a copy on a scrape, never while Python
//! runs. `record` keeps the GIL (the call is shorter than a release);
//! `render` formats without it.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

const FAMILIES: usize = 6;
const HISTOGRAMS: [usize; 3] = [1, 2, 3];
/// (name, type, help) in the order `register` and `record` take them.
const META: [(&str, &str, &str); FAMILIES] = [
    (
        "istio_requests_total",
        "counter",
        "Requests, by Istio's labels",
    ),
    (
        "istio_request_duration_milliseconds",
        "histogram",
        "Request duration to the last byte",
    ),
    ("istio_request_bytes", "histogram", "Request body size"),
    ("istio_response_bytes", "histogram", "Response body size"),
    (
        "istio_request_messages_total",
        "counter",
        "gRPC messages sent by clients",
    ),
    (
        "istio_response_messages_total",
        "counter",
        "gRPC messages sent by servers",
    ),
];

/// One histogram series: counts per bucket (the last is +Inf), not
/// cumulative (made so when rendered), and the sum.
#[derive(Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
}

#[derive(Default)]
struct Family {
    /// Rendered label text ("a=\"b\",c=\"d\"") of each series, by index.
    labels: Vec<String>,
    index: HashMap<String, u32>,
    counters: Vec<u64>,
    histograms: Vec<Histogram>,
}

#[derive(Default)]
struct State {
    families: [Family; FAMILIES],
    /// Each registered group: the series index in each family, if enabled.
    groups: Vec<[Option<u32>; FAMILIES]>,
    group_index: HashMap<[Option<u32>; FAMILIES], u32>,
}

#[pyclass(frozen, module = "proxyless_mesh_native")]
pub struct RequestMetrics {
    duration_buckets: Vec<f64>,
    bytes_buckets: Vec<f64>,
    state: Mutex<State>,
}

/// What a scrape copies out under the lock.
struct Snapshot {
    labels: Vec<Vec<String>>,
    counters: Vec<Vec<u64>>,
    histograms: Vec<Vec<Histogram>>,
}

/// One scrape-time family the caller adds: (name, type, help, [(label
/// pairs, value)]).
type Extra = (String, String, String, Vec<(Vec<(String, String)>, f64)>);
/// The same with each sample's labels rendered.
type RenderedExtra = (String, String, String, Vec<(String, f64)>);

impl RequestMetrics {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut state)
    }

    fn buckets(&self, family: usize) -> &[f64] {
        if family == 1 {
            &self.duration_buckets
        } else {
            &self.bytes_buckets
        }
    }
}

fn bucket_of(bounds: &[f64], value: f64) -> usize {
    // Upper bounds are inclusive (Prometheus' `le`, OpenTelemetry's explicit buckets).
    bounds.partition_point(|&bound| bound < value)
}

fn check_bounds(bounds: &[f64]) -> PyResult<()> {
    let ordered = bounds.windows(2).all(|w| w[0] < w[1]);
    if !ordered || bounds.iter().any(|b| !b.is_finite()) {
        return Err(PyValueError::new_err(
            "bucket bounds must be finite and strictly increasing",
        ));
    }
    Ok(())
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Label pairs as the exposition writes them inside braces; values escaped
/// as the text format says (backslash, double quote, line feed).
fn label_text(pairs: &[(String, String)]) -> PyResult<String> {
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if !valid_label_name(name) || name.starts_with("__") {
            return Err(PyValueError::new_err(format!(
                "not a Prometheus label name: {name:?}"
            )));
        }
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                _ => out.push(c),
            }
        }
        out.push('"');
    }
    Ok(out)
}

/// A sample value: integers without a fraction, Go's spelling of the
/// specials (the text format's `+Inf`, `-Inf`, `NaN`).
fn number(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{value}");
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &str, extra: &str, value: f64) {
    out.push_str(name);
    if !labels.is_empty() || !extra.is_empty() {
        out.push('{');
        out.push_str(labels);
        if !labels.is_empty() && !extra.is_empty() {
            out.push(',');
        }
        out.push_str(extra);
        out.push('}');
    }
    out.push(' ');
    number(out, value);
    out.push('\n');
}

#[pymethods]
impl RequestMetrics {
    /// Istio's bucket bounds (milliseconds; bytes), from telemetry/_metrics.py.
    #[new]
    fn new(duration_buckets: Vec<f64>, bytes_buckets: Vec<f64>) -> PyResult<Self> {
        check_bounds(&duration_buckets)?;
        check_bounds(&bytes_buckets)?;
        Ok(RequestMetrics {
            duration_buckets,
            bytes_buckets,
            state: Mutex::new(State::default()),
        })
    }

    /// The id of a label group: six entries, each None (the metric is not
    /// recorded for this group) or its (name, value) pairs. The same group
    /// always gets the same id; the same pairs of one metric share a series.
    fn register(&self, group: Vec<Option<Vec<(String, String)>>>) -> PyResult<u32> {
        if group.len() != FAMILIES {
            return Err(PyValueError::new_err(
                "a label group has one entry per metric (6)",
            ));
        }
        let mut texts: Vec<Option<String>> = Vec::with_capacity(FAMILIES);
        for pairs in &group {
            texts.push(pairs.as_deref().map(label_text).transpose()?);
        }
        let sizes: Vec<usize> = (0..FAMILIES).map(|f| self.buckets(f).len() + 1).collect();
        Ok(self.with(|state| {
            let mut key = [None; FAMILIES];
            for (family, text) in texts.into_iter().enumerate() {
                let Some(text) = text else { continue };
                let fam = &mut state.families[family];
                let series = match fam.index.get(&text) {
                    Some(&series) => series,
                    None => {
                        let series = fam.labels.len() as u32;
                        fam.index.insert(text.clone(), series);
                        fam.labels.push(text);
                        if HISTOGRAMS.contains(&family) {
                            fam.histograms.push(Histogram {
                                counts: vec![0; sizes[family]],
                                sum: 0.0,
                            });
                        } else {
                            fam.counters.push(0);
                        }
                        series
                    }
                };
                key[family] = Some(series);
            }
            if let Some(&id) = state.group_index.get(&key) {
                return id;
            }
            let id = state.groups.len() as u32;
            state.groups.push(key);
            state.group_index.insert(key, id);
            id
        }))
    }

    /// One request of group `id`: one more request, its duration and sizes;
    /// the message counts are added where the group records them (gRPC).
    fn record(
        &self,
        id: u32,
        duration_ms: f64,
        request_bytes: u64,
        response_bytes: u64,
        request_messages: u64,
        response_messages: u64,
    ) -> PyResult<()> {
        let duration_slot = bucket_of(&self.duration_buckets, duration_ms);
        let request_slot = bucket_of(&self.bytes_buckets, request_bytes as f64);
        let response_slot = bucket_of(&self.bytes_buckets, response_bytes as f64);
        self.with(|state| {
            let Some(&group) = state.groups.get(id as usize) else {
                return Err(PyValueError::new_err(format!("no label group {id}")));
            };
            let f = &mut state.families;
            let mut add = |family: usize, n: u64| {
                if let Some(series) = group[family] {
                    f[family].counters[series as usize] += n;
                }
            };
            add(0, 1);
            add(4, request_messages);
            add(5, response_messages);
            for (family, slot, value) in [
                (1, duration_slot, duration_ms),
                (2, request_slot, request_bytes as f64),
                (3, response_slot, response_bytes as f64),
            ] {
                if let Some(series) = group[family] {
                    let h = &mut f[family].histograms[series as usize];
                    h.counts[slot] += 1;
                    h.sum += value;
                }
            }
            Ok(())
        })
    }

    /// How many label groups are registered (for tests and bounds).
    fn groups(&self) -> usize {
        self.with(|state| state.groups.len())
    }

    /// The Prometheus text exposition of every series recorded so far, then
    /// of `extra` families (gauges and counters read at scrape time).
    #[pyo3(signature = (extra = Vec::new()))]
    fn render(&self, py: Python<'_>, extra: Vec<Extra>) -> PyResult<String> {
        let mut extras = Vec::with_capacity(extra.len());
        for (name, kind, help, samples) in extra {
            let mut rows = Vec::with_capacity(samples.len());
            for (pairs, value) in samples {
                rows.push((label_text(&pairs)?, value));
            }
            extras.push((name, kind, help, rows));
        }
        let copy = self.with(|state| Snapshot {
            labels: state.families.iter().map(|f| f.labels.clone()).collect(),
            counters: state.families.iter().map(|f| f.counters.clone()).collect(),
            histograms: state
                .families
                .iter()
                .map(|f| f.histograms.clone())
                .collect(),
        });
        Ok(py.allow_threads(|| self.write(&copy, &extras)))
    }
}

impl RequestMetrics {
    fn write(&self, copy: &Snapshot, extras: &[RenderedExtra]) -> String {
        let mut out = String::new();
        let mut le = String::new();
        for (family, (name, kind, help)) in META.iter().enumerate() {
            let labels = &copy.labels[family];
            if labels.is_empty() {
                continue;
            }
            header(&mut out, name, kind, help);
            if !HISTOGRAMS.contains(&family) {
                for (text, value) in labels.iter().zip(&copy.counters[family]) {
                    sample(&mut out, name, text, "", *value as f64);
                }
                continue;
            }
            let bounds = self.buckets(family);
            let (bucket, sum, count) = (
                format!("{name}_bucket"),
                format!("{name}_sum"),
                format!("{name}_count"),
            );
            for (text, h) in labels.iter().zip(&copy.histograms[family]) {
                let mut cumulative = 0u64;
                for (i, n) in h.counts.iter().enumerate() {
                    cumulative += n;
                    le.clear();
                    le.push_str("le=\"");
                    number(&mut le, bounds.get(i).copied().unwrap_or(f64::INFINITY));
                    le.push('"');
                    sample(&mut out, &bucket, text, &le, cumulative as f64);
                }
                sample(&mut out, &sum, text, "", h.sum);
                sample(&mut out, &count, text, "", cumulative as f64);
            }
        }
        for (name, kind, help, rows) in extras {
            header(&mut out, name, kind, help);
            for (text, value) in rows {
                sample(&mut out, name, text, "", *value);
            }
        }
        out
    }
}
