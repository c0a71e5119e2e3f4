//! `doppel sim ...` subcommands.

use anyhow::Context;
use clap::Subcommand;
use doppel_sim::{one_batch, sweep, Profile, RooflineCost, SimOptions};
use std::process::ExitCode;

/// `doppel sim` subcommands.
#[derive(Subcommand)]
pub enum SimCmd {
    /// Replay a trace and print bench_serving's result table plus cache and scheduler figures.
    Replay {
        /// The trace file (see traces/README.md).
        trace: String,
        /// Write every figure and per-request records as JSON.
        #[arg(long)]
        json: Option<String>,
        /// Write a Chrome trace (open in Perfetto) of GPU steps and requests.
        #[arg(long)]
        timeline: Option<String>,
        /// Print SGLang-style "Prefill batch." / "Decode batch." log lines.
        #[arg(long)]
        log_batches: bool,
        /// Replace the trace's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Replace the trace's profile (name or YAML file).
        #[arg(long)]
        profile: Option<String>,
        /// Take the timing of a real run of this trace (`doppel exec replay --json`): every
        /// engine loop iteration runs when the real one did and every step lasts as long, so
        /// the batch sequences differ only where the schedulers decide differently.
        #[arg(long)]
        timing_from: Option<String>,
        /// Send each request when the client of this run did (a `doppel bench serve --json`
        /// report of the same trace, open-loop only): a burst's requests leave over the time
        /// the client takes to open their connections.
        #[arg(long)]
        sends_from: Option<String>,
    },
    /// SGLang's bench_one_batch straight from a profile's cost model.
    OneBatch {
        /// Profile name (see `doppel sim profiles`) or a profile YAML file.
        #[arg(long, default_value = "a100-80g/qwen3-0.6b/sglang")]
        profile: String,
        /// Batch sizes.
        #[arg(long, num_args = 1.., default_values_t = [1usize])]
        batch_size: Vec<usize>,
        /// Prompt length.
        #[arg(long, default_value_t = 1024)]
        input_len: usize,
        /// Output length.
        #[arg(long, default_value_t = 16)]
        output_len: usize,
        /// Tensor-parallel size.
        #[arg(long, default_value_t = 1)]
        tp: usize,
    },
    /// Replay a trace once per value of one parameter; print a table and write an SVG chart.
    Sweep {
        /// The trace file.
        trace: String,
        /// Parameter: rate, concurrency, policy, chunk, tp, kv, page, max-running, overlap, mixed,
        /// mixed-step (mixing on with that step budget, or off).
        #[arg(long)]
        param: String,
        /// Values to try.
        #[arg(long, num_args = 1.., required = true)]
        values: Vec<String>,
        /// Where to write the SVG chart.
        #[arg(long, default_value = "sweep.svg")]
        svg: String,
        /// Also write every run's figures as JSON.
        #[arg(long)]
        json: Option<String>,
    },
    /// Search replicas x TP x chunk x policy x router (x profile) for the cheapest setup whose
    /// replay of the trace meets latency targets; print the frontier, write an SVG chart.
    Plan(Box<PlanArgs>),
    /// List the built-in profiles.
    Profiles,
    /// Error of each metric of a simulated run against a real one, and the first differing step.
    Compare {
        /// Report of the real run (`doppel exec replay --json`).
        real: String,
        /// Report of the simulated run (`doppel sim replay --json`).
        sim: String,
    },
    /// Fit a profile to step times measured by `doppel exec profile`, or (another engine) to
    /// its bench_one_batch table plus serving runs (--one-batch, --serving).
    Calibrate {
        /// The measurement file of `doppel exec profile`.
        measurements: Option<String>,
        /// A bench_one_batch table: `doppel exec bench-one-batch --json` or SGLang's
        /// `--result-filename` lines (instead of a measurement file).
        #[arg(long)]
        one_batch: Option<String>,
        /// Serving runs of the same engine (`doppel bench serve --json`), with --one-batch.
        #[arg(long, num_args = 1..)]
        serving: Vec<String>,
        /// With --one-batch: the batch sizes whose prefill row is one prefill step (default:
        /// every row; vLLM's table: 1, docs/fidelity.md says why).
        #[arg(long, num_args = 1..)]
        prefill_batch: Vec<usize>,
        /// Profile to start from: hardware sheet, model shape, engine figures (name or YAML file).
        #[arg(long, default_value = "h100-80g/qwen3-0.6b/roofline")]
        base: String,
        /// Name of the fitted profile.
        #[arg(long, default_value = "h100-80g/qwen3-0.6b/doppel")]
        name: String,
        /// Where to write the fitted profile YAML.
        #[arg(long)]
        out: String,
        /// Also write every measured step with the fitted prediction (CSV).
        #[arg(long)]
        residuals: Option<String>,
    },
}

