//! HTTP/1.1 connections whose request is `GET /sse`, served without hyper: plain TCP, and TLS
//! connections that did not choose HTTP/2.
//!
//! An SSE connection spends its life idle or writing small frames, and hyper gives every HTTP/1
//! connection an 8 KiB read buffer and an 8 KiB write buffer (fixed sizes, no knob) plus its
//! dispatcher's work per frame (a body poll, a chunk-size line formatted with `fmt`, a copy into
//! the write buffer for small frames). So the listener reads each HTTP/1 connection's first
//! request head here: `GET /sse` is routed through the same warp routes as everything else (auth,
//! CORS, caps, request id — the response is warp's), and its response is written here, each frame
//! as one `writev` (over TLS: one record) of a chunk-size line, the shared frame bytes and CRLF; a
//! 64-byte read notices the peer closing. Anything else — another path or method, a body,
//! `Expect`, HTTP/1.0, a head that does not parse or is too large — is handed to hyper with the
//! bytes already read, so hyper answers it exactly as it would have.

use std::future::Future;
use std::io::{self, IoSlice};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::watch;
use warp::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};

/// The request a connection was served until it was handed over, and the bytes read past it.
pub(super) enum Served {
    /// The peer closed, timed out, or the connection must end: close it.
    Closed,
    /// A request this module does not serve: hyper takes the connection, starting with these
    /// bytes (the request's head, and whatever came after it).
    HandOver(Bytes),
}

/// The most header lines a `GET /sse` head may have here; a longer head goes to hyper.
const MAX_HEADERS: usize = 48;
/// First read of a request head; grown as needed up to the server's head limit.
const FIRST_READ: usize = 1024;

/// Serves `GET /sse` requests on `socket` until the connection ends or carries something else.
/// `answer` runs a request through the routes (the listener's per-request work).
pub(super) async fn serve<C, A, F, RB>(
    socket: &mut C,
    idle_timeout: Duration,
    peer_timeout: Option<Duration>,
    max_head_bytes: usize,
    mut stopping: watch::Receiver<bool>,
    answer: A,
) -> io::Result<Served>
where
    C: Conn,
    A: Fn(Request<Empty<Bytes>>) -> F,
    F: Future<Output = Response<RB>>,
    RB: http_body::Body<Data = Bytes> + Unpin,
    RB::Error: std::fmt::Display,
{
    let mut buffer = BytesMut::new();
    loop {
        let head = tokio::select! {
            biased;
            () = stop_signal(&mut stopping) => return Ok(Served::Closed),
            head = tokio::time::timeout(idle_timeout, read_head(&mut *socket, &mut buffer, max_head_bytes)) => head,
        };
        let (request, keep_alive) = match head {
            // hyper closes a connection that sends no head in time without an answer; so does this.
            Err(_) => return Ok(Served::Closed),
            Ok(head) => match head? {
                Head::Closed => return Ok(Served::Closed),
                Head::Other | Head::Partial => return Ok(Served::HandOver(buffer.freeze())),
                Head::Sse {
                    request,
                    length,
                    keep_alive,
                } => {
                    buffer.advance(length);
                    (request, keep_alive)
                }
            },
        };
        if buffer.is_empty() {
            // Release the head's memory while the response runs.
            buffer = BytesMut::new();
        }
        let response = answer(*request).await;
        let writer = Writer {
            socket: &mut *socket,
            deadline: peer_timeout,
        };
        let keep_alive = write_response(writer, response, keep_alive, &mut buffer, max_head_bytes)
            .await?
            && !*stopping.borrow();
        if !keep_alive {
            return Ok(Served::Closed);
        }
    }
}

