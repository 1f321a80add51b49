//! The crate's layers, held by a test instead of by discipline.
//!
//! It reads every library source file under `src/` (the binary, `src/main.rs`
//! and `src/cli/`, sits above everything and may import anything), collects
//! the top-level modules each file names through `crate::…` and `super::…`
//! paths (comments and string literals blanked first), and fails, naming
//! the file, the line and the rule, on:
//! - an import from a module to a module of a higher layer in [`LAYERS`];
//! - a cycle between top-level modules (two modules of one layer may use
//!   each other's items only one way);
//! - a top-level module the table does not place;
//! - in the pure core ([`CORE`], outside `#[cfg(test)]` code), a name that
//!   means I/O, threads or the wall clock ([`BANNED`]), unless [`ALLOWED`]
//!   lists that file and name with the reason; an allowance that matches
//!   nothing fails too, so none outlives its reason.
//!
//! `docs/architecture.md` shows the same table with what each part holds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layer table, lowest first. A module may import modules of its own
/// layer or of a lower one, never of a higher one.
const LAYERS: &[&[&str]] = &[
    // Named limits on outside input; imports nothing.
    &["limits"],
    // Event and command types, the Avro codec.
    &["events"],
    // Event-time demand state; instance catalogue and price book.
    &["state", "pricing"],
    // Forecasting models; per-environment user policy.
    &["forecast", "policy"],
    // Budget ledgers.
    &["budget"],
    // The engine, and the port (`CapacityPlanner`, `PlanRequest`,
    // `PlanDecision`) a planner implements.
    &["engine"],
    // The cost-aware planner: implements the engine's port.
    &["planner"],
    // The simulated cluster and peers of the backtest.
    &["sim"],
    // The backtest's HTML report.
    &["report"],
    // Adapters that the others build on: tracing and metrics, readers of
    // files (traces, prices, events files, settings), engine snapshots,
    // LSTM checkpoint files.
    &["telemetry", "import", "checkpoint", "model_file"],
    // The prediction store; building an engine from configuration.
    &["store", "wiring"],
    // Live adapters: Kafka, AWS, Slurm, actuators, retraining; the HTTP API.
    &["io", "api"],
];

/// The pure decision core: no I/O, no threads, no clock.
const CORE: &[&str] = &[
    "limits", "events", "state", "pricing", "forecast", "policy", "budget", "engine", "planner",
];

/// Names the core may not use, and what they mean.
const BANNED: &[(&str, &str)] = &[
    ("std::fs", "file I/O"),
    ("File::open", "file I/O"),
    ("File::create", "file I/O"),
    ("std::net", "network I/O"),
    ("std::thread", "threads"),
    ("thread::spawn", "threads"),
    ("spawn_blocking", "threads"),
    ("tokio", "the async runtime"),
    ("SystemTime", "the wall clock"),
    ("Instant::now", "the wall clock"),
    ("Utc::now", "the wall clock"),
    ("Local::now", "the wall clock"),
    ("std::env", "the process environment"),
    ("std::process", "processes"),
];

/// Explicit exceptions to [`BANNED`]: (file, name, why).
const ALLOWED: &[(&str, &str, &str)] = &[];

