//! The Lua scripts and the typed boundary to them.
//!
//! Each script lives in `lua/<name>.lua`; its header declares, in lines
//! starting with `@` ([`header`]), the helpers it includes, its KEYS and
//! ARGV by name and the shapes of its replies. build.rs assembles each
//! script from its includes and turns every header into a [`Def`], so the
//! header is the one place a contract is written: Rust, the generated
//! `docs/wire-protocol.md` and clients in other languages read the same
//! lines.
//!
//! A call goes through a [`Call`]: every key and argument is pushed under
//! its header name, checked in order, and the counts are checked before
//! anything is sent (a mismatch is an error, never a half-built call). The
//! reply is parsed once, against the shapes the header declares, into an
//! [`Answer`] whose fields are read by name. A call runs by EVALSHA and
//! loads its script again when Redis answers NOSCRIPT (after a restart or
//! `SCRIPT FLUSH`).
//!
//! A call that passes a tenant's `outbox` key also writes the sink's ready
//! signal for that tenant (`keys::ready_signal`), in the same round trip,
//! after the script: the sink learns which tenants have new events without
//! visiting the others. A call may also carry a deadline for a background
//! chore ([`Call::due`], `keys::Chore`), written after the script only
//! when it answered `ok` (a refused call creates no deadline and changes
//! nothing).

pub mod header;

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{Cmd, Script, ToRedisArgs, Value};

use crate::error::{Error, Result};
pub use header::Ty;

/// A script's contract, generated from its header.
#[derive(Debug)]
pub struct Def {
    pub name: &'static str,
    /// KEYS, in order.
    pub keys: &'static [&'static str],
    /// The repeating group of KEYS after the fixed ones (empty: none).
    pub key_group: &'static [&'static str],
    /// ARGV, in order.
    pub args: &'static [&'static str],
    pub arg_group: &'static [&'static str],
    /// The replies it may give.
    pub replies: &'static [Shape],
}

/// One reply a script may give.
#[derive(Debug)]
pub struct Shape {
    /// The first element of the reply array (`None`: an untagged reply).
    pub tag: Option<&'static str>,
    /// The elements after the tag, by name.
    pub fields: &'static [(&'static str, Ty)],
    /// A bare value (`@returns int` / `@returns raw`), not an array.
    pub bare: Option<Ty>,
}

include!(concat!(env!("OUT_DIR"), "/scripts.rs"));

/// A script with its contract.
pub struct Lua {
    def: &'static Def,
    script: Script,
}

impl Lua {
    fn new(def: &'static Def, source: &str) -> Self {
        Lua {
            def,
            script: Script::new(source),
        }
    }

    pub fn def(&self) -> &'static Def {
        self.def
    }

    /// The bare script, for callers that break its contract on purpose
    /// (tests of its argument checks) or pipeline EVALSHA themselves.
    pub fn script(&self) -> &Script {
        &self.script
    }

    /// A call, starting with its first key.
    pub fn key(&self, name: &'static str, key: impl ToRedisArgs) -> Call<'_> {
        let mut call = self.call();
        call.key(name, key);
        call
    }

    /// A call, starting with its first argument (a script without KEYS).
    pub fn arg(&self, name: &'static str, arg: impl ToRedisArgs) -> Call<'_> {
        let mut call = self.call();
        call.arg(name, arg);
        call
    }

    pub fn call(&self) -> Call<'_> {
        Call {
            def: self.def,
            script: &self.script,
            keys: Vec::new(),
            args: Vec::new(),
            outbox: None,
            due: None,
            fault: None,
        }
    }
}

/// The name the `i`-th of a list declared as `fixed` then `group`... has.
fn slot(fixed: &[&'static str], group: &[&'static str], i: usize) -> Option<&'static str> {
    match i.checked_sub(fixed.len()) {
        None => fixed.get(i).copied(),
        Some(_) if group.is_empty() => None,
        Some(j) => group.get(j % group.len()).copied(),
    }
}

/// Whether `n` elements fill `fixed` and a whole number of `group`s.
fn complete(fixed: &[&str], group: &[&str], n: usize) -> bool {
    match n.checked_sub(fixed.len()) {
        None => false,
        Some(extra) if group.is_empty() => extra == 0,
        Some(extra) => extra % group.len() == 0,
    }
}

/// The sink's ready signal of `tenant` in shard key `key`: `ZADD NX`, so
/// the time kept is when the tenant first had events the sink has not seen.
pub(crate) fn signal_cmd(key: &str, tenant: &str) -> Cmd {
    let mut cmd = redis::cmd("ZADD");
    cmd.arg(key)
        .arg("NX")
        .arg(chrono::Utc::now().timestamp_millis())
        .arg(tenant);
    cmd
}

