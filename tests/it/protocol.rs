//! docs/wire-protocol.md carries every Lua script's contract (its header:
//! what it does, its `@include`, `@key`, `@arg` and `@reply` lines), generated from
//! `lua/*.lua` so the document cannot drift from the scripts.
//! `AGENTBUS_BLESS=1 cargo test --test it protocol` rewrites it (never in CI).

use std::path::PathBuf;

const BEGIN: &str = "<!-- scripts:begin (generated from lua/*.lua by tests/it/protocol.rs) -->";
const END: &str = "<!-- scripts:end -->";

/// How to read a header (the grammar src/scripts/header.rs parses).
const HEADERS: &str = "A script's leading comment is its contract. Lines starting with `@` \
are for programs (src/scripts/header.rs parses them; build.rs and the Rust \
calls are made from them, and a client in another language can do the same); \
the other lines are prose.

```text
-- @include common job     files of lua/include/ to put before the script, in order (`none`: none)
-- @layout job             KEYS and ARGV declared by that include come first (its own @key/@arg lines)
-- @key credits ...        KEYS[i], in order, by name, then what it is
-- @key (agent, inbox)...  a repeating group of KEYS after the fixed ones
-- @arg tenant ...         ARGV[i], in order (`name...` or `(a, b)...`: a repeating group, last)
-- @reply ok(total:int, reserved:int) ...   a reply {'ok', total, reserved}
-- @reply missing          a reply {'missing'}
-- @returns int            an untagged reply: int, raw, or a list (a:int, b:raw)
```

Field types: `int`, `text`, `texts` (array of text), `ints` (array of \
integers), `raw` (any value; the prose says what) and `rest` (every \
remaining element, last only). The layouts' declarations are in \
`lua/include/job.lua`, `invoke.lua` and `bb.lua`.";

/// The numbers a client of the scripts needs (prices, delivery rules),
/// from the server's own defaults so the document cannot drift from them.
fn defaults_section() -> String {
    use agentbus::bus::defaults as d;
    let p = agentbus::prices::Prices::default();
    let c = |minor: i64| agentbus::money::from_minor(minor).to_string();
    let mut out = String::from(
        "## Prices and delivery rules\n\nDefault prices (credits; `AGENTBUS_PRICES` overrides \
         them, e.g. `job_item=2.5`; scripts take them in hundredths as their `price` argument; \
         a running server's own prices and limits are at `GET /api/v1/settings`):\n\n\
         | skill | credits | charged by |\n|---|---|---|\n",
    );
    for (skill, minor, by) in [
        (
            "agent_spawn",
            p.agent_spawn,
            "job_spawn (once per job, reserved with its items)",
        ),
        (
            "job_item",
            p.job_item,
            "job_spawn reserves, job_complete charges each item once",
        ),
        (
            "agent_message",
            p.agent_message,
            "message_send, message_broadcast (per delivery); broadcast_begin reserves, broadcast_deliver charges",
        ),
        (
            "agent_invoke",
            p.agent_invoke,
            "invoke_start reserves, invoke_respond charges on success",
        ),
        ("blackboard_read", p.blackboard_read, "bb_read"),
        (
            "blackboard_write",
            p.blackboard_write,
            "bb_write, bb_increment",
        ),
        ("blackboard_lock", p.blackboard_lock, "bb_lock"),
    ] {
        out += &format!("| `{skill}` | {} | {by} |\n", c(minor));
    }
    out += &format!(
        "\nInbox delivery: a message left unacknowledged for {} s is delivered again \
         (`inbox_redeliver`); one delivered {} times (`AGENTBUS_MAX_DELIVERIES`) goes to the \
         tenant's dead-letter stream instead; an entry whose payload is not MessagePack is \
         dead-lettered alone on its first read (`inbox_poison`). An inbox keeps its newest {} \
         entries (`AGENTBUS_INBOX_CAP`). An instance silent for {} s is stale (not invokable). \
         A job item held longer than its `timeout_per_item` is delivered again by the \
         reclaimer, and fails for good after `max_retries`.\n\n\
         Field names on the wire and in REST:\n\n\
         | wire (stream field, script argument) | REST |\n|---|---|\n\
         | `from` | `from_instance_id` |\n| `type` | `message_type` |\n| `id` | `message_id` |\n\
         | `job` | `job_id` |\n| `reply_to` | `reply_to_id` |\n| `caller` | `caller_instance_id` |\n\
         | `target` | `target_instance_id` |\n| `request` | `request_payload` |\n\
         | `response` | `response_payload` |\n| `idx` | `item_index` |\n| `input` | `input` |\n\
         | `output` | `output` |\n",
        d::REDELIVER_AFTER_SECS,
        d::MAX_DELIVERIES,
        d::INBOX_CAP,
        d::STALE_AFTER_SECS,
    );
    out
}

