//! The `extern "C" __global__` signatures of `kernels/*.cu`, read on the CPU, and the check
//! of every [`kernel_args!`](crate::cuda::launch) declaration against them: a wrong argument count,
//! order, name or type would be a silent GPU bug, so it fails a unit test instead.
//!
//! The sources declare most entry points through function-like macros (one per template
//! instance), so this expands `#define`s as far as the entry points need: parameters
//! substituted, `##` pasted, `__VA_ARGS__`, the result rescanned.

use crate::cuda::launch::{CType, Declared, Scalar};
use std::collections::BTreeMap;

/// One entry point: its name and (parameter name, C type) list.
pub type Signature = (String, Vec<(String, CType)>);

#[derive(Clone, Debug)]
struct Macro {
    params: Option<Vec<String>>,
    body: Vec<String>,
}

/// Drop comments, join continued lines.
fn clean(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i + 1 < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i..].starts_with(b"\\\n") {
            out.push(' ');
            i += 2;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Identifiers, numbers, `##`, string literals and single punctuation characters.
fn tokens(s: &str) -> Vec<String> {
    let c: Vec<char> = s.chars().collect();
    let mut v = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let start = i;
        if c[i].is_whitespace() {
            i += 1;
            continue;
        } else if c[i].is_alphanumeric() || c[i] == '_' {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == '.') {
                i += 1;
            }
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += 1;
            }
            i += 1;
        } else if c[i] == '#' && c.get(i + 1) == Some(&'#') {
            i += 2;
        } else {
            i += 1;
        }
        v.push(c[start..i.min(c.len())].iter().collect());
    }
    v
}