/// `tenant`'s deadline `at_ms` in a chore's shard key `key`: `ZADD LT`, so
/// the earliest deadline stays (and a visit's lease is lowered; see
/// `lua/due_take.lua`).
pub(crate) fn due_cmd(key: &str, tenant: &str, at_ms: i64) -> Cmd {
    let mut cmd = redis::cmd("ZADD");
    cmd.arg(key).arg("LT").arg(at_ms).arg(tenant);
    cmd
}

/// One call being built: keys and arguments pushed by their header names.
pub struct Call<'a> {
    def: &'static Def,
    script: &'a Script,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
    /// The tenant outbox this call writes, if any.
    outbox: Option<Vec<u8>>,
    /// The deadline written after the script (see [`Call::due`]): shard
    /// key, tenant, ms.
    due: Option<(String, String, i64)>,
    /// The first name that did not match the header.
    fault: Option<String>,
}

impl Call<'_> {
    pub fn key(&mut self, name: &'static str, key: impl ToRedisArgs) -> &mut Self {
        let expected = slot(self.def.keys, self.def.key_group, self.keys.len());
        let mut encoded = key.to_redis_args();
        if (expected != Some(name) || encoded.len() != 1) && self.fault.is_none() {
            self.fault = Some(format!(
                "KEYS[{}] is {expected:?}, pushed as {name:?} ({} values)",
                self.keys.len() + 1,
                encoded.len()
            ));
        }
        let first = encoded.pop().unwrap_or_default();
        if name == "outbox" {
            self.outbox = Some(first.clone());
        }
        self.keys.push(first);
        self
    }

    pub fn arg(&mut self, name: &'static str, arg: impl ToRedisArgs) -> &mut Self {
        let expected = slot(self.def.args, self.def.arg_group, self.args.len());
        let mut encoded = arg.to_redis_args();
        if (expected != Some(name) || encoded.len() != 1) && self.fault.is_none() {
            self.fault = Some(format!(
                "ARGV[{}] is {expected:?}, pushed as {name:?} ({} values)",
                self.args.len() + 1,
                encoded.len()
            ));
        }
        self.args.push(encoded.pop().unwrap_or_default());
        self
    }

    /// No ready signal for this call: it passes an outbox but appends
    /// nothing to it (an acknowledgement, a free sweep).
    pub fn quiet(&mut self) -> &mut Self {
        self.outbox = None;
        self
    }

    /// Also writes `tenant`'s deadline `at_ms` into a chore's shard `key`
    /// (`Keyspace::due_of`) once the script has answered `ok`: one more
    /// round trip, and none for a call refused. A call writes one deadline:
    /// given several, the earliest (every chore takes the earliest anyway).
    pub fn due(&mut self, key: String, tenant: &str, at_ms: i64) -> &mut Self {
        if self.due.as_ref().is_none_or(|(_, _, at)| at_ms < *at) {
            self.due = Some((key, tenant.to_string(), at_ms));
        }
        self
    }

    fn evalsha(&self) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash())
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        cmd
    }

    /// The ready signal of the outbox this call writes.
    fn signal(&self) -> Option<Cmd> {
        let (key, tenant) = crate::keys::ready_signal(self.outbox.as_deref()?)?;
        Some(signal_cmd(&key, &tenant))
    }

    /// Writes the call's deadline (after an `ok`). A deadline not written
    /// is logged and counted, not the call's failure: the sweep finds it.
    async fn write_due(&self, conn: &mut impl ConnectionLike) {
        let Some((key, tenant, at)) = &self.due else {
            return;
        };
        if let Err(e) = due_cmd(key, tenant, *at).query_async::<()>(conn).await {
            let e = Error::from(e);
            e.count_failure();
            tracing::warn!(error = %e, script = self.def.name, "deadline not written; the sweep will find it");
        }
    }

    /// Runs the script (and its signal) once; NOSCRIPT is the caller's.
    /// The script's answer is the call's: a signal that fails is logged and
    /// counted, never turned into a failure of a script that ran (the
    /// sink's sweep catches what a lost signal leaves).
    async fn run(&self, conn: &mut impl ConnectionLike) -> redis::RedisResult<Value> {
        let Some(signal) = self.signal() else {
            return self.evalsha().query_async(conn).await;
        };
        let mut pipe = redis::pipe();
        pipe.add_command(self.evalsha())
            .add_command(signal.clone())
            .ignore_errors();
        let (script, signalled) = match pipe
            .query_async::<Vec<redis::RedisResult<Value>>>(conn)
            .await
        {
            Ok(results) => {
                let mut results = results.into_iter();
                let script = results.next().unwrap_or(Ok(Value::Nil));
                (script, results.next().unwrap_or(Ok(Value::Nil)))
            }
            // A cluster pipeline must stay in one slot and the signal's key
            // is not the tenant's: two commands then, in the same order.
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::CrossSlot) => {
                let script = self.evalsha().query_async(conn).await;
                let signalled = match &script {
                    Ok(_) => signal.query_async(conn).await,
                    Err(_) => Ok(Value::Nil),
                };
                (script, signalled)
            }
            Err(e) => return Err(e),
        };
        if let Err(e) = signalled {
            let e = Error::from(e);
            e.count_failure();
            tracing::warn!(error = %e, script = self.def.name, "sink signal not written; the sweep will find the events");
        }
        script
    }

    /// The call's fault against the header, if any: names out of order, or
    /// too few or too many keys or arguments.
    pub fn check(&self) -> Result<()> {
        let d = self.def;
        let fault = self.fault.clone().or_else(|| {
            if !complete(d.keys, d.key_group, self.keys.len()) {
                Some(format!("{} KEYS do not fill {:?}", self.keys.len(), d.keys))
            } else if !complete(d.args, d.arg_group, self.args.len()) {
                Some(format!("{} ARGV do not fill {:?}", self.args.len(), d.args))
            } else {
                None
            }
        });
        match fault {
            Some(f) => Err(Error::protocol(format!(
                "{} called against its header: {f}",
                d.name
            ))),
            None => Ok(()),
        }
    }

    /// Runs the script (after checking the call against its header) and
    /// parses its reply against the header's shapes.
    pub async fn invoke(&self, conn: &mut impl ConnectionLike) -> Result<Answer> {
        self.check()?;
        let value = match self.run(conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.script.load_async(conn).await?;
                self.run(conn).await?
            }
            other => other?,
        };
        let answer = Answer::parse(self.def, value)?;
        if answer.is("ok") {
            self.write_due(conn).await;
        }
        Ok(answer)
    }
}