#[test]
fn layers_hold() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = library_files(&root.join("src"));
    let mut rank: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, layer) in LAYERS.iter().enumerate() {
        for m in *layer {
            assert!(rank.insert(m, i).is_none(), "{m} is in LAYERS twice");
        }
    }
    let mut errors: Vec<String> = Vec::new();
    let parsed: Vec<Parsed> = files.iter().map(|f| parse(root, f)).collect();
    // Files that are test code as a whole (`#[cfg(test)] mod tests;`).
    let test_files: BTreeSet<Vec<String>> = parsed
        .iter()
        .flat_map(|p| p.test_children.clone())
        .collect();
    let mut edges: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut allowed_used = vec![false; ALLOWED.len()];
    for p in &parsed {
        let top = p.module[0].as_str();
        let Some(&from) = rank.get(top) else {
            errors.push(format!(
                "{}: top-level module `{top}` is not in the layer table (tests/layers.rs LAYERS)",
                p.rel
            ));
            continue;
        };
        for u in &p.uses {
            if u.target == top {
                continue;
            }
            let at = format!("{}:{}", p.rel, u.line);
            match rank.get(u.target.as_str()) {
                None => errors.push(format!("{at}: `{top}` names `{}`, which is in no layer", u.target)),
                Some(&to) if to > from => errors.push(format!(
                    "{at}: `{top}` (layer {from}) imports `{}` (layer {to}): a lower layer may not import a higher one",
                    u.target
                )),
                _ => {}
            }
            edges
                .entry((top.to_string(), u.target.clone()))
                .or_insert(at);
        }
        let whole_file_test = test_files.contains(&p.module);
        if !CORE.contains(&top) || whole_file_test {
            continue;
        }
        for (name, line) in &p.banned {
            let allowance = ALLOWED
                .iter()
                .position(|(f, n, _)| *f == p.rel && n == name);
            match allowance {
                Some(i) => allowed_used[i] = true,
                None => errors.push(format!(
                    "{}:{line}: core module `{top}` uses `{name}` ({}): the core does no I/O, spawns no threads and reads no clock",
                    p.rel,
                    BANNED.iter().find(|(b, _)| b == name).map_or("", |b| b.1)
                )),
            }
        }
    }
    for (i, used) in allowed_used.iter().enumerate() {
        if !used {
            let (f, n, _) = ALLOWED[i];
            errors.push(format!(
                "{f}: the allowance for `{n}` matches nothing any more: remove it"
            ));
        }
    }
    errors.extend(cycles(&edges));
    assert!(
        errors.is_empty(),
        "{} layering violation(s):\n{}",
        errors.len(),
        errors.join("\n")
    );
}

/// Every cycle between top-level modules, with where each of its edges is.
fn cycles(edges: &BTreeMap<(String, String), String>) -> Vec<String> {
    let mut next: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        next.entry(a).or_default().insert(b);
    }
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(m) = stack.pop() {
            for n in next.get(m.as_str()).into_iter().flatten() {
                if seen.insert(n.to_string()) {
                    stack.push(n.to_string());
                }
            }
        }
        seen
    };
    let mut out = Vec::new();
    let mut reported: BTreeSet<BTreeSet<String>> = BTreeSet::new();
    for a in next.keys() {
        let from_a = reach(a);
        if !from_a.contains(*a) {
            continue;
        }
        // The strongly connected set of `a`.
        let scc: BTreeSet<String> = from_a
            .iter()
            .filter(|b| reach(b).contains(*a))
            .cloned()
            .collect();
        if !reported.insert(scc.clone()) {
            continue;
        }
        let inside: Vec<String> = edges
            .iter()
            .filter(|((x, y), _)| scc.contains(x) && scc.contains(y))
            .map(|((x, y), at)| format!("  {x} -> {y} at {at}"))
            .collect();
        out.push(format!(
            "import cycle between {}:\n{}",
            scc.iter().cloned().collect::<Vec<_>>().join(", "),
            inside.join("\n")
        ));
    }
    out
}

/// One `crate::`/`super::` path that leaves its file's module.
struct Use {
    target: String,
    line: usize,
}

