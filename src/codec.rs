//! Wire encoding: MessagePack payloads and plain-text stream fields.
//!
//! Payloads (item inputs, outputs, message bodies, event contexts) are
//! MessagePack maps so agents in any language can read them; header fields of
//! stream entries stay plain text for `redis-cli XRANGE`. This module also
//! turns raw stream entries into typed values (script replies: `scripts`).

use redis::Value;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Encodes a value as MessagePack, structs as maps (field names kept).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(value).map_err(|e| Error::Codec(e.to_string()))
}

/// Decodes MessagePack bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    rmp_serde::from_slice(bytes).map_err(|e| Error::Codec(e.to_string()))
}

/// Decodes a MessagePack payload into JSON; an empty payload is `null`.
pub fn decode_json(bytes: &[u8]) -> Result<serde_json::Value> {
    if bytes.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    decode(bytes)
}

/// A text (or integer) reply element as a string.
pub fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Okay => Some("OK".into()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// A value for an error message: its debug form, at most 200 bytes.
pub fn brief(value: &Value) -> String {
    let mut s = format!("{value:?}");
    if s.len() > 200 {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// One stream entry: its id and its fields in order.
#[derive(Debug, Clone)]
pub struct StreamEntry {
    pub id: String,
    pub fields: Vec<(String, Vec<u8>)>,
}

impl StreamEntry {
    /// Parses `[id, [field, value, ...]]` as XRANGE/XREADGROUP return it.
    pub fn from_value(value: &Value) -> Result<Self> {
        let Value::Array(parts) = value else {
            return Err(Error::protocol(format!("stream entry {value:?}")));
        };
        let id = parts
            .first()
            .and_then(text)
            .ok_or_else(|| Error::protocol("stream entry without id"))?;
        let mut fields = Vec::new();
        if let Some(Value::Array(kv)) = parts.get(1) {
            for pair in kv.chunks(2) {
                if let [k, v] = pair {
                    let name = text(k).ok_or_else(|| Error::protocol("field name"))?;
                    let bytes = match v {
                        Value::BulkString(b) => b.clone(),
                        other => text(other).unwrap_or_default().into_bytes(),
                    };
                    fields.push((name, bytes));
                }
            }
        }
        Ok(StreamEntry { id, fields })
    }

    /// Parses the entries of one stream out of an XREAD/XREADGROUP reply
    /// (`[[key, [entry...]]]`); nil means no entries.
    pub fn from_read_reply(value: &Value) -> Result<Vec<Self>> {
        match value {
            Value::Nil => Ok(Vec::new()),
            Value::Array(streams) => {
                let mut out = Vec::new();
                for stream in streams {
                    if let Value::Array(parts) = stream
                        && let Some(Value::Array(entries)) = parts.get(1)
                    {
                        for e in entries {
                            out.push(StreamEntry::from_value(e)?);
                        }
                    }
                }
                Ok(out)
            }
            Value::Map(streams) => {
                let mut out = Vec::new();
                for (_, entries) in streams {
                    if let Value::Array(entries) = entries {
                        for e in entries {
                            out.push(StreamEntry::from_value(e)?);
                        }
                    }
                }
                Ok(out)
            }
            other => Err(Error::protocol(format!("stream read reply {other:?}"))),
        }
    }

    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|b| std::str::from_utf8(b).ok())
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        self.text(name).and_then(|s| s.parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_through_msgpack() {
        let v = serde_json::json!({"a": [1, -2, 3.5, "x", null, true], "b": {"c": "d"}});
        let bytes = encode(&v).unwrap();
        assert_eq!(decode_json(&bytes).unwrap(), v);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&b"\xc1"[..], b"\x92\x01", b"\xdd\xff\xff\xff\xff"] {
            assert!(decode_json(bytes).is_err());
        }
    }
}