/// A reply field, parsed.
#[derive(Debug, Clone)]
enum Field {
    Int(i64),
    Text(String),
    Texts(Vec<String>),
    Ints(Vec<i64>),
    Raw(Value),
    Rest(Vec<Value>),
}

/// A script's reply, parsed against the shape its tag declares.
#[derive(Debug)]
pub struct Answer {
    script: &'static str,
    shape: &'static Shape,
    fields: Vec<Field>,
}

use crate::codec::text;

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

fn list<T>(value: &Value, each: impl Fn(&Value) -> Option<T>) -> Option<Vec<T>> {
    match value {
        Value::Array(items) => items.iter().map(each).collect(),
        // Lua's empty table comes back as an empty array (or nil from RESP3).
        Value::Nil => Some(Vec::new()),
        _ => None,
    }
}

fn field(ty: Ty, value: &Value) -> Option<Field> {
    Some(match ty {
        Ty::Int => Field::Int(int(value)?),
        Ty::Text => Field::Text(text(value)?),
        Ty::Texts => Field::Texts(list(value, text)?),
        Ty::Ints => Field::Ints(list(value, int)?),
        // `raw` and `rest` move their values: Answer::parse takes them.
        Ty::Raw | Ty::Rest => return None,
    })
}

impl Answer {
    /// Parses `value` (taken: entries and raw values move, never copied).
    fn parse(def: &'static Def, value: Value) -> Result<Answer> {
        let bad = |why: &str, value: &Value| {
            Error::protocol(format!(
                "{} replied {why}: {}",
                def.name,
                crate::codec::brief(value)
            ))
        };
        // A bare value.
        if let [shape @ Shape { bare: Some(ty), .. }] = def.replies {
            let f = match ty {
                Ty::Int => Field::Int(int(&value).ok_or_else(|| bad("not an integer", &value))?),
                _ => Field::Raw(value),
            };
            return Ok(Answer {
                script: def.name,
                shape,
                fields: vec![f],
            });
        }
        let Value::Array(mut items) = value else {
            return Err(bad("not an array", &value));
        };
        let shape = match def.replies {
            [shape @ Shape { tag: None, .. }] => shape,
            shapes => {
                let tag = items.first().and_then(text);
                let found = tag.and_then(|t| shapes.iter().find(|s| s.tag == Some(t.as_str())));
                let Some(shape) = found else {
                    return Err(bad("an undeclared tag", &Value::Array(items)));
                };
                items.remove(0);
                shape
            }
        };
        let declared = shape.fields.len();
        let open = matches!(shape.fields.last(), Some((_, Ty::Rest)));
        if (open && items.len() + 1 < declared) || (!open && items.len() != declared) {
            return Err(bad("the wrong number of elements", &Value::Array(items)));
        }
        let mut fields = Vec::with_capacity(declared);
        let mut values = items.into_iter();
        for (_, ty) in shape.fields {
            let parsed = match ty {
                Ty::Rest => Some(Field::Rest(values.by_ref().collect())),
                Ty::Raw => values.next().map(Field::Raw),
                ty => values.next().and_then(|v| field(*ty, &v)),
            };
            fields.push(parsed.ok_or_else(|| {
                Error::protocol(format!("{} replied an element of another type", def.name))
            })?);
        }
        Ok(Answer {
            script: def.name,
            shape,
            fields,
        })
    }

