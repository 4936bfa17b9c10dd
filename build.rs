//! Turns on the PostgreSQL run of the integration suite (`cfg(pg_tests)`)
//! when `RUNSIGNAL_TEST_DATABASE_URL` is set; without it that suite is
//! skipped with a printed reason and the SQLite suite still runs.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(pg_tests)");
    println!("cargo::rerun-if-env-changed=RUNSIGNAL_TEST_DATABASE_URL");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=migrations");
    match std::env::var("RUNSIGNAL_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => println!("cargo::rustc-cfg=pg_tests"),
        _ => println!(
            "cargo::warning=RUNSIGNAL_TEST_DATABASE_URL is unset: the PostgreSQL run of the test suite is skipped (SQLite runs)"
        ),
    }
}
