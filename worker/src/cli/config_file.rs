//! The optional configuration file: a TOML table of the same names as the environment
//! (`RABBITMQ_URL = "..."`, `WORKER_CONCURRENCY = 32`). Precedence: flags, then the environment,
//! then the file, then the defaults — the file only fills variables the environment leaves unset,
//! so that one typed settings struct (clap's) still parses everything.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::settings::redact_text;

/// The file named by `--config FILE` (or `--config=FILE`) or `WORKER_CONFIG_FILE`, if any.
pub(crate) fn requested(args: &[String]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    std::env::var_os("WORKER_CONFIG_FILE").map(PathBuf::from)
}

/// The variables the file sets that the environment does not.
pub(crate) fn read(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the configuration file {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| parse_error(path, &text, &e))?;
    let mut out = Vec::new();
    for (key, value) in table {
        if !key
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            bail!(
                "{}: `{key}` is not a setting name; use the environment variable names, e.g. RABBITMQ_URL",
                path.display()
            );
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect::<Vec<_>>()
                .join(","),
            other => bail!(
                "{}: `{key}` must be a string, number, boolean or list, not {}",
                path.display(),
                other.type_str()
            ),
        };
        if std::env::var_os(&key).is_none() {
            out.push((key, value));
        }
    }
    Ok(out)
}

/// Where the file is not TOML, and the parser's reason: never the offending line, which may be
/// `RABBITMQ_URL = "amqp://user:password@..."` (toml's own Display quotes it).
fn parse_error(path: &Path, text: &str, e: &toml::de::Error) -> anyhow::Error {
    let at = e
        .span()
        .map(|span| {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count().saturating_add(1);
            let line_start = before.rfind('\n').map_or(0, |i| i.saturating_add(1));
            let column = before[line_start..].chars().count().saturating_add(1);
            format!(":{line}:{column}")
        })
        .unwrap_or_default();
    anyhow::anyhow!(
        "{}{at}: not valid TOML: {}",
        path.display(),
        redact_text(e.message())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_flag_in_both_spellings() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            requested(&args(&["worker", "--config", "a.toml", "run"])),
            Some("a.toml".into())
        );
        assert_eq!(
            requested(&args(&["worker", "run", "--config=b.toml"])),
            Some("b.toml".into())
        );
    }

    #[test]
    fn a_parse_error_names_the_place_but_not_the_line() {
        let path = std::env::temp_dir().join(format!("cfg-{}.toml", uuid::Uuid::new_v4()));
        let secret = "Zq7u/Kx9?Mw#Tp@Rv:%2Fw";
        for text in [
            format!("WORKER_CONCURRENCY = 3\nRABBITMQ_URL = \"amqp://guest:{secret}@h/%2f\n"),
            format!("WORKER_CONCURRENCY = 3\nRABBITMQ_URL = amqp://guest:{secret}@h\n"),
            format!("WORKER_CONCURRENCY = 3\nRABBITMQ_URL = \"amqp://guest:{secret}\\q@h\"\n"),
            format!("REDIS_URL = 'redis://:{secret}@h'\nREDIS_URL = 'redis://:{secret}@h'\n"),
        ] {
            std::fs::write(&path, &text).unwrap();
            let e = format!("{:#}", read(&path).unwrap_err());
            assert!(e.contains(&format!("{}:", path.display())), "{e}");
            assert!(e.contains(":2:"), "names line 2: {e}");
            assert!(e.contains("not valid TOML"), "{e}");
            for window in secret.as_bytes().windows(4) {
                let fragment = std::str::from_utf8(window).unwrap();
                assert!(!e.contains(fragment), "{fragment:?} in {e}");
            }
            assert!(!e.contains("amqp://") && !e.contains("redis://"), "{e}");
        }
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn rejects_names_that_are_not_settings() {
        let path = std::env::temp_dir().join(format!("cfg-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, "rabbitmq_url = \"x\"\n").unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("not a setting name"), "{e}");
        std::fs::write(
            &path,
            "WORKER_QUEUES = [\"a\", \"b\"]\nWORKER_CONCURRENCY_UNSET_IN_ENV_X = 3\n",
        )
        .unwrap();
        let vars = read(&path).unwrap();
        assert!(
            vars.contains(&("WORKER_QUEUES".into(), "a,b".into()))
                || std::env::var_os("WORKER_QUEUES").is_some()
        );
        assert!(vars.contains(&("WORKER_CONCURRENCY_UNSET_IN_ENV_X".into(), "3".into())));
        let _ = std::fs::remove_file(&path);
    }
}
