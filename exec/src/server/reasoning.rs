//! Splitting a reasoning model's `<think>...</think>` block from its answer, streamed
//! (`--reasoning-parser`, SGLang's names).
//!
//! Written here rather than taken from the `reasoning-parser` crate: its streaming parser emits a
//! `</think>` that arrives split across two chunks as reasoning text, so streamed and
//! non-streamed answers could differ. One state machine serves both here (the non-streamed
//! answer is one push and a finish), so they agree by construction.

const START: &str = "<think>";
const END: &str = "</think>";

/// Reasoning formats (`--reasoning-parser`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasoningFormat {
    /// Qwen3: reasoning only when the output (or the prompt) opens a `<think>` block.
    Qwen3,
    /// DeepSeek-R1: the output starts inside the reasoning (its template opens the block).
    DeepSeekR1,
}

impl ReasoningFormat {
    /// SGLang's parser name.
    pub fn parse(name: &str) -> Option<ReasoningFormat> {
        match name {
            "qwen3" => Some(ReasoningFormat::Qwen3),
            "deepseek-r1" => Some(ReasoningFormat::DeepSeekR1),
            _ => None,
        }
    }

    /// The accepted names, for messages.
    pub const NAMES: &'static str = "qwen3, deepseek-r1";

    /// SGLang's name of this format.
    pub fn name(self) -> &'static str {
        match self {
            ReasoningFormat::Qwen3 => "qwen3",
            ReasoningFormat::DeepSeekR1 => "deepseek-r1",
        }
    }
}

/// Text split into reasoning and answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Split {
    /// Inside the think block.
    pub reasoning: String,
    /// After it (or everything, when there is none).
    pub content: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not known yet whether a think block opens.
    Before,
    /// Inside the block.
    Thinking,
    /// After the block: leading whitespace of the answer is dropped.
    AnswerStart,
    /// Plain answer text.
    Answer,
}

/// Streaming splitter for one generation.
#[derive(Clone, Debug)]
pub struct ReasoningSplit {
    state: State,
    /// A `<think>` may still open (only at the very start of the output).
    may_open: bool,
    held: String,
}

/// Length of the longest suffix of `s` that is a proper prefix of `marker`.
pub fn partial_suffix(s: &str, marker: &str) -> usize {
    marker
        .char_indices()
        .skip(1)
        .map(|(k, _)| k)
        .filter(|&k| s.ends_with(&marker[..k]))
        .max()
        .unwrap_or(0)
}

impl ReasoningSplit {
    /// A splitter; `prompt_opened` says the prompt already ends inside a `<think>` block.
    pub fn new(format: ReasoningFormat, prompt_opened: bool) -> ReasoningSplit {
        let thinking = prompt_opened || format == ReasoningFormat::DeepSeekR1;
        ReasoningSplit {
            state: if thinking {
                State::Thinking
            } else {
                State::Before
            },
            may_open: true,
            held: String::new(),
        }
    }

    /// Add generated text; returns what is certain now.
    pub fn push(&mut self, text: &str) -> Split {
        self.held.push_str(text);
        let mut out = Split::default();
        loop {
            match self.state {
                State::Before | State::Thinking if self.may_open => {
                    let t = self.held.trim_start();
                    if let Some(rest) = t.strip_prefix(START) {
                        self.held = rest.to_string();
                        self.state = State::Thinking;
                        self.may_open = false;
                    } else if START.starts_with(t) {
                        return out; // empty or a partial "<think>": wait
                    } else {
                        self.may_open = false;
                        if self.state == State::Before {
                            self.state = State::Answer;
                        }
                    }
                }
                State::Before => self.state = State::Answer,
                State::Thinking => {
                    if let Some(i) = self.held.find(END) {
                        out.reasoning.push_str(&self.held[..i]);
                        self.held.drain(..i + END.len());
                        self.state = State::AnswerStart;
                    } else {
                        let cut = self.held.len() - partial_suffix(&self.held, END);
                        out.reasoning.push_str(&self.held[..cut]);
                        self.held.drain(..cut);
                        return out;
                    }
                }
                State::AnswerStart => {
                    let t = self.held.trim_start();
                    if t.is_empty() {
                        self.held.clear();
                        return out;
                    }
                    self.held = t.to_string();
                    self.state = State::Answer;
                }
                State::Answer => {
                    out.content.push_str(&self.held);
                    self.held.clear();
                    return out;
                }
            }
        }
    }

    /// The generation ended: held text (reasoning cut short stays reasoning).
    pub fn finish(&mut self) -> Split {
        let held = std::mem::take(&mut self.held);
        match self.state {
            State::Thinking => Split {
                reasoning: held,
                content: String::new(),
            },
            State::AnswerStart => Split::default(),
            State::Before | State::Answer => Split {
                reasoning: String::new(),
                content: held,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(f: ReasoningFormat, opened: bool, text: &str) -> Split {
        let mut s = ReasoningSplit::new(f, opened);
        let mut a = s.push(text);
        let b = s.finish();
        a.reasoning.push_str(&b.reasoning);
        a.content.push_str(&b.content);
        a
    }

    fn by_chars(f: ReasoningFormat, opened: bool, text: &str) -> Split {
        let mut s = ReasoningSplit::new(f, opened);
        let mut acc = Split::default();
        for c in text.chars() {
            let d = s.push(&c.to_string());
            acc.reasoning.push_str(&d.reasoning);
            acc.content.push_str(&d.content);
        }
        let d = s.finish();
        acc.reasoning.push_str(&d.reasoning);
        acc.content.push_str(&d.content);
        acc
    }

    fn split(r: &str, c: &str) -> Split {
        Split {
            reasoning: r.into(),
            content: c.into(),
        }
    }

    #[test]
    fn streamed_char_by_char_equals_whole_text_for_every_case() {
        use ReasoningFormat::*;
        let cases: &[(ReasoningFormat, bool, &str, Split)] = &[
            (
                Qwen3,
                false,
                "<think>\nhmm\n</think>\n\nYes.",
                split("\nhmm\n", "Yes."),
            ),
            (
                Qwen3,
                false,
                "Plain answer <think> not at start",
                split("", "Plain answer <think> not at start"),
            ),
            (Qwen3, false, "<think>cut short", split("cut short", "")),
            (
                Qwen3,
                true,
                "still thinking</think>ok",
                split("still thinking", "ok"),
            ),
            (Qwen3, false, "<thin", split("", "<thin")),
            (Qwen3, false, "", split("", "")),
            (
                DeepSeekR1,
                false,
                "a < b </think> so a",
                split("a < b ", "so a"),
            ),
            (DeepSeekR1, false, "<think>x</think>y", split("x", "y")),
            (DeepSeekR1, false, "x</thi", split("x</thi", "")),
        ];
        for (f, opened, text, want) in cases {
            assert_eq!(&whole(*f, *opened, text), want, "{text:?}");
            assert_eq!(&by_chars(*f, *opened, text), want, "{text:?} streamed");
        }
    }

    #[test]
    fn names_are_sglangs() {
        assert_eq!(
            ReasoningFormat::parse("qwen3"),
            Some(ReasoningFormat::Qwen3)
        );
        assert_eq!(
            ReasoningFormat::parse("deepseek-r1"),
            Some(ReasoningFormat::DeepSeekR1)
        );
        assert_eq!(ReasoningFormat::parse("r1"), None);
    }
}
