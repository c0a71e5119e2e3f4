//! Rendering a checkpoint's chat template (Hugging Face semantics) with minijinja: messages as
//! JSON (tool calls, tool results), the request's tools and extra template variables
//! (`chat_template_kwargs`), and a `strftime_now` that reads the clock.

use crate::tokenizer::{ChatMessage, Tokenizer, TokenizerError};
use serde_json::{Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// Everything a chat template sees.
#[derive(Clone, Debug, Default)]
pub struct ChatInput {
    /// Messages as JSON objects (`role`, `content`, and `tool_calls` / `tool_call_id` / `name` /
    /// `reasoning_content` where given).
    pub messages: Vec<Value>,
    /// The request's tools (OpenAI format); None leaves `tools` undefined in the template.
    pub tools: Option<Vec<Value>>,
    /// Extra template variables (e.g. `enable_thinking`).
    pub kwargs: Map<String, Value>,
    /// End with the assistant's turn header.
    pub add_generation_prompt: bool,
}

/// Template variables a `chat_template_kwargs` entry may not replace.
pub const RESERVED_KWARGS: [&str; 5] = [
    "messages",
    "tools",
    "add_generation_prompt",
    "bos_token",
    "eos_token",
];

impl Tokenizer {
    /// Render the chat template (HF semantics: trim_blocks, lstrip_blocks, Python string methods).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let messages = messages
            .iter()
            .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
            .collect();
        self.render_chat(&ChatInput {
            messages,
            add_generation_prompt,
            ..Default::default()
        })
    }

    /// Render the chat template for a full chat request.
    pub fn render_chat(&self, input: &ChatInput) -> Result<String, TokenizerError> {
        let src = self
            .chat_template
            .as_deref()
            .ok_or_else(|| TokenizerError::NoChatTemplate(self.dir.clone()))?;
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        // Llama 3.1 templates print today's date (as transformers does; UTC here). A client that
        // needs a fixed prompt passes `date_string` in chat_template_kwargs.
        env.add_function("strftime_now", |fmt: String| {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            strftime(&fmt, secs)
        });
        env.add_template("chat", src)
            .map_err(|e| TokenizerError::Template(format!("{e:#}")))?;
        let tmpl = env
            .get_template("chat")
            .map_err(|e| TokenizerError::Template(e.to_string()))?;
        let mut ctx = input.kwargs.clone();
        ctx.insert("messages".into(), Value::Array(input.messages.clone()));
        if let Some(t) = &input.tools {
            ctx.insert("tools".into(), Value::Array(t.clone()));
        }
        ctx.insert(
            "add_generation_prompt".into(),
            Value::Bool(input.add_generation_prompt),
        );
        ctx.insert(
            "bos_token".into(),
            Value::String(self.bos_token.clone().unwrap_or_default()),
        );
        ctx.insert(
            "eos_token".into(),
            Value::String(self.eos_token().unwrap_or_default().to_string()),
        );
        tmpl.render(minijinja::Value::from_serialize(&ctx))
            .map_err(|e| TokenizerError::Template(format!("{e:#}")))
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil(days: i64) -> (i64, usize, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as usize, d)
}

/// Python's `strftime` for a UTC time (the directives chat templates use; others are kept as
/// written).
pub fn strftime(fmt: &str, unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    let (y, m, d) = civil(days);
    let jan1 = {
        // Day of the year: days since this year's 1 January.
        let mut lo = days - 366;
        while civil(lo).0 < y {
            lo += 1;
        }
        days - lo + 1
    };
    let wd = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday.
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:2}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('b') | Some('h') => out.push_str(&MONTHS[m - 1][..3]),
            Some('B') => out.push_str(MONTHS[m - 1]),
            Some('a') => out.push_str(&DAYS[wd][..3]),
            Some('A') => out.push_str(DAYS[wd]),
            Some('j') => out.push_str(&format!("{jan1:03}")),
            Some('H') => out.push_str(&format!("{:02}", secs / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_matches_python_on_known_dates() {
        // python: datetime.fromtimestamp(t, timezone.utc).strftime(...)
        assert_eq!(strftime("%d %b %Y", 1_721_952_000), "26 Jul 2024");
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %A %j", 1_709_251_199),
            "2024-02-29 23:59:59 Thursday 060"
        );
        assert_eq!(strftime("%B %e, %y %a 100%%", 0), "January  1, 70 Thu 100%");
        assert_eq!(strftime("%j", 1_735_603_200), "366"); // 2024-12-31
    }
}
