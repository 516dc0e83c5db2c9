//! The ADS port's gRPC transport in Rust (issue 24): sockets, HTTP/2 (the `h2`
//! crate) and gRPC message framing run on a small tokio runtime; every xDS
//! decision stays in Python. Python sees batched events (stream opened,
//! message, half-close, closed, writable again) through `Engine.poll()`, woken
//! by one byte on a socket pair it watches with `loop.add_reader`, and answers
//! with `send(id, bytes)` / `finish(id, status, message)`.
//!
//! A response's bytes are shared, not copied per stream: each stream's queued
//! message holds a reference to the Python `bytes` object itself.

mod stream;

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pyo3::exceptions::{PyOSError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Notify};

pub(crate) use stream::StreamState;
use stream::{open_stream, Command};

/// Bytes a stream may hold queued (not yet given to HTTP/2 flow control)
/// before `send` tells Python to wait for a `Writable` event: the meaning of
/// grpc.aio's blocking `write`.
const WRITE_BACKLOG: usize = 64 * 1024;
/// The largest request message accepted (grpc's default receive limit).
const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// Request bytes of one stream received and not yet taken by `poll`: beyond
/// this the stream is not read, so HTTP/2 flow control stops its client (a
/// stalled event loop does not make the engine buffer without bound).
const READ_BACKLOG: usize = 1024 * 1024;

pub(crate) enum Event {
    Open {
        id: u64,
        path: String,
        metadata: Vec<(String, Vec<u8>)>,
        peer: String,
    },
    Message {
        id: u64,
        data: Bytes,
        state: Arc<StreamState>,
    },
    HalfClose {
        id: u64,
    },
    Closed {
        id: u64,
    },
    Writable {
        id: u64,
    },
}

const OPEN: u8 = 0;
const MESSAGE: u8 = 1;
const HALF_CLOSE: u8 = 2;
const CLOSED: u8 = 3;
const WRITABLE: u8 = 4;

/// What the tokio tasks and the Python thread share.
pub(crate) struct Shared {
    events: Mutex<Vec<Event>>,
    wake: UnixStream,
    streams: Mutex<HashMap<u64, Handle>>,
    next_id: AtomicU64,
    connections: AtomicUsize,
    idle: Notify,
}

pub(crate) struct Handle {
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) state: Arc<StreamState>,
}

impl Shared {
    pub(crate) fn emit(&self, event: Event) {
        let was_empty = {
            let mut events = self.events.lock().unwrap();
            let was_empty = events.is_empty();
            events.push(event);
            was_empty
        };
        if was_empty {
            // a full socket buffer means a wake-up is already pending
            let _ = (&self.wake).write(&[1]);
        }
    }

    pub(crate) fn writable(&self, id: u64, state: &StreamState) {
        if state.queued.load(Ordering::Acquire) <= WRITE_BACKLOG
            && state.want_writable.swap(false, Ordering::AcqRel)
        {
            self.emit(Event::Writable { id });
        }
    }

    pub(crate) fn forget(&self, id: u64) {
        self.streams.lock().unwrap().remove(&id);
    }
}

/// Owns a Python `bytes` object so a `Bytes` can point into it without a copy.
struct PyBuffer {
    _owner: Py<PyBytes>,
    ptr: *const u8,
    len: usize,
}

// The buffer of an immutable `bytes` object never moves or changes while a
// reference is held; dropping the reference without the GIL is deferred by
// pyo3 to the next time the GIL is taken.
unsafe impl Send for PyBuffer {}
unsafe impl Sync for PyBuffer {}

