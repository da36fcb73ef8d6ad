//! Payloads (item inputs and outputs, message bodies, invocation requests
//! and responses) held as raw JSON text, never as a tree of values.
//!
//! A payload costs its own bytes in memory: it is checked for size where it
//! enters, transcoded JSON → MessagePack to be stored and MessagePack → JSON
//! to be answered, streaming, with the nesting depth bounded both ways (no
//! recursion deeper than [`MAX_DEPTH`], whatever the input). Stored bytes
//! that are not valid MessagePack are an error the caller handles as poison.

use std::fmt;

use serde::de::{Deserialize, Deserializer};
use serde::ser::{Serialize, Serializer};
use serde_json::value::RawValue;

use crate::error::{Error, Result};

/// Deepest nesting a payload may have (as serde_json's own parser allows).
pub const MAX_DEPTH: usize = 128;
/// Default largest payload, in MessagePack bytes as stored (`AGENTBUS_MAX_PAYLOAD_BYTES`).
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;

/// A JSON value kept as its text.
#[derive(Clone)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// `null`.
    pub fn null() -> Self {
        Payload(RawValue::from_string("null".into()).unwrap_or_else(|_| unreachable!()))
    }

    /// Parses JSON text (checked, kept as given).
    pub fn from_json(text: &str) -> Result<Self> {
        RawValue::from_string(text.to_string())
            .map(Payload)
            .map_err(|e| Error::Codec(e.to_string()))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Bytes of JSON text.
    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.get().is_empty()
    }

    /// A tree of the value, for callers that want one (tests, clients).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
    }

    /// Refuses a payload over `max` bytes, naming the field.
    pub fn check_size(&self, field: &str, max: usize) -> Result<()> {
        if self.len() > max {
            return Err(Error::invalid(
                field,
                format!("at most {max} bytes of JSON ({} given)", self.len()),
            ));
        }
        Ok(())
    }

    /// MessagePack bytes of the value, transcoded without a tree.
    pub fn to_msgpack(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.len());
        let mut de = serde_json::Deserializer::from_str(self.0.get());
        let mut ser = rmp_serde::Serializer::new(&mut out).with_struct_map();
        serde_transcode::transcode(&mut de, &mut ser).map_err(|e| Error::Codec(e.to_string()))?;
        Ok(out)
    }

    /// The value of stored MessagePack bytes (empty: `null`); bytes that
    /// are not one well-formed MessagePack value are an error.
    pub fn from_msgpack(bytes: &[u8]) -> Result<Self> {
        if bytes.is_empty() {
            return Ok(Self::null());
        }
        let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
        de.set_max_depth(MAX_DEPTH);
        let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 2);
        {
            let mut ser = serde_json::Serializer::new(&mut out);
            serde_transcode::transcode(&mut de, &mut ser)
                .map_err(|e| Error::Codec(format!("not a MessagePack value: {e}")))?;
        }
        // One value, nothing after it.
        if de.position() as usize != bytes.len() {
            return Err(Error::Codec(format!(
                "not a MessagePack value: {} bytes after the value",
                bytes.len() - de.position() as usize
            )));
        }
        let text = String::from_utf8(out).map_err(|e| Error::Codec(e.to_string()))?;
        Self::from_json(&text)
    }
}

/// What can be stored as a payload: a tree (library callers) or raw text
/// (the API), encoded to MessagePack and checked against a size limit.
pub trait Encode {
    fn to_msgpack(&self) -> Result<Vec<u8>>;

    /// Refuses (naming `field`) a value holding U+0000 in a string or key:
    /// for payloads mirrored into Postgres (invocations), see [`crate::text`].
    fn check_mirrorable(&self, field: &str) -> Result<()>;

    /// The MessagePack bytes, refused (naming `field`) past `max` bytes.
    fn encode_checked(&self, field: &str, max: usize) -> Result<Vec<u8>> {
        // A value that cannot be stored (nested past what the transcoder
        // takes) is the client's input, refused naming its field.
        let bytes = self.to_msgpack().map_err(|e| match e {
            Error::Codec(why) => Error::invalid(field, format!("cannot be stored: {why}")),
            other => other,
        })?;
        if bytes.len() > max {
            return Err(Error::invalid(
                field,
                format!("at most {max} bytes stored ({} given)", bytes.len()),
            ));
        }
        Ok(bytes)
    }
}