/// `doppel sim plan` arguments.
#[derive(clap::Args)]
pub struct PlanArgs {
    /// The trace file (a recorded one included).
    pub trace: String,
    /// Targets, e.g. "ttft_p99<500ms,itl_p99<50ms" (ttft/itl/tpot/e2e x mean/median/p90/p95/p99/max).
    #[arg(long)]
    pub slo: String,
    /// Profiles to try (names or YAML files; default: the trace's).
    #[arg(long, num_args = 1..)]
    pub profiles: Vec<String>,
    /// Replica counts tried: 1 to this.
    #[arg(long, default_value_t = 4)]
    pub max_replicas: usize,
    /// Tensor-parallel sizes tried.
    #[arg(long, num_args = 1.., default_values_t = [1usize])]
    pub tp: Vec<usize>,
    /// Chunked-prefill sizes tried (-1: off; default: the trace's).
    #[arg(long, num_args = 1.., allow_negative_numbers = true)]
    pub chunk: Vec<i64>,
    /// Scheduling policies tried (default: the trace's).
    #[arg(long, num_args = 1..)]
    pub policy: Vec<String>,
    /// Routers tried: round-robin, cache-aware.
    #[arg(long, num_args = 1.., default_values_t = ["round-robin".to_string(), "cache-aware".to_string()])]
    pub router: Vec<String>,
    /// Where to write the SVG chart.
    #[arg(long, default_value = "plan.svg")]
    pub svg: String,
    /// Also write every setup's figures as JSON.
    #[arg(long)]
    pub json: Option<String>,
}

/// Print to stdout; a closed pipe (`| head`) ends the output quietly instead of panicking.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn write(path: &str, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {path}"))
}

