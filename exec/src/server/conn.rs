//! Accepting connections: our own loop on hyper instead of `axum::serve`, which has no header
//! read timeout and no connection cap. A table of live connections holds the cap; when it is
//! full, the oldest connection with no request in flight (an idle keep-alive, or a client still
//! trickling its headers) is closed to make room, so slow clients cannot lock others out. See
//! docs/server.md#connections.

use super::wire::{self, DeadlineBody, Guarded, JsonParseErrors};
use super::{log, AppState};
use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::header;
use axum::response::Response;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

/// Requests with a body at least this large give freed heap back afterwards.
const TRIM_AFTER_BYTES: u64 = 1 << 20;
/// Open files kept for everything but client connections (model files, the listener, logs).
const FD_RESERVE: u64 = 64;

/// Limits on clients at the connection level.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnLimits {
    /// A request's headers must arrive within this (also the idle keep-alive limit).
    pub header_read_timeout: Duration,
    /// A request's body must arrive within this from the end of its headers (408 beyond).
    pub body_read_timeout: Duration,
    /// Most connections served at once (lowered to fit the open-file limit).
    pub max_connections: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_read_timeout: Duration::from_secs(20),
            body_read_timeout: Duration::from_secs(60),
            max_connections: 4096,
        }
    }
}

impl ConnLimits {
    /// The cap on served connections and on connections that are only told "503, full", given
    /// the open-file limit.
    fn caps(&self, fd_limit: Option<u64>) -> (usize, usize) {
        let want = self.max_connections.max(1);
        let Some(fds) = fd_limit else {
            return (want, 64);
        };
        let usable = fds.saturating_sub(FD_RESERVE).max(16) as usize;
        let cap = want.min(usable - usable / 8);
        (cap, (usable - cap).min(256))
    }
}

/// One live connection.
struct Slot {
    /// Requests whose response is not finished.
    active: AtomicUsize,
    /// Told to close (evicted, or forced at the end of shutdown).
    evict: Notify,
}

/// Counts a request in flight on its connection.
struct Active(Arc<Slot>);

