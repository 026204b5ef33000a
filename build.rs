//! Records the commit the package is built from as `BURN_BNB_COMMIT`, which `llama_bench`
//! writes into its tables: a binary carried to the GPU machine would otherwise label its rows
//! with `git describe` of whatever checkout it runs in. A `BURN_BNB_COMMIT` set for the build
//! wins, and one set at run time wins over both.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=BURN_BNB_COMMIT");
    // The commit, and whether the sources differ from it (`-dirty`).
    for path in [".git/HEAD", ".git/index", "src", "crates", "examples"] {
        println!("cargo:rerun-if-changed={path}");
    }
    if std::env::var_os("BURN_BNB_COMMIT").is_some() {
        return;
    }
    let described = Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(commit) = described.filter(|c| !c.is_empty()) {
        println!("cargo:rustc-env=BURN_BNB_COMMIT={commit}");
    }
}
