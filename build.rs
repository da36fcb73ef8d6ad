//! Embeds the migrations and the Lua scripts. Each `lua/<name>.lua` says in
//! its header (src/scripts/header.rs) which helpers it needs, its KEYS, ARGV
//! and replies. This assembles `lua/include/<helper>.lua` in the order of
//! `@include`, then the script, into `$OUT_DIR/lua/<name>.lua`, and writes
//! `$OUT_DIR/scripts.rs`: each script's contract as data, which
//! src/scripts/mod.rs includes. A header that does not parse fails the build.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

#[path = "src/scripts/header.rs"]
#[allow(dead_code)]
mod header;

use header::Header;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=lua");
    println!("cargo:rerun-if-changed=src/scripts/header.rs");
    let out_dir = std::env::var("OUT_DIR").expect("OUT_DIR");
    let out = Path::new(&out_dir).join("lua");
    fs::create_dir_all(&out).expect("create OUT_DIR/lua");
    let mut paths: Vec<_> = fs::read_dir("lua")
        .expect("lua/")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "lua"))
        .collect();
    paths.sort();
    let include = |name: &str| -> Result<String, String> {
        fs::read_to_string(Path::new("lua/include").join(format!("{name}.lua")))
            .map_err(|e| format!("include {name}: {e}"))
    };
    let mut defs = String::new();
    let mut fields = String::new();
    let mut inits = String::new();
    let mut all = String::new();
    let mut each = String::new();
    for path in paths {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("a UTF-8 name");
        let fail = |e: String| -> ! { panic!("{}: {e}", path.display()) };
        let source = fs::read_to_string(&path).expect("read a script");
        let h = Header::parse(&source)
            .and_then(|h| h.resolve(|l| include(l).and_then(|s| Header::parse(&s))))
            .unwrap_or_else(|e| fail(e));
        h.check_replies().unwrap_or_else(|e| fail(e));
        if h.includes.is_empty() {
            fail("no `@include` line (write `@include none` for none)".into());
        }
        let mut assembled = String::new();
        for inc in h.includes.iter().filter(|n| *n != "none") {
            assembled += &include(inc).unwrap_or_else(|e| fail(e));
        }
        assembled += &source;
        fs::write(out.join(format!("{name}.lua")), assembled).expect("write a script");

        let upper = name.to_uppercase();
        let shapes: Vec<String> = h
            .replies
            .iter()
            .map(|s| {
                let fields: Vec<String> = s
                    .fields
                    .iter()
                    .map(|(n, t)| format!("({n:?}, Ty::{t:?})"))
                    .collect();
                format!(
                    "Shape {{ tag: {:?}, fields: &[{}], bare: {} }}",
                    s.tag,
                    fields.join(", "),
                    s.bare.map_or("None".into(), |t| format!("Some(Ty::{t:?})"))
                )
            })
            .collect();
        writeln!(
            defs,
            "/// `lua/{name}.lua`'s contract, from its header.\npub static {upper}: Def = Def {{ \
             name: {name:?}, keys: &{:?}, key_group: &{:?}, args: &{:?}, arg_group: &{:?}, \
             replies: &[{}] }};",
            h.keys,
            h.key_group,
            h.args,
            h.arg_group,
            shapes.join(", ")
        )
        .expect("write to a String");
        writeln!(fields, "    /// `lua/{name}.lua`\n    pub {name}: Lua,").expect("write");
        writeln!(
            inits,
            "        {name}: Lua::new(&{upper}, include_str!(concat!(env!(\"OUT_DIR\"), \"/lua/{name}.lua\"))),"
        )
        .expect("write");
        writeln!(all, "    &{upper},").expect("write");
        writeln!(each, "            &self.{name},").expect("write");
    }
    let generated = format!(
        "{defs}\n/// Every script, by name.\npub struct Scripts {{\n{fields}}}\n\n\
         fn assemble() -> Scripts {{\n    Scripts {{\n{inits}    }}\n}}\n\n\
         /// Every script's contract, in name order.\npub static ALL: &[&Def] = &[\n{all}];\n\n\
         impl Scripts {{\n    /// Every script, in name order.\n    pub fn all(&self) -> Vec<&Lua> {{\n        vec![\n{each}        ]\n    }}\n}}\n"
    );
    fs::write(Path::new(&out_dir).join("scripts.rs"), generated).expect("write scripts.rs");
}
