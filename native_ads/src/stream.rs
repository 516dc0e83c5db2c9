//! One gRPC call: a reader task that deframes request messages into events
//! and a writer task that frames queued responses within HTTP/2 flow control.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Request, Response};
use tokio::sync::{mpsc, Notify};

use crate::{Event, Handle, Shared, MAX_MESSAGE, READ_BACKLOG};

pub(crate) enum Command {
    Message(Bytes),
    Finish(u32, String),
}

/// What `send` and the writer task share about one stream.
#[derive(Default)]
pub(crate) struct StreamState {
    /// bytes queued and not yet given to HTTP/2 (framing included)
    pub(crate) queued: AtomicUsize,
    /// Python waits for a Writable event
    pub(crate) want_writable: AtomicBool,
    /// Python ended the stream
    pub(crate) finished: AtomicBool,
    /// the Closed event was sent
    closed: AtomicBool,
    /// request bytes emitted and not yet taken by `poll`
    unread: AtomicUsize,
    /// `poll` took enough for the reader to go on
    resume: Notify,
}

impl StreamState {
    /// `poll` handed a request of `length` bytes to Python.
    pub(crate) fn taken(&self, length: usize) {
        let before = self.unread.fetch_sub(length, Ordering::AcqRel);
        if before > READ_BACKLOG && before - length <= READ_BACKLOG {
            self.resume.notify_one();
        }
    }
}

const RESOURCE_EXHAUSTED: u32 = 8;
const INTERNAL: u32 = 13;
/// Request headers that are transport, not the application's metadata.
const TRANSPORT_HEADERS: [&str; 5] = [
    "content-type",
    "te",
    "grpc-timeout",
    "grpc-encoding",
    "grpc-accept-encoding",
];

pub(crate) fn open_stream(
    shared: &Arc<Shared>,
    peer: &Arc<str>,
    request: Request<RecvStream>,
    respond: SendResponse<Bytes>,
) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = request.into_parts();
    let metadata = parts
        .headers
        .iter()
        .filter(|(name, _)| !TRANSPORT_HEADERS.contains(&name.as_str()))
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    let (commands, queue) = mpsc::unbounded_channel();
    let state = Arc::new(StreamState::default());
    shared.streams.lock().unwrap().insert(
        id,
        Handle {
            commands: commands.clone(),
            state: state.clone(),
        },
    );
    shared.emit(Event::Open {
        id,
        path: parts.uri.path().to_owned(),
        metadata,
        peer: peer.to_string(),
    });
    let reader = tokio::spawn(read_requests(
        shared.clone(),
        id,
        state.clone(),
        body,
        commands,
    ));
    tokio::spawn(write_responses(
        shared.clone(),
        id,
        state,
        respond,
        queue,
        reader,
    ));
}

fn report_closed(shared: &Shared, id: u64, state: &StreamState) {
    if !state.finished.load(Ordering::Acquire) && !state.closed.swap(true, Ordering::AcqRel) {
        shared.emit(Event::Closed { id });
    }
}

async fn read_requests(
    shared: Arc<Shared>,
    id: u64,
    state: Arc<StreamState>,
    mut body: RecvStream,
    commands: mpsc::UnboundedSender<Command>,
) {
    let mut pending = BytesMut::new();
    let refused = loop {
        match body.data().await {
            Some(Ok(chunk)) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                pending.extend_from_slice(&chunk);
                while pending.len() >= 5 {
                    let length =
                        u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]])
                            as usize;
                    if pending[0] != 0 {
                        break;
                    }
                    if length > MAX_MESSAGE {
                        break;
                    }
                    if pending.len() < 5 + length {
                        pending.reserve(5 + length - pending.len());
                        break;
                    }
                    pending.advance(5);
                    state.unread.fetch_add(length, Ordering::AcqRel);
                    let data = pending.split_to(length).freeze();
                    shared.emit(Event::Message {
                        id,
                        data,
                        state: state.clone(),
                    });
                }
                while state.unread.load(Ordering::Acquire) > READ_BACKLOG {
                    state.resume.notified().await;
                }
                if pending.len() >= 5 && pending[0] != 0 {
                    break Some((
                        INTERNAL,
                        "compressed request messages are not accepted".to_owned(),
                    ));
                }
                if pending.len() >= 5 {
                    let length =
                        u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]])
                            as usize;
                    if length > MAX_MESSAGE {
                        break Some((
                            RESOURCE_EXHAUSTED,
                            format!("request message of {length} bytes exceeds the limit of {MAX_MESSAGE}"),
                        ));
                    }
                }
            }
            None if pending.is_empty() => {
                shared.emit(Event::HalfClose { id });
                return;
            }
            None => break Some((INTERNAL, "request stream ended inside a message".to_owned())),
            Some(Err(_)) => break None,
        }
    };
    if let Some((code, message)) = refused {
        let _ = commands.send(Command::Finish(code, message));
    }
    report_closed(&shared, id, &state);
}

fn frame_header(length: usize) -> Bytes {
    let mut header = [0u8; 5];
    header[1..].copy_from_slice(&(length as u32).to_be_bytes());
    Bytes::copy_from_slice(&header)
}

/// Send `data` as HTTP/2 flow control allows (waits while the peer's window is shut).
async fn write_all(send: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), ()> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let mut granted = send.capacity();
        if granted == 0 {
            granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                _ => return Err(()),
            };
        }
        if granted == 0 {
            continue;
        }
        let chunk = data.split_to(granted.min(data.len()));
        send.send_data(chunk, false).map_err(|_| ())?;
    }
    Ok(())
}

fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn status_headers(code: u32, message: &str, into: &mut HeaderMap) {
    into.insert("grpc-status", HeaderValue::from(code));
    if !message.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&percent_encode(message)) {
            into.insert("grpc-message", value);
        }
    }
}

fn response_head() -> Response<()> {
    let mut response = Response::new(());
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

async fn write_responses(
    shared: Arc<Shared>,
    id: u64,
    state: Arc<StreamState>,
    mut respond: SendResponse<Bytes>,
    mut queue: mpsc::UnboundedReceiver<Command>,
    reader: tokio::task::JoinHandle<()>,
) {
    let mut send: Option<SendStream<Bytes>> = None;
    loop {
        let command = tokio::select! {
            command = queue.recv() => command,
            _ = poll_fn(|cx| match send.as_mut() {
                Some(stream) => stream.poll_reset(cx),
                None => respond.poll_reset(cx),
            }) => None,
        };
        match command {
            Some(Command::Message(data)) => {
                let length = data.len();
                if send.is_none() {
                    send = respond.send_response(response_head(), false).ok();
                }
                let written = match send.as_mut() {
                    Some(stream) => {
                        write_all(stream, frame_header(length)).await.is_ok()
                            && write_all(stream, data).await.is_ok()
                    }
                    None => false,
                };
                state.queued.fetch_sub(length + 5, Ordering::AcqRel);
                shared.writable(id, &state);
                if !written {
                    break;
                }
            }
            Some(Command::Finish(code, message)) => {
                match send.as_mut() {
                    Some(stream) => {
                        let mut trailers = HeaderMap::new();
                        status_headers(code, &message, &mut trailers);
                        let _ = stream.send_trailers(trailers);
                    }
                    None => {
                        let mut head = response_head();
                        status_headers(code, &message, head.headers_mut());
                        let _ = respond.send_response(head, true);
                    }
                }
                break;
            }
            None => break,
        }
    }
    reader.abort();
    shared.forget(id);
    report_closed(&shared, id, &state);
}
