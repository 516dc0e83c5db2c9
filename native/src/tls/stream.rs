//! `TlsStream`: one mesh mTLS connection as httpcore's sync network stream
//! (see mod.rs). Reads and writes run without the GIL; the rustls state is
//! locked only to move bytes through it, so a reader blocked on the socket
//! does not hold up a writer.

use std::io::{self, Read, Write};
use std::mem::ManuallyDrop;
use std::net::TcpStream;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyType};
use rustls::pki_types::ServerName;
use rustls::ClientConnection;

use super::blocking::{handshake, raise, Errors, Kind, Stop, Timeout};
use super::TlsClientConfig;

/// A request head and a body chunk up to this size leave as one record (as
/// the Python HeadHoldingStream does).
const JOIN_LIMIT: usize = 16 * 1024;
const SOCKET_READ: usize = 64 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct ReadSide {
    timeout: Timeout,
    /// Plaintext out (kept: httpcore asks for 64 KiB on every read).
    plain: Vec<u8>,
    /// Ciphertext in, `start..end` not yet given to rustls.
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

struct WriteSide {
    timeout: Timeout,
    held: Option<Vec<u8>>,
    fresh: bool,
}

#[pyclass(frozen, module = "proxyless_mesh_native")]
pub struct TlsStream {
    sock: PyObject,
    tcp: ManuallyDrop<TcpStream>,
    fd: RawFd,
    conn: Mutex<ClientConnection>,
    reading: Mutex<ReadSide>,
    writing: Mutex<WriteSide>,
    hold_heads: bool,
    /// Set by close(): the descriptor may then be another file's.
    closed: AtomicBool,
    peer: Option<Vec<u8>>,
    alpn: Option<String>,
    version: Option<&'static str>,
    cipher: Option<String>,
    errors: Errors,
}

impl TlsStream {
    fn set_read_timeout(&self, t: &mut Timeout, seconds: Option<f64>) -> io::Result<()> {
        let d = Timeout::duration(seconds);
        if t.0 != Some(d) {
            self.tcp.set_read_timeout(d)?;
            t.0 = Some(d);
        }
        Ok(())
    }

    fn set_write_timeout(&self, t: &mut Timeout, seconds: Option<f64>) -> io::Result<()> {
        let d = Timeout::duration(seconds);
        if t.0 != Some(d) {
            self.tcp.set_write_timeout(d)?;
            t.0 = Some(d);
        }
        Ok(())
    }

    /// Encrypt `plain` as one write and send it.
    fn send(&self, side: &mut WriteSide, plain: &[u8], timeout: Option<f64>) -> Result<(), Stop> {
        let mut wire = Vec::with_capacity(plain.len() + 64);
        {
            let mut conn = lock(&self.conn);
            conn.writer()
                .write_all(plain)
                .map_err(|e| Stop::Failed(Kind::Write, e.to_string()))?;
            while conn.wants_write() {
                conn.write_tls(&mut wire)
                    .map_err(|e| Stop::Failed(Kind::Write, e.to_string()))?;
            }
        }
        self.send_wire(side, &wire, timeout)
    }

    fn send_wire(
        &self,
        side: &mut WriteSide,
        wire: &[u8],
        timeout: Option<f64>,
    ) -> Result<(), Stop> {
        self.set_write_timeout(&mut side.timeout, timeout)
            .map_err(|e| Stop::io(Kind::Write, e))?;
        (&*self.tcp)
            .write_all(wire)
            .map_err(|e| Stop::io(Kind::Write, e))
    }

    /// The HTTP/1.1 head-holding rule of integrations/_coalescing.py.
    fn write_blocking(&self, buffer: &[u8], timeout: Option<f64>) -> Result<(), Stop> {
        let mut side = lock(&self.writing);
        if !self.hold_heads {
            return if buffer.is_empty() {
                Ok(())
            } else {
                self.send(&mut side, buffer, timeout)
            };
        }
        if let Some(mut held) = side.held.take() {
            if !buffer.is_empty() && buffer.len() <= JOIN_LIMIT {
                held.extend_from_slice(buffer);
                return self.send(&mut side, &held, timeout);
            }
            self.send(&mut side, &held, timeout)?;
        } else if side.fresh && !buffer.is_empty() {
            side.fresh = false;
            side.held = Some(buffer.to_vec());
            return Ok(());
        }
        if buffer.is_empty() {
            Ok(())
        } else {
            self.send(&mut side, buffer, timeout)
        }
    }

    /// Before a read: send a held head; the next write starts a new request.
    fn release_held(&self, timeout: Option<f64>) -> Result<(), Stop> {
        let mut side = lock(&self.writing);
        side.fresh = true;
        match side.held.take() {
            Some(held) => self.send(&mut side, &held, timeout),
            None => Ok(()),
        }
    }

    /// Up to `max_bytes` of plaintext into `side.plain`, returning how many;
    /// 0 at the end of the stream (a close without close_notify included, as
    /// Python's ssl reports it).
    fn read_blocking(
        &self,
        side: &mut ReadSide,
        max_bytes: usize,
        timeout: Option<f64>,
    ) -> Result<usize, Stop> {
        if self.hold_heads {
            self.release_held(timeout)?;
        }
        let want = max_bytes.max(1);
        if side.plain.len() < want {
            side.plain.resize(want, 0);
        }
        loop {
            {
                let mut alert = Vec::new();
                let mut conn = lock(&self.conn);
                match conn.reader().read(&mut side.plain[..want]) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) => return Err(Stop::Failed(Kind::Read, e.to_string())),
                }
                if side.start < side.end {
                    let ReadSide {
                        buf, start, end, ..
                    } = &mut *side;
                    let mut pending = &buf[*start..*end];
                    let fed = conn.read_tls(&mut pending);
                    *start = *end - pending.len();
                    fed.map_err(|e| Stop::Failed(Kind::Read, e.to_string()))?;
                    let processed = conn.process_new_packets();
                    while conn.wants_write() {
                        if conn.write_tls(&mut alert).is_err() {
                            break;
                        }
                    }
                    if let Err(e) = processed {
                        drop(conn);
                        self.send_alert(&alert);
                        return Err(Stop::Failed(Kind::Read, e.to_string()));
                    }
                    drop(conn);
                    if !alert.is_empty() {
                        // A TLS 1.3 key update asks for an answer: send it
                        // under the write lock.
                        let mut w = lock(&self.writing);
                        self.send_wire(&mut w, &alert, timeout).map_err(|_| {
                            Stop::Failed(Kind::Read, "sending a TLS message".into())
                        })?;
                    }
                    continue; // plaintext may be there now
                }
            }
            self.set_read_timeout(&mut side.timeout, timeout)
                .map_err(|e| Stop::io(Kind::Read, e))?;
            let n = (&*self.tcp)
                .read(&mut side.buf)
                .map_err(|e| Stop::io(Kind::Read, e))?;
            if n == 0 {
                let mut conn = lock(&self.conn);
                let _ = conn.read_tls(&mut io::empty());
                let _ = conn.process_new_packets();
                continue;
            }
            side.start = 0;
            side.end = n;
        }
    }

    /// Best effort: the alert rustls queued on a failure.
    fn send_alert(&self, alert: &[u8]) {
        if !alert.is_empty() {
            if let Ok(mut w) = self.writing.try_lock() {
                let _ = self.send_wire(&mut w, alert, Some(1.0));
            }
        }
    }

    fn raise(&self, py: Python<'_>, stop: Stop) -> PyErr {
        raise(py, &self.errors, stop)
    }
}

