//! The Python side: the virtualenv `scripts/test` creates, with Celery 5.7 in it.

use std::path::PathBuf;
use std::process::{Command, Output};

use super::{RABBITMQ_URL, REDIS_URL, root};

/// The Python of the virtualenv `scripts/test` creates, with Celery 5.7 in it.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("CELERY_PYTHON") {
        return PathBuf::from(p);
    }
    let p = root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test, which creates the virtualenv with Celery",
        p.display()
    );
    p
}

/// Run a script from `tests/python` with the test's environment.
pub fn run_python(script: &str, args: &[&str]) -> Output {
    Command::new(python())
        .arg(root().join("tests/python").join(script))
        .args(args)
        .env("RABBITMQ_URL", RABBITMQ_URL)
        .env("REDIS_URL", REDIS_URL)
        .output()
        .expect("run python")
}
