//! The machine-readable part of a Lua script's header: the lines of its
//! leading comment that start with `@`. build.rs parses them (this file is
//! shared with it, so it uses only `std`) to assemble each script and to
//! generate its contract for Rust; other languages read the same lines
//! (docs/wire-protocol.md, "Script headers").
//!
//! ```text
//! -- @include common job          helpers of lua/include/, prepended in order
//! -- @layout job                  the KEYS and ARGV an include declares come first
//! -- @key credits the tenant's credits hash            KEYS[i], in order
//! -- @key (agent, inbox)... one pair per recipient     a repeating group, last
//! -- @arg tenant the tenant id                         ARGV[i], in order
//! -- @arg input... one MessagePack input per item      a repeating group, last
//! -- @reply ok(ended:int, status:text) what it means   a tagged reply: {'ok', ended, status}
//! -- @reply missing                                    {'missing'}
//! -- @returns (replayed:int, missing:int)              an untagged reply
//! ```
//!
//! Field types: `int`, `text`, `texts` (an array of text), `ints`, `raw`
//! (any value, read by the caller) and `rest` (every remaining element; last
//! only). `@returns int` is a bare integer, `@returns raw` any value.

/// A reply field's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    Int,
    Text,
    Texts,
    Ints,
    Raw,
    Rest,
}

impl Ty {
    fn parse(s: &str) -> Result<Ty, String> {
        Ok(match s {
            "int" => Ty::Int,
            "text" => Ty::Text,
            "texts" => Ty::Texts,
            "ints" => Ty::Ints,
            "raw" => Ty::Raw,
            "rest" => Ty::Rest,
            other => return Err(format!("unknown type `{other}`")),
        })
    }
}

/// One reply shape: a tag (`None` for an untagged reply) and its fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    pub tag: Option<String>,
    pub fields: Vec<(String, Ty)>,
    /// `@returns int` / `@returns raw`: a bare value, not an array.
    pub bare: Option<Ty>,
}

/// What a script's (or an include's) header declares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub includes: Vec<String>,
    pub layouts: Vec<String>,
    pub keys: Vec<String>,
    /// The repeating group of keys after the fixed ones (empty: none).
    pub key_group: Vec<String>,
    pub args: Vec<String>,
    pub arg_group: Vec<String>,
    pub replies: Vec<Shape>,
}

/// A name, or a repeating group `(a, b)...` / `name...`, then prose.
fn names(rest: &str) -> Result<(Vec<String>, bool), String> {
    let rest = rest.trim_start();
    if let Some(inner) = rest.strip_prefix('(') {
        let close = inner.find(')').ok_or("unclosed `(`")?;
        let group: Vec<String> = inner[..close]
            .split(',')
            .map(|n| n.trim().to_string())
            .collect();
        if !inner[close + 1..].starts_with("...") {
            return Err("a `(…)` group must be followed by `...`".into());
        }
        check_names(&group)?;
        return Ok((group, true));
    }
    let word = rest.split_whitespace().next().ok_or("a name is missing")?;
    let (name, group) = match word.strip_suffix("...") {
        Some(n) => (n, true),
        None => (word, false),
    };
    check_names(&[name.to_string()])?;
    Ok((vec![name.to_string()], group))
}

fn check_names(names: &[String]) -> Result<(), String> {
    for n in names {
        let ok = !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && n.as_bytes()[0].is_ascii_lowercase();
        if !ok {
            return Err(format!("`{n}` is not a snake_case name"));
        }
    }
    Ok(())
}

/// The field list of `(a:int, b:text)` at the start of `s`.
fn fields(s: &str) -> Result<Vec<(String, Ty)>, String> {
    let inner = s
        .strip_prefix('(')
        .ok_or("a field list must start with `(`")?;
    let close = inner.find(')').ok_or("unclosed `(`")?;
    let mut out = Vec::new();
    for field in inner[..close].split(',') {
        let (name, ty) = field
            .trim()
            .split_once(':')
            .ok_or_else(|| format!("`{}` lacks `:type`", field.trim()))?;
        check_names(&[name.to_string()])?;
        out.push((name.to_string(), Ty::parse(ty.trim())?));
    }
    if let Some(i) = out.iter().position(|(_, t)| *t == Ty::Rest)
        && i + 1 != out.len()
    {
        return Err("a `rest` field must be the last".into());
    }
    Ok(out)
}