#[pymethods]
impl TlsStream {
    /// The TLS client on a connected socket (blocking mode is set here);
    /// `errors` are httpcore's six network exceptions (see `Errors`). The
    /// socket stays the owner of the descriptor. Raises ConnectError /
    /// ConnectTimeout as httpcore's start_tls does.
    #[staticmethod]
    #[pyo3(signature = (sock, config, server_hostname, timeout, errors))]
    fn connect(
        py: Python<'_>,
        sock: PyObject,
        config: &TlsClientConfig,
        server_hostname: &str,
        timeout: Option<f64>,
        errors: [Py<PyType>; 6],
    ) -> PyResult<Self> {
        let errors = Errors(errors);
        sock.call_method1(py, "settimeout", (py.None(),))?;
        let fd: RawFd = sock.call_method0(py, "fileno")?.extract(py)?;
        // SAFETY: `sock` owns `fd` and outlives this stream (held in `sock`);
        // ManuallyDrop keeps this view from closing it.
        let tcp = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
        let name = ServerName::try_from(server_hostname.to_string())
            .map_err(|e| raise(py, &errors, Stop::Failed(Kind::Connect, e.to_string())))?;
        let mut conn = ClientConnection::new(config.config.clone(), name)
            .map_err(|e| raise(py, &errors, Stop::Failed(Kind::Connect, e.to_string())))?;
        conn.set_buffer_limit(None);
        py.allow_threads(|| handshake(&mut conn, &tcp, timeout))
            .map_err(|stop| raise(py, &errors, stop))?;
        let peer = conn
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|c| c.as_ref().to_vec());
        let alpn = conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let version = conn.protocol_version().map(|v| match v {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "unknown",
        });
        let cipher = conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()));
        let wrote = conn.wants_write();
        let stream = TlsStream {
            sock,
            tcp,
            fd,
            conn: Mutex::new(conn),
            reading: Mutex::new(ReadSide {
                timeout: Timeout(None),
                plain: Vec::new(),
                buf: vec![0u8; SOCKET_READ],
                start: 0,
                end: 0,
            }),
            writing: Mutex::new(WriteSide {
                timeout: Timeout(None),
                held: None,
                fresh: true,
            }),
            hold_heads: alpn.as_deref() != Some("h2"),
            closed: AtomicBool::new(false),
            peer,
            alpn,
            version,
            cipher,
            errors,
        };
        debug_assert!(!wrote);
        Ok(stream)
    }

    #[pyo3(signature = (max_bytes, timeout=None))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        max_bytes: usize,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(self.raise(py, Stop::Failed(Kind::Read, "the stream is closed".into())));
        }
        loop {
            // The lock is taken and released without the GIL: a thread that
            // waited for it while holding the GIL could deadlock.
            let read = py.allow_threads(|| {
                let mut side = lock(&self.reading);
                self.read_blocking(&mut side, max_bytes, timeout)
                    .map(|n| side.plain[..n].to_vec())
            });
            match read {
                Ok(data) => return Ok(PyBytes::new(py, &data)),
                Err(Stop::Interrupted) => py.check_signals()?,
                Err(stop) => return Err(self.raise(py, stop)),
            }
        }
    }

    #[pyo3(signature = (buffer, timeout=None))]
    fn write(&self, py: Python<'_>, buffer: PyBackedBytes, timeout: Option<f64>) -> PyResult<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(self.raise(py, Stop::Failed(Kind::Write, "the stream is closed".into())));
        }
        let data: &[u8] = &buffer;
        match py.allow_threads(|| self.write_blocking(data, timeout)) {
            Ok(()) => Ok(()),
            Err(Stop::Interrupted) => {
                py.check_signals()?;
                Err(self.raise(py, Stop::Failed(Kind::Write, "interrupted".into())))
            }
            Err(stop) => Err(self.raise(py, stop)),
        }
    }

    /// Closes the socket, as httpcore's stream does (no close_notify).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.closed.store(true, Ordering::Release);
        if let Ok(mut side) = self.writing.try_lock() {
            side.held = None; // an unsent head belongs to a request given up
        }
        self.sock.call_method0(py, "close")?;
        Ok(())
    }

    #[pyo3(signature = (ssl_context, server_hostname=None, timeout=None))]
    fn start_tls(
        &self,
        ssl_context: PyObject,
        server_hostname: Option<PyObject>,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        let _ = (ssl_context, server_hostname, timeout);
        Err(pyo3::exceptions::PyNotImplementedError::new_err(
            "TLS inside mesh TLS",
        ))
    }

    /// httpcore's names: "ssl_object" (this stream answers the SSLObject
    /// methods the library and httpcore call), "socket", "client_addr",
    /// "server_addr", "is_readable"; None for others.
    fn get_extra_info(slf: &Bound<'_, Self>, info: &str) -> PyResult<PyObject> {
        let py = slf.py();
        let this = slf.get();
        Ok(match info {
            "ssl_object" => slf.clone().into_any().unbind(),
            "socket" => this.sock.clone_ref(py),
            "client_addr" => this.sock.call_method0(py, "getsockname")?,
            "server_addr" => this.sock.call_method0(py, "getpeername")?,
            "is_readable" => this
                .is_readable()
                .into_pyobject(py)?
                .to_owned()
                .into_any()
                .unbind(),
            _ => py.None(),
        })
    }

    /// Whether the socket has bytes or an end to read (httpcore asks of an
    /// idle connection: then the server has closed it or broken the protocol).
    fn is_readable(&self) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return true; // as a closed socket polls: readable (at its end)
        }
        let mut pfd = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
        ready != 0
    }

    /// The peer's certificate: DER with `binary_form`; the decoded form is
    /// not offered (the library reads identities from the DER).
    #[pyo3(signature = (binary_form=false))]
    fn getpeercert<'py>(
        &self,
        py: Python<'py>,
        binary_form: bool,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        if !binary_form {
            return Err(PyValueError::new_err(
                "the rustls stream offers getpeercert(True) only",
            ));
        }
        Ok(self.peer.as_ref().map(|der| PyBytes::new(py, der)))
    }

    fn selected_alpn_protocol(&self) -> Option<String> {
        self.alpn.clone()
    }

    fn version(&self) -> Option<&'static str> {
        self.version
    }

    fn cipher(&self) -> Option<(String, Option<&'static str>, Option<u32>)> {
        self.cipher.clone().map(|c| (c, self.version, None))
    }
}
