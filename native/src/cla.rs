//! envoy.config.endpoint.v3.ClusterLoadAssignment, from its bytes to a plain
//! "view" of the fields the client reads. Python builds the model from the
//! view (one validation for both decoders); singular sub-messages that occur
//! twice are merged and the last member of a oneof wins, as protobuf says.

use crate::wire::{uint32_value, utf8, Reader, Result, Value};

#[derive(Default)]
pub struct SocketAddress {
    pub address: String,
    pub port_value: Option<u32>, // None when the port is not `port_value`
}

#[derive(Default)]
pub struct Address {
    pub kind: Option<&'static str>, // socket_address | pipe | envoy_internal_address
    pub socket: SocketAddress,
}

#[derive(Default)]
pub struct LbEndpoint {
    pub host_identifier: Option<&'static str>, // endpoint | endpoint_name
    pub address: Address,
    pub weight: Option<u32>,
    pub health: i32,
    pub workload: Option<String>, // metadata filter_metadata["istio"] fields["workload"]
}

#[derive(Default)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
    pub weight: Option<u32>,
    pub priority: u32,
    pub endpoints: Vec<LbEndpoint>,
}

#[derive(Default)]
pub struct Assignment {
    pub cluster_name: String,
    pub overprovisioning_factor: Option<u32>,
    pub localities: Vec<Locality>,
}

fn socket_address(bytes: &[u8], into: &mut SocketAddress) -> Result<()> {
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (2, Value::Bytes(b)) => into.address = utf8(b, "socket_address.address")?,
            (3, Value::Varint(v)) => into.port_value = Some(v as u32),
            (4, Value::Bytes(b)) => {
                utf8(b, "socket_address.named_port")?;
                into.port_value = None;
            }
            (5 | 7, Value::Bytes(b)) => {
                utf8(b, "socket_address")?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn address(bytes: &[u8], into: &mut Address) -> Result<()> {
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.next()? {
        if let Value::Bytes(b) = value {
            match field {
                1 => {
                    if into.kind != Some("socket_address") {
                        into.socket = SocketAddress::default();
                    }
                    into.kind = Some("socket_address");
                    socket_address(b, &mut into.socket)?;
                }
                2 => into.kind = Some("pipe"),
                3 => into.kind = Some("envoy_internal_address"),
                _ => {}
            }
        }
    }
    Ok(())
}

fn endpoint(bytes: &[u8], into: &mut Address) -> Result<()> {
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (1, Value::Bytes(b)) => address(b, into)?,
            (3, Value::Bytes(b)) => {
                utf8(b, "endpoint.hostname")?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn lb_endpoint(bytes: &[u8]) -> Result<LbEndpoint> {
    let mut out = LbEndpoint::default();
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (1, Value::Bytes(b)) => {
                if out.host_identifier != Some("endpoint") {
                    out.address = Address::default();
                }
                out.host_identifier = Some("endpoint");
                endpoint(b, &mut out.address)?;
            }
            (5, Value::Bytes(b)) => {
                utf8(b, "endpoint_name")?;
                out.host_identifier = Some("endpoint_name");
            }
            (2, Value::Varint(v)) => out.health = v as i32,
            (3, Value::Bytes(b)) => metadata(b, &mut out.workload)?,
            (4, Value::Bytes(b)) => uint32_value(b, out.weight.get_or_insert(0))?,
            _ => {}
        }
    }
    Ok(out)
}

/// One map entry (key field 1, message value field 2): its key and every
/// occurrence of its value (occurrences merge, as protobuf says).
fn map_entry<'a>(bytes: &'a [u8], what: &str) -> Result<(String, Vec<&'a [u8]>)> {
    let mut key = String::new();
    let mut values = Vec::new();
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (1, Value::Bytes(b)) => key = utf8(b, what)?,
            (2, Value::Bytes(b)) => values.push(b),
            _ => {}
        }
    }
    Ok((key, values))
}

/// Walk a map<string, message> field (number 1 of `bytes`): a later entry of
/// a key replaces the earlier one, so `on_key` starts over at each.
fn map_of<'a>(
    bytes: &'a [u8],
    wanted: &str,
    what: &str,
    mut on_key: impl FnMut(&[&'a [u8]]) -> Result<()>,
) -> Result<()> {
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.next()? {
        if let (1, Value::Bytes(b)) = (field, value) {
            let (key, values) = map_entry(b, what)?;
            if key == wanted {
                on_key(&values)?;
            }
        }
    }
    Ok(())
}

/// google.protobuf.Value: its string_value when that is the oneof member set
/// last (None for another member), merged into `into`.
fn value_string(bytes: &[u8], into: &mut Option<String>) -> Result<()> {
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (3, Value::Bytes(b)) => *into = Some(utf8(b, "metadata string_value")?),
            (1 | 4, Value::Varint(_)) | (2, Value::Fixed64) | (5 | 6, Value::Bytes(_)) => {
                *into = None
            }
            _ => {}
        }
    }
    Ok(())
}