/// Resolves once the server is stopping. A signal whose sender was dropped never fires: an
/// embedder that let go of its `ShutdownSignal` still gets its connections served.
pub(super) async fn stop_signal(stopping: &mut watch::Receiver<bool>) {
    if stopping.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// What the bytes read so far hold.
enum Head {
    /// Not yet a whole head.
    Partial,
    /// The peer closed before sending a whole head.
    Closed,
    /// Not a request served here.
    Other,
    /// A clean `GET /sse`.
    Sse {
        request: Box<Request<Empty<Bytes>>>,
        /// Bytes of the head, to be consumed from the buffer.
        length: usize,
        keep_alive: bool,
    },
}

/// Reads until `buffer` holds a whole request head (or is known not to be one served here).
async fn read_head(socket: &mut impl Conn, buffer: &mut BytesMut, max: usize) -> io::Result<Head> {
    loop {
        if !buffer.is_empty() {
            match parse_head(buffer, max) {
                Head::Partial if buffer.len() <= max => {}
                Head::Partial => return Ok(Head::Other),
                head => return Ok(head),
            }
        }
        let grow = buffer.len().clamp(FIRST_READ, max + 1);
        if socket.read_more(buffer, grow).await? == 0 {
            return Ok(Head::Closed);
        }
    }
}

/// What the direct path needs of a connection. Plain TCP is driven by its readiness, so an idle
/// connection holds no buffer, and a frame goes out in one `send` (see [`send_small`]);
/// TLS goes through rustls (whose socket below carries the write deadline, see
/// [`Deadline`](super::deadline::Deadline)).
pub(super) trait Conn: Send {
    /// Waits for bytes and appends what has arrived to `buffer`, first growing it by `grow` if
    /// it is full. `Ok(0)`: the peer closed.
    fn read_more(
        &mut self,
        buffer: &mut BytesMut,
        grow: usize,
    ) -> impl Future<Output = io::Result<usize>> + Send;

    /// Waits for a few bytes into `probe`. `Ok(0)`: the peer closed.
    fn probe(&mut self, probe: &mut [u8]) -> impl Future<Output = io::Result<usize>> + Send;

    /// Writes every byte of `slices` out to the peer, failing once it has taken none for
    /// `deadline`.
    fn write_all(
        &mut self,
        slices: &mut [IoSlice<'_>],
        deadline: Option<Duration>,
    ) -> impl Future<Output = io::Result<()>> + Send;
}

impl Conn for TcpStream {
    /// Nothing is allocated until the peer has sent something (`async_io` waits for the socket
    /// to be readable before it reads).
    async fn read_more(&mut self, buffer: &mut BytesMut, grow: usize) -> io::Result<usize> {
        self.async_io(Interest::READABLE, || {
            if buffer.capacity() == buffer.len() {
                buffer.reserve(grow);
            }
            self.try_read_buf(buffer)
        })
        .await
    }

    /// Polled afresh beside every frame written, so it waits by `poll_read_ready`: that keeps
    /// the task's waker in the socket's one reader slot, where `readable()` or `async_io` would
    /// add it to the socket's list of waiters and take it out again each time (a lock, a waker
    /// clone and a drop per frame).
    async fn probe(&mut self, probe: &mut [u8]) -> io::Result<usize> {
        loop {
            std::future::poll_fn(|cx| self.poll_read_ready(cx)).await?;
            // A `WouldBlock` clears the readiness, so the next poll waits for new bytes.
            match self.try_read(probe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                read => return read,
            }
        }
    }

    /// A small write (a frame with its chunk's framing) in one `send`; what is left, or a large
    /// one, in as few `writev`s as the socket allows. Only a write the socket cannot take at
    /// once starts the clock, so a keeping-up subscriber costs no timer.
    async fn write_all(
        &mut self,
        mut slices: &mut [IoSlice<'_>],
        deadline: Option<Duration>,
    ) -> io::Result<()> {
        let sent = match send_small(self, slices) {
            Ok(sent) => sent.unwrap_or(0),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        IoSlice::advance_slices(&mut slices, sent);
        while !slices.is_empty() {
            let written = match self.try_write_vectored(slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => written,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match deadline {
                        None => self.writable().await?,
                        Some(limit) => tokio::time::timeout(limit, self.writable())
                            .await
                            .map_err(|_| super::deadline::stalled(limit))??,
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            IoSlice::advance_slices(&mut slices, written);
        }
        Ok(())
    }
}

/// Writes up to this much are gathered into one buffer and sent in one `send`.
const SEND_SMALL: usize = 2048;

/// Sends `slices` in one `send`, gathered into one buffer when there are several and they are
/// small: one `send` costs the kernel less than a `writev` of the same bytes in four pieces (a
/// frame, its chunk size line and its CRLF, and the head before the first), which walks them
/// through the file layer (fan-out CPU −4 %, BENCHMARKS.md step 7). `None`: too large, nothing
/// sent. The buffer is on this function's stack, never in the connection's future, so an idle
/// connection still holds none.
fn send_small(socket: &TcpStream, slices: &[IoSlice<'_>]) -> io::Result<Option<usize>> {
    if let [one] = slices {
        return socket.try_write(one).map(Some);
    }
    let total: usize = slices.iter().map(|s| s.len()).sum();
    if total > SEND_SMALL {
        return Ok(None);
    }
    let mut gathered = [0u8; SEND_SMALL];
    let mut at = 0;
    for slice in slices {
        gathered[at..at + slice.len()].copy_from_slice(slice);
        at += slice.len();
    }
    socket.try_write(&gathered[..at]).map(Some)
}

impl<S> Conn for tokio_rustls::server::TlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn read_more(&mut self, buffer: &mut BytesMut, grow: usize) -> io::Result<usize> {
        if buffer.capacity() == buffer.len() {
            buffer.reserve(grow);
        }
        self.read_buf(buffer).await
    }

    async fn probe(&mut self, probe: &mut [u8]) -> io::Result<usize> {
        self.read(probe).await
    }

    /// Each call to rustls seals what it is given into one record; the flush sends it. The
    /// deadline is the socket's own, below rustls.
    async fn write_all(
        &mut self,
        mut slices: &mut [IoSlice<'_>],
        _deadline: Option<Duration>,
    ) -> io::Result<()> {
        IoSlice::advance_slices(&mut slices, 0);
        while !slices.is_empty() {
            match self.write_vectored(slices).await? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                written => IoSlice::advance_slices(&mut slices, written),
            }
        }
        self.flush().await
    }
}

/// Parses a request head: `Sse` only for a clean `GET /sse` on HTTP/1.1 without a body.
fn parse_head(bytes: &[u8], max: usize) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let length = match head.parse(bytes) {
        Ok(httparse::Status::Complete(length)) if length <= max => length,
        Ok(httparse::Status::Partial) => return Head::Partial,
        _ => return Head::Other,
    };
    let path = head.path.unwrap_or_default();
    let is_sse = path == "/sse" || path.starts_with("/sse?");
    if head.method != Some("GET") || head.version != Some(1) || !is_sse {
        return Head::Other;
    }
    let Ok(uri) = path.parse::<Uri>() else {
        return Head::Other;
    };
    let mut map = HeaderMap::with_capacity(head.headers.len());
    let mut keep_alive = true;
    for line in head.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(line.name.as_bytes()),
            HeaderValue::from_bytes(line.value),
        ) else {
            return Head::Other;
        };
        // A body, an expectation or an upgrade is hyper's business.
        if [
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::EXPECT,
            header::UPGRADE,
        ]
        .contains(&name)
        {
            return Head::Other;
        }
        if name == header::CONNECTION && has_token(line.value, "close") {
            keep_alive = false;
        }
        map.append(name, value);
    }
    let mut request = Request::new(Empty::new());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    *request.headers_mut() = map;
    Head::Sse {
        request: Box::new(request),
        length,
        keep_alive,
    }
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Writes `response` (head, then its body as it comes), while noticing the peer closing.
/// Returns whether the connection may carry another request. Bytes the peer sends meanwhile
/// (a pipelined request) are kept in `pending`.
async fn write_response<C, RB>(
    mut socket: Writer<'_, C>,
    response: Response<RB>,
    keep_alive: bool,
    pending: &mut BytesMut,
    max_head_bytes: usize,
) -> io::Result<bool>
where
    C: Conn,
    RB: http_body::Body<Data = Bytes> + Unpin,
    RB::Error: std::fmt::Display,
{
    let (parts, mut body) = response.into_parts();
    let keep_alive = keep_alive
        && !parts
            .headers
            .get(header::CONNECTION)
            .is_some_and(|v| has_token(v.as_bytes(), "close"));
    let no_body = parts.status.is_informational()
        || parts.status == warp::http::StatusCode::NO_CONTENT
        || parts.status == warp::http::StatusCode::NOT_MODIFIED;
    let length = body.size_hint().exact();
    let chunked = !no_body && length.is_none();
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or_default()
            .as_bytes(),
    );
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        head.extend_from_slice(b"date: ");
        head.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if !keep_alive && !parts.headers.contains_key(header::CONNECTION) {
        head.extend_from_slice(b"connection: close\r\n");
    }
    match length {
        _ if no_body => {}
        Some(length) => head.extend_from_slice(format!("content-length: {length}\r\n").as_bytes()),
        None => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    head.extend_from_slice(b"\r\n");
    drop(parts);
    if no_body {
        drop(body);
        socket.write_all(&mut [IoSlice::new(&head)]).await?;
        return Ok(keep_alive);
    }
    // The head goes out with the first frame, in one write (taking it leaves an empty `Vec`).
    loop {
        let frame = tokio::select! {
            biased;
            frame = body.frame() => frame,
            () = peer_gone(&mut *socket.socket, pending, max_head_bytes) => return Ok(false),
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed; closing");
                return Ok(false);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
        };
        let head = std::mem::take(&mut head);
        if chunked {
            let mut size = [0u8; 18];
            let size = chunk_size_line(data.len(), &mut size);
            socket
                .write_all(&mut [
                    IoSlice::new(&head),
                    IoSlice::new(size),
                    IoSlice::new(&data),
                    IoSlice::new(b"\r\n"),
                ])
                .await?;
        } else {
            socket
                .write_all(&mut [IoSlice::new(&head), IoSlice::new(&data)])
                .await?;
        }
    }
    // The body is over: let go of what it holds (a subscription, presence) before the next head.
    drop(body);
    let end: &[u8] = if chunked { b"0\r\n\r\n" } else { b"" };
    socket
        .write_all(&mut [IoSlice::new(&head), IoSlice::new(end)])
        .await?;
    Ok(keep_alive)
}

/// `{len:x}\r\n` without `fmt`.
fn chunk_size_line(mut len: usize, out: &mut [u8; 18]) -> &[u8] {
    out[16] = b'\r';
    out[17] = b'\n';
    let mut start = 16;
    loop {
        start -= 1;
        out[start] = b"0123456789abcdef"[len & 0xf];
        len >>= 4;
        if len == 0 {
            return &out[start..];
        }
    }
}

/// The connection a response is written to, and how long one write may wait for the peer.
struct Writer<'a, C> {
    socket: &'a mut C,
    /// `--peer-timeout`: a peer that takes no byte for this long is gone (`None`: wait).
    deadline: Option<Duration>,
}

impl<C: Conn> Writer<'_, C> {
    async fn write_all(&mut self, slices: &mut [IoSlice<'_>]) -> io::Result<()> {
        self.socket.write_all(slices, self.deadline).await
    }
}

/// Resolves when the peer has closed (or reset) the connection, or has sent more than a request
/// head's worth while its response runs. What it sends is kept for the next request.
async fn peer_gone(socket: &mut impl Conn, pending: &mut BytesMut, max: usize) {
    let mut probe = [0u8; 64];
    loop {
        match socket.probe(&mut probe).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                pending.extend_from_slice(&probe[..n]);
                if pending.len() > max {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_lines_are_lowercase_hex() {
        let mut out = [0u8; 18];
        assert_eq!(chunk_size_line(0, &mut out), b"0\r\n");
        assert_eq!(chunk_size_line(255, &mut out), b"ff\r\n");
        assert_eq!(chunk_size_line(0x1a2b3, &mut out), b"1a2b3\r\n");
        assert_eq!(
            chunk_size_line(usize::MAX, &mut out),
            b"ffffffffffffffff\r\n"
        );
    }

    fn is_sse(head: &str) -> bool {
        matches!(parse_head(head.as_bytes(), 8192), Head::Sse { .. })
    }

    #[test]
    fn only_clean_sse_heads_are_served_here() {
        assert!(is_sse("GET /sse?stream=a HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(is_sse("GET /sse HTTP/1.1\r\n\r\n"));
        assert!(!is_sse("GET /sse/ HTTP/1.1\r\n\r\n"));
        assert!(!is_sse("GET /ssex HTTP/1.1\r\n\r\n"));
        assert!(!is_sse("HEAD /sse?stream=a HTTP/1.1\r\n\r\n"));
        assert!(!is_sse("GET /sse?stream=a HTTP/1.0\r\n\r\n"));
        assert!(!is_sse(
            "GET /sse?stream=a HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!is_sse(
            "GET /sse?stream=a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"
        ));
        assert!(!is_sse("GET /sse?stream=a HTTP/1.1\r\nHost: x\r\n"));
        assert!(!is_sse("GET http://x/sse?stream=a HTTP/1.1\r\n\r\n"));
        assert!(matches!(
            parse_head(b"GET /sse?stream=a HTTP/1.1\r\nHost: x\r\n", 8192),
            Head::Partial
        ));
        let long = format!(
            "GET /sse?stream=a HTTP/1.1\r\nX: {}\r\n\r\n",
            "p".repeat(100)
        );
        assert!(matches!(parse_head(long.as_bytes(), 64), Head::Other));
    }

    /// Whatever the pieces and however full the socket, the peer reads every byte once and in
    /// order: one piece, small pieces sent gathered, pieces over [`SEND_SMALL`] written as they
    /// are, and rounds enough to fill the socket while the peer is not reading, so that sends
    /// are cut short and go on after waiting.
    #[tokio::test]
    async fn pieces_reach_the_peer_whole_and_in_order() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut socket, _) = listener.accept().await.unwrap();
        let piece =
            |n: usize, seed: usize| -> Vec<u8> { (0..n).map(|i| (i * 31 + seed) as u8).collect() };
        let shapes: Vec<Vec<Vec<u8>>> = vec![
            vec![piece(100, 1)],
            vec![piece(0, 0), piece(4, 2), piece(90, 3), piece(2, 4)],
            vec![
                piece(200, 5),
                piece(4, 6),
                piece(SEND_SMALL - 206, 7),
                piece(2, 8),
            ],
            vec![
                piece(0, 0),
                piece(5, 9),
                piece(SEND_SMALL, 10),
                piece(2, 11),
            ],
            vec![piece(3 * SEND_SMALL, 12)],
        ];
        let mut expected = Vec::new();
        for round in 0..3000 {
            for piece in &shapes[round % shapes.len()] {
                expected.extend_from_slice(piece);
            }
        }
        let total = expected.len();
        let writer = tokio::spawn(async move {
            for round in 0..3000 {
                let shape = &shapes[round % shapes.len()];
                let mut slices: Vec<IoSlice<'_>> = shape.iter().map(|p| IoSlice::new(p)).collect();
                Conn::write_all(&mut socket, &mut slices, Some(Duration::from_secs(10)))
                    .await
                    .unwrap();
            }
            socket
        });
        // Not reading at first: the socket fills and the writes wait.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut got = vec![0u8; total];
        peer.read_exact(&mut got).await.unwrap();
        let _socket = writer.await.unwrap();
        assert!(
            got == expected,
            "the bytes read differ from the bytes written"
        );
    }

    #[test]
    fn connection_close_is_honoured() {
        let Head::Sse { keep_alive, .. } = parse_head(
            b"GET /sse?stream=a HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n",
            8192,
        ) else {
            panic!("not served here")
        };
        assert!(!keep_alive);
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// Request heads near the ones served here: a clean `GET /sse`, then bytes changed,
        /// inserted or cut anywhere.
        fn near_sse_heads() -> impl Strategy<Value = Vec<u8>> {
            let clean =
                b"GET /sse?stream=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 7\r\n\r\n".to_vec();
            let edits = proptest::collection::vec(
                (any::<prop::sample::Index>(), any::<u8>(), 0..3u8),
                0..6,
            );
            edits.prop_map(move |edits| {
                let mut head = clean.clone();
                for (at, byte, kind) in edits {
                    let i = at.index(head.len() + 1);
                    match kind {
                        0 if i < head.len() => head[i] = byte,
                        1 => head.insert(i, byte),
                        _ if i < head.len() => {
                            head.remove(i);
                        }
                        _ => {}
                    }
                }
                head
            })
        }

        fn heads() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                near_sse_heads(),
                proptest::collection::vec(any::<u8>(), 0..512),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 4096, failure_persistence: None, ..ProptestConfig::default() })]

            /// Whatever arrives, parsing never panics; a head served here is whole, well formed
            /// and the same however the bytes were split across reads.
            #[test]
            fn any_bytes_parse_without_panic_and_consistently(bytes in heads(), max in 16usize..1024) {
                match parse_head(&bytes, max) {
                    Head::Sse { request, length, .. } => {
                        prop_assert!(length <= bytes.len() && length <= max);
                        // An empty line ends it (httparse takes a bare LF as a line end, as hyper does).
                        prop_assert!(bytes[..length].ends_with(b"\n"));
                        prop_assert_eq!(request.method(), Method::GET);
                        prop_assert_eq!(request.uri().path(), "/sse");
                        // Each shorter prefix is still waiting for more; the head alone parses
                        // to the same request.
                        for cut in 0..length {
                            prop_assert!(matches!(parse_head(&bytes[..cut], max), Head::Partial | Head::Other));
                        }
                        let Head::Sse { request: alone, length: again, .. } = parse_head(&bytes[..length], max) else {
                            return Err(TestCaseError::fail("the head alone is not served here"));
                        };
                        prop_assert_eq!(again, length);
                        prop_assert_eq!(alone.uri(), request.uri());
                        prop_assert_eq!(alone.headers(), request.headers());
                    }
                    Head::Partial | Head::Other | Head::Closed => {}
                }
            }
        }
    }
}
