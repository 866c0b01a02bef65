// `sqlx::migrate!` embeds `migrations/` at compile time; rebuild when a migration is
// added or changed, not only when Rust sources change. The git commit goes into
// `orderflow_build_info` and `--version`: `ORDERFLOW_GIT_SHA` when set (an image built
// without `.git` passes it as a build argument), else `git rev-parse`, else `unknown`.
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-env-changed=ORDERFLOW_GIT_SHA");
    // A commit moves the branch ref (or packed-refs), a checkout moves HEAD.
    if let Some(git_dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
    }
    if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
        for path in ["refs/heads", "packed-refs"] {
            if std::path::Path::new(&common).join(path).exists() {
                println!("cargo:rerun-if-changed={common}/{path}");
            }
        }
    }
    let sha = std::env::var("ORDERFLOW_GIT_SHA")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=ORDERFLOW_GIT_SHA={sha}");
}