/// LbEndpoint.metadata: Istio's endpoint telemetry string (filter_metadata
/// "istio", Struct field "workload"), merged into `into` as protobuf merges.
/// Every entry is walked as the Python runtime parses it (keys and strings
/// UTF-8, nested Structs well formed), so both refuse the same bytes.
fn metadata(bytes: &[u8], into: &mut Option<String>) -> Result<()> {
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (1, Value::Bytes(b)) => {
                let (key, structs) = map_entry(b, "filter_metadata key")?;
                for s in &structs {
                    struct_check(s)?;
                }
                if key == "istio" {
                    *into = None; // a later "istio" entry replaces the whole Struct
                    for s in structs {
                        map_of(s, "workload", "struct key", |values| {
                            *into = None; // a later "workload" entry replaces its Value
                            for v in values {
                                value_string(v, into)?;
                            }
                            Ok(())
                        })?;
                    }
                }
            }
            (2, Value::Bytes(b)) => {
                for any in map_entry(b, "typed_filter_metadata key")?.1 {
                    let mut r = Reader::new(any);
                    while let Some((field, value)) = r.next()? {
                        if let (1, Value::Bytes(url)) = (field, value) {
                            utf8(url, "type_url")?;
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// google.protobuf.Struct, checked as the Python runtime parses it.
fn struct_check(bytes: &[u8]) -> Result<()> {
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.next()? {
        if let (1, Value::Bytes(b)) = (field, value) {
            for v in map_entry(b, "struct key")?.1 {
                value_check(v)?;
            }
        }
    }
    Ok(())
}

/// google.protobuf.Value (and ListValue inside it), checked likewise.
fn value_check(bytes: &[u8]) -> Result<()> {
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (3, Value::Bytes(b)) => {
                utf8(b, "metadata string_value")?;
            }
            (5, Value::Bytes(b)) => struct_check(b)?,
            (6, Value::Bytes(b)) => {
                let mut list = Reader::new(b);
                while let Some((field, value)) = list.next()? {
                    if let (1, Value::Bytes(item)) = (field, value) {
                        value_check(item)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn locality_name(bytes: &[u8], into: &mut Locality) -> Result<()> {
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (1, Value::Bytes(b)) => into.region = utf8(b, "locality.region")?,
            (2, Value::Bytes(b)) => into.zone = utf8(b, "locality.zone")?,
            (3, Value::Bytes(b)) => into.sub_zone = utf8(b, "locality.sub_zone")?,
            _ => {}
        }
    }
    Ok(())
}

fn locality(bytes: &[u8]) -> Result<Locality> {
    let mut out = Locality::default();
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (1, Value::Bytes(b)) => locality_name(b, &mut out)?,
            (2, Value::Bytes(b)) => out.endpoints.push(lb_endpoint(b)?),
            (3, Value::Bytes(b)) => uint32_value(b, out.weight.get_or_insert(0))?,
            (5, Value::Varint(v)) => out.priority = v as u32,
            _ => {}
        }
    }
    Ok(out)
}

fn policy(bytes: &[u8], into: &mut Option<u32>) -> Result<()> {
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.next()? {
        if let (3, Value::Bytes(b)) = (field, value) {
            uint32_value(b, into.get_or_insert(0))?;
        }
    }
    Ok(())
}

pub fn decode(bytes: &[u8]) -> Result<Assignment> {
    let mut out = Assignment::default();
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (1, Value::Bytes(b)) => out.cluster_name = utf8(b, "cluster_name")?,
            (2, Value::Bytes(b)) => out.localities.push(locality(b)?),
            (4, Value::Bytes(b)) => policy(b, &mut out.overprovisioning_factor)?,
            (5, Value::Bytes(b)) => {
                // named_endpoints (map<string, Endpoint>): unused, but parsed as
                // the Python runtime parses it, so both refuse the same bytes.
                for v in map_entry(b, "named_endpoints key")?.1 {
                    endpoint(v, &mut Address::default())?;
                }
            }
            _ => {}
        }
    }
    Ok(out)
}