/// The scripts section: each script's header comment, in name order.
fn scripts_section(root: &std::path::Path) -> String {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(root.join("lua"))
        .expect("lua/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "lua"))
        .collect();
    paths.sort();
    let mut out = format!(
        "{BEGIN}\n\n{}\n## Script headers\n\n{HEADERS}\n\n## Scripts\n\nEvery change of state is one of these, called with `EVALSHA` (the \
         script's SHA1 of its assembled text: the files of `lua/include/` its \
         `@include` line names, in that order, then the script). A script checks its arguments \
         before its first write (a bad one is an error reply, and nothing \
         changed), except where its header says the caller validated them.\n",
        defaults_section()
    );
    for path in paths {
        let name = path
            .file_stem()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let source = std::fs::read_to_string(&path).expect("read a script");
        out += &format!("\n### `{name}`\n\n```\n");
        for line in source.lines().take_while(|l| l.starts_with("--")) {
            out += line
                .trim_start_matches("--")
                .strip_prefix(' ')
                .unwrap_or("");
            out.push('\n');
        }
        out += "```\n";
    }
    out + "\n" + END
}

#[test]
fn the_wire_protocol_lists_every_script_as_its_header_says() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let file = root.join("docs/wire-protocol.md");
    let doc = std::fs::read_to_string(&file).expect("docs/wire-protocol.md");
    let generated = scripts_section(&root);
    let current = match (doc.find(BEGIN), doc.find(END)) {
        (Some(a), Some(b)) => &doc[a..b + END.len()],
        _ => "",
    };
    if std::env::var_os("AGENTBUS_BLESS").is_some() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "AGENTBUS_BLESS is set in CI: the committed document would not be checked"
        );
        let updated = if current.is_empty() {
            format!("{}\n\n{generated}\n", doc.trim_end())
        } else {
            doc.replace(current, &generated)
        };
        std::fs::write(&file, updated).expect("write docs/wire-protocol.md");
        return;
    }
    assert!(
        current == generated,
        "docs/wire-protocol.md is stale: run `AGENTBUS_BLESS=1 cargo test --test it protocol` and commit it"
    );
    // Every script is there, with its includes and replies.
    let sections: Vec<&str> = generated.split("\n### ").skip(1).collect();
    assert_eq!(sections.len(), agentbus::scripts::ALL.len());
    for section in sections {
        assert!(section.contains("@include"), "{section}");
        assert!(
            section.contains("@reply") || section.contains("@returns"),
            "{section}"
        );
    }
}