    /// The reply's tag (`""` for an untagged reply).
    pub fn tag(&self) -> &'static str {
        self.shape.tag.unwrap_or("")
    }

    pub fn is(&self, tag: &str) -> bool {
        self.shape.tag == Some(tag)
    }

    fn at(&self, name: &str) -> Result<&Field> {
        self.shape
            .fields
            .iter()
            .position(|(n, _)| *n == name)
            .and_then(|i| self.fields.get(i))
            .ok_or_else(|| {
                Error::protocol(format!(
                    "{}'s reply {:?} has no field {name:?} in its header",
                    self.script,
                    self.tag()
                ))
            })
    }

    fn wrong(&self, name: &str, ty: &str) -> Error {
        Error::protocol(format!(
            "{}'s field {name:?} is not declared {ty}",
            self.script
        ))
    }

    pub fn int(&self, name: &str) -> Result<i64> {
        match self.at(name)? {
            Field::Int(i) => Ok(*i),
            _ => Err(self.wrong(name, "int")),
        }
    }

    pub fn text(&self, name: &str) -> Result<&str> {
        match self.at(name)? {
            Field::Text(s) => Ok(s),
            _ => Err(self.wrong(name, "text")),
        }
    }

    pub fn texts(&self, name: &str) -> Result<&[String]> {
        match self.at(name)? {
            Field::Texts(v) => Ok(v),
            _ => Err(self.wrong(name, "texts")),
        }
    }

    pub fn ints(&self, name: &str) -> Result<&[i64]> {
        match self.at(name)? {
            Field::Ints(v) => Ok(v),
            _ => Err(self.wrong(name, "ints")),
        }
    }

    pub fn raw(&self, name: &str) -> Result<&Value> {
        match self.at(name)? {
            Field::Raw(v) => Ok(v),
            _ => Err(self.wrong(name, "raw")),
        }
    }

    pub fn rest(&self, name: &str) -> Result<&[Value]> {
        match self.at(name)? {
            Field::Rest(v) => Ok(v),
            _ => Err(self.wrong(name, "rest")),
        }
    }

    /// A bare reply (`@returns int`).
    pub fn value(&self) -> Result<i64> {
        match (self.shape.bare, self.fields.first()) {
            (Some(Ty::Int), Some(Field::Int(i))) => Ok(*i),
            _ => Err(Error::protocol(format!(
                "{} has no bare int reply",
                self.script
            ))),
        }
    }

    /// A bare reply (`@returns raw`), taken.
    pub fn into_raw(self) -> Result<Value> {
        match (self.shape.bare, self.fields.into_iter().next()) {
            (Some(Ty::Raw), Some(Field::Raw(v))) => Ok(v),
            _ => Err(Error::protocol(format!(
                "{} has no bare raw reply",
                self.script
            ))),
        }
    }
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(assemble);

