//! Sequences from input, bounded while they are parsed: past the limit the
//! parse stops with an error, before memory is spent on the rest.
//!
//! Fixed bounds are const parameters (`vec::<_, _, 32>`); the item limit of
//! a job is configuration, so it is set around one parse on this thread
//! ([`with_item_limit`]) and read by [`items`].

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};

thread_local! {
    static ITEM_LIMIT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Runs `parse` with the limit [`items`] enforces (parsing is synchronous,
/// so the limit holds for exactly this parse).
pub fn with_item_limit<R>(limit: usize, parse: impl FnOnce() -> R) -> R {
    let before = ITEM_LIMIT.with(|l| l.replace(limit));
    let out = parse();
    ITEM_LIMIT.with(|l| l.set(before));
    out
}

/// A job's items, at most the limit set by [`with_item_limit`].
pub fn items<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let max = ITEM_LIMIT.with(Cell::get);
    deserializer.deserialize_seq(Bounded {
        max,
        what: "items per job",
        _t: PhantomData,
    })
}

/// At most `N` elements.
pub fn vec<'de, D, T, const N: usize>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_seq(Bounded {
        max: N,
        what: "entries",
        _t: PhantomData,
    })
}

struct Bounded<T> {
    max: usize,
    what: &'static str,
    _t: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Bounded<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of at most {} {}", self.max, self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        // The size hint comes from input: never trust it past a small bound.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max).min(1024));
        while let Some(v) = seq.next_element()? {
            if out.len() == self.max {
                return Err(serde::de::Error::custom(format_args!(
                    "at most {} {} (more given)",
                    self.max, self.what
                )));
            }
            out.push(v);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Three {
        #[serde(deserialize_with = "vec::<_, _, 3>")]
        v: Vec<u8>,
    }

    #[test]
    fn stops_past_the_bound() {
        let three = serde_json::from_str::<Three>(r#"{"v":[1,2,3]}"#).map(|t| t.v);
        assert_eq!(three.ok(), Some(vec![1, 2, 3]));
        let err = serde_json::from_str::<Three>(r#"{"v":[1,2,3,4]}"#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("at most 3"), "{err}");
    }

    #[derive(serde::Deserialize)]
    struct Job {
        #[serde(deserialize_with = "items")]
        items: Vec<u8>,
    }

    #[test]
    fn the_item_limit_holds_for_one_parse() {
        let body = r#"{"items":[1,2,3]}"#;
        assert!(with_item_limit(2, || serde_json::from_str::<Job>(body)).is_err());
        assert_eq!(
            with_item_limit(3, || serde_json::from_str::<Job>(body))
                .map(|j| j.items.len())
                .ok(),
            Some(3)
        );
        assert!(serde_json::from_str::<Job>(body).is_ok());
    }
}
