//! One isolated environment per test: a fresh, randomly named PostgreSQL database (migrated,
//! dropped at the end), a unique Redis key prefix (so tests share one Redis in parallel), a fake
//! Telegram server, and a `jobs::Context` over all three.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use futures::StreamExt;
use jobs::telegram::{Telegram, TelegramSettings};
use jobs::{Context, JobOptions};
use redis::aio::ConnectionManager;
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};

use crate::fake_telegram::FakeTelegram;

pub const PG_ADMIN_URL: &str = "postgres://postgres@localhost:5432/postgres";
pub const PG_BASE_URL: &str = "postgres://postgres@localhost:5432";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const TOKEN: &str = "123456:TEST-TOKEN";

pub struct TestEnv {
    pub ctx: Context,
    pub pool: PgPool,
    pub prefix: String,
    pub redis: ConnectionManager,
    pub redis_client: redis::Client,
    pub telegram: FakeTelegram,
    db_name: String,
}

pub struct EnvOptions {
    pub telegram: bool,
    pub per_chat_interval: Duration,
    pub reminder_hours_before: u32,
    pub default_timezone: chrono_tz::Tz,
}

impl Default for EnvOptions {
    fn default() -> Self {
        Self {
            telegram: true,
            // Fast tests: the limiter's real values are covered by its unit test.
            per_chat_interval: Duration::from_millis(5),
            reminder_hours_before: 2,
            default_timezone: chrono_tz::Europe::Moscow,
        }
    }
}

impl TestEnv {
    pub async fn new() -> Self {
        Self::with(EnvOptions::default()).await
    }

    pub async fn without_telegram() -> Self {
        Self::with(EnvOptions {
            telegram: false,
            ..Default::default()
        })
        .await
    }