impl AsRef<[u8]> for PyBuffer {
    fn as_ref(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A listening ADS port served by a tokio runtime.
#[pyclass(module = "proxyless_mesh_ads", frozen)]
struct Engine {
    shared: Arc<Shared>,
    wake_reader: UnixStream,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    shutdown: watch::Sender<bool>,
    #[pyo3(get)]
    port: u16,
}

fn bind(address: SocketAddr, reuseport: bool) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuseport {
        socket.set_reuseport(true)?;
    }
    socket.set_nodelay(true)?;
    socket.bind(address)?;
    socket.listen(4096)
}

fn peer_name(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("ipv4:{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => format!("ipv4:{}:{}", v4, a.port()),
            None => format!("ipv6:[{}]:{}", a.ip(), a.port()),
        },
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, addr)) => {
                    let _ = socket.set_nodelay(true);
                    shared.connections.fetch_add(1, Ordering::AcqRel);
                    tokio::spawn(serve_connection(socket, addr, shared.clone(), shutdown.clone()));
                }
                // out of file descriptors: let some connections go first
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
            _ = stop.changed() => return,
        }
    }
}

async fn serve_connection(
    socket: TcpStream,
    addr: SocketAddr,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let peer: Arc<str> = peer_name(&addr).into();
    let handshake = h2::server::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_concurrent_streams(1024)
        .handshake::<_, Bytes>(socket);
    if let Ok(mut connection) = handshake.await {
        let mut closing = *shutdown.borrow();
        if closing {
            connection.graceful_shutdown();
        }
        loop {
            tokio::select! {
                accepted = connection.accept() => match accepted {
                    Some(Ok((request, respond))) => open_stream(&shared, &peer, request, respond),
                    _ => break,
                },
                _ = shutdown.changed(), if !closing => {
                    closing = true;
                    connection.graceful_shutdown();
                }
            }
        }
    }
    if shared.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
        shared.idle.notify_waiters();
    }
}

