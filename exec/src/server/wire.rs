//! Pieces between hyper and the router: a request body with a read deadline, a response body that
//! tells the connection table when the response is done, JSON bodies for the error answers that
//! hyper and axum produce empty, and giving freed heap back to the OS after big requests.

use super::error::ApiError;
use axum::body::{Body, Bytes, HttpBody};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most characters of client input echoed in an error message.
pub const ECHO_CHARS: usize = 200;

/// Client input for an error message: whole if short, else its first [`ECHO_CHARS`] characters
/// and its length.
pub fn clip(s: &str) -> String {
    match s.char_indices().nth(ECHO_CHARS) {
        None => s.to_string(),
        Some((cut, _)) => format!("{}... ({} bytes)", &s[..cut], s.len()),
    }
}

/// The request body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} s", .0.as_secs_f64())]
pub struct BodyTimeout(pub Duration);

/// A request body that fails with [`BodyTimeout`] once its deadline passes, so a client that
/// declares a Content-Length and sends nothing does not hold its handler forever.
pub struct DeadlineBody<B> {
    inner: B,
    sleep: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

impl<B> DeadlineBody<B> {
    /// `inner` must be read completely within `limit` from now.
    pub fn new(inner: B, limit: Duration) -> DeadlineBody<B> {
        DeadlineBody {
            inner,
            sleep: Box::pin(tokio::time::sleep(limit)),
            limit,
        }
    }
}

impl<B> HttpBody for DeadlineBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(f) => Poll::Ready(f.map(|r| r.map_err(Into::into))),
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(this.limit))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body carrying a guard that is dropped when hyper is done with the body (sent,
/// or the connection went away).
pub struct Guarded<G> {
    inner: Body,
    _guard: G,
}

impl<G> Guarded<G> {
    /// Wrap `inner`, keeping `guard` alive as long as the body.
    pub fn new(inner: Body, guard: G) -> Guarded<G> {
        Guarded {
            inner,
            _guard: guard,
        }
    }
}

impl<G: Unpin> HttpBody for Guarded<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Give an error answer without a body (axum's 405, ...) the OpenAI-style JSON body.
pub fn json_error_body(resp: Response, method: &Method, path: &str) -> Response {
    let status = resp.status();
    let empty = resp.body().size_hint().exact() == Some(0);
    if !(status.is_client_error() || status.is_server_error())
        || !empty
        || resp.headers().contains_key(header::CONTENT_TYPE)
    {
        return resp;
    }
    let (kind, message) = if status == StatusCode::METHOD_NOT_ALLOWED {
        let allow = resp
            .headers()
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("another method");
        (
            "method_not_allowed",
            format!(
                "method {method} is not allowed on {}; use {allow}",
                clip(path)
            ),
        )
    } else {
        (
            "invalid_request_error",
            format!(
                "{} ({method} {})",
                status.canonical_reason().unwrap_or("error"),
                clip(path)
            ),
        )
    };
    let (mut parts, _) = resp.into_parts();
    let mut json = ApiError::status(status, kind, message).into_response();
    for (k, v) in parts.headers.drain() {
        if let Some(k) = k {
            json.headers_mut().entry(k).or_insert(v);
        }
    }
    json
}

/// Ask glibc to return freed heap pages to the OS. Big bodies and tokenizations leave hundreds
/// of MB in malloc's free lists otherwise (glibc raises its mmap threshold after freeing a large
/// block, so later large blocks come from the heap and stay resident).
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and releases malloc's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The soft open-file limit (None where unknown).
pub fn fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own and reads nothing else.
        let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0;
        ok.then_some(r.rlim_cur)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Raise the soft open-file limit to the hard one (as SGLang's launcher does), so the connection
/// cap is not a few hundred on a default shell. Returns the limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in fd_limit; setrlimit reads the struct we pass.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
                let want = libc::rlimit {
                    rlim_cur: r.rlim_max,
                    rlim_max: r.rlim_max,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &want);
            }
        }
    }
    fd_limit()
}

/// The body hyper's automatic answer to an unparsable request gets (it writes only a head).
fn parse_error_body(status: u16) -> Option<ApiError> {
    let (code, kind, msg) = match status {
        400 => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "the request is not valid HTTP/1.1 (request line or a header is malformed)",
        ),
        414 => (
            StatusCode::URI_TOO_LONG,
            "invalid_request_error",
            "the request URI is too long",
        ),
        431 => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "invalid_request_error",
            "the request headers are too large or too many",
        ),
        _ => return None,
    };
    Some(ApiError::status(code, kind, msg))
}

/// If `buf` is exactly hyper's automatic head-only answer to a parse error, the same answer
/// with a JSON body.
fn rewrite_parse_error(buf: &[u8]) -> Option<Vec<u8>> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
    let status: u16 = std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()?;
    let err = parse_error_body(status)?;
    if !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let head = std::str::from_utf8(&buf[..buf.len() - 4]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut kept = Vec::new();
    let mut empty = false;
    for l in lines {
        let (k, v) = l.split_once(':')?;
        if k.eq_ignore_ascii_case("content-length") {
            empty = v.trim() == "0";
        } else if !k.eq_ignore_ascii_case("connection") {
            kept.push(l);
        }
    }
    if !empty {
        return None;
    }
    let body = err.body().to_string();
    let mut out = format!("{status_line}\r\n");
    for l in kept {
        out.push_str(l);
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    Some(out.into_bytes())
}

/// A socket that gives hyper's automatic parse-error answers (400, 414, 431: a head with
/// `content-length: 0`, written before any service runs) the OpenAI-style JSON body. hyper has no
/// hook for them; every answer the router makes has a body, so only hyper's match.
pub struct JsonParseErrors<T> {
    inner: T,
    pending: Vec<u8>,
}

impl<T> JsonParseErrors<T> {
    /// Wrap a connection's socket.
    pub fn new(inner: T) -> JsonParseErrors<T> {
        JsonParseErrors {
            inner,
            pending: Vec::new(),
        }
    }
}

impl<T: AsyncWrite + Unpin> JsonParseErrors<T> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonParseErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonParseErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(out) = rewrite_parse_error(buf) {
            self.pending = out;
            // Written or queued: hyper flushes (and shuts down) next, which drains the rest.
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if let Some(out) = rewrite_parse_error(first) {
                self.pending = out;
                let _ = self.poll_pending(cx)?;
                return Poll::Ready(Ok(first.len()));
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response for a request refused before the router sees it (draining, connection limit).
pub fn refusal(kind: &'static str, message: String) -> Response {
    let mut r = ApiError::status(StatusCode::SERVICE_UNAVAILABLE, kind, message).into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_input_and_cuts_long_input_with_its_length() {
        assert_eq!(clip("abc"), "abc");
        let long = "é".repeat(1000);
        let c = clip(&long);
        assert!(c.starts_with(&"é".repeat(ECHO_CHARS)), "{c}");
        assert!(c.ends_with("... (2000 bytes)"), "{c}");
    }

    #[test]
    fn only_head_only_parse_error_answers_are_rewritten() {
        let head =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(rewrite_parse_error(head).unwrap()).unwrap();
        let (h, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(h.starts_with("HTTP/1.1 431 "), "{h}");
        assert!(h.contains("date: x") && h.contains("content-type: application/json"));
        assert!(
            h.contains(&format!("content-length: {}", body.len())),
            "{h}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], 431);
        // An answer with a body, another status, or a partial head is left alone.
        assert!(
            rewrite_parse_error(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\n\r\n").is_none()
        );
        assert!(rewrite_parse_error(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(
            rewrite_parse_error(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n").is_none()
        );
    }
}
