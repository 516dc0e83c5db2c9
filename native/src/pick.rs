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
