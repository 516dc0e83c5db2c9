//! What the stream's blocking steps share: how they stop (and which of
//! httpcore's exceptions that becomes), socket timeouts, and the handshake.

use std::io;
use std::net::TcpStream;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyType;
use rustls::ClientConnection;

/// httpcore's exception classes, handed over by the Python backend:
/// ConnectError, ConnectTimeout, ReadError, ReadTimeout, WriteError, WriteTimeout.
pub(super) struct Errors(pub(super) [Py<PyType>; 6]);

#[derive(Clone, Copy)]
pub(super) enum Kind {
    Connect = 0,
    Read = 2,
    Write = 4,
}

/// Why a blocking step stopped; turned into a Python exception with the GIL.
pub(super) enum Stop {
    Failed(Kind, String),
    TimedOut(Kind),
    Interrupted,
}

impl Stop {
    pub(super) fn io(kind: Kind, err: io::Error) -> Stop {
        match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Stop::TimedOut(kind),
            io::ErrorKind::Interrupted => Stop::Interrupted,
            _ => Stop::Failed(kind, err.to_string()),
        }
    }
}

/// A socket timeout applied once and re-applied only when it changes (httpcore
/// passes the same one on every call).
pub(super) struct Timeout(pub(super) Option<Option<Duration>>);

impl Timeout {
    pub(super) fn duration(seconds: Option<f64>) -> Option<Duration> {
        // A zero timeout is not allowed by the socket API: the shortest one;
        // one too large for a Duration (inf) is none.
        let seconds = seconds?;
        let d = Duration::try_from_secs_f64(seconds.max(0.0)).ok()?;
        Some(d.max(Duration::from_micros(1)))
    }
}

pub(super) fn raise(py: Python<'_>, errors: &Errors, stop: Stop) -> PyErr {
    let (index, message) = match stop {
        Stop::Failed(kind, message) => (kind as usize, message),
        Stop::TimedOut(kind) => (kind as usize + 1, "timed out".to_string()),
        Stop::Interrupted => return PyErr::fetch(py),
    };
    PyErr::from_type(errors.0[index].bind(py).clone(), message)
}

/// The words Python's ssl uses for a chain it refuses, so a log reads the
/// same whichever TLS stack made the connection.
fn handshake_error(err: &io::Error) -> String {
    let refused = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)));
    if refused {
        format!("certificate verify failed: {err}")
    } else {
        err.to_string()
    }
}

pub(super) fn handshake(
    conn: &mut ClientConnection,
    tcp: &TcpStream,
    timeout: Option<f64>,
) -> Result<(), Stop> {
    let d = Timeout::duration(timeout);
    tcp.set_read_timeout(d)
        .map_err(|e| Stop::io(Kind::Connect, e))?;
    tcp.set_write_timeout(d)
        .map_err(|e| Stop::io(Kind::Connect, e))?;
    let mut io = tcp;
    while conn.is_handshaking() {
        match conn.complete_io(&mut io) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(Stop::Failed(Kind::Connect, handshake_error(&e)))
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(Stop::Failed(
                    Kind::Connect,
                    "the peer closed the connection during the TLS handshake".into(),
                ))
            }
            Err(e) => return Err(Stop::io(Kind::Connect, e)),
        }
    }
    Ok(())
}
