//! A protobuf wire-format reader: just enough to walk a message's fields,
//! skip the unknown ones and hand length-delimited payloads to sub-decoders.

/// Protobuf's largest field number (2^29 - 1).
const MAX_FIELD: u64 = (1 << 29) - 1;

pub type Result<T> = std::result::Result<T, String>;

pub enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed64,
    Other, // fixed32 or a skipped group
}

pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = *self.data.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            if shift == 63 && byte > 1 {
                return Err("varint overflows 64 bits".into());
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or("truncated field")?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// Skip a (proto2) group up to its end marker, as the Python runtime
    /// skips an unknown one; groups nest.
    fn skip_group(&mut self, field: u32) -> Result<()> {
        loop {
            if self.pos >= self.data.len() {
                return Err("unterminated group".into());
            }
            let start = self.pos;
            let key = self.varint()?;
            if key & 7 == 4 {
                return if key >> 3 == u64::from(field) {
                    Ok(())
                } else {
                    Err("group ends with another field number".into())
                };
            }
            self.pos = start;
            self.next()?;
        }
    }

    /// The next (field number, value), or None at the end of the message.
    pub fn next(&mut self) -> Result<Option<(u32, Value<'a>)>> {
        if self.pos >= self.data.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > MAX_FIELD {
            return Err(format!("field number {field} out of range"));
        }
        let field = field as u32;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length out of range")?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Other
            }
            3 => {
                self.skip_group(field)?;
                Value::Other
            }
            4 => return Err("end of a group that was not started".into()),
            other => return Err(format!("invalid wire type {other}")),
        };
        Ok(Some((field, value)))
    }
}

pub fn utf8(bytes: &[u8], what: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not valid UTF-8"))
}

/// google.protobuf.UInt32Value's `value` (field 1), merged into `into`.
pub fn uint32_value(bytes: &[u8], into: &mut u32) -> Result<()> {
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.next()? {
        if let (1, Value::Varint(v)) = (field, value) {
            *into = v as u32;
        }
    }
    Ok(())
}
