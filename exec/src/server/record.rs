//! `doppel exec serve --record FILE`: every served request's arrival time, prompt and output
//! length and prefix-sharing structure, written as a doppel trace (traces/README.md,
//! `kind: requests` with hashed `pages`) that `doppel sim replay` and `doppel bench serve
//! --dataset-name trace` accept.
//!
//! No content leaves the server: a prompt's full pages are written as chained hashes keyed by
//! a random key of this process (equal prefixes give equal hashes within one recording, and a
//! hash cannot be checked against a guessed prompt without the key). The format is written
//! here as plain serde structs so the server does not depend on the simulator; the simulator's
//! loader reads it (a workspace test replays a recorded file).

use doppel_core::{RequestId, TimeNs, TokenId};
use serde::Serialize;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Tokens per hashed page (prefix sharing is recorded at this granularity).
pub const PAGE_LEN: usize = 16;

/// Where and how much to record.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordConfig {
    /// The trace file.
    pub path: PathBuf,
    /// Rotate when the file reaches this many bytes: it becomes `FILE.1` (replacing an older
    /// one) and a new `FILE` starts, each a complete trace.
    pub max_bytes: u64,
    /// Profile named in the trace header (what `sim replay` prices it with by default).
    pub profile: String,
}

/// Errors of the recorder.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The file could not be written.
    #[error("recording to {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// One recorded request, as the trace format's `workload.requests[]` entry.
#[derive(Serialize)]
struct Entry<'a> {
    arrival_ms: f64,
    prompt_len: usize,
    output_len: usize,
    #[serde(skip_serializing_if = "<[u64]>::is_empty")]
    pages: &'a [u64],
}

struct Pending {
    arrival: TimeNs,
    prompt_len: usize,
    pages: Vec<u64>,
}

