//! The `defender-edge` command line: parse, load configuration, wire the
//! pipeline, map outcomes to exit codes. No logic of its own.

fn main() {
    println!("defender-edge: under construction");
}