/// The process-wide registry (scripts and their SHA1s are computed once).
pub fn scripts() -> &'static Scripts {
    &SCRIPTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_fixed_names_then_the_group() {
        let fixed = ["a", "b"];
        let group = ["x", "y"];
        let names: Vec<_> = (0..6).map(|i| slot(&fixed, &group, i)).collect();
        assert_eq!(
            names,
            [
                Some("a"),
                Some("b"),
                Some("x"),
                Some("y"),
                Some("x"),
                Some("y")
            ]
        );
        assert_eq!(slot(&fixed, &[], 2), None);
        assert!(complete(&fixed, &group, 4) && !complete(&fixed, &group, 3));
        assert!(complete(&fixed, &[], 2) && !complete(&fixed, &[], 3));
        assert!(!complete(&fixed, &group, 1));
    }

    #[test]
    fn a_call_out_of_order_or_short_is_refused_before_it_is_sent() {
        let s = scripts();
        let mut call = s.outbox_ack.key("outbox", "k");
        call.arg("group", "g");
        assert!(call.check().is_ok(), "no entries is a whole group of none");
        call.arg("entry", "1-0").arg("entry", "2-0");
        assert!(call.check().is_ok());
        let mut wrong = s.outbox_ack.key("outbox", "k");
        wrong.arg("entry", "1-0");
        let err = wrong.check().unwrap_err().to_string();
        assert!(err.contains("ARGV[1]") && err.contains("group"), "{err}");
        let short = s.credits_flush.key("credits", "c");
        assert!(short.check().is_err());
    }

    #[test]
    fn replies_are_parsed_against_their_declared_shape() {
        let def = &CREDITS_MOVE;
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let ok = Answer::parse(
            def,
            Value::Array(vec![b("ok"), Value::Int(5), Value::Int(1), Value::Int(2)]),
        )
        .unwrap();
        assert_eq!((ok.tag(), ok.int("total").unwrap()), ("ok", 5));
        assert!(ok.int("required").is_err(), "not a field of `ok`");
        assert!(ok.text("total").is_err(), "declared int");
        for bad in [
            Value::Array(vec![b("ok"), Value::Int(5)]),
            Value::Array(vec![b("nope")]),
            Value::Array(vec![b("ok"), b("x"), Value::Int(1), Value::Int(2)]),
            Value::Int(3),
        ] {
            assert!(Answer::parse(def, bad).is_err());
        }
        let claim = Answer::parse(&JOB_CLAIM, Value::Array(vec![b("ok")])).unwrap();
        assert!(claim.rest("entries").unwrap().is_empty());
        let flushed = Answer::parse(&CREDITS_FLUSH, Value::Int(7)).unwrap();
        assert_eq!(flushed.value().unwrap(), 7);
    }

    /// The highest `NAME[n]` index `body` uses.
    fn highest(body: &str, name: &str) -> usize {
        let pat = format!("{name}[");
        body.match_indices(&pat)
            .filter_map(|(i, _)| {
                let digits: String = body[i + pat.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                digits.parse().ok()
            })
            .max()
            .unwrap_or(0)
    }

    /// Every header against its script: the KEYS and ARGV the code indexes
    /// are declared (a script with a repeating group may index past its
    /// fixed ones), every tag it returns is declared, and every declared tag
    /// is one it can return.
    #[test]
    fn every_header_matches_what_its_script_does() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("lua");
        let read = |p: std::path::PathBuf| std::fs::read_to_string(&p).expect("a script");
        let strip = |s: &str| -> String {
            // Code only: comments would mention indexes they do not use.
            s.lines()
                .map(|l| l.split("--").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            ALL.len(),
            39,
            "a script was added or removed: update this count"
        );
        for def in ALL {
            let own = strip(&read(root.join(format!("{}.lua", def.name))));
            let header = header::Header::parse(&read(root.join(format!("{}.lua", def.name))))
                .expect("parses");
            let mut code = own.clone();
            for layout in &header.layouts {
                code += &strip(&read(root.join("include").join(format!("{layout}.lua"))));
            }
            let (keys, args) = (highest(&code, "KEYS"), highest(&code, "ARGV"));
            assert!(
                keys <= def.keys.len() || !def.key_group.is_empty(),
                "{}: uses KEYS[{keys}], declares {}",
                def.name,
                def.keys.len()
            );
            assert!(
                args <= def.args.len() || !def.arg_group.is_empty(),
                "{}: uses ARGV[{args}], declares {}",
                def.name,
                def.args.len()
            );
            let returned: Vec<&str> = own
                .match_indices("return {'")
                .filter_map(|(i, m)| own[i + m.len()..].split('\'').next())
                .collect();
            for tag in &returned {
                assert!(
                    def.replies.iter().any(|s| s.tag == Some(*tag)),
                    "{} returns {tag:?}, which its header does not declare",
                    def.name
                );
            }
            for shape in def.replies {
                if let Some(tag) = shape.tag {
                    assert!(
                        own.contains(&format!("'{tag}'")),
                        "{} declares {tag:?} but never says it",
                        def.name
                    );
                }
            }
        }
    }
}