/// Every key name keys.rs builds for sample values: the fixture the Python
/// client's tests compare their own key names with
/// (clients/python/tests/fixtures/contract.json). Blessed like the document.
fn key_fixture() -> String {
    use agentbus::keys::{Ident, Keyspace, TenantId};
    let ks = Keyspace::new("ab").expect("prefix");
    let t = ks.tenant(&TenantId::new("t1").expect("tenant"));
    let job = uuid::Uuid::parse_str("6f1c2b8e-2d1a-4c59-9a47-0e3f1e6c7a10").expect("uuid");
    let i = Ident::new("instance", "i1").expect("ident");
    let bb = t.blackboard(&Ident::new("namespace", "ns1").expect("ident"));
    let names: serde_json::Map<String, serde_json::Value> = [
        ("tenants", ks.tenants_of("t1")),
        (
            "outbox_ready",
            agentbus::keys::ready_signal(t.outbox().as_bytes())
                .expect("an outbox key")
                .0,
        ),
        (
            "outbox_ready_other",
            ks.outbox_ready(agentbus::keys::ready_shard("tenant-b")),
        ),
        ("due_reap", ks.due_of(agentbus::keys::Chore::Reap, "t1")),
        (
            "due_reclaim_other",
            ks.due_of(agentbus::keys::Chore::Reclaim, "tenant-b"),
        ),
        ("credits", t.credits()),
        ("outbox", t.outbox()),
        ("jobs", t.jobs()),
        ("active_jobs", t.active_jobs()),
        ("job", t.job(&job)),
        ("job_items", t.job_items(&job)),
        ("job_done", t.job_done(&job)),
        ("job_results", t.job_results(&job)),
        ("job_staging", t.job_staging(&job)),
        ("dlq", t.dlq()),
        ("outbox_dead", t.outbox_dead()),
        ("agents", t.agents()),
        ("agent_prefix", t.agent_prefix()),
        ("agent", t.agent(&i)),
        ("agents_of_type_prefix", t.agents_of_type_prefix()),
        ("agents_of_job_prefix", t.agents_of_job_prefix()),
        ("agents_with_status_prefix", t.agents_with_status_prefix()),
        ("inbox_prefix", t.inbox_prefix()),
        ("inbox", t.inbox(&i)),
        ("inbox_read_early", t.inbox_read_early(&i)),
        ("invoke", t.invoke("inv1")),
        ("pending_invokes", t.pending_invokes()),
        ("replies", t.replies("p1")),
        ("blackboard_root", t.blackboard_root()),
        ("blackboard_namespaces", t.blackboard_namespaces()),
        ("blackboard_names", t.blackboard_names()),
        ("task_stats", t.task_stats("task1")),
        ("agent_task_stats", t.agent_task_stats("w1", "task1")),
        ("bb_vals", bb.vals.clone()),
        ("bb_nums", bb.nums.clone()),
        ("bb_lex", bb.lex.clone()),
        ("bb_score", bb.score.clone()),
        ("bb_agg", bb.agg.clone()),
        ("bb_exp", bb.exp.clone()),
        ("bb_fence", bb.fence.clone()),
        ("bb_namespaces", bb.namespaces.clone()),
        ("bb_lock", bb.lock("l1")),
    ]
    .into_iter()
    .map(|(k, v): (&str, String)| (k.to_string(), serde_json::json!(v)))
    .collect();
    let keys = serde_json::json!({
        "prefix": "ab",
        "tenant": "t1",
        "job": job.to_string(),
        "instance": "i1",
        "invoke": "inv1",
        "process": "p1",
        "task": "task1",
        "worker": "w1",
        "namespace": "ns1",
        "lock": "l1",
        "names": names,
        // Each script's SHA1 as the server assembles it: a client that
        // assembles the same text from the headers gets the same one.
        "script_sha1": agentbus::scripts::scripts()
            .all()
            .into_iter()
            .map(|l| (l.def().name.to_string(), serde_json::json!(l.script().get_hash())))
            .collect::<serde_json::Map<_, _>>(),
    });
    serde_json::to_string_pretty(&keys).expect("json") + "\n"
}

#[test]
fn the_python_clients_contract_fixture_is_what_the_server_builds() {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("clients/python/tests/fixtures/contract.json");
    let generated = key_fixture();
    if std::env::var_os("AGENTBUS_BLESS").is_some() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "AGENTBUS_BLESS is set in CI: the committed fixture would not be checked"
        );
        std::fs::create_dir_all(file.parent().expect("dir")).expect("mkdir");
        std::fs::write(&file, &generated).expect("write the fixture");
    }
    let committed = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        committed == generated,
        "clients/python/tests/fixtures/contract.json is stale: run `AGENTBUS_BLESS=1 cargo test --test it protocol`"
    );
}
