// Rebuild when migrations or Lua scripts change: both are embedded at compile time.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=lua");
}