impl Encode for Payload {
    fn to_msgpack(&self) -> Result<Vec<u8>> {
        Payload::to_msgpack(self)
    }

    fn check_mirrorable(&self, field: &str) -> Result<()> {
        crate::text::check_json(field, self.get())
    }
}

impl Encode for serde_json::Value {
    fn to_msgpack(&self) -> Result<Vec<u8>> {
        crate::codec::encode(self)
    }

    fn check_mirrorable(&self, field: &str) -> Result<()> {
        crate::text::check_value(field, self)
    }
}

/// A stored payload read leniently: bytes that are not one MessagePack
/// value read as null plus the reason (counted as poison of `kind`), so one
/// bad entry never fails the page or batch it is read with.
pub fn from_stored(bytes: Option<&[u8]>, kind: &'static str) -> (Payload, Option<String>) {
    match Payload::from_msgpack(bytes.unwrap_or_default()) {
        Ok(p) => (p, None),
        Err(e) => {
            crate::metrics::poison(kind);
            (Payload::null(), Some(e.to_string()))
        }
    }
}

impl Default for Payload {
    fn default() -> Self {
        Self::null()
    }
}

impl From<serde_json::Value> for Payload {
    fn from(value: serde_json::Value) -> Self {
        Self::from(&value)
    }
}

impl From<&serde_json::Value> for Payload {
    fn from(value: &serde_json::Value) -> Self {
        // A Value always serializes.
        serde_json::value::to_raw_value(value)
            .map(Payload)
            .unwrap_or_else(|_| Self::null())
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get() || self.json() == other.json()
    }
}

impl PartialEq<serde_json::Value> for Payload {
    fn eq(&self, other: &serde_json::Value) -> bool {
        &self.json() == other
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            // JSON: the text as it is.
            self.0.serialize(serializer)
        } else {
            // Binary formats (MessagePack) get the value, not a string of JSON.
            let mut de = serde_json::Deserializer::from_str(self.0.get());
            serde_transcode::transcode(&mut de, serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            Box::<RawValue>::deserialize(deserializer).map(Payload)
        } else {
            let text = serde_json::to_string(&serde_transcode::Transcoder::new(deserializer))
                .map_err(serde::de::Error::custom)?;
            RawValue::from_string(text)
                .map(Payload)
                .map_err(serde::de::Error::custom)
        }
    }
}

impl schemars::JsonSchema for Payload {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Payload".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Any JSON value; at most AGENTBUS_MAX_PAYLOAD_BYTES (1 MiB) once stored as MessagePack."
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn transcoding_matches_the_tree_encoding() {
        let v = json!({"a": [1, -2, 3.5, "x", null, true], "b": {"c": u64::MAX}});
        let p = Payload::from(&v);
        assert_eq!(p.to_msgpack().unwrap(), crate::codec::encode(&v).unwrap());
        let back = Payload::from_msgpack(&p.to_msgpack().unwrap()).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn garbage_and_trailing_bytes_are_errors() {
        assert!(Payload::from_msgpack(b"\xc1").is_err());
        assert!(Payload::from_msgpack(b"\x01\x02").is_err());
        assert!(Payload::from_msgpack(b"\x92\x01").is_err());
        assert_eq!(Payload::from_msgpack(b"").unwrap(), json!(null));
    }

    #[test]
    fn nesting_past_the_bound_is_an_error_not_a_stack_overflow() {
        // 100,000 nested one-element arrays.
        let mut deep = vec![0x91u8; 100_000];
        deep.push(0x01);
        assert!(Payload::from_msgpack(&deep).is_err());
        let mut ok = vec![0x91u8; MAX_DEPTH - 1];
        ok.push(0x01);
        assert!(Payload::from_msgpack(&ok).is_ok());
    }
}
