//! The end-to-end suite: the real binaries against real PostgreSQL and RabbitMQ, observed
//! from outside over HTTP, AMQP and SSE. One test binary (`cargo test --test integration
//! [filter]`): the [`harness`] is compiled and linked once, and every item of it is used by
//! some test below. Each module is one guarantee or feature. Tests run in parallel, each in
//! its own sandbox; the fault suite, which stops RabbitMQ, holds the broker alone.

mod harness;

mod admission;
mod authentication;
mod browser_sse;
mod bulk;
mod console;
mod cors;
mod dead_letters;
mod exactly_once;
mod faults;
mod hostile_input;
mod metrics;
mod openapi;
mod operations;
mod pagination;
mod pipeline;
mod rate_limits;
mod rejections;
mod seq_reuse;
mod sse_resume;
mod state_machine;
mod streams;
mod traces;
mod visibility;

/// `autotests = false` (Cargo.toml): a file under tests/ that no `mod` above names would
/// never be compiled, and its tests would silently not run.
#[test]
fn every_file_under_tests_is_a_module_of_this_binary() {
    let main = include_str!("main.rs");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    for entry in std::fs::read_dir(&dir).expect("reading tests/") {
        let path = entry.expect("a tests/ entry").path();
        let name = match path.extension() {
            Some(ext) if ext == "rs" => path.file_stem(),
            None if path.join("mod.rs").exists() => path.file_name(),
            _ => continue,
        };
        let name = name.and_then(|n| n.to_str()).expect("a UTF-8 file name");
        if name != "main" {
            assert!(
                main.contains(&format!("\nmod {name};\n")),
                "tests/main.rs does not declare `mod {name};`: {} is not compiled",
                path.display()
            );
        }
    }
}