struct Parsed {
    /// Path relative to the crate root, `src/…`.
    rel: String,
    /// Module path, e.g. `["io", "kafka", "service"]`.
    module: Vec<String>,
    uses: Vec<Use>,
    /// Banned names outside test code, with their lines.
    banned: Vec<(&'static str, usize)>,
    /// Modules declared here as `#[cfg(test)] mod name;`.
    test_children: Vec<Vec<String>>,
}

fn library_files(src: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p != src.join("cli") {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "rs")
                && p != src.join("main.rs")
                && p != src.join("lib.rs")
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn module_path(rel_to_src: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel_to_src
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    parts
}

fn parse(root: &Path, file: &Path) -> Parsed {
    let text = std::fs::read_to_string(file).unwrap();
    let code = blank(text.as_bytes());
    let rel = file.strip_prefix(root).unwrap();
    let module = module_path(rel.strip_prefix("src").unwrap());
    let line_of = |off: usize| 1 + code[..off].iter().filter(|&&b| b == b'\n').count();
    let inline_mods = inline_modules(&code);
    let tests = test_ranges(&code);
    let in_tests = |off: usize| tests.iter().any(|r| r.contains(&off));
    let mut uses = Vec::new();
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let boundary = i == 0 || !is_ident(code[i - 1]) || code[i - 1] == b'$';
        if boundary && rest.starts_with(b"crate::") {
            let mut j = i + "crate::".len();
            for t in path_heads(&code, &mut j) {
                uses.push(Use {
                    target: t,
                    line: line_of(i),
                });
            }
            i = j;
            continue;
        }
        if boundary && rest.starts_with(b"super::") {
            // Resolve against the module the path is written in.
            let mut path = module.clone();
            path.extend(
                inline_mods
                    .iter()
                    .filter(|(r, _)| r.contains(&i))
                    .map(|(_, n)| n.clone()),
            );
            let mut j = i;
            while code[j..].starts_with(b"super::") {
                path.pop();
                j += "super::".len();
            }
            let heads = path_heads(&code, &mut j);
            let targets: Vec<String> = match path.first() {
                Some(top) => vec![top.clone()],
                None => heads,
            };
            for t in targets {
                uses.push(Use {
                    target: t,
                    line: line_of(i),
                });
            }
            i = j;
            continue;
        }
        i += 1;
    }
    let mut banned = Vec::new();
    for (name, _) in BANNED {
        let n = name.as_bytes();
        let mut k = 0;
        while let Some(p) = find(&code[k..], n) {
            let at = k + p;
            let starts_word = at == 0 || !is_ident(code[at - 1]);
            let ends_word = code.get(at + n.len()).is_none_or(|&b| !is_ident(b));
            if starts_word && ends_word && !in_tests(at) {
                banned.push((*name, line_of(at)));
            }
            k = at + n.len();
        }
    }
    let test_children = tests
        .iter()
        .filter_map(|r| {
            let item = std::str::from_utf8(&code[r.clone()]).unwrap().trim();
            let name = item.strip_prefix("mod ")?.strip_suffix(';')?.trim();
            let mut m = module.clone();
            m.push(name.to_string());
            Some(m)
        })
        .collect();
    Parsed {
        rel: rel.display().to_string(),
        module,
        uses,
        banned,
        test_children,
    }
}

/// The first segment(s) of a path from `*j`: one identifier, or each head
/// of a `{a::x, b}` group. Leaves `*j` after what it read.
fn path_heads(code: &[u8], j: &mut usize) -> Vec<String> {
    let ident = |j: &mut usize| {
        let s = *j;
        while *j < code.len() && is_ident(code[*j]) {
            *j += 1;
        }
        String::from_utf8_lossy(&code[s..*j]).into_owned()
    };
    if code.get(*j) != Some(&b'{') {
        let id = ident(j);
        return if id.is_empty() || id == "self" {
            Vec::new()
        } else {
            vec![id]
        };
    }
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expect_head = true;
    while *j < code.len() {
        match code[*j] {
            b'{' => {
                depth += 1;
                expect_head = depth == 1;
                *j += 1;
            }
            b'}' => {
                depth -= 1;
                *j += 1;
                if depth == 0 {
                    break;
                }
            }
            b',' => {
                expect_head = depth == 1;
                *j += 1;
            }
            b if b.is_ascii_whitespace() => *j += 1,
            b if is_ident(b) && expect_head => {
                let id = ident(j);
                if id != "self" {
                    heads.push(id);
                }
                expect_head = false;
            }
            _ => *j += 1,
        }
    }
    heads
}

/// `mod name { … }` blocks: their byte range and name.
fn inline_modules(code: &[u8]) -> Vec<(std::ops::Range<usize>, String)> {
    let mut out = Vec::new();
    let mut k = 0;
    while let Some(p) = find(&code[k..], b"mod ") {
        let at = k + p;
        k = at + 4;
        if at > 0 && is_ident(code[at - 1]) {
            continue;
        }
        let mut j = k;
        while j < code.len() && is_ident(code[j]) {
            j += 1;
        }
        let name = String::from_utf8_lossy(&code[k..j]).into_owned();
        while j < code.len() && code[j].is_ascii_whitespace() {
            j += 1;
        }
        if code.get(j) == Some(&b'{') {
            out.push((j..matching_brace(code, j), name));
        }
    }
    out
}

/// The items under a `#[cfg(test)]` (or `cfg(all(test, …))`) attribute:
/// from the end of the attribute to the item's `;` or closing brace.
fn test_ranges(code: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    for pat in [&b"#[cfg(test)]"[..], b"#[cfg(all(test"] {
        let mut k = 0;
        while let Some(p) = find(&code[k..], pat) {
            let at = k + p;
            // End of the attribute.
            let mut j = at;
            while j < code.len() && code[j] != b']' {
                j += 1;
            }
            let start = j + 1;
            let mut e = start;
            while e < code.len() && code[e] != b';' && code[e] != b'{' {
                e += 1;
            }
            let end = if code.get(e) == Some(&b'{') {
                matching_brace(code, e)
            } else {
                e + 1
            };
            out.push(start..end.min(code.len()));
            k = at + pat.len();
        }
    }
    out
}

fn matching_brace(code: &[u8], open: usize) -> usize {
    let mut depth = 0usize;
    for (k, &b) in code.iter().enumerate().skip(open) {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return k + 1;
                }
            }
            _ => {}
        }
    }
    code.len()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The source with comments and the insides of string and character
