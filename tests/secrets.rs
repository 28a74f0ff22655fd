//! No secret is printed, whatever characters it holds and however it is given: passwords full
//! of URL-special characters, raw and percent-encoded, inside the userinfo and as
//! `?password=`, plus the Telegram and HTTP tokens — through `worker config` (text and JSON),
//! the startup line and retry warnings of `worker run` (text and JSON logs, `RUST_LOG=debug`,
//! and lapin's own lines turned on), the exit error of a malformed URL, `worker migrate`
//! against an unreachable PostgreSQL, and a configuration file that is not TOML.
//!
//! The check is strict: no run of 4 characters of any secret appears anywhere in stdout or
//! stderr.

mod harness;

use std::time::Duration;

use harness::*;

/// Every character that ends a part of a URL, raw.
const RAW: &str = "Zq7u/Kx9?Mw#Tp@Rv:%2Fw";
/// The same, percent-encoded (as it should be written).
const ENCODED: &str = "Zq7u%2FKx9%3FMw%23Tp%40Rv%3A%252Fw";
/// Another password, for the query forms.
const QUERY_RAW: &str = "Hj4e/Lw8?Qs#Yb@Nc:%3Ad";
const QUERY_ENCODED: &str = "Hj4e%2FLw8%3FQs%23Yb%40Nc%3A%253Ad";
const TELEGRAM_TOKEN: &str = "987654:AAHfq-Wz81_Xk3Jp9Lm";
const HTTP_TOKEN: &str = "Gv5kHqXq2mWd8Rn";

const SECRETS: &[&str] = &[
    RAW,
    ENCODED,
    QUERY_RAW,
    QUERY_ENCODED,
    // The part after the bot id.
    "AAHfq-Wz81_Xk3Jp9Lm",
    HTTP_TOKEN,
];

/// Panics naming the first 4-character run of a secret found in `output`.
fn assert_no_secret(what: &str, output: &str) {
    for secret in SECRETS {
        let chars: Vec<char> = secret.chars().collect();
        for window in chars.windows(4) {
            let fragment: String = window.iter().collect();
            assert!(
                !output.contains(&fragment),
                "{what}: {fragment:?} (of {secret:?}) is printed:\n{output}"
            );
        }
    }
}

fn printed(run: &Finished) -> String {
    format!("{}\n{}", run.stdout, run.stderr)
}

/// The URL forms every setting is tried with: the password raw and encoded in the userinfo.
fn userinfo_forms(scheme_host: &str, user: &str, path: &str) -> Vec<String> {
    [RAW, ENCODED]
        .iter()
        .map(|p| {
            let (scheme, host) = scheme_host.split_once("://").unwrap();
            format!("{scheme}://{user}:{p}@{host}{path}")
        })
        .collect()
}

#[test]
fn worker_config_prints_no_secret_in_text_or_json() {
    let rabbitmq = userinfo_forms("amqp://rabbit:5672", "guest", "/%2f");
    let redis = userinfo_forms("redis://cache:6379", "", "/0");
    let mut database = userinfo_forms("postgresql+asyncpg://db:5432", "app", "/staffprobot");
    database.push(format!(
        "postgresql://app@db:5432/staffprobot?sslmode=disable&password={QUERY_RAW}"
    ));
    database.push(format!(
        "postgresql://app@db:5432/staffprobot?password={QUERY_ENCODED}"
    ));
    let redis_query = format!("redis://cache:6379/0?sentinel_password={QUERY_ENCODED}");
    for (i, db) in database.iter().enumerate() {
        let amqp = &rabbitmq[i % 2];
        let redis = if i == 2 { &redis_query } else { &redis[i % 2] };
        for args in [&["config"][..], &["config", "--json"][..]] {
            let run = run_for(
                args,
                &[
                    ("RABBITMQ_URL", amqp),
                    ("REDIS_URL", redis),
                    ("DATABASE_URL", db),
                    ("TELEGRAM_BOT_TOKEN", TELEGRAM_TOKEN),
                    (
                        "TELEGRAM_API_URL",
                        &format!("https://proxy:{ENCODED}@telegram-proxy"),
                    ),
                    ("WORKER_HTTP_TOKEN", HTTP_TOKEN),
                ],
                Duration::from_secs(10),
            );
            assert_eq!(run.code, Some(0), "{args:?}: {}", run.stderr);
            assert_no_secret(&format!("worker {args:?} with {db}"), &printed(&run));
            if args.len() == 2 {
                let doc: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
                assert_eq!(doc["RABBITMQ_URL"], "amqp://guest:***@rabbit:5672/%2f");
                assert_eq!(doc["TELEGRAM_BOT_TOKEN"], "***");
                assert_eq!(doc["WORKER_HTTP_TOKEN"], "***");
            }
        }
    }
}

