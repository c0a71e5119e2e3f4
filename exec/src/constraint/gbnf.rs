//! GBNF (llama.cpp's EBNF, what SGLang's `ebnf` takes: `root ::= ...`) rewritten into
//! llguidance's Lark syntax: rules one per line, `root` the start, character classes and `.` as
//! regex terminals. Only the notation changes; llguidance checks the grammar itself.

use super::ConstraintError;
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Name(String),
    Define,
    /// A string literal, kept with its quotes and escapes.
    Str(String),
    /// A character class `[...]`, kept with its brackets.
    Class(String),
    Any,
    /// `( ) | * + ?` or a `{m,n}` repetition.
    Op(String),
    Newline,
}

fn bad(line: usize, msg: impl std::fmt::Display) -> ConstraintError {
    ConstraintError::Invalid(format!("ebnf line {line}: {msg}"))
}

/// Read a quoted string or a class ending in `close`, escapes included.
fn delimited(
    chars: &[char],
    mut i: usize,
    close: char,
    line: usize,
) -> Result<(String, usize), ConstraintError> {
    let mut s = String::new();
    s.push(chars[i]);
    i += 1;
    while i < chars.len() {
        let c = chars[i];
        s.push(c);
        if c == '\\' && i + 1 < chars.len() {
            s.push(chars[i + 1]);
            i += 2;
            continue;
        }
        i += 1;
        if c == close {
            return Ok((s, i));
        }
        if c == '\n' {
            break;
        }
    }
    Err(bad(line, format!("unterminated {}", &s[..1])))
}

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ConstraintError> {
    let chars: Vec<char> = src.chars().collect();
    let (mut out, mut i, mut line) = (Vec::new(), 0, 1);
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\n' => {
                out.push((Tok::Newline, line));
                line += 1;
                i += 1;
            }
            c if c.is_whitespace() => i += 1,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '"' | '[' => {
                let (s, next) = delimited(&chars, i, if c == '"' { '"' } else { ']' }, line)?;
                out.push((if c == '"' { Tok::Str(s) } else { Tok::Class(s) }, line));
                i = next;
            }
            ':' if chars[i..].starts_with(&[':', ':', '=']) => {
                out.push((Tok::Define, line));
                i += 3;
            }
            '.' => {
                out.push((Tok::Any, line));
                i += 1;
            }
            '(' | ')' | '|' | '*' | '+' | '?' => {
                out.push((Tok::Op(c.to_string()), line));
                i += 1;
            }
            '{' => {
                let end = chars[i..]
                    .iter()
                    .position(|&x| x == '}')
                    .ok_or_else(|| bad(line, "unterminated {"))?;
                let body: String = chars[i..=i + end].iter().collect();
                if !body[1..body.len() - 1]
                    .chars()
                    .all(|x| x.is_ascii_digit() || x == ',' || x == ' ')
                {
                    return Err(bad(line, format!("bad repetition {body}")));
                }
                out.push((Tok::Op(body.replace(' ', "")), line));
                i += end + 1;
            }
            c if c.is_ascii_alphanumeric() || c == '_' || c == '-' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '-')
                {
                    i += 1;
                }
                out.push((Tok::Name(chars[start..i].iter().collect()), line));
            }
            other => return Err(bad(line, format!("unexpected character {other:?}"))),
        }
    }
    Ok(out)
}

/// A regex terminal for a GBNF class (`/` escaped for Lark's delimiters).
fn class_terminal(class: &str) -> String {
    format!("/{}/", class.replace('/', "\\/"))
}

/// Rewrite a GBNF grammar into Lark; errors name the line.
pub fn gbnf_to_lark(src: &str) -> Result<String, ConstraintError> {
    let toks = lex(src)?;
    // Rule names: lowercase with an index, since Lark reads capitalised names as terminals.
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for w in toks.windows(2) {
        if let [(Tok::Name(n), _), (Tok::Define, _)] = w {
            let k = names.len();
            names
                .entry(n.clone())
                .or_insert_with(|| format!("r{k}_{}", n.to_lowercase().replace('-', "_")));
        }
    }
    let root = names
        .get("root")
        .cloned()
        .ok_or_else(|| ConstraintError::Invalid("ebnf: no `root ::= ...` rule".into()))?;
    let mut out = format!("start: {root}\n");
    let mut i = 0;
    let mut open = false;
    while i < toks.len() {
        let (t, line) = &toks[i];
        if let (Tok::Name(n), Some((Tok::Define, _))) = (t, toks.get(i + 1)) {
            if open {
                out.push('\n');
            }
            out.push_str(&names[n]);
            out.push(':');
            open = true;
            i += 2;
            continue;
        }
        if !open && *t != Tok::Newline {
            return Err(bad(*line, "expected `name ::=` to start a rule"));
        }
        match t {
            Tok::Newline => {}
            Tok::Define => return Err(bad(*line, "`::=` without a rule name")),
            Tok::Name(n) => {
                let r = names
                    .get(n)
                    .ok_or_else(|| bad(*line, format!("rule `{n}` is used but never defined")))?;
                out.push(' ');
                out.push_str(r);
            }
            Tok::Str(s) => {
                out.push(' ');
                out.push_str(s);
            }
            Tok::Class(c) => {
                out.push(' ');
                out.push_str(&class_terminal(c));
            }
            Tok::Any => out.push_str(" /(?s:.)/"),
            Tok::Op(o) if o.starts_with('{') => out.push_str(o),
            Tok::Op(o) => {
                out.push(' ');
                out.push_str(o);
            }
        }
        i += 1;
    }
    out.push('\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_become_one_line_each_with_root_as_start() {
        let g = "root ::= greeting \" \" name\n# a comment\ngreeting ::= \"hi\" | \"hello\"\nname ::= [a-z]+\n  | \"x/y\"";
        let l = gbnf_to_lark(g).unwrap();
        assert_eq!(
            l,
            "start: r0_root\nr0_root: r1_greeting \" \" r2_name\nr1_greeting: \"hi\" | \"hello\"\nr2_name: /[a-z]/ + | \"x/y\"\n"
        );
    }

    #[test]
    fn errors_name_the_line() {
        let e = gbnf_to_lark("root ::= a\n").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("`a`"), "{e}");
        let e = gbnf_to_lark("r ::= \"x\"").unwrap_err().to_string();
        assert!(e.contains("root"), "{e}");
        let e = gbnf_to_lark("root ::= \"x\nb ::= \"y\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unterminated"), "{e}");
        let e = gbnf_to_lark("root ::= \"x\" ; \n").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