/// literals replaced by spaces (newlines kept, so lines still count).
fn blank(src: &[u8]) -> Vec<u8> {
    let mut out = src.to_vec();
    let n = src.len();
    let wipe = |out: &mut Vec<u8>, from: usize, to: usize| {
        for b in &mut out[from..to.min(n)] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    };
    let mut i = 0;
    while i < n {
        let b = src[i];
        let prev_ident = i > 0 && is_ident(src[i - 1]);
        if b == b'/' && src.get(i + 1) == Some(&b'/') {
            let mut j = i;
            while j < n && src[j] != b'\n' {
                j += 1;
            }
            wipe(&mut out, i, j);
            i = j;
        } else if b == b'/' && src.get(i + 1) == Some(&b'*') {
            let (mut j, mut depth) = (i + 2, 1);
            while j < n && depth > 0 {
                if src[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if src[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            wipe(&mut out, i, j);
            i = j;
        } else if (b == b'r' || (b == b'b' && src.get(i + 1) == Some(&b'r'))) && !prev_ident {
            // Raw string r"…", r#"…"#, br"…"?
            let mut j = i + if b == b'b' { 2 } else { 1 };
            let mut hashes = 0;
            while src.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if src.get(j) != Some(&b'"') {
                i += 1;
                continue;
            }
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            let body = j + 1;
            let end = find(&src[body..], &close).map_or(n, |p| body + p);
            wipe(&mut out, body, end);
            i = end + close.len();
        } else if b == b'"' {
            let mut j = i + 1;
            while j < n && src[j] != b'"' {
                j += if src[j] == b'\\' { 2 } else { 1 };
            }
            wipe(&mut out, i + 1, j);
            i = j + 1;
        } else if b == b'\'' {
            // A character literal, or a lifetime (left alone).
            if src.get(i + 1) == Some(&b'\\') {
                let mut j = i + 2;
                while j < n && src[j] != b'\'' {
                    j += 1;
                }
                wipe(&mut out, i + 1, j);
                i = j + 1;
            } else {
                let len = match src.get(i + 1) {
                    Some(&c) if c >= 0xF0 => 4,
                    Some(&c) if c >= 0xE0 => 3,
                    Some(&c) if c >= 0xC0 => 2,
                    _ => 1,
                };
                if src.get(i + 1 + len) == Some(&b'\'') {
                    wipe(&mut out, i + 1, i + 1 + len);
                    i += len + 2;
                } else {
                    i += 1;
                }
            }
        } else {
            i += 1;
        }
    }
    out
}