#[pymethods]
impl Engine {
    /// Listen on "HOST:PORT" (port 0 picks one) with `threads` I/O threads;
    /// `reuseport` lets worker processes share the port.
    #[new]
    #[pyo3(signature = (address, *, reuseport = false, threads = 1))]
    fn new(address: &str, reuseport: bool, threads: usize) -> PyResult<Self> {
        let resolved = address
            .to_socket_addrs()
            .map_err(|e| PyOSError::new_err(format!("cannot listen for xDS on {address}: {e}")))?
            .next()
            .ok_or_else(|| PyOSError::new_err(format!("cannot listen for xDS on {address}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("ads-io")
            .enable_all()
            .build()
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        let listener = runtime
            .block_on(async { bind(resolved, reuseport) })
            .map_err(|e| PyOSError::new_err(format!("cannot listen for xDS on {address}: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| PyOSError::new_err(e.to_string()))?
            .port();
        let (wake, wake_reader) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        wake_reader.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            events: Mutex::new(Vec::new()),
            wake,
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            idle: Notify::new(),
        });
        let (shutdown, stopped) = watch::channel(false);
        runtime.spawn(accept_loop(listener, shared.clone(), stopped));
        Ok(Engine {
            shared,
            wake_reader,
            runtime: Mutex::new(Some(runtime)),
            shutdown,
            port,
        })
    }

    /// The descriptor that becomes readable when events are waiting.
    fn fileno(&self) -> i32 {
        self.wake_reader.as_raw_fd()
    }

    /// Every waiting event, oldest first, as tuples: (0, id, path, metadata,
    /// peer), (1, id, message bytes), (2, id) half-close, (3, id) closed by
    /// the peer or the connection, (4, id) writable again.
    fn poll<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut drain = [0u8; 256];
        while matches!((&self.wake_reader).read_nonblocking(&mut drain), Some(n) if n > 0) {}
        let events = std::mem::take(&mut *self.shared.events.lock().unwrap());
        let list = PyList::empty(py);
        for event in events {
            let item = match event {
                Event::Open {
                    id,
                    path,
                    metadata,
                    peer,
                } => {
                    let pairs = PyList::empty(py);
                    for (key, value) in metadata {
                        let value: PyObject = if key.ends_with("-bin") {
                            PyBytes::new(py, &value).into_any().unbind()
                        } else {
                            String::from_utf8_lossy(&value)
                                .into_pyobject(py)?
                                .into_any()
                                .unbind()
                        };
                        pairs.append(PyTuple::new(
                            py,
                            [key.into_pyobject(py)?.into_any().unbind(), value],
                        )?)?;
                    }
                    (OPEN, id, path, pairs, peer).into_pyobject(py)?
                }
                Event::Message { id, data, state } => {
                    state.taken(data.len());
                    (MESSAGE, id, PyBytes::new(py, &data)).into_pyobject(py)?
                }
                Event::HalfClose { id } => (HALF_CLOSE, id).into_pyobject(py)?,
                Event::Closed { id } => (CLOSED, id).into_pyobject(py)?,
                Event::Writable { id } => (WRITABLE, id).into_pyobject(py)?,
            };
            list.append(item)?;
        }
        Ok(list)
    }

    /// Queue one message on a stream (the bytes are shared, not copied).
    /// False: the stream's backlog is full; a (4, id) event follows once it
    /// drains. A stream already gone takes the message and drops it.
    fn send(&self, id: u64, data: Bound<'_, PyBytes>) -> bool {
        let streams = self.shared.streams.lock().unwrap();
        streams.get(&id).is_none_or(|handle| queue_message(handle, data))
    }

    /// End a stream with a gRPC status (after what was queued on it).
    fn finish(&self, id: u64, code: u32, message: &str) {
        if let Some(handle) = self.shared.streams.lock().unwrap().get(&id) {
            handle.state.finished.store(true, Ordering::Release);
            let _ = handle
                .commands
                .send(Command::Finish(code, message.to_owned()));
        }
    }

    /// Streams open now.
    fn stream_count(&self) -> usize {
        self.shared.streams.lock().unwrap().len()
    }

    /// Stop accepting, say GOAWAY to every connection, wait up to `grace`
    /// seconds for them to end (the GIL released), then drop the rest.
    fn close(&self, py: Python<'_>, grace: f64) {
        let Some(runtime) = self.runtime.lock().unwrap().take() else {
            return;
        };
        let _ = self.shutdown.send(true);
        let shared = self.shared.clone();
        py.allow_threads(|| {
            runtime.block_on(async {
                let wait = async {
                    loop {
                        let idle = shared.idle.notified();
                        if shared.connections.load(Ordering::Acquire) == 0 {
                            return;
                        }
                        idle.await;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs_f64(grace.max(0.0)), wait).await;
            });
            runtime.shutdown_background();
        });
        self.shared.streams.lock().unwrap().clear();
    }
}

/// Queue `data` on a stream; false when its backlog is over WRITE_BACKLOG
/// (then a Writable event is owed: exactly one of this and the writer task
/// wins the `want_writable` swap).
fn queue_message(handle: &Handle, data: Bound<'_, PyBytes>) -> bool {
    let len = data.as_bytes().len();
    let buffer = PyBuffer { ptr: data.as_bytes().as_ptr(), len, _owner: data.unbind() };
    let state = &handle.state;
    let queued = state.queued.fetch_add(len + 5, Ordering::AcqRel) + len + 5;
    let message = Command::Message(Bytes::from_owner(buffer));
    if handle.commands.send(message).is_err() || queued <= WRITE_BACKLOG {
        return true;
    }
    state.want_writable.store(true, Ordering::Release);
    state.queued.load(Ordering::Acquire) <= WRITE_BACKLOG && state.want_writable.swap(false, Ordering::AcqRel)
}

trait ReadNonblocking {
    fn read_nonblocking(self, buf: &mut [u8]) -> Option<usize>;
}

impl ReadNonblocking for &UnixStream {
    fn read_nonblocking(self, buf: &mut [u8]) -> Option<usize> {
        use std::io::Read;
        let mut reader = self;
        reader.read(buf).ok()
    }
}

#[pymodule]
fn proxyless_mesh_ads(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Engine>()?;
    m.add("WRITE_BACKLOG", WRITE_BACKLOG)?;
    m.add("MAX_MESSAGE", MAX_MESSAGE)?;
    m.add("READ_BACKLOG", READ_BACKLOG)?;
    Ok(())
}
