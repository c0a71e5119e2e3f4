//! The engine thread under a toy backend: routing, aborts, backend failure.
use super::*;
use doppel_core::testing::ToyBackend;
use doppel_core::{Plan, SamplingParams, Scheduler, SchedulerConfig, StepResult};
use tokio::sync::mpsc::unbounded_channel;

/// The toy backend, failing at launch number `fail_at` (never if None).
struct Flaky {
    toy: ToyBackend,
    launches: u64,
    fail_at: Option<u64>,
}

impl Backend for Flaky {
    type Error = String;
    fn launch(&mut self, plan: &Plan, now: TimeNs) -> Result<(), String> {
        self.launches += 1;
        // Real time per step, so a client can act while its request is still running.
        std::thread::sleep(Duration::from_micros(500));
        if Some(self.launches) == self.fail_at {
            return Err("device lost".into());
        }
        self.toy.launch(plan, now)
    }
    fn collect(&mut self, plan: &Plan, out: &mut StepResult) -> Result<(), String> {
        self.toy.collect(plan, out)
    }
}

fn start(
    fail_at: Option<u64>,
    max_queued: Option<usize>,
    max_running: Option<usize>,
) -> (
    std::sync::mpsc::Sender<Command>,
    Arc<Shared>,
    std::thread::JoinHandle<()>,
) {
    let cfg = SchedulerConfig {
        kv_capacity_tokens: 4096,
        context_len: 1024,
        max_running_requests: max_running,
        ..Default::default()
    };
    let engine = Engine::new(
        Scheduler::new(cfg).unwrap(),
        Flaky {
            toy: ToyBackend::new(),
            launches: 0,
            fail_at,
        },
        true,
    );
    let shared = Arc::new(Shared {
        snapshot: Mutex::new(Snapshot::default()),
        start: Instant::now(),
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let s2 = shared.clone();
    let opts = LoopOptions {
        max_queued,
        log_batches: false,
        recorder: None,
        cuda_graph: false,
    };
    let h = std::thread::spawn(move || run(engine, rx, s2, opts));
    (tx, shared, h)
}

fn submit(
    tx: &std::sync::mpsc::Sender<Command>,
    id: u64,
    max_new: usize,
) -> tokio::sync::mpsc::UnboundedReceiver<ReqEvent> {
    let (etx, erx) = unbounded_channel();
    let spec = RequestSpec::new(
        RequestId(id),
        vec![1, 2, 3, 4],
        SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(max_new)
        },
        0,
    );
    tx.send(Command::Submit { spec, events: etx }).unwrap();
    erx
}

fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<ReqEvent>) -> Vec<ReqEvent> {
    let mut out = Vec::new();
    while let Some(ev) = rx.blocking_recv() {
        let end = matches!(
            ev,
            ReqEvent::Finished(_) | ReqEvent::Failed(_) | ReqEvent::Refused(_)
        );
        out.push(ev);
        if end {
            break;
        }
    }
    out
}

#[test]
fn tokens_then_finish_and_a_whole_pool_when_idle() {
    let (tx, shared, h) = start(None, None, None);
    let mut rx = submit(&tx, 1, 5);
    let evs = drain(&mut rx);
    assert!(matches!(evs[0], ReqEvent::Admitted(_)));
    let tokens = evs
        .iter()
        .filter(|e| matches!(e, ReqEvent::Token { .. }))
        .count();
    assert_eq!(tokens, 5);
    match evs.last() {
        Some(ReqEvent::Finished(f)) => assert_eq!(f.reason, FinishReason::Length),
        other => panic!("{other:?}"),
    }
    tx.send(Command::Shutdown {
        drain: Duration::ZERO,
    })
    .unwrap();
    h.join().unwrap();
    let s = shared.snapshot();
    assert!(!s.alive && s.error.is_none());
    assert_eq!(s.memory.free + s.memory.evictable, s.memory.capacity);
}

#[test]
fn a_dropped_receiver_aborts_the_request_and_the_queue_is_bounded() {
    let (tx, shared, h) = start(None, Some(1), Some(1));
    let mut first = submit(&tx, 1, 1000);
    assert!(matches!(first.blocking_recv(), Some(ReqEvent::Admitted(_))));
    // Leaving the queue is reported before the first token.
    assert!(matches!(
        first.blocking_recv(),
        Some(ReqEvent::Scheduled(_))
    ));
    assert!(matches!(
        first.blocking_recv(),
        Some(ReqEvent::Token { .. })
    ));
    let mut second = submit(&tx, 2, 10);
    assert!(matches!(
        second.blocking_recv(),
        Some(ReqEvent::Admitted(_))
    ));
    let mut third = submit(&tx, 3, 10);
    assert!(matches!(
        third.blocking_recv(),
        Some(ReqEvent::Refused(Refusal::QueueFull(1)))
    ));
    // The running client leaves: its request ends at once and the waiting one runs.
    drop(first);
    let evs = drain(&mut second);
    assert!(matches!(evs.last(), Some(ReqEvent::Finished(_))));
    tx.send(Command::Shutdown {
        drain: Duration::ZERO,
    })
    .unwrap();
    h.join().unwrap();
    let s = shared.snapshot();
    assert_eq!(s.counters.finished, 2);
    assert!(s.counters.generated_tokens < 1000);
    assert_eq!(s.memory.free + s.memory.evictable, s.memory.capacity);
}

#[test]
fn a_backend_failure_fails_live_requests_and_stops_the_engine() {
    let (tx, shared, h) = start(Some(3), None, None);
    let mut rx = submit(&tx, 1, 50);
    let evs = drain(&mut rx);
    match evs.last() {
        Some(ReqEvent::Failed(m)) => assert!(m.contains("device lost"), "{m}"),
        other => panic!("{other:?}"),
    }
    h.join().unwrap();
    let s = shared.snapshot();
    assert!(!s.alive);
    assert!(s.error.unwrap().contains("device lost"));
    // Later submissions find the channel closed.
    let (etx, _erx) = unbounded_channel();
    let spec = RequestSpec::new(RequestId(9), vec![1], SamplingParams::greedy(1), 0);
    assert!(tx.send(Command::Submit { spec, events: etx }).is_err());
}