/// The `#define`s of `src` (added to `macros`) and its other lines' tokens.
fn split_defines(src: &str, macros: &mut BTreeMap<String, Macro>) -> Vec<String> {
    let mut text = String::new();
    for line in clean(src).lines() {
        let t = line.trim_start();
        let Some(rest) = t.strip_prefix('#') else {
            text.push_str(line);
            text.push('\n');
            continue;
        };
        let Some(def) = rest.trim_start().strip_prefix("define") else {
            continue;
        };
        let def = def.trim_start();
        let name_len = def
            .find(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
            .unwrap_or(def.len());
        let (name, after) = def.split_at(name_len);
        let m = match after.strip_prefix('(') {
            Some(p) => {
                let close = p.find(')').unwrap_or(p.len());
                let params = p[..close]
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                Macro {
                    params: Some(params),
                    body: tokens(p.get(close + 1..).unwrap_or("")),
                }
            }
            None => Macro {
                params: None,
                body: tokens(after),
            },
        };
        macros.insert(name.to_string(), m);
    }
    tokens(&text)
}

/// The arguments of an invocation whose `(` is at `open`: top-level comma-separated token lists,
/// and the index after the closing `)`.
fn call_args(t: &[String], open: usize) -> Option<(Vec<Vec<String>>, usize)> {
    let mut depth = 0;
    let mut args = vec![Vec::new()];
    for (i, tok) in t.iter().enumerate().skip(open) {
        match tok.as_str() {
            "(" => {
                depth += 1;
                if depth == 1 {
                    continue;
                }
            }
            ")" => {
                depth -= 1;
                if depth == 0 {
                    return Some((args, i + 1));
                }
            }
            "," if depth == 1 => {
                args.push(Vec::new());
                continue;
            }
            _ => {}
        }
        args.last_mut()?.push(tok.clone());
    }
    None
}

/// `m`'s body with `args` substituted and `##` pasted.
fn substitute(m: &Macro, args: &[Vec<String>]) -> Vec<String> {
    let params = m.params.as_deref().unwrap_or(&[]);
    let mut out: Vec<String> = Vec::new();
    let mut paste = false;
    for tok in &m.body {
        if tok == "##" {
            paste = true;
            continue;
        }
        let value: Vec<String> = if tok == "__VA_ARGS__" {
            let rest = args.get(params.len().saturating_sub(1)..).unwrap_or(&[]);
            rest.join(&",".to_string())
        } else if let Some(i) = params.iter().position(|p| p == tok) {
            args.get(i).cloned().unwrap_or_default()
        } else {
            vec![tok.clone()]
        };
        match (paste, out.last_mut(), value.split_first()) {
            (true, Some(last), Some((first, rest))) => {
                last.push_str(first);
                out.extend(rest.iter().cloned());
            }
            _ => out.extend(value),
        }
        paste = false;
    }
    out
}

/// `t` with every function-like macro invocation expanded (rescanned up to `depth` levels).
/// Object-like macros stay: no entry point's parameter list uses one, and a parameter named
/// like one (`N`, `K`) must keep its name.
fn expand(t: &[String], macros: &BTreeMap<String, Macro>, depth: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < t.len() {
        let m = macros.get(&t[i]).filter(|_| depth > 0);
        match m {
            Some(m) if m.params.is_some() && t.get(i + 1).map(String::as_str) == Some("(") => {
                let Some((args, next)) = call_args(t, i + 1) else {
                    out.push(t[i].clone());
                    i += 1;
                    continue;
                };
                // `__VA_ARGS__` joins the variadic arguments back with commas.
                let mut args = args;
                if m.params
                    .as_ref()
                    .is_some_and(|p| p.last().map(String::as_str) == Some("..."))
                {
                    let n = m.params.as_ref().map_or(0, Vec::len);
                    let tail: Vec<Vec<String>> = args.split_off((n - 1).min(args.len()));
                    args.push(tail.join(&",".to_string()));
                }
                out.extend(expand(&substitute(m, &args), macros, depth - 1));
                i = next;
            }
            _ => {
                out.push(t[i].clone());
                i += 1;
            }
        }
    }
    out
}

/// A parameter's C type from its tokens (qualifiers and the name removed).
fn ctype(ty: &[&str]) -> Result<CType, String> {
    let ptr = ty.contains(&"*");
    let base: Vec<&str> = ty.iter().copied().filter(|t| *t != "*").collect();
    let s = match base.join(" ").as_str() {
        "__nv_bfloat16" => Scalar::Bf16,
        "float" => Scalar::F32,
        "int" => Scalar::I32,
        "unsigned int" | "unsigned" => Scalar::U32,
        "unsigned long long" => Scalar::U64,
        "char" | "unsigned char" => Scalar::U8,
        other => return Err(format!("unsupported parameter type `{other}`")),
    };
    Ok(if ptr { CType::Ptr(s) } else { CType::Val(s) })
}

/// One parameter: (name, C type).
fn param(p: &[String]) -> Result<(String, CType), String> {
    let words: Vec<&str> = p
        .iter()
        .map(String::as_str)
        .filter(|t| !matches!(*t, "const" | "__restrict__"))
        .collect();
    let (name, ty) = words
        .split_last()
        .ok_or_else(|| "empty parameter".to_string())?;
    Ok((name.to_string(), ctype(ty)?))
}

/// Every `extern "C" __global__` entry point of `src` (with `prelude`'s macros in scope).
pub fn entry_points(prelude: &str, src: &str) -> Result<Vec<Signature>, String> {
    let mut macros = BTreeMap::new();
    split_defines(prelude, &mut macros);
    let t = expand(&split_defines(src, &mut macros), &macros, 16);
    let mut found = Vec::new();
    let mut i = 0;
    while i + 3 < t.len() {
        if !(t[i] == "extern" && t[i + 1] == "\"C\"" && t[i + 2] == "__global__") {
            i += 1;
            continue;
        }
        let mut j = i + 4; // after `void`
        if t.get(j).map(String::as_str) == Some("__launch_bounds__") {
            j = call_args(&t, j + 1).ok_or("unclosed __launch_bounds__")?.1;
        }
        let name = t.get(j).ok_or("no kernel name")?.clone();
        let (args, next) = call_args(&t, j + 1).ok_or(format!("{name}: unclosed parameters"))?;
        let params = args
            .iter()
            .filter(|a| !a.is_empty())
            .map(|a| param(a).map_err(|e| format!("{name}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        found.push((name, params));
        i = next;
    }
    Ok(found)
}

/// What differs between a declared argument struct and the kernel's signature, if anything.
pub fn mismatch(d: &Declared, sig: &Signature) -> Option<String> {
    let (kernel, params) = sig;
    if d.params.len() != params.len() {
        return Some(format!(
            "{} declares {} arguments, {kernel} takes {}",
            d.args,
            d.params.len(),
            params.len()
        ));
    }
    for (i, ((rn, rt), (cn, ct))) in d.params.iter().zip(params).enumerate() {
        if !rn.eq_ignore_ascii_case(cn) || rt != ct {
            return Some(format!(
                "{} argument {i}: `{rn}` {rt:?}, {kernel} has `{cn}` {ct:?}",
                d.args
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::args::DECLARED;
    use crate::cuda::compile::PRELUDE;
    use crate::cuda::KERNEL_SOURCES;

    fn all_signatures() -> BTreeMap<String, Vec<(String, CType)>> {
        let mut all = BTreeMap::new();
        for k in KERNEL_SOURCES {
            let found = entry_points(PRELUDE, k.src).unwrap_or_else(|e| panic!("{}: {e}", k.file));
            let mut names: Vec<&str> = found.iter().map(|s| s.0.as_str()).collect();
            let mut listed = k.entries.to_vec();
            names.sort_unstable();
            listed.sort_unstable();
            assert_eq!(names, listed, "{}: entry points", k.file);
            all.extend(found);
        }
        all
    }

    #[test]
    fn every_declared_kernel_matches_its_cuda_signature() {
        let sigs = all_signatures();
        let mut declared = BTreeMap::new();
        for d in DECLARED {
            for k in d.kernels {
                assert!(declared.insert(*k, d.args).is_none(), "{k} declared twice");
                let params = sigs
                    .get(*k)
                    .unwrap_or_else(|| panic!("{k}: no such entry point"));
                let sig = (k.to_string(), params.clone());
                assert_eq!(mismatch(d, &sig), None);
            }
        }
        let undeclared: Vec<&String> = sigs
            .keys()
            .filter(|k| !declared.contains_key(k.as_str()))
            .collect();
        assert!(
            undeclared.is_empty(),
            "kernels with no argument struct: {undeclared:?}"
        );
    }

    #[test]
    fn a_swapped_or_missing_argument_is_reported() {
        let sigs = all_signatures();
        for d in DECLARED {
            let k = d.kernels[0];
            let sig = (k.to_string(), sigs[k].clone());
            // Swap the first two parameters whose names or types differ, then drop the last.
            let mut swapped = sig.clone();
            if swapped.1.len() >= 2 {
                swapped.1.swap(0, 1);
                assert!(mismatch(d, &swapped).is_some(), "{k}: swap not seen");
            }
            let mut short = sig.clone();
            short.1.pop();
            assert!(
                mismatch(d, &short).is_some(),
                "{k}: missing argument not seen"
            );
        }
    }

    #[test]
    fn macro_defined_entry_points_are_expanded() {
        let src = "#define E(NAME, T) extern \"C\" __global__ void __launch_bounds__(64, 2) \\\n\
                   k_##NAME(const T* __restrict__ a, int n) {}\n\
                   #define V(N, ...) extern \"C\" __global__ void N(__VA_ARGS__) {}\n\
                   E(f32, float) E(b, unsigned int)\n\
                   V(v, char* p, unsigned long long ns) // E(x, int)\n";
        let sigs = entry_points("", src).unwrap();
        let want: Vec<Signature> = vec![
            (
                "k_f32".into(),
                vec![
                    ("a".into(), CType::Ptr(Scalar::F32)),
                    ("n".into(), CType::Val(Scalar::I32)),
                ],
            ),
            (
                "k_b".into(),
                vec![
                    ("a".into(), CType::Ptr(Scalar::U32)),
                    ("n".into(), CType::Val(Scalar::I32)),
                ],
            ),
            (
                "v".into(),
                vec![
                    ("p".into(), CType::Ptr(Scalar::U8)),
                    ("ns".into(), CType::Val(Scalar::U64)),
                ],
            ),
        ];
        assert_eq!(sigs, want);
        assert!(entry_points("", "extern \"C\" __global__ void k(double x) {}").is_err());
    }
}
