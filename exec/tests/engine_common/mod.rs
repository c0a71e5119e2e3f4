//! Driving an engine under the real scheduler in tests: requests in waves, each wave submitted
//! once the engine is idle, then stepped until it is idle again.
#![allow(dead_code)]

use doppel_core::{Backend, Engine, Event, RequestId, RequestSpec, SamplingParams};

/// Run `waves` on `engine` (1 µs of virtual time a step, at most `max_steps` steps a wave);
/// `after_wave` sees the engine once each wave is done. Returns every event, in order.
pub fn run_waves<B: Backend>(
    engine: &mut Engine<B>,
    waves: &[Vec<RequestSpec>],
    max_steps: usize,
    mut after_wave: impl FnMut(&mut Engine<B>),
) -> Vec<Event> {
    let mut events = Vec::new();
    let mut now = 0;
    for wave in waves {
        for r in wave {
            engine.scheduler.submit(r.clone()).unwrap();
        }
        let mut steps = 0;
        while !engine.is_idle() {
            engine.iterate(now, &mut events).unwrap();
            now += 1000;
            steps += 1;
            assert!(steps < max_steps, "engine did not finish");
        }
        after_wave(engine);
    }
    events
}

/// A request that ignores EOS, arriving at 0.
pub fn req(id: u64, prompt: Vec<u32>, p: SamplingParams) -> RequestSpec {
    let mut p = p;
    p.ignore_eos = true;
    RequestSpec::new(RequestId(id), prompt, p, 0)
}