impl Active {
    fn new(slot: &Arc<Slot>) -> Active {
        slot.active.fetch_add(1, Ordering::AcqRel);
        Active(slot.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Admit {
    Serve(u64, Arc<Slot>),
    Full,
    Drop,
}

/// The live connections, by accept order.
struct Table {
    live: Mutex<(u64, BTreeMap<u64, Arc<Slot>>)>,
    cap: usize,
    overflow: AtomicUsize,
    overflow_cap: usize,
}

impl Table {
    fn with<T>(&self, f: impl FnOnce(&mut (u64, BTreeMap<u64, Arc<Slot>>)) -> T) -> T {
        match self.live.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// Admit a new connection: a free place, or the place of the oldest idle one (closed now).
    fn admit(&self) -> Admit {
        let got = self.with(|(next, live)| {
            if live.len() >= self.cap {
                let idle = live
                    .iter()
                    .find(|(_, s)| s.active.load(Ordering::Acquire) == 0)
                    .map(|(id, _)| *id)?;
                if let Some(s) = live.remove(&idle) {
                    s.evict.notify_one();
                }
            }
            let slot = Arc::new(Slot {
                active: AtomicUsize::new(0),
                evict: Notify::new(),
            });
            *next += 1;
            live.insert(*next, slot.clone());
            Some((*next, slot))
        });
        match got {
            Some((id, slot)) => Admit::Serve(id, slot),
            None if self.overflow.fetch_add(1, Ordering::AcqRel) < self.overflow_cap => Admit::Full,
            None => {
                self.overflow.fetch_sub(1, Ordering::AcqRel);
                Admit::Drop
            }
        }
    }

    fn remove(&self, id: u64) {
        self.with(|(_, live)| live.remove(&id));
    }

    fn len(&self) -> usize {
        self.with(|(_, live)| live.len()) + self.overflow.load(Ordering::Acquire)
    }

    fn close_all(&self) {
        self.with(|(_, live)| {
            for s in live.values() {
                s.evict.notify_one();
            }
        });
    }
}

/// Serving connections until told to close.
pub struct Acceptor {
    table: Arc<Table>,
    close: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Acceptor {
    /// Start accepting on `listener`.
    pub fn start(
        listener: TcpListener,
        app: Router,
        state: Arc<AppState>,
        limits: &ConnLimits,
    ) -> Acceptor {
        let (cap, overflow_cap) = limits.caps(wire::fd_limit());
        let table = Arc::new(Table {
            live: Mutex::new((0, BTreeMap::new())),
            cap,
            overflow: AtomicUsize::new(0),
            overflow_cap,
        });
        let (close, close_rx) = watch::channel(false);
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        let ctx = Arc::new(Ctx {
            http,
            app,
            state,
            body_timeout: limits.body_read_timeout,
            table: table.clone(),
            cap,
        });
        let task = tokio::spawn(accept_loop(listener, ctx, close_rx));
        Acceptor { table, close, task }
    }

    /// Stop accepting (the listener closes), let connections finish their responses for up to
    /// `grace`, then close the rest.
    pub async fn close(self, grace: Duration) {
        let _ = self.close.send(true);
        let _ = self.task.await;
        let until = Instant::now() + grace;
        while self.table.len() > 0 {
            if Instant::now() >= until {
                log::warn("connections still open after the drain; closing them");
                self.table.close_all();
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

struct Ctx {
    http: http1::Builder,
    app: Router,
    state: Arc<AppState>,
    body_timeout: Duration,
    table: Arc<Table>,
    cap: usize,
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>, mut close: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = close.changed() => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: transient, never fatal.
                log::warn(&format!("accept failed: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match ctx.table.admit() {
            Admit::Serve(id, slot) => {
                tokio::spawn(serve(ctx.clone(), stream, id, slot, close.clone()));
            }
            Admit::Full => {
                tokio::spawn(refuse_full(ctx.clone(), stream));
            }
            Admit::Drop => drop(stream),
        }
    }
}

/// Serve one connection until it ends, is evicted, or (on close) finishes its response.
async fn serve(
    ctx: Arc<Ctx>,
    stream: TcpStream,
    id: u64,
    slot: Arc<Slot>,
    mut close: watch::Receiver<bool>,
) {
    let svc = {
        let (ctx, slot) = (ctx.clone(), slot.clone());
        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let (ctx, active) = (ctx.clone(), Active::new(&slot));
            async move { Ok::<_, Infallible>(handle(&ctx, req, active).await) }
        })
    };
    let conn = ctx
        .http
        .serve_connection(TokioIo::new(JsonParseErrors::new(stream)), svc);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = slot.evict.notified() => break,
            _ = close.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    ctx.table.remove(id);
}

/// A connection beyond the cap with none idle to evict: its requests get 503 and it closes.
async fn refuse_full(ctx: Arc<Ctx>, stream: TcpStream) {
    let cap = ctx.cap;
    let svc = hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| async move {
        Ok::<_, Infallible>(wire::refusal(
            "too_many_connections",
            format!("the server is at its limit of {cap} connections; retry later"),
        ))
    });
    let mut http = ctx.http.clone();
    http.keep_alive(false);
    let conn = http.serve_connection(TokioIo::new(JsonParseErrors::new(stream)), svc);
    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
    ctx.table.overflow.fetch_sub(1, Ordering::AcqRel);
}

/// One request: refused while draining, else the router with a body deadline; empty error
/// answers get a JSON body; the connection counts the request until its response body is done.
async fn handle(ctx: &Ctx, req: Request<hyper::body::Incoming>, active: Active) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if ctx.state.draining.load(Ordering::Relaxed) {
        return wire::refusal("server_shutting_down", "the server is shutting down".into());
    }
    let big = req.body().size_hint().lower() >= TRIM_AFTER_BYTES;
    let timeout = ctx.body_timeout;
    let req = req.map(|b| {
        if b.is_end_stream() {
            Body::new(b)
        } else {
            Body::new(DeadlineBody::new(b, timeout))
        }
    });
    let resp = match tower_service::Service::call(&mut ctx.app.clone(), req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if big {
        wire::trim_heap();
    }
    let mut resp = wire::json_error_body(resp, &method, &path);
    if ctx.state.draining.load(Ordering::Relaxed) {
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    resp.map(|b| Body::new(Guarded::new(b, active)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_the_open_file_limit() {
        let l = ConnLimits::default();
        assert_eq!(l.caps(None), (4096, 64));
        let (cap, over) = l.caps(Some(256));
        assert!(cap + over + FD_RESERVE as usize <= 256, "{cap} {over}");
        assert!(cap >= 128, "{cap}");
        assert_eq!(l.caps(Some(1 << 20)), (4096, 256));
    }

    fn table(cap: usize) -> Table {
        Table {
            live: Mutex::new((0, BTreeMap::new())),
            cap,
            overflow: AtomicUsize::new(0),
            overflow_cap: 1,
        }
    }

    #[test]
    fn a_full_table_evicts_the_oldest_idle_connection_else_refuses() {
        let t = table(2);
        let Admit::Serve(a, sa) = t.admit() else {
            panic!()
        };
        let Admit::Serve(_, sb) = t.admit() else {
            panic!()
        };
        let busy_a = Active::new(&sa);
        // a is busy, b idle: b goes.
        let Admit::Serve(_, sc) = t.admit() else {
            panic!()
        };
        assert_eq!(t.len(), 2);
        assert!(t.with(|(_, m)| m.contains_key(&a)));
        let _busy_c = Active::new(&sc);
        // All busy: one "full" answer, then dropped.
        assert!(matches!(t.admit(), Admit::Full));
        assert!(matches!(t.admit(), Admit::Drop));
        drop(busy_a);
        drop(sb);
        t.overflow.fetch_sub(1, Ordering::AcqRel);
        assert!(matches!(t.admit(), Admit::Serve(..)));
        assert!(
            !t.with(|(_, m)| m.contains_key(&a)),
            "the idle a was evicted"
        );
    }
}
