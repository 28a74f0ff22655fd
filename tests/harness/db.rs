//! A fresh, migrated PostgreSQL database per test, dropped when the test is done.

use std::process::Command;

/// A fresh, migrated PostgreSQL database for one test; dropped by [`TestDatabase::drop_now`].
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

pub const PG_ADMIN_URL: &str = "postgresql://postgres@127.0.0.1:5432/postgres";

impl TestDatabase {
    pub async fn create() -> Self {
        let name = format!("worker_test_{}", uuid::Uuid::new_v4().simple());
        let admin = sqlx::PgPool::connect(PG_ADMIN_URL)
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create database");
        let url = format!("postgresql://postgres@127.0.0.1:5432/{name}");
        let out = Command::new(env!("CARGO_BIN_EXE_worker"))
            .arg("migrate")
            .env("DATABASE_URL", &url)
            .output()
            .expect("worker migrate");
        assert!(
            out.status.success(),
            "worker migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { name, url }
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url)
            .await
            .expect("connect to the test database")
    }

    pub async fn drop_now(self) {
        let admin = sqlx::PgPool::connect(PG_ADMIN_URL)
            .await
            .expect("connect to PostgreSQL");
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&admin)
        .await;
    }
}
