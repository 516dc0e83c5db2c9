//! The flat pickers' per-request step (issue 25): random, least request and
//! round robin over the arrays `balancer._pickers.Flat` builds once per
//! active set. The draws are the balancer's own `random.Random` and the
//! round-robin counter its shared `itertools.count`, and the in-flight
//! counts are the hosts' own `flight` lists, so a pick here is the very pick
//! the Python pickers make (tests/property/test_native_pick_props.py).

use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyList;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Policy {
    Random,
    LeastRequest,
    RoundRobin,
}

#[pyclass(frozen, module = "proxyless_mesh_native")]
pub struct FlatPicker {
    policy: Policy,
    endpoints: Vec<PyObject>,
    weights: Vec<f64>,
    prob: Vec<f64>,
    alias: Vec<usize>,
    uniform: bool,
    flights: Vec<Py<PyList>>,
    random: PyObject,
    schedule: Vec<PyObject>,
    counter: PyObject,
}

impl FlatPicker {
    /// Walker's alias draw, as `Flat.index`: one random() for column and coin.
    fn index(&self, py: Python<'_>) -> PyResult<usize> {
        let n = self.endpoints.len();
        let u: f64 = self.random.call0(py)?.extract(py)?;
        let u = u * n as f64;
        let i = u as usize;
        // Out of range only if random() broke its contract: IndexError, as Python's.
        let prob = *self
            .prob
            .get(i)
            .ok_or_else(|| PyIndexError::new_err("draw out of range"))?;
        if self.uniform || u - (i as f64) < prob {
            Ok(i)
        } else {
            Ok(self.alias[i])
        }
    }

    fn flight(&self, py: Python<'_>, i: usize) -> f64 {
        self.flights[i].bind(py).len() as f64
    }
}

#[pymethods]
impl FlatPicker {
    /// policy: "random", "least_request" or "round_robin"; `schedule` (the
    /// round-robin cycle) and `counter` are read by round robin only.
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        policy: &str,
        endpoints: Vec<PyObject>,
        weights: Vec<f64>,
        prob: Vec<f64>,
        alias: Vec<usize>,
        uniform: bool,
        flights: Vec<Py<PyList>>,
        random: PyObject,
        schedule: Vec<PyObject>,
        counter: PyObject,
    ) -> PyResult<Self> {
        let policy = match policy {
            "random" => Policy::Random,
            "least_request" => Policy::LeastRequest,
            "round_robin" => Policy::RoundRobin,
            other => return Err(PyValueError::new_err(format!("no flat picker for {other}"))),
        };
        let n = endpoints.len();
        if n == 0 || weights.len() != n || prob.len() != n || alias.len() != n || flights.len() != n
        {
            return Err(PyValueError::new_err(
                "a flat picker needs n > 0 endpoints and n of each",
            ));
        }
        if alias.iter().any(|&a| a >= n) || (policy == Policy::RoundRobin && schedule.is_empty()) {
            return Err(PyValueError::new_err(
                "alias out of range or empty schedule",
            ));
        }
        Ok(FlatPicker {
            policy,
            endpoints,
            weights,
            prob,
            alias,
            uniform,
            flights,
            random,
            schedule,
            counter,
        })
    }

    /// An endpoint (`hash_key` is ignored, as by the Python flat pickers).
    #[pyo3(signature = (hash_key=None))]
    fn pick(&self, py: Python<'_>, hash_key: Option<PyObject>) -> PyResult<PyObject> {
        let _ = hash_key;
        match self.policy {
            Policy::Random => Ok(self.endpoints[self.index(py)?].clone_ref(py)),
            Policy::RoundRobin => {
                let turn: u128 = self.counter.bind(py).call_method0("__next__")?.extract()?;
                let at = (turn % self.schedule.len() as u128) as usize;
                Ok(self.schedule[at].clone_ref(py))
            }
            Policy::LeastRequest => {
                let i = self.index(py)?;
                let j = self.index(py)?;
                let (fi, fj) = (self.flight(py, i), self.flight(py, j));
                let winner = if self.uniform {
                    if fi <= fj {
                        i
                    } else {
                        j
                    }
                } else if fi * self.weights[j] <= fj * self.weights[i] {
                    i
                } else {
                    j
                };
                Ok(self.endpoints[winner].clone_ref(py))
            }
        }
    }
}

const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// Ring hash and Maglev picks over the structures `RingHashPicker` and
/// `MaglevPicker` build (one ring or table per group, the group chosen from
/// the key as `_HashPicker._group` does). Without a key, or with one that is
/// not a 64-bit unsigned integer, the Python picker given picks.
#[pyclass(frozen, module = "proxyless_mesh_native")]
pub struct HashPicker {
    bounds: Vec<f64>,
    rings: Vec<(Vec<u64>, Vec<PyObject>)>,
    tables: Vec<Vec<PyObject>>,
    size: u64,
    python: PyObject,
}

impl HashPicker {
    fn group(&self, key: u64) -> usize {
        let n = self.bounds.len();
        if n == 1 {
            return 0;
        }
        let u = (key.wrapping_mul(MIX) >> 11) as f64
            * (1.0 / 9_007_199_254_740_992.0)
            * self.bounds[n - 1];
        self.bounds.partition_point(|&b| b <= u).min(n - 1)
    }
}

#[pymethods]
impl HashPicker {
    /// `rings` (ring hash: per group, sorted hashes and their owners) or
    /// `tables` (Maglev: per group, `size` slots); `python` is the Python
    /// picker's pick, for a pick without a usable key.
    #[new]
    fn new(
        bounds: Vec<f64>,
        rings: Vec<(Vec<u64>, Vec<PyObject>)>,
        tables: Vec<Vec<PyObject>>,
        size: u64,
        python: PyObject,
    ) -> PyResult<Self> {
        let groups = rings.len().max(tables.len());
        let sound = !bounds.is_empty()
            && groups == bounds.len()
            && (rings.is_empty() != tables.is_empty())
            && rings
                .iter()
                .all(|(h, o)| !h.is_empty() && h.len() == o.len())
            && tables.iter().all(|t| size > 0 && t.len() as u64 == size);
        if !sound {
            return Err(PyValueError::new_err(
                "a hash picker needs one non-empty ring or table per group",
            ));
        }
        Ok(HashPicker {
            bounds,
            rings,
            tables,
            size,
            python,
        })
    }

    #[pyo3(signature = (hash_key=None))]
    fn pick(&self, py: Python<'_>, hash_key: Option<&Bound<'_, PyAny>>) -> PyResult<PyObject> {
        let key = match hash_key.map(|k| k.extract::<u64>()) {
            Some(Ok(key)) => key,
            _ => return self.python.call1(py, (hash_key,)),
        };
        let group = self.group(key);
        if let Some((hashes, owners)) = self.rings.get(group) {
            let i = hashes.partition_point(|&h| h < key);
            return Ok(owners[if i < hashes.len() { i } else { 0 }].clone_ref(py));
        }
        Ok(self.tables[group][(key % self.size) as usize].clone_ref(py))
    }
}
