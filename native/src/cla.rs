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
            (4, Value::Bytes(b)) => uint32_value(b, out.weight.get_or_insert(0))?,
            _ => {}
        }
    }
    Ok(out)
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
            _ => {}
        }
    }
    Ok(out)
}