/// `tag` or `tag(a:int, …)`, then prose.
fn reply(spec: &str) -> Result<Shape, String> {
    let spec = spec.trim_start();
    let end = spec
        .find(|c: char| c == '(' || c.is_whitespace())
        .unwrap_or(spec.len());
    let tag = &spec[..end];
    check_names(&[tag.to_string()])?;
    let fields = if spec[end..].starts_with('(') {
        fields(&spec[end..])?
    } else {
        Vec::new()
    };
    Ok(Shape {
        tag: Some(tag.to_string()),
        fields,
        bare: None,
    })
}

/// `int`, `raw` or `(a:int, …)`, then prose.
fn returns(spec: &str) -> Result<Shape, String> {
    let spec = spec.trim_start();
    if spec.starts_with('(') {
        return Ok(Shape {
            tag: None,
            fields: fields(spec)?,
            bare: None,
        });
    }
    let word = spec.split_whitespace().next().unwrap_or("");
    let bare = match Ty::parse(word)? {
        t @ (Ty::Int | Ty::Raw) => t,
        _ => return Err("`@returns` takes int, raw or a field list".into()),
    };
    Ok(Shape {
        tag: None,
        fields: Vec::new(),
        bare: Some(bare),
    })
}

impl Header {
    /// Parses the `@` lines of the leading comment of `source` (the lines
    /// before the first that is not a `--` comment).
    pub fn parse(source: &str) -> Result<Header, String> {
        let mut h = Header::default();
        for (n, line) in source
            .lines()
            .take_while(|l| l.starts_with("--"))
            .enumerate()
        {
            let text = line.trim_start_matches('-').trim_start();
            let Some(tagged) = text.strip_prefix('@') else {
                continue;
            };
            let (tag, rest) = tagged.split_once(' ').unwrap_or((tagged, ""));
            let at = |e: String| format!("header line {}: {e}", n + 1);
            match tag {
                "include" => h.includes.extend(rest.split_whitespace().map(String::from)),
                "layout" => h.layouts.extend(rest.split_whitespace().map(String::from)),
                "key" | "arg" => {
                    let (names, group) = names(rest).map_err(at)?;
                    let (fixed, rep) = if tag == "key" {
                        (&mut h.keys, &mut h.key_group)
                    } else {
                        (&mut h.args, &mut h.arg_group)
                    };
                    if !rep.is_empty() {
                        return Err(at(format!("@{tag} after its repeating group")));
                    }
                    if group {
                        *rep = names;
                    } else {
                        fixed.extend(names);
                    }
                }
                "reply" => h.replies.push(reply(rest).map_err(at)?),
                "returns" => h.replies.push(returns(rest).map_err(at)?),
                other => return Err(at(format!("unknown tag @{other}"))),
            }
        }
        Ok(h)
    }

    /// A script's header (not an include's) must say what it replies: one
    /// `@returns`, or `@reply` lines with distinct tags.
    pub fn check_replies(&self) -> Result<(), String> {
        let untagged = self.replies.iter().filter(|s| s.tag.is_none()).count();
        if self.replies.is_empty() || (untagged > 0 && self.replies.len() > 1) {
            return Err("a script declares one `@returns` or its `@reply` lines".into());
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = self.replies.iter().find(|s| !seen.insert(&s.tag)) {
            return Err(format!("reply {:?} is declared twice", dup.tag));
        }
        Ok(())
    }

    /// This header with the layouts it names (from `layout(name)`, the
    /// include's own header) put first: their keys, then its own, and
    /// likewise the arguments.
    pub fn resolve(
        mut self,
        layout: impl Fn(&str) -> Result<Header, String>,
    ) -> Result<Header, String> {
        let mut keys = Vec::new();
        let mut args = Vec::new();
        for name in &self.layouts {
            if !self.includes.contains(name) {
                return Err(format!("@layout {name} is not included"));
            }
            let l = layout(name)?;
            keys.extend(l.keys);
            args.extend(l.args);
        }
        keys.append(&mut self.keys);
        args.append(&mut self.args);
        self.keys = keys;
        self.args = args;
        for group in [&self.keys, &self.args] {
            let mut seen = std::collections::HashSet::new();
            if let Some(dup) = group.iter().find(|n| !seen.insert(n.as_str())) {
                return Err(format!("`{dup}` is declared twice"));
            }
        }
        Ok(self)
    }
}
