//! proxyless-mesh's native core (issue 25), a required dependency of the
//! library: route matching, picks, circuit-breaker counters, Istio's request
//! metrics, xDS decoding, the workload key and the sync mTLS stream (rustls),
//! with no Python twin. The differential tests in
//! tests/property hold it to references in tests/oracles, protobuf and
//! cryptography.

mod cla;
mod decode_fields;
mod identity;
mod limits;
mod metrics;
mod pick;
mod route;
mod tls;
mod wire;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

type EndpointView = (
    Option<&'static str>,
    Option<&'static str>,
    String,
    Option<u32>,
    Option<u32>,
    i32,
    String,
);
type LocalityView = (String, String, String, Option<u32>, u32, Vec<EndpointView>);

/// ClusterLoadAssignment bytes -> (cluster_name, overprovisioning_factor or
/// None, [(region, zone, sub_zone, weight or None, priority, [(host_identifier,
/// address_kind, address, port_value or None, weight or None, health, Istio's
/// workload metadata or "")])]).
/// Malformed bytes raise ValueError.
#[pyfunction]
fn decode_cluster_load_assignment(
    data: &Bound<'_, PyBytes>,
) -> PyResult<(String, Option<u32>, Vec<LocalityView>)> {
    let cla = cla::decode(data.as_bytes()).map_err(PyValueError::new_err)?;
    let localities = cla
        .localities
        .into_iter()
        .map(|loc| {
            let endpoints = loc
                .endpoints
                .into_iter()
                .map(|ep| {
                    let a = ep.address;
                    (
                        ep.host_identifier,
                        a.kind,
                        a.socket.address,
                        a.socket.port_value,
                        ep.weight,
                        ep.health,
                        ep.workload.unwrap_or_default(),
                    )
                })
                .collect();
            (
                loc.region,
                loc.zone,
                loc.sub_zone,
                loc.weight,
                loc.priority,
                endpoints,
            )
        })
        .collect();
    Ok((cla.cluster_name, cla.overprovisioning_factor, localities))
}

#[pymodule]
fn proxyless_mesh_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(decode_cluster_load_assignment, m)?)?;
    m.add_function(wrap_pyfunction!(decode_fields::scan_fields, m)?)?;
    m.add_class::<route::RouteMatcher>()?;
    m.add_class::<identity::EcKey>()?;
    m.add_function(wrap_pyfunction!(identity::read_certificate, m)?)?;
    m.add_class::<limits::ClusterCounters>()?;
    m.add_class::<metrics::RequestMetrics>()?;
    m.add_class::<pick::FlatPicker>()?;
    m.add_class::<pick::HashPicker>()?;
    tls::register(m)?;
    Ok(())
}
