//! Telegram's limits belong to the bot: replicas sharing one Redis keep them together.

use std::time::{Duration, Instant};

use futures::future::join_all;
use jobs::telegram::{Telegram, TelegramSettings};
use redis::aio::ConnectionManager;

use crate::fake_telegram::{FakeTelegram, Reply};
use crate::harness::{REDIS_URL, TOKEN};

/// Two clients standing for two replicas: same bot, same Redis and key prefix.
async fn replicas(fake: &FakeTelegram, global: Duration) -> (Telegram, Telegram) {
    let redis = ConnectionManager::new(redis::Client::open(REDIS_URL).expect("redis url"))
        .await
        .expect("connect to Redis");
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let client = || {
        let mut settings = TelegramSettings::new(TOKEN, fake.url.clone());
        settings.global_interval = global;
        settings.per_chat_interval = Duration::from_secs(1);
        let telegram = Telegram::new(settings).expect("telegram client");
        telegram.share_limits(redis.clone(), &prefix);
        telegram
    };
    (client(), client())
}

#[tokio::test]
async fn replicas_keep_the_bots_global_interval_between_them() {
    let fake = FakeTelegram::start().await;
    let (a, b) = replicas(&fake, Duration::from_millis(100)).await;
    let started = Instant::now();
    // Ten chats, five sends from each replica, all at once. Alone, each replica would space its
    // own five by 100 ms (about 0.4 s); together they must space all ten (at least 0.9 s).
    let sends = (0..10_i64).map(|i| {
        let replica = if i % 2 == 0 { &a } else { &b };
        replica.send_message(5_000 + i, "hello")
    });
    for sent in join_all(sends).await {
        sent.expect("sent");
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(880),
        "ten sends through two replicas took {elapsed:?}: the global interval was not shared"
    );
    assert_eq!(fake.requests().len(), 10);
}

#[tokio::test]
async fn replicas_keep_one_message_per_second_per_chat_between_them() {
    let fake = FakeTelegram::start().await;
    let (a, b) = replicas(&fake, Duration::from_millis(1)).await;
    let started = Instant::now();
    let (first, second) = tokio::join!(a.send_message(7_777, "one"), b.send_message(7_777, "two"));
    first.expect("first");
    second.expect("second");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(980),
        "two sends to one chat from two replicas {elapsed:?} apart"
    );
}

#[tokio::test]
async fn a_retry_after_seen_by_one_replica_holds_back_the_others() {
    let fake = FakeTelegram::start().await;
    let (a, b) = replicas(&fake, Duration::from_millis(1)).await;
    fake.script_chat(8_001, &[Reply::TooManyRequests(1)]);
    let started = Instant::now();
    let first = async {
        a.send_message(8_001, "flooded")
            .await
            .expect("sent after retry_after");
    };
    let second = async {
        // Well after replica a got its 429, well before the second it was told to wait is up.
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.send_message(8_002, "other chat").await.expect("sent");
        started.elapsed()
    };
    let ((), b_done) = tokio::join!(first, second);
    assert!(
        b_done >= Duration::from_millis(900),
        "replica b sent {b_done:?} after replica a's 429 with retry_after 1 s"
    );
}
