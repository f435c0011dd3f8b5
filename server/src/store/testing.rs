//! The databases the store's tests run on: every test body is an `async fn(TestDatabase)`, run
//! once on a fresh SQLite file and once on a fresh PostgreSQL database ([`on_both_databases`]).

use super::Store;

/// The tests' private PostgreSQL server, shared with the integration tests (by path, so that
/// neither a cargo feature nor a test-only crate is needed).
#[path = "../../tests/support/postgres.rs"]
pub(crate) mod postgres;

/// A fresh, empty database for one test.
pub(crate) struct TestDatabase {
    pub url: String,
    /// The SQLite file's folder, removed when the test ends.
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        Self {
            url: format!("sqlite://{}", dir.path().join("baton.db").display()),
            _dir: Some(dir),
        }
    }

    /// Panics, saying why, when the tests' PostgreSQL server cannot be had.
    pub fn postgres() -> Self {
        Self {
            url: postgres::fresh_database(),
            _dir: None,
        }
    }

    /// Opens the database (applying the migrations the first time).
    pub async fn connect(&self) -> Store {
        Store::connect(&self.url)
            .await
            .unwrap_or_else(|error| panic!("the test database opens: {error}"))
    }
}

/// For each `async fn name(db: TestDatabase)` listed, two tests: `on_sqlite::name` and
/// `on_postgres::name`.
macro_rules! on_both_databases {
    ($($test:ident),+ $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test($crate::store::testing::TestDatabase::sqlite()).await
                }
            )+
        }
        mod on_postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test($crate::store::testing::TestDatabase::postgres()).await
                }
            )+
        }
    };
}

pub(crate) use on_both_databases;
