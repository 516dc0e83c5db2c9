//! Route matching and the weighted split in one crossing (issue 25).
//!
//! `RouteMatcher` holds one virtual host's routes as Python's
//! `routing.RouteTable` compiles them and answers `pick(path, method, lookup)`
//! with the same `RouteDecision` object the Python table would return. What
//! Rust could decide differently from Python is left to Python itself: a
//! regex is the compiled `re.Pattern`'s `fullmatch`, a non-ASCII value is
//! lower-cased by `str.lower()`, and a value with lone surrogates (not UTF-8)
//! is compared by Python's `str` methods. The differential test in
//! tests/property/test_native_route_props.py demands identical decisions.

use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyString;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Exact,
    Prefix,
    Suffix,
    Contains,
    Present,
    Regex,
}

/// One StringMatcher: `want` is already lower-cased when `ignore_case` (not
/// for a regex, which carries its own flag).
struct StrTest {
    kind: Kind,
    want: String,
    want_py: Py<PyString>,
    ignore_case: bool,
    fullmatch: Option<PyObject>,
}

/// (kind, want, ignore_case, fullmatch of the compiled regex or None)
type StrSpec = (String, String, bool, Option<PyObject>);
/// (header name, its test, invert)
type HeaderSpec = (String, StrSpec, bool);
/// (path test, header tests, cumulative weights, total, decisions)
type RouteSpec = (StrSpec, Vec<HeaderSpec>, Vec<u64>, u64, Vec<PyObject>);

impl StrTest {
    fn new(py: Python<'_>, spec: StrSpec) -> PyResult<Self> {
        let (kind, want, ignore_case, fullmatch) = spec;
        let kind = match kind.as_str() {
            "exact" => Kind::Exact,
            "prefix" => Kind::Prefix,
            "suffix" => Kind::Suffix,
            "contains" => Kind::Contains,
            "present" => Kind::Present,
            "regex" => Kind::Regex,
            other => return Err(PyValueError::new_err(format!("unknown match kind {other}"))),
        };
        if kind == Kind::Regex && fullmatch.is_none() {
            return Err(PyValueError::new_err("a regex matcher needs its compiled pattern"));
        }
        let want_py = PyString::new(py, &want).unbind();
        Ok(StrTest { kind, want, want_py, ignore_case, fullmatch })
    }

    fn test(&self, py: Python<'_>, value: &Bound<'_, PyString>) -> PyResult<bool> {
        match self.kind {
            Kind::Present => return Ok(true),
            Kind::Regex => {
                let fullmatch = self.fullmatch.as_ref().expect("checked in new");
                return Ok(!fullmatch.call1(py, (value,))?.is_none(py));
            }
            _ => {}
        }
        if self.ignore_case {
            if let Ok(text) = value.to_str() {
                if text.is_ascii() {
                    return Ok(self.plain(&text.to_ascii_lowercase()));
                }
            }
            let lowered = value.call_method0("lower")?.downcast_into::<PyString>()?;
            return self.exact_case(&lowered);
        }
        self.exact_case(value)
    }

    fn exact_case(&self, value: &Bound<'_, PyString>) -> PyResult<bool> {
        match value.to_str() {
            Ok(text) => Ok(self.plain(text)),
            Err(_) => self.by_python(value),
        }
    }

    fn plain(&self, text: &str) -> bool {
        let want = self.want.as_str();
        match self.kind {
            Kind::Exact => text == want,
            Kind::Prefix => text.starts_with(want),
            Kind::Suffix => text.ends_with(want),
            Kind::Contains => text.contains(want),
            Kind::Present | Kind::Regex => true,
        }
    }

    /// A value Rust cannot read as UTF-8 (lone surrogates): Python decides.
    fn by_python(&self, value: &Bound<'_, PyString>) -> PyResult<bool> {
        let want = self.want_py.bind(value.py());
        match self.kind {
            Kind::Exact => value.as_any().eq(want),
            Kind::Prefix => value.call_method1("startswith", (want,))?.is_truthy(),
            Kind::Suffix => value.call_method1("endswith", (want,))?.is_truthy(),
            Kind::Contains => value.contains(want),
            Kind::Present | Kind::Regex => Ok(true),
        }
    }
}

struct HeaderCheck {
    name: Py<PyString>,
    is_method: bool,
    test: StrTest,
    invert: bool,
}

