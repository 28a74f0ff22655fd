//! Integration tests of the jobs against the real local PostgreSQL and Redis, with a fake
//! Telegram Bot API. One binary (one link) for all of them; each test builds its own
//! [`harness::TestEnv`], so they run in parallel.

mod auto_close;
mod cleanup_cache;
mod fake_telegram;
mod harness;
mod on_demand;
mod planner;
mod reminders;
mod telegram_limits;
mod unusable;