#[test]
fn worker_run_logs_no_secret_while_it_retries() {
    let database = format!("postgresql://postgres@127.0.0.1:1/x?password={QUERY_ENCODED}");
    let redis_unreachable = format!("redis://:{ENCODED}@127.0.0.1:1/0");
    let broker_unreachable = format!("amqp://guest:{ENCODED}@127.0.0.1:1/%2f");
    // (what, environment, how long to let it retry, retry lines expected at least)
    for (what, env, run_time, retries) in [
        (
            "broker unreachable, text, debug",
            vec![
                ("RABBITMQ_URL", broker_unreachable.as_str()),
                ("REDIS_URL", REDIS_URL),
                ("RUST_LOG", "debug"),
            ],
            6,
            2,
        ),
        (
            "broker unreachable, JSON, lapin's own lines on",
            vec![
                ("RABBITMQ_URL", broker_unreachable.as_str()),
                ("REDIS_URL", REDIS_URL),
                ("RUST_LOG", "info,lapin=trace"),
                ("LOG_FORMAT", "json"),
            ],
            6,
            2,
        ),
        (
            "Redis unreachable",
            vec![
                ("RABBITMQ_URL", broker_unreachable.as_str()),
                ("REDIS_URL", redis_unreachable.as_str()),
            ],
            // redis-rs retries inside each of our attempts: ~11 s to the first line.
            13,
            1,
        ),
    ] {
        let mut env = env;
        env.push(("DATABASE_URL", database.as_str()));
        env.push(("TELEGRAM_BOT_TOKEN", TELEGRAM_TOKEN));
        env.push(("WORKER_HTTP_TOKEN", HTTP_TOKEN));
        // The PostgreSQL probe at startup waits up to 3 s for the unreachable database; then
        // the broker's retries begin.
        let run = run_for(
            &["run", "--queues", &unique("secrets")],
            &env,
            Duration::from_secs(run_time),
        );
        assert_eq!(run.code, None, "{what}: it kept retrying:\n{}", run.stderr);
        let out = printed(&run);
        assert!(
            out.matches("unreachable; retrying").count() >= retries,
            "{what}: retries were logged:\n{out}"
        );
        assert!(out.contains("starting worker"), "{out}");
        assert_no_secret(what, &out);
    }
}

#[test]
fn errors_at_exit_print_no_secret() {
    let raw_broker = format!("amqp://guest:{RAW}@127.0.0.1:5672/%2f");
    let raw_redis = format!("redis://:{RAW}@127.0.0.1:6379/0");
    let raw_database = format!("postgresql://postgres:{RAW}@127.0.0.1:5432/x");
    for (setting, url) in [
        ("RABBITMQ_URL", raw_broker.as_str()),
        ("REDIS_URL", raw_redis.as_str()),
        ("DATABASE_URL", raw_database.as_str()),
    ] {
        let run = run_for(
            &["run", "--queues", &unique("secrets")],
            &[
                ("RABBITMQ_URL", RABBITMQ_URL),
                ("REDIS_URL", REDIS_URL),
                ("DATABASE_URL", PG_ADMIN_URL),
                (setting, url),
            ],
            Duration::from_secs(10),
        );
        assert_eq!(run.code, Some(2), "{setting}: {}", run.stderr);
        assert!(run.stderr.contains(setting), "{}", run.stderr);
        assert_no_secret(&format!("malformed {setting}"), &printed(&run));
    }

    // `worker migrate` against a PostgreSQL that is not there, each form of password.
    let mut databases = userinfo_forms("postgresql://127.0.0.1:1", "postgres", "/x");
    databases.push(format!(
        "postgresql://postgres@127.0.0.1:1/x?password={QUERY_RAW}"
    ));
    databases.push(format!(
        "postgresql://postgres@127.0.0.1:1/x?password={QUERY_ENCODED}"
    ));
    for db in &databases {
        let run = run_for(
            &["migrate"],
            &[("DATABASE_URL", db)],
            Duration::from_secs(30),
        );
        assert_eq!(run.code, Some(2), "{db}: {}", run.stderr);
        assert!(run.stderr.contains("DATABASE_URL") || run.stderr.contains("PostgreSQL"));
        assert_no_secret(&format!("worker migrate with {db}"), &printed(&run));
    }
}

#[test]
fn a_configuration_file_that_is_not_toml_is_reported_without_its_lines() {
    let path = std::env::temp_dir().join(format!("{}.toml", unique("secrets")));
    for text in [
        // Unterminated string.
        format!("WORKER_CONCURRENCY = 4\nRABBITMQ_URL = \"amqp://guest:{RAW}@rabbit/%2f\n"),
        // Not quoted at all.
        format!("REDIS_URL = redis://:{ENCODED}@cache:6379/0\n"),
        // A bad escape in the middle of the secret.
        format!("DATABASE_URL = \"postgresql://app@db/x?password={QUERY_RAW}\\q\"\n"),
        // The same key twice: the parser points at the second.
        format!("WORKER_HTTP_TOKEN = \"{HTTP_TOKEN}\"\nWORKER_HTTP_TOKEN = \"{HTTP_TOKEN}\"\n"),
    ] {
        std::fs::write(&path, &text).unwrap();
        let run = run_for(
            &["config", "--config", path.to_str().unwrap()],
            &[],
            Duration::from_secs(10),
        );
        assert_eq!(run.code, Some(2), "{}", run.stderr);
        assert!(
            run.stderr.contains(&format!("{}:", path.display())),
            "names the file: {}",
            run.stderr
        );
        assert!(run.stderr.contains("not valid TOML"), "{}", run.stderr);
        assert_no_secret("a configuration file that is not TOML", &printed(&run));
    }
    let _ = std::fs::remove_file(&path);
}