    pub async fn with(options: EnvOptions) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let db_name = format!("jobs_test_{id}");
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(PG_ADMIN_URL)
            .await
            .expect("connect to local PostgreSQL");
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{db_name}\"")))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(6)
            .connect(&format!("{PG_BASE_URL}/{db_name}"))
            .await
            .expect("connect to test database");
        jobs::migrate(&pool).await.expect("migrate");

        let redis_client = redis::Client::open(REDIS_URL).expect("redis url");
        let redis = ConnectionManager::new(redis_client.clone())
            .await
            .expect("connect to Redis");
        let prefix = format!("test:{id}:");

        let telegram = FakeTelegram::start().await;
        let client = options.telegram.then(|| {
            let mut settings = TelegramSettings::new(TOKEN, telegram.url.clone());
            settings.initial_backoff = Duration::from_millis(50);
            settings.max_backoff = Duration::from_millis(200);
            settings.max_retry_after = Duration::from_secs(5);
            settings.global_interval = Duration::from_millis(1);
            settings.per_chat_interval = options.per_chat_interval;
            settings.request_timeout = Duration::from_secs(5);
            Telegram::new(settings).expect("telegram client")
        });
        let ctx = Context::new(
            pool.clone(),
            redis.clone(),
            client,
            JobOptions {
                default_timezone: options.default_timezone,
                reminder_hours_before: options.reminder_hours_before,
                redis_key_prefix: prefix.clone(),
            },
        );
        Self {
            ctx,
            pool,
            prefix,
            redis,
            redis_client,
            telegram,
            db_name,
        }
    }

    /// A key as the jobs see it.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub async fn set(&self, name: &str) {
        let mut conn = self.redis.clone();
        redis::cmd("SET")
            .arg(self.key(name))
            .arg("{}")
            .arg("EX")
            .arg(600)
            .query_async::<()>(&mut conn)
            .await
            .expect("redis SET");
    }

    pub async fn exists(&self, name: &str) -> bool {
        let mut conn = self.redis.clone();
        redis::cmd("EXISTS")
            .arg(self.key(name))
            .query_async::<i64>(&mut conn)
            .await
            .expect("redis EXISTS")
            == 1
    }

    /// Subscribes to this test's `shifts:updates`; call before running the job.
    pub async fn subscribe(&self) -> redis::aio::PubSub {
        let mut pubsub = self.redis_client.get_async_pubsub().await.expect("pubsub");
        pubsub
            .subscribe(self.key("shifts:updates"))
            .await
            .expect("subscribe");
        pubsub
    }

    // ---- seeding -------------------------------------------------------------------------

    pub async fn user(&self) -> (i32, i64) {
        self.user_with_prefs(None).await
    }

    pub async fn user_with_prefs(&self, prefs: Option<Value>) -> (i32, i64) {
        let telegram_id: i64 =
            sqlx::query_scalar("SELECT COALESCE(max(telegram_id), 1000) + 1 FROM users")
                .fetch_one(&self.pool)
                .await
                .expect("next telegram id");
        let id = sqlx::query_scalar(
            "INSERT INTO users (telegram_id, first_name, role, notification_preferences) \
             VALUES ($1, 'Иван', 'employee', COALESCE($2, '{}'::jsonb)) RETURNING id",
        )
        .bind(telegram_id)
        .bind(prefs.map(sqlx::types::Json))
        .fetch_one(&self.pool)
        .await
        .expect("insert user");
        (id, telegram_id)
    }

    pub async fn object(&self, o: ObjectSpec) -> i32 {
        let (owner, _) = self.user().await;
        sqlx::query_scalar(
            "INSERT INTO objects (name, owner_id, address, opening_time, closing_time, hourly_rate, \
                                  auto_close_minutes, work_days_mask, schedule_repeat_weeks, timezone, is_active) \
             VALUES ($1, $2, $3, $4, $5, $6, 60, $7, $8, $9, $10) RETURNING id",
        )
        .bind(o.name)
        .bind(owner)
        .bind(o.address)
        .bind(o.opening)
        .bind(o.closing)
        .bind(o.rate)
        .bind(o.work_days_mask)
        .bind(o.repeat_weeks)
        .bind(o.timezone)
        .bind(o.active)
        .fetch_one(&self.pool)
        .await
        .expect("insert object")
    }

    pub async fn slot(
        &self,
        object_id: i32,
        date: NaiveDate,
        start: NaiveTime,
        end: NaiveTime,
        active: bool,
    ) -> i32 {
        sqlx::query_scalar(
            "INSERT INTO time_slots (object_id, slot_date, start_time, end_time, is_active) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(object_id)
        .bind(date)
        .bind(start)
        .bind(end)
        .bind(active)
        .fetch_one(&self.pool)
        .await
        .expect("insert slot")
    }

    pub async fn shift(
        &self,
        user_id: i32,
        object_id: i32,
        start: DateTime<Utc>,
        rate: Option<Decimal>,
        slot: Option<i32>,
    ) -> i32 {
        sqlx::query_scalar(
            "INSERT INTO shifts (user_id, object_id, time_slot_id, start_time, status, hourly_rate) \
             VALUES ($1, $2, $3, $4, 'active', $5) RETURNING id",
        )
        .bind(user_id)
        .bind(object_id)
        .bind(slot)
        .bind(start)
        .bind(rate)
        .fetch_one(&self.pool)
        .await
        .expect("insert shift")
    }

    pub async fn schedule(&self, s: ScheduleSpec) -> i32 {
        sqlx::query_scalar(
            "INSERT INTO shift_schedules (user_id, object_id, time_slot_id, planned_start, planned_end, \
                                          status, auto_closed, notification_sent) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(s.user_id)
        .bind(s.object_id)
        .bind(s.slot)
        .bind(s.start)
        .bind(s.end)
        .bind(s.status)
        .bind(s.auto_closed)
        .bind(s.notification_sent)
        .fetch_one(&self.pool)
        .await
        .expect("insert schedule")
    }
}

pub struct ObjectSpec {
    pub name: &'static str,
    pub address: Option<&'static str>,
    pub opening: NaiveTime,
    pub closing: NaiveTime,
    pub rate: Decimal,
    pub work_days_mask: i32,
    pub repeat_weeks: i32,
    pub timezone: Option<&'static str>,
    pub active: bool,
}

impl Default for ObjectSpec {
    fn default() -> Self {
        Self {
            name: "Склад №1",
            address: Some("ул. Ленина, 1"),
            opening: hm(9, 0),
            closing: hm(18, 0),
            rate: dec("500.00"),
            work_days_mask: 31,
            repeat_weeks: 1,
            timezone: None,
            active: true,
        }
    }
}

pub struct ScheduleSpec {
    pub user_id: i32,
    pub object_id: i32,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub status: Option<&'static str>,
    pub auto_closed: Option<bool>,
    pub notification_sent: Option<bool>,
    pub slot: Option<i32>,
}

impl ScheduleSpec {
    pub fn new(user_id: i32, object_id: i32, start: DateTime<Utc>, end: DateTime<Utc>) -> Self {
        Self {
            user_id,
            object_id,
            start,
            end,
            status: Some("planned"),
            auto_closed: Some(false),
            notification_sent: Some(false),
            slot: None,
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Drop can't await, and the test's runtime may be shutting down: clean up on a thread
        // with its own runtime. FORCE ends the pool's connections.
        let db_name = self.db_name.clone();
        let prefix = self.prefix.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(admin) = PgPoolOptions::new()
                    .max_connections(1)
                    .connect(PG_ADMIN_URL)
                    .await
                {
                    let _ = sqlx::query(AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)"
                    )))
                    .execute(&admin)
                    .await;
                    admin.close().await;
                }
                if let Ok(client) = redis::Client::open(REDIS_URL)
                    && let Ok(mut conn) = ConnectionManager::new(client).await
                {
                    let _ = jobs::cache::delete_matching(&mut conn, &format!("{prefix}*")).await;
                }
            });
        })
        .join();
    }
}

/// Collects up to `n` messages from `pubsub`, waiting at most `wait` overall.
pub async fn events(pubsub: &mut redis::aio::PubSub, n: usize, wait: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    let mut stream = pubsub.on_message();
    let deadline = tokio::time::Instant::now() + wait;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(msg)) => {
                let payload: String = msg.get_payload().expect("payload");
                out.push(serde_json::from_str(&payload).expect("event JSON"));
            }
            _ => break,
        }
    }
    out
}

pub fn hm(h: u32, m: u32) -> NaiveTime {
    NaiveTime::from_hms_opt(h, m, 0).expect("time")
}

pub fn dec(s: &str) -> Decimal {
    s.parse().expect("decimal")
}

pub fn utc(s: &str) -> DateTime<Utc> {
    s.parse().expect("timestamp")
}

pub fn date(s: &str) -> NaiveDate {
    s.parse().expect("date")
}
