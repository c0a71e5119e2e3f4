//! A minimal HTTP/1.1 client over loopback for the server's tests and load checks: one request per
//! connection, chunked or sized bodies, and incremental server-sent events.

use std::io;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A response read to its end.
#[derive(Clone, Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (Null if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

enum Framing {
    Chunked { left: usize, done: bool },
    Sized(usize),
    UntilClose,
}

/// An open response whose body is read piece by piece (drop it to disconnect).
pub struct Stream {
    /// HTTP status.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    rd: BufReader<TcpStream>,
    framing: Framing,
    buf: Vec<u8>,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Send a request and read the status line and headers.
pub async fn open(addr: &str, method: &str, path: &str, body: Option<&[u8]>) -> io::Result<Stream> {
    let mut sock = TcpStream::connect(addr).await?;
    sock.set_nodelay(true)?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    let mut msg = head.into_bytes();
    if let Some(b) = body {
        msg.extend_from_slice(b);
    }
    sock.write_all(&msg).await?;
    let mut rd = BufReader::new(sock);
    let mut line = String::new();
    rd.read_line(&mut line).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if rd.read_line(&mut line).await? == 0 {
            return Err(bad("connection closed inside the headers"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let framing = if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        Framing::Chunked {
            left: 0,
            done: false,
        }
    } else if let Some(n) = get("content-length").and_then(|v| v.parse().ok()) {
        Framing::Sized(n)
    } else {
        Framing::UntilClose
    };
    Ok(Stream {
        status,
        headers,
        rd,
        framing,
        buf: Vec::new(),
    })
}

impl Stream {
    /// The next piece of the body; None at its end.
    pub async fn piece(&mut self) -> io::Result<Option<Vec<u8>>> {
        match &mut self.framing {
            Framing::Sized(0) => Ok(None),
            Framing::Sized(n) => {
                let mut b = vec![0; (*n).min(64 << 10)];
                let k = self.rd.read(&mut b).await?;
                if k == 0 {
                    return Err(bad("connection closed before the body ended"));
                }
                *n -= k;
                b.truncate(k);
                Ok(Some(b))
            }
            Framing::UntilClose => {
                let mut b = vec![0; 64 << 10];
                let k = self.rd.read(&mut b).await?;
                b.truncate(k);
                Ok((k > 0).then_some(b))
            }
            Framing::Chunked { left, done } => {
                if *done {
                    return Ok(None);
                }
                if *left == 0 {
                    let mut line = String::new();
                    if self.rd.read_line(&mut line).await? == 0 {
                        return Err(bad("connection closed inside a chunked body"));
                    }
                    let size =
                        usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                            .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
                    if size == 0 {
                        // Trailers end with an empty line.
                        loop {
                            line.clear();
                            if self.rd.read_line(&mut line).await? == 0 || line.trim().is_empty() {
                                break;
                            }
                        }
                        *done = true;
                        return Ok(None);
                    }
                    *left = size;
                }
                let mut b = vec![0; *left];
                self.rd.read_exact(&mut b).await?;
                *left = 0;
                let mut crlf = [0u8; 2];
                self.rd.read_exact(&mut crlf).await?;
                Ok(Some(b))
            }
        }
    }

    /// The whole remaining body.
    pub async fn body(&mut self) -> io::Result<Vec<u8>> {
        let mut all = std::mem::take(&mut self.buf);
        while let Some(p) = self.piece().await? {
            all.extend_from_slice(&p);
        }
        Ok(all)
    }

    /// The data of the next server-sent event; None at the end of the body.
    pub async fn event(&mut self) -> io::Result<Option<String>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let ev: Vec<u8> = self.buf.drain(..i + 2).collect();
                let text = String::from_utf8_lossy(&ev).into_owned();
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if data.is_empty() {
                    continue;
                }
                return Ok(Some(data.join("\n")));
            }
            match self.piece().await? {
                Some(p) => self.buf.extend_from_slice(&p),
                None if self.buf.iter().all(u8::is_ascii_whitespace) => return Ok(None),
                None => return Err(bad("the body ended inside an event")),
            }
        }
    }
}

/// Send a request and read the whole response.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> io::Result<Reply> {
    let mut s = open(addr, method, path, body).await?;
    let body = s.body().await?;
    Ok(Reply {
        status: s.status,
        headers: std::mem::take(&mut s.headers),
        body,
    })
}

/// POST a JSON value.
pub async fn post_json(addr: &str, path: &str, v: &serde_json::Value) -> io::Result<Reply> {
    request(addr, "POST", path, Some(v.to_string().as_bytes())).await
}

/// GET.
pub async fn get(addr: &str, path: &str) -> io::Result<Reply> {
    request(addr, "GET", path, None).await
}

/// Run client code from a synchronous caller (tests without their own runtime).
pub fn block_on<F: std::future::Future>(f: F) -> io::Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f))
}
