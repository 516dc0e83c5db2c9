//! One protobuf message level, tokenized for Python (issue 25): the xDS
//! client's `_wire.WireMessage` decodes Listener, RouteConfiguration and
//! Cluster against its field tables and asks this for the fields of each
//! message. Same tokens and the same refusals as the Python reference in
//! tests/oracles/wire.py (tests/property/test_wire_decode_props.py compares
//! them; it also holds whole messages to the protobuf runtime).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut value: u64 = 0;
        let mut shift = 0u32;
        loop {
            let byte = *self.data.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                if shift == 63 && byte > 1 {
                    return Err("varint over 64 bits");
                }
                return Ok(value);
            }
            shift += 7;
            if shift > 63 {
                return Err("varint over ten bytes");
            }
        }
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], &'static str> {
        let n = usize::try_from(n).map_err(|_| "truncated field")?;
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or("truncated field")?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn key(&mut self) -> Result<(u64, u8), &'static str> {
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 {
            return Err("field number 0");
        }
        Ok((number, (key & 7) as u8))
    }

    /// Skip one field's value after its key; `depth` bounds nested groups.
    fn skip(&mut self, number: u64, wire: u8, depth: u32) -> Result<(), &'static str> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.take(8).map(|_| ()),
            5 => self.take(4).map(|_| ()),
            2 => {
                let n = self.varint()?;
                self.take(n).map(|_| ())
            }
            3 => {
                if depth > 100 {
                    return Err("groups nested too deep");
                }
                loop {
                    let (inner, inner_wire) = self.key()?;
                    if inner_wire == 4 {
                        return if inner == number {
                            Ok(())
                        } else {
                            Err("mismatched end of group")
                        };
                    }
                    self.skip(inner, inner_wire, depth + 1)?;
                }
            }
            _ => Err("invalid wire type"),
        }
    }
}

/// bytes -> [(field number, wire type, value)]: an int for a varint, bytes
/// otherwise (a length-delimited field's content, a fixed field's bytes);
/// groups skipped. Malformed bytes raise ValueError.
#[pyfunction]
pub fn scan_fields<'py>(data: &Bound<'py, PyBytes>) -> PyResult<Bound<'py, PyList>> {
    let py = data.py();
    let bytes = data.as_bytes();
    let out = PyList::empty(py);
    let mut c = Cursor {
        data: bytes,
        pos: 0,
    };
    let fail = |e: &'static str| PyValueError::new_err(e);
    while c.pos < bytes.len() {
        let (number, wire) = c.key().map_err(fail)?;
        let value: Bound<'py, PyAny> = match wire {
            0 => c.varint().map_err(fail)?.into_pyobject(py)?.into_any(),
            1 => PyBytes::new(py, c.take(8).map_err(fail)?).into_any(),
            5 => PyBytes::new(py, c.take(4).map_err(fail)?).into_any(),
            2 => {
                let n = c.varint().map_err(fail)?;
                PyBytes::new(py, c.take(n).map_err(fail)?).into_any()
            }
            _ => {
                c.skip(number, wire, 0).map_err(fail)?;
                continue;
            }
        };
        let item = PyTuple::new(
            py,
            [
                number.into_pyobject(py)?.into_any(),
                wire.into_pyobject(py)?.into_any(),
                value,
            ],
        )?;
        out.append(item)?;
    }
    Ok(out)
}
