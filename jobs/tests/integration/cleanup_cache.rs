//! cleanup-cache.

use jobs::cleanup_cache::cleanup_cache;

use crate::harness::TestEnv;

#[tokio::test]
async fn deletes_analytics_keys_in_batches_and_reports_redis() {
    let env = TestEnv::new().await;
    let mut conn = env.redis.clone();
    // More than one SCAN/UNLINK batch of analytics keys, and a few of each other family.
    let mut pipe = redis::pipe();
    for i in 0..2500 {
        pipe.cmd("SET")
            .arg(env.key(&format!("analytics:report_{i}")))
            .arg("{}")
            .arg("EX")
            .arg(600)
            .ignore();
    }
    for key in [
        "user:1",
        "user:2",
        "object:1",
        "shift:1",
        "shift:2",
        "shift:3",
        "active_shifts:1",
        "user_objects:1",
        "other:1",
    ] {
        pipe.cmd("SET")
            .arg(env.key(key))
            .arg("{}")
            .arg("EX")
            .arg(600)
            .ignore();
    }
    pipe.query_async::<()>(&mut conn).await.expect("seed keys");

    let report = cleanup_cache(&env.ctx).await.expect("cleanup");
    assert_eq!(report.deleted, 2500);
    let counts = &report.key_counts;
    assert_eq!((counts.user, counts.object, counts.shift), (2, 1, 3));
    assert_eq!(
        (counts.active_shifts, counts.user_objects, counts.analytics),
        (1, 1, 0)
    );
    assert_eq!(counts.total, 9);
    assert!(env.exists("user:1").await && env.exists("other:1").await);
    assert!(!env.exists("analytics:report_0").await);

    let stats = &report.redis_stats;
    assert!(stats.connected_clients >= 1);
    assert!(stats.used_memory > 0);
    assert!(!stats.used_memory_human.is_empty());
    assert!(!stats.maxmemory_policy.is_empty());
    assert!(stats.total_commands_processed > 0);
    assert!((0.0..=100.0).contains(&stats.hit_rate));
    let json = serde_json::to_value(&report).expect("json");
    for field in [
        "connected_clients",
        "used_memory",
        "used_memory_human",
        "total_commands_processed",
        "keyspace_hits",
        "keyspace_misses",
        "hit_rate",
        "evicted_keys",
        "maxmemory_policy",
    ] {
        assert!(json["redis_stats"].get(field).is_some(), "{field}");
    }

    let second = cleanup_cache(&env.ctx).await.expect("cleanup again");
    assert_eq!(second.deleted, 0);
    assert_eq!(second.key_counts, report.key_counts);
}
