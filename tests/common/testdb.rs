//! A fresh database per test, on the backend the test binary was built for:
//! a SQLite file in the test's temp dir, or a PostgreSQL schema of its own
//! on `RUNSIGNAL_TEST_DATABASE_URL`, dropped when the test is done.
#![allow(dead_code)]

use std::path::Path;

/// The backends a test can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server the tests use (set by `.ci/run`).
pub fn postgres_url() -> Option<String> {
    std::env::var("RUNSIGNAL_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// Every backend this run can test: SQLite always, PostgreSQL when
/// `RUNSIGNAL_TEST_DATABASE_URL` is set (otherwise says it is skipped).
pub fn backends() -> Vec<Backend> {
    if postgres_url().is_some() {
        vec![Backend::Sqlite, Backend::Postgres]
    } else {
        println!("PostgreSQL skipped: RUNSIGNAL_TEST_DATABASE_URL is unset");
        vec![Backend::Sqlite]
    }
}

/// One test's database: its URL, and the schema to drop afterwards.
pub struct TestDb {
    pub url: String,
    schema: Option<(String, String)>,
}

impl TestDb {
    /// A new, empty database for one test.
    pub fn new(backend: Backend, dir: &Path) -> TestDb {
        match backend {
            Backend::Sqlite => TestDb {
                url: format!("sqlite://{}/runsignal.db", dir.display()),
                schema: None,
            },
            Backend::Postgres => {
                let base = postgres_url().expect(
                    "RUNSIGNAL_TEST_DATABASE_URL is set when the PostgreSQL suite is built",
                );
                let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
                admin(&base, &format!("CREATE SCHEMA {schema}"));
                let sep = if base.contains('?') { '&' } else { '?' };
                TestDb {
                    // Named after the schema, so the drop can end the
                    // connections a still-running server holds.
                    url: format!(
                        "{base}{sep}options=-c%20search_path%3D{schema}&application_name={schema}"
                    ),
                    schema: Some((base, schema)),
                }
            }
        }
    }

    /// End every server connection to this database (PostgreSQL: what a
    /// server restart does to them). False for SQLite, which has none.
    pub fn terminate_connections(&self) -> bool {
        let Some((base, schema)) = &self.schema else {
            return false;
        };
        admin(
            base,
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{schema}'"
            ),
        );
        true
    }

    /// Run statements on this test's database, from a connection of their
    /// own (to change it behind the server's back).
    pub fn execute(&self, sql: &str) {
        let (url, sql, sqlite) = (self.url.clone(), sql.to_owned(), self.schema.is_none());
        on_own_thread(async move {
            if sqlite {
                run_statements::<sqlx::SqliteConnection>(&url, sql).await;
            } else {
                run_statements::<sqlx::PgConnection>(&url, sql).await;
            }
        });
    }
}

/// `sql` on a connection of its own to `url`.
async fn run_statements<C>(url: &str, sql: String)
where
    C: sqlx::Connection,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
{
    let mut conn = C::connect(url).await.expect("the test database connects");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .expect("the statements run");
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((base, schema)) = &self.schema {
            let terminate = format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{schema}'"
            );
            admin(base, &terminate);
            admin(base, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
        }
    }
}

/// Run one statement on the server, from a thread of its own (callers may
/// be inside an async runtime or a `Drop`). Fails loudly: the variable is
/// set, so the server must be there.
fn admin(url: &str, sql: &str) {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    on_own_thread(async move {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap_or_else(|e| {
            panic!("RUNSIGNAL_TEST_DATABASE_URL is set but PostgreSQL is unreachable: {e}")
        });
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "SET lock_timeout = '10s'; {sql}"
        )))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    });
}

/// Run `work` to its end on a thread and runtime of its own (callers may
/// be inside an async runtime or a `Drop`).
fn on_own_thread(work: impl std::future::Future<Output = ()> + Send + 'static) {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the statements")
            .block_on(work)
    })
    .join()
    .expect("statements on the test database");
}