impl HeaderCheck {
    fn holds(
        &self,
        py: Python<'_>,
        method: &Bound<'_, PyString>,
        lookup: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let hit = if self.is_method {
            self.test.test(py, method)?
        } else {
            let value = lookup.call1((self.name.bind(py),))?;
            !value.is_none() && self.test.test(py, value.downcast::<PyString>()?)?
        };
        Ok(hit != self.invert)
    }
}

struct Route {
    path: StrTest,
    headers: Vec<HeaderCheck>,
    cumulative: Vec<f64>,
    total: f64,
    decisions: Vec<PyObject>,
}

impl Route {
    fn matches(
        &self,
        py: Python<'_>,
        path: &Bound<'_, PyString>,
        method: &Bound<'_, PyString>,
        lookup: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        if !self.path.test(py, path)? {
            return Ok(false);
        }
        for check in &self.headers {
            if !check.holds(py, method, lookup)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Python's `bisect_right(cumulative, rand * total)`, capped at the last.
    fn choose(&self, py: Python<'_>, rand: f64) -> PyObject {
        let n = self.decisions.len();
        if n == 1 {
            return self.decisions[0].clone_ref(py);
        }
        let point = rand * self.total;
        let index = self.cumulative.partition_point(|&c| c <= point);
        self.decisions[index.min(n - 1)].clone_ref(py)
    }
}

/// One virtual host's routes (see the module docstring).
#[pyclass(frozen, module = "proxyless_mesh_native")]
pub struct RouteMatcher {
    routes: Vec<Route>,
    state: AtomicU64,
}

impl RouteMatcher {
    /// splitmix64 over a shared counter: uniform in [0, 1), lock-free.
    fn next_rand(&self) -> f64 {
        let mut z = self
            .state
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[pymethods]
impl RouteMatcher {
    #[new]
    fn new(py: Python<'_>, routes: Vec<RouteSpec>, seed: u64) -> PyResult<Self> {
        let mut built = Vec::with_capacity(routes.len());
        for (path, headers, cumulative, total, decisions) in routes {
            if cumulative.len() != decisions.len() {
                return Err(PyValueError::new_err("one cumulative weight per decision"));
            }
            let headers = headers
                .into_iter()
                .map(|(name, spec, invert)| {
                    Ok(HeaderCheck {
                        is_method: name == ":method",
                        name: PyString::new(py, &name).unbind(),
                        test: StrTest::new(py, spec)?,
                        invert,
                    })
                })
                .collect::<PyResult<Vec<_>>>()?;
            built.push(Route {
                path: StrTest::new(py, path)?,
                headers,
                cumulative: cumulative.into_iter().map(|c| c as f64).collect(),
                total: total as f64,
                decisions,
            });
        }
        Ok(RouteMatcher { routes: built, state: AtomicU64::new(seed) })
    }

    /// The first matching route's decision (its weighted choice), or None
    /// when no route matches or the matching one does not forward.
    fn pick(
        &self,
        py: Python<'_>,
        path: &Bound<'_, PyString>,
        method: &Bound<'_, PyString>,
        lookup: &Bound<'_, PyAny>,
    ) -> PyResult<Option<PyObject>> {
        self.pick_with(py, path, method, lookup, self.next_rand())
    }

    /// `pick` with the split's uniform draw given (for the differential test).
    fn pick_with(
        &self,
        py: Python<'_>,
        path: &Bound<'_, PyString>,
        method: &Bound<'_, PyString>,
        lookup: &Bound<'_, PyAny>,
        rand: f64,
    ) -> PyResult<Option<PyObject>> {
        for route in &self.routes {
            if route.matches(py, path, method, lookup)? {
                if route.decisions.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(route.choose(py, rand)));
            }
        }
        Ok(None)
    }

    /// The index of the first route whose match holds, forwarding or not
    /// (what `meshctl simulate` shows), or None.
    fn first_match(
        &self,
        py: Python<'_>,
        path: &Bound<'_, PyString>,
        method: &Bound<'_, PyString>,
        lookup: &Bound<'_, PyAny>,
    ) -> PyResult<Option<usize>> {
        for (index, route) in self.routes.iter().enumerate() {
            if route.matches(py, path, method, lookup)? {
                return Ok(Some(index));
            }
        }
        Ok(None)
    }
}
