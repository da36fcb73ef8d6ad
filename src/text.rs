//! Free text bound for the Postgres mirror (cancel reasons, grant reasons,
//! invocation errors and payloads, ledger contexts).
//!
//! Checked where it enters, so no event the sink cannot write is ever
//! appended to an outbox: Postgres `text` and `jsonb` cannot hold U+0000,
//! and the other control characters (bar tab, newline and carriage return)
//! garble logs, tables and terminals, so plain text refuses them too. JSON
//! may carry any character but U+0000 (jsonb stores the rest escaped).
//!
//! The sink also replaces any U+0000 that still arrives (events appended by
//! an older version) with U+FFFD, so such an event is written rather than
//! stranded; amounts and ids never contain text it would alter.

use std::borrow::Cow;

use serde_json::Value;

use crate::error::{Error, Result};

/// Checks one free-text field: at most `max` bytes, no control characters
/// other than tab, newline and carriage return.
pub fn check(field: &str, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return Err(Error::invalid(field, format!("at most {max} bytes")));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(Error::invalid(
            field,
            format!(
                "control character U+{:04X} not allowed (tab, newline and carriage return are)",
                bad as u32
            ),
        ));
    }
    Ok(())
}

/// True when JSON text holds an escaped U+0000 (`\u0000` preceded by an odd
/// run of backslashes); JSON cannot hold a raw one. No tree is built.
pub fn json_has_nul(json: &str) -> bool {
    let bytes = json.as_bytes();
    let mut from = 0;
    while let Some(at) = json[from..].find("u0000").map(|i| i + from) {
        let slashes = bytes[..at]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        if slashes % 2 == 1 {
            return true;
        }
        from = at + 1;
    }
    false
}

/// Refuses JSON text holding U+0000 in any string or key.
pub fn check_json(field: &str, json: &str) -> Result<()> {
    if json_has_nul(json) {
        return Err(Error::invalid(
            field,
            "strings cannot hold U+0000 (the audit mirror cannot store it)",
        ));
    }
    Ok(())
}

/// Refuses a JSON value holding U+0000 in any string or key (walked
/// without recursion).
pub fn check_value(field: &str, value: &Value) -> Result<()> {
    let mut found = false;
    walk(value, |s| found |= s.contains('\0'));
    if found {
        return Err(Error::invalid(
            field,
            "strings cannot hold U+0000 (the ledger mirror cannot store it)",
        ));
    }
    Ok(())
}

/// Text as Postgres can hold it: U+0000 becomes U+FFFD.
pub fn for_postgres(value: &str) -> Cow<'_, str> {
    if value.contains('\0') {
        Cow::Owned(value.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(value)
    }
}

/// A JSON value as jsonb can hold it: U+0000 in strings and keys becomes U+FFFD.
pub fn value_for_postgres(value: &mut Value) {
    let mut found = false;
    walk(value, |s| found |= s.contains('\0'));
    if !found {
        return;
    }
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{FFFD}"),
            Value::Array(items) => stack.extend(items.iter_mut()),
            Value::Object(map) => {
                if map.keys().any(|k| k.contains('\0')) {
                    let old = std::mem::take(map);
                    for (k, v) in old {
                        map.insert(k.replace('\0', "\u{FFFD}"), v);
                    }
                }
                stack.extend(map.values_mut());
            }
            _ => {}
        }
    }
}

/// Calls `f` on every string and key of `value`, without recursion.
fn walk(value: &Value, mut f: impl FnMut(&str)) {
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => f(s),
            Value::Array(items) => stack.extend(items.iter()),
            Value::Object(map) => {
                for (k, v) in map {
                    f(k);
                    stack.push(v);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_text_refuses_every_control_character_but_whitespace() {
        for c in (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32) {
            let text = format!("a{c}b");
            let allowed = matches!(c, '\t' | '\n' | '\r');
            let checked = check("reason", &text, 100);
            assert_eq!(checked.is_ok(), allowed, "U+{:04X}", c as u32);
            if let Err(Error::Invalid { field, .. }) = checked {
                assert_eq!(field, "reason");
            }
        }
        assert!(check("reason", "déjà vu ✓", 100).is_ok());
        assert!(check("reason", &"x".repeat(101), 100).is_err());
    }

    #[test]
    fn json_nul_is_found_only_as_an_escape() {
        assert!(json_has_nul(r#""a\u0000b""#));
        assert!(json_has_nul(r#"{"k\u0000":1}"#));
        assert!(json_has_nul(r#"["\\\u0000"]"#));
        // An escaped backslash followed by the letters u0000 is not a NUL.
        assert!(!json_has_nul(r#""\\u0000""#));
        assert!(!json_has_nul(r#""u0000""#));
        assert!(!json_has_nul(r#""\u0001""#));
        // Agrees with a parser on every case above and a few more.
        for text in [
            r#""a\u0000b""#,
            r#""\\u0000""#,
            r#""\\\\\u0000""#,
            r#"{"a":"\\\\u0000"}"#,
            r#"[1,"x\u00000"]"#,
        ] {
            let parsed: Value = serde_json::from_str(text).expect("valid JSON");
            let mut found = false;
            walk(&parsed, |s| found |= s.contains('\0'));
            assert_eq!(json_has_nul(text), found, "{text}");
        }
    }

    #[test]
    fn values_are_checked_and_mended_at_any_depth() {
        let mut deep = json!("x\u{0}");
        for _ in 0..1000 {
            deep = json!([deep]);
        }
        assert!(check_value("context", &deep).is_err());
        let mut v = json!({"a\u{0}": ["ok", {"b": "c\u{0}d"}], "n": 1});
        assert!(check_value("context", &v).is_err());
        value_for_postgres(&mut v);
        assert_eq!(v, json!({"a\u{FFFD}": ["ok", {"b": "c\u{FFFD}d"}], "n": 1}));
        assert!(check_value("context", &v).is_ok());
        assert_eq!(for_postgres("a\0b"), "a\u{FFFD}b");
    }
}
