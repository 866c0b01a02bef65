// `sqlx::migrate!` embeds `migrations/` at compile time; rebuild when a migration is
// added or changed, not only when Rust sources change. The git commit goes into
// `orderflow_build_info` and `--version` (`unknown` outside a git checkout, e.g. in an
// image built from a source archive; `ORDERFLOW_GIT_SHA` overrides it).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-env-changed=ORDERFLOW_GIT_SHA");
    let sha = std::env::var("ORDERFLOW_GIT_SHA").ok().or_else(|| {
        let out = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    println!(
        "cargo:rustc-env=ORDERFLOW_GIT_SHA={}",
        sha.unwrap_or_else(|| "unknown".to_owned())
    );
}