/// `sim calibrate --one-batch`: another engine's profile from its table and serving runs.
fn calibrate_peer(
    table: &str,
    serving: &[String],
    prefill_batch: &[usize],
    base: &str,
    name: &str,
    out: &str,
) -> anyhow::Result<ExitCode> {
    use doppel_sim::calibrate_peer as peer;
    let rows = peer::load_one_batch(table)?;
    let runs = serving
        .iter()
        .map(|p| peer::load_serving(p))
        .collect::<Result<Vec<_>, _>>()?;
    let (prefill, rows_note) = if prefill_batch.is_empty() {
        (peer::PrefillRows::All, String::new())
    } else {
        let b: Vec<String> = prefill_batch.iter().map(|b| b.to_string()).collect();
        (
            peer::PrefillRows::Batches(prefill_batch),
            format!(" (prefill from batch {})", b.join(", ")),
        )
    };
    let source = format!(
        "bench_one_batch table {table}{rows_note}; serving runs {}; fitted by doppel sim calibrate",
        serving.join(", ")
    );
    let p = peer::fit(&Profile::load(base)?, &rows, prefill, &runs, name, &source)?;
    write(out, &peer::profile_yaml(&p)?)?;
    let cost = RooflineCost::new(&p, 1);
    let mut text = format!(
        "fitted {name}: host {:.3} ms per step, decode fixed {:.3} ms, prefill fixed {:.3} ms, request path {:.3} ms, KV read at {:.3} of the sheet; written to {out}\n",
        p.engine.schedule_ns_per_step / 1e6,
        p.efficiency.decode_step_ns / 1e6,
        p.efficiency.prefill_step_ns / 1e6,
        p.engine.http_ns / 1e6,
        p.efficiency.kv_bandwidth,
    );
    for r in &rows {
        let sim = one_batch::run(&cost, r.batch, r.input_len, r.output_len);
        text += &format!(
            "  one-batch b={:<4} in={:<5} prefill {:+.1}%  decode {:+.1}%\n",
            r.batch,
            r.input_len,
            (sim.prefill_s / r.prefill_s - 1.0) * 100.0,
            (sim.decode_median_s / r.decode_s - 1.0) * 100.0
        );
    }
    for run in &runs {
        let m = peer::replay(&p, run)?;
        text += &format!(
            "  serving {}: median ITL {:.3} ms vs {:.3} ms ({:+.1}%), TTFT {:.2} ms vs {:.2} ms ({:+.1}%)\n",
            run.origin,
            m.itl_ms,
            run.median_itl_ms,
            (m.itl_ms / run.median_itl_ms - 1.0) * 100.0,
            m.ttft_ms,
            run.median_ttft_ms,
            (m.ttft_ms / run.median_ttft_ms - 1.0) * 100.0
        );
    }
    emit(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// Run a `doppel sim` subcommand.
pub fn run(cmd: SimCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        SimCmd::Replay {
            trace,
            json,
            timeline,
            log_batches,
            seed,
            profile,
            timing_from,
            sends_from,
        } => {
            let timing_from = match timing_from {
                Some(path) => {
                    let v = doppel_sim::compare::load_report(&path)?;
                    Some(doppel_sim::compare::real_timing(&v, &path)?)
                }
                None => None,
            };
            let opts = SimOptions {
                // The JSON report carries the batch sequence (for `doppel sim compare`).
                record_steps: timeline.is_some() || json.is_some(),
                log_batches,
                timing_from,
            };
            let mut t = doppel_sim::Trace::load(&trace)?;
            if let Some(seed) = seed {
                t.seed = seed;
            }
            if let Some(profile) = profile {
                t.profile = profile;
            }
            let r = match sends_from {
                Some(path) => {
                    let v = doppel_sim::compare::load_report(&path)?;
                    let sends = doppel_sim::sends::load_sends(&v, &path)?;
                    doppel_sim::replay_sent(t, &trace, opts, &sends, &path)?
                }
                None => doppel_sim::replay(t, &trace, opts)?,
            };
            emit(&r.stdout(log_batches))?;
            if let Some(path) = json {
                write(
                    &path,
                    &doppel_sim::compare::report_with_steps(&r.trace, &r.outcome, &r.summary),
                )?;
            }
            if let Some(path) = timeline {
                write(&path, &doppel_sim::report::to_chrome_trace(&r.outcome))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        SimCmd::OneBatch {
            profile,
            batch_size,
            input_len,
            output_len,
            tp,
        } => {
            anyhow::ensure!(
                input_len > 0 && output_len > 0,
                "--input-len and --output-len must be at least 1"
            );
            anyhow::ensure!(
                batch_size.iter().all(|&b| b > 0),
                "--batch-size values must be at least 1"
            );
            anyhow::ensure!(tp > 0, "--tp must be at least 1");
            let p = Profile::load(&profile)?;
            let cost = RooflineCost::new(&p, tp);
            let rows: Vec<_> = batch_size
                .iter()
                .map(|&b| one_batch::run(&cost, b, input_len, output_len))
                .collect();
            emit(&format!(
                "profile: {}{}\n{}",
                p.name,
                if p.calibrated {
                    ""
                } else {
                    " (UNCALIBRATED: roofline estimate)"
                },
                one_batch::format(&rows, input_len, output_len)
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        SimCmd::Sweep {
            trace,
            param,
            values,
            svg,
            json,
        } => {
            let result = sweep::run(&trace, &param, &values)?;
            write(&svg, &sweep::to_svg(&result))?;
            emit(&format!(
                "{}chart written to {svg}\n",
                sweep::format_table(&result)
            ))?;
            if let Some(path) = json {
                write(&path, &sweep::to_json(&result))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        SimCmd::Plan(a) => {
            let PlanArgs {
                trace,
                slo,
                profiles,
                max_replicas,
                tp,
                chunk,
                policy,
                router,
                svg,
                json,
            } = *a;
            use doppel_sim::plan;
            let targets = plan::slo::parse(&slo)?;
            let base = doppel_sim::Trace::load(&trace)?;
            anyhow::ensure!(
                (1..=64).contains(&max_replicas),
                "--max-replicas must be 1 to 64, got {max_replicas}"
            );
            let routers = router
                .iter()
                .map(|r| {
                    doppel_sim::router::Router::parse(r).with_context(|| {
                        format!("--router {r}: known routers are round-robin, cache-aware")
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let space = plan::Space {
                profiles: if profiles.is_empty() {
                    vec![base.profile.clone()]
                } else {
                    profiles
                },
                max_replicas,
                tps: tp,
                chunks: if chunk.is_empty() {
                    vec![None]
                } else {
                    chunk.into_iter().map(Some).collect()
                },
                policies: if policy.is_empty() {
                    vec![base.engine.policy.clone()]
                } else {
                    policy
                },
                routers,
            };
            for p in &space.profiles {
                Profile::load(p)?;
            }
            let r = plan::plan(&base, &trace, &space, &targets);
            write(&svg, &plan::to_svg(&r))?;
            emit(&format!("{}chart written to {svg}\n", plan::format(&r)))?;
            if let Some(path) = json {
                write(&path, &plan::to_json(&r))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        SimCmd::Compare { real, sim } => {
            use doppel_sim::compare;
            let (a, b) = (compare::load_report(&real)?, compare::load_report(&sim)?);
            let c = compare::compare(&a, &real, &b, &sim)?;
            print!("{}", compare::format(&c));
            Ok(ExitCode::SUCCESS)
        }
        SimCmd::Calibrate {
            measurements,
            one_batch,
            serving,
            prefill_batch,
            base,
            name,
            out,
            residuals,
        } => {
            use doppel_sim::calibrate;
            let measurements = match (measurements, one_batch) {
                (Some(_), None) if !prefill_batch.is_empty() => anyhow::bail!(
                    "--prefill-batch picks rows of a --one-batch table; a measurement file has none"
                ),
                (Some(m), None) => m,
                (None, Some(table)) => {
                    return calibrate_peer(&table, &serving, &prefill_batch, &base, &name, &out);
                }
                _ => anyhow::bail!(
                    "give a measurement file (doppel exec profile) or --one-batch TABLE --serving RUN.json..., not both"
                ),
            };
            let m = calibrate::Measurements::load(&measurements)?;
            let fit = calibrate::calibrate(&Profile::load(&base)?, &m, &name, &measurements)?;
            write(&out, &calibrate::to_yaml(&fit)?)?;
            if let Some(path) = residuals {
                let mut csv = String::from(
                    "mode,tokens,extend_reqs,decode_reqs,kv_read_tokens,attn_pairs,ns,host_ns,device_ns,fitted_ns,max_kv,max_seq,shared_kv_tokens\n",
                );
                for (p, (meas, pred)) in m.steps.iter().zip(&fit.residuals) {
                    csv.push_str(&format!(
                        "{},{},{},{},{},{},{},{},{meas},{pred},{},{},{}\n",
                        p.mode,
                        p.tokens,
                        p.extend_reqs,
                        p.decode_reqs,
                        p.kv_read_tokens,
                        p.attn_pairs,
                        p.ns,
                        p.host_ns,
                        p.max_kv,
                        p.max_seq,
                        p.shared_kv_tokens
                    ));
                }
                write(&path, &csv)?;
            }
            let (mean, max) = fit.errors();
            println!(
                "fitted {name} to {} steps: mean |error| {:.2}%, max {:.2}%; written to {out}",
                fit.residuals.len(),
                mean * 100.0,
                max * 100.0
            );
            for (mode, n, abs, signed) in fit.errors_by_mode() {
                println!(
                    "  {mode:<8} {n:>5} steps: mean |error| {:.2}%, mean error {:+.2}%",
                    abs * 100.0,
                    signed * 100.0
                );
            }
            let (e, g) = (&fit.profile.efficiency, &fit.profile.engine);
            println!(
                "  decode padding share {} (0: not measured), shared-KV saving {} (0: not measured), submit {} ns + {} ns/token (0: not measured)",
                e.decode_padding_share,
                e.decode_shared_kv_saving,
                g.submit_ns,
                g.submit_ns_per_token
            );
            if !fit.profile.decode_shared_savings.is_empty() {
                let rows: Vec<String> = fit
                    .profile
                    .decode_shared_savings
                    .iter()
                    .map(|(b, v)| format!("{b}: {v}"))
                    .collect();
                println!("  shared-KV saving by graph row: {}", rows.join(", "));
            }
            println!(
                "  sustained-load slowdown {:.2}% at full heat, time constant {:.0} ms (0: no runs of back-to-back steps measured)",
                e.sustained_slowdown * 100.0,
                e.sustained_tau_ns / 1e6
            );
            Ok(ExitCode::SUCCESS)
        }
        SimCmd::Profiles => {
            let mut text = String::new();
            for name in Profile::builtin_names() {
                let p = Profile::load(&name)?;
                text.push_str(&format!(
                    "{:<32} {}{}\n",
                    name,
                    p.hardware.name,
                    if p.calibrated {
                        "  [calibrated]"
                    } else {
                        "  [uncalibrated]"
                    }
                ));
            }
            emit(&text)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
