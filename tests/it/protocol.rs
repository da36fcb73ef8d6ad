//! docs/wire-protocol.md carries every Lua script's contract (its header:
//! what it does, its includes, KEYS, ARGV and reply), generated from
//! `lua/*.lua` so the document cannot drift from the scripts.
//! `AGENTBUS_BLESS=1 cargo test --test it protocol` rewrites it (never in CI).

use std::path::PathBuf;

const BEGIN: &str = "<!-- scripts:begin (generated from lua/*.lua by tests/it/protocol.rs) -->";
const END: &str = "<!-- scripts:end -->";

/// The scripts section: each script's header comment, in name order.
fn scripts_section(root: &std::path::Path) -> String {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(root.join("lua"))
        .expect("lua/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "lua"))
        .collect();
    paths.sort();
    let mut out = format!(
        "{BEGIN}\n\n## Scripts\n\nEvery change of state is one of these, called with `EVALSHA` (the \
         script's SHA1 of its assembled text: the helpers of `lua/include/` its \
         `Includes:` line names, then the script). A script checks its arguments \
         before its first write (a bad one is an error reply, and nothing \
         changed), except where its header says the caller validated them.\n"
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
    // Every script is there, with its includes, KEYS and ARGV.
    for section in generated.split("\n### ").skip(1) {
        assert!(section.contains("Includes:"), "{section}");
    }
}