/// Records requests as they arrive and finish.
pub struct Recorder {
    cfg: RecordConfig,
    key: RandomState,
    file: std::fs::File,
    written: u64,
    // The clock at which the current file began (arrival_ms counts from it).
    origin: TimeNs,
    pending: HashMap<RequestId, Pending>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("cfg", &self.cfg)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

fn io(path: &Path, source: std::io::Error) -> RecordError {
    RecordError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Recorder {
    /// Start recording to `cfg.path` (truncated) at engine time `now`.
    pub fn create(cfg: RecordConfig, now: TimeNs) -> Result<Recorder, RecordError> {
        let file = std::fs::File::create(&cfg.path).map_err(|e| io(&cfg.path, e))?;
        let mut r = Recorder {
            cfg,
            key: RandomState::new(),
            file,
            written: 0,
            origin: now,
            pending: HashMap::new(),
        };
        r.header()?;
        Ok(r)
    }

    fn header(&mut self) -> Result<(), RecordError> {
        let text = format!(
            "# Recorded by doppel exec serve --record: arrival, prompt and output lengths, and\n\
             # the prompts' pages as keyed chained hashes (no token ids).\n\
             name: recorded\nprofile: {}\nworkload:\n  kind: requests\n  page_len: {PAGE_LEN}\n  requests:\n",
            self.cfg.profile
        );
        self.write(text.as_bytes())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), RecordError> {
        self.file
            .write_all(bytes)
            .and_then(|_| self.file.flush())
            .map_err(|e| io(&self.cfg.path, e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// The chained page hashes of a prompt's full pages.
    fn pages(&self, prompt: &[TokenId]) -> Vec<u64> {
        let mut prev = 0u64;
        prompt
            .chunks_exact(PAGE_LEN)
            .map(|page| {
                let mut h = self.key.build_hasher();
                h.write_u64(prev);
                for &t in page {
                    h.write_u32(t);
                }
                prev = h.finish();
                prev
            })
            .collect()
    }

    /// A request was accepted at engine time `arrival`.
    pub fn arrive(&mut self, id: RequestId, arrival: TimeNs, prompt: &[TokenId]) {
        let pages = self.pages(prompt);
        self.pending.insert(
            id,
            Pending {
                arrival,
                prompt_len: prompt.len(),
                pages,
            },
        );
    }

    /// A request the engine refused: it will not finish.
    pub fn forget(&mut self, id: RequestId) {
        self.pending.remove(&id);
    }

    /// A request ended with `output_tokens` generated: its entry is written (a request that
    /// generated nothing is left out: the trace format needs an output length of at least 1).
    pub fn finish(&mut self, id: RequestId, output_tokens: usize) -> Result<(), RecordError> {
        let Some(p) = self.pending.remove(&id) else {
            return Ok(());
        };
        if output_tokens == 0 || p.prompt_len == 0 {
            return Ok(());
        }
        let line = |origin: TimeNs| {
            let entry = Entry {
                arrival_ms: p.arrival.saturating_sub(origin) as f64 * 1e-6,
                prompt_len: p.prompt_len,
                output_len: output_tokens,
                pages: &p.pages,
            };
            format!(
                "    - {}\n",
                serde_json::to_string(&entry).unwrap_or_default()
            )
        };
        let mut text = line(self.origin);
        if self.written + text.len() as u64 > self.cfg.max_bytes {
            // The new file's times count from this request: its line is written anew.
            self.rotate(p.arrival)?;
            text = line(self.origin);
        }
        self.write(text.as_bytes())
    }

    /// Move the full file to `FILE.1` and start a new one whose times count from `now`.
    fn rotate(&mut self, now: TimeNs) -> Result<(), RecordError> {
        let mut old = self.cfg.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.cfg.path, &old).map_err(|e| io(&self.cfg.path, e))?;
        self.file = std::fs::File::create(&self.cfg.path).map_err(|e| io(&self.cfg.path, e))?;
        self.written = 0;
        self.origin = now;
        self.header()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder(dir: &Path, max_bytes: u64) -> Recorder {
        let cfg = RecordConfig {
            path: dir.join("t.yaml"),
            max_bytes,
            profile: "h100-80g/qwen3-0.6b/doppel".into(),
        };
        Recorder::create(cfg, 1_000_000).unwrap()
    }

    #[test]
    fn shared_prefixes_share_page_hashes_and_no_token_id_is_written() {
        let dir = std::env::temp_dir().join(format!("doppel-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = recorder(&dir, 1 << 20);
        let a: Vec<TokenId> = (1000..1040).collect();
        let mut b = a[..32].to_vec();
        b.extend(5000..5010);
        r.arrive(RequestId(1), 3_000_000, &a);
        r.arrive(RequestId(2), 5_500_000, &b);
        r.finish(RequestId(2), 7).unwrap();
        r.finish(RequestId(1), 9).unwrap();
        let (pa, pb) = (r.pages(&a), r.pages(&b));
        assert_eq!((pa.len(), pb.len()), (2, 2));
        assert_eq!(pa, pb, "the first two pages are the same tokens");
        let c: Vec<TokenId> = (1001..1041).collect();
        assert_ne!(r.pages(&c)[0], pa[0]);
        let text = std::fs::read_to_string(dir.join("t.yaml")).unwrap();
        assert!(
            text.contains("\"arrival_ms\":4.5,\"prompt_len\":42,\"output_len\":7"),
            "{text}"
        );
        assert!(
            text.contains("\"arrival_ms\":2.0,\"prompt_len\":40,\"output_len\":9"),
            "{text}"
        );
        assert!(!text.contains("1000") && !text.contains("5000"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_file_rotates_and_both_files_are_whole_traces() {
        let dir = std::env::temp_dir().join(format!("doppel-rotate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = recorder(&dir, 400);
        for i in 0..10u64 {
            r.arrive(RequestId(i), 2_000_000 + i * 1_000_000, &[7; 20]);
            r.finish(RequestId(i), 3).unwrap();
        }
        let new = std::fs::read_to_string(dir.join("t.yaml")).unwrap();
        let old = std::fs::read_to_string(dir.join("t.yaml.1")).unwrap();
        for text in [&new, &old] {
            assert!(text.starts_with("# Recorded") && text.contains("kind: requests"));
            assert!(text.len() <= 400, "{}", text.len());
        }
        // The new file counts from its own start.
        assert!(new.contains("\"arrival_ms\":0.0"), "{new}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
