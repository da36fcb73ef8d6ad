//! Embeds the migrations and the Lua scripts. Each `lua/<name>.lua` says in
//! its header which helpers it needs (`-- Includes: common, job` or
//! `-- Includes: none`); this assembles `lua/include/<helper>.lua` in that
//! order, then the script, into `$OUT_DIR/lua/<name>.lua`, which
//! src/scripts.rs embeds. A script without that header line fails the build.

use std::fs;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=lua");
    let out = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("lua");
    fs::create_dir_all(&out).expect("create OUT_DIR/lua");
    let mut names: Vec<_> = fs::read_dir("lua")
        .expect("lua/")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "lua"))
        .collect();
    names.sort();
    for path in names {
        let source = fs::read_to_string(&path).expect("read a script");
        let header = source.lines().take_while(|l| l.starts_with("--"));
        let includes = header
            .filter_map(|l| l.strip_prefix("-- Includes:"))
            .next()
            .unwrap_or_else(|| panic!("{} lacks a `-- Includes:` header line", path.display()));
        let mut assembled = String::new();
        for name in includes
            .split(',')
            .map(str::trim)
            .filter(|n| *n != "none" && !n.is_empty())
        {
            let include = Path::new("lua/include").join(format!("{name}.lua"));
            assembled += &fs::read_to_string(&include)
                .unwrap_or_else(|e| panic!("{}: include {name}: {e}", path.display()));
        }
        assembled += &source;
        let file = path.file_name().expect("a file name");
        fs::write(out.join(file), assembled).expect("write an assembled script");
    }
}
