//! Hiding secrets in what the worker prints: [`redact_url`] for one URL (a setting about to be
//! logged or shown by `worker config`), [`redact_text`] for any text that may quote URLs (error
//! chains from lapin, sqlx or redis, log lines, results' messages).
//!
//! A password is masked whatever characters it holds. Passwords arrive percent-encoded (the
//! correct form) or raw, and a raw `/`, `?`, `#` or `@` ends the userinfo for a URL parser but
//! must not end it here: splitting at the first `/` after the scheme is exactly what printed a
//! raw `Zq7u/Kx9` in full. So the userinfo runs from `scheme://` to the *last* `@` before any
//! secret query key, and everything after `user:` up to there is masked. An `@` later in the
//! path or query makes that mask longer than needed; it never makes it shorter.
//!
//! Query values are masked when their key looks like a secret (`?password=`,
//! `&sentinel_password=`, `?token=`, ...), up to the next `&`, whatever they hold. A Telegram
//! bot token in a Bot API path (`/bot123:AA...`) is masked too.
//!
//! Both functions only ever remove text: the output is the input with secrets replaced by `***`.

/// What replaces a secret.
const MASK: &str = "***";

/// A query key is a secret when, lowercased, it contains one of these (`password`,
/// `sentinel_password`, `sslpassword`, `pass`, `pwd`, `secret`, `client_secret`, `token`,
/// `access_token`, `auth`, `api_key`, ...).
const SECRET_KEY_PARTS: &[&str] = &[
    "pass",
    "pwd",
    "secret",
    "token",
    "auth",
    "credential",
    "apikey",
    "api_key",
    "api-key",
    "private_key",
    "access_key",
];

/// `scheme://user:***@host/...?password=***`: the URL with its secrets hidden, for logs, errors
/// and `worker config`. Text that is not a URL comes back unchanged.
pub fn redact_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    // A list of URLs as Celery takes them (`amqp://a;amqp://b`, or commas): each one redacted,
    // or the last `@` would swallow the hosts before it.
    let mut rest = url;
    while let Some(at) = next_list_separator(rest) {
        redact_single(&rest[..at], &mut out);
        out.push_str(&rest[at..at + 1]);
        rest = &rest[at + 1..];
    }
    redact_single(rest, &mut out);
    mask_bot_tokens(&out)
}

fn redact_single(url: &str, out: &mut String) {
    match scheme_start(url.trim_start()) {
        Some(0) => {
            out.push_str(&url[..url.len() - url.trim_start().len()]);
            redact_one(url.trim_start(), out);
        }
        _ => out.push_str(url),
    }
}

/// The first `;` or `,` in `s` that another URL's scheme follows: a list separator.
fn next_list_separator(s: &str) -> Option<usize> {
    s.match_indices([';', ',']).map(|(i, _)| i).find(|&i| {
        let next = s[i + 1..].trim_start();
        let scheme_end = next.find("://").unwrap_or(0);
        scheme_end > 0
            && next.as_bytes()[0].is_ascii_alphabetic()
            && next.as_bytes()[..scheme_end]
                .iter()
                .all(|b| is_scheme_byte(*b))
    })
}

/// A `;`-separated list of URLs of one scheme (Celery's `sentinel://a;sentinel://b`, a broker
/// failover list), each redacted on its own so that the hosts stay readable. A `;` inside a
/// raw password is not followed by the same `scheme://`, so such a URL is not split and is
/// masked whole, which hides more, never less.
fn url_list(url: &str) -> Option<Vec<&str>> {
    let (scheme, _) = url.split_once("://")?;
    if scheme.is_empty() || !url.contains(';') || scheme_start(url) != Some(0) {
        return None;
    }
    let prefix = format!("{scheme}://");
    let list: Vec<&str> = url.split(';').collect();
    list.iter()
        .all(|one| one.starts_with(&prefix))
        .then_some(list)
}

/// One URL, or a list of them (see [`url_list`]), redacted into `out`.
fn redact_listed(url: &str, out: &mut String) {
    match url_list(url) {
        Some(list) => {
            for (i, one) in list.iter().enumerate() {
                if i > 0 {
                    out.push(';');
                }
                redact_one(one, out);
            }
        }
        None => redact_one(url, out),
    }
}

/// `text` with the secrets of every URL inside it hidden (see the module notes), for error
/// chains and log lines that may quote a URL.
pub fn redact_text(text: &str) -> String {
    if !text.contains("://") && !text.contains("/bot") {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(sep) = rest.find("://") {
        let Some(start) = scheme_start(&rest[..sep + 3]) else {
            out.push_str(&rest[..sep + 3]);
            rest = &rest[sep + 3..];
            continue;
        };
        out.push_str(&rest[..start]);
        let url = &rest[start..];
        let len = token_len(url);
        redact_listed(&url[..len], &mut out);
        rest = &url[len..];
    }
    out.push_str(rest);
    mask_bot_tokens(&out)
}

/// Where the scheme of a URL whose `://` ends `head` starts: the run of scheme characters
/// before `://`, from its first letter. `None` when there is no scheme.
fn scheme_start(head: &str) -> Option<usize> {
    let sep = head.find("://")?;
    let bytes = head.as_bytes();
    let mut start = sep;
    while start > 0 && is_scheme_byte(bytes[start - 1]) {
        start -= 1;
    }
    // RFC 3986: a scheme begins with a letter.
    let first_letter = bytes[start..sep].iter().position(u8::is_ascii_alphabetic)?;
    Some(start + first_letter)
}

fn is_scheme_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')
}

/// How much of `text` (which starts with a URL's scheme) is that URL: up to whitespace, a
/// quote, `<`, `>` or a backtick. When the userinfo seems to go on past that end (`user:` and
/// no `@` before it, and what follows `:` is no port), the password holds one of those
/// characters: the URL then runs to the last `@` before the next whitespace.
fn token_len(text: &str) -> usize {
    let bytes = text.as_bytes();
    let mut end = text.find("://").map_or(0, |i| i + 3);
    let after_scheme = end;
    while end < bytes.len() {
        let b = bytes[end];
        let stops = b.is_ascii_whitespace()
            || matches!(b, b'\'' | b'<' | b'>' | b'`')
            || (b == b'"' && !escaped(bytes, end));
        if stops {
            break;
        }
        end += 1;
    }
    let region = &text[after_scheme..end];
    let region = &region[..secret_key_position(region).unwrap_or(region.len())];
    if region.contains('@') || password_without_host(region).is_none() {
        return end;
    }
    let line_end = bytes[end..]
        .iter()
        .position(u8::is_ascii_whitespace)
        .map_or(bytes.len(), |i| end + i);
    match text[end..line_end].rfind('@') {
        Some(at) => {
            // The host after that `@`: up to the next terminator again.
            let host_start = end + at + 1;
            let host_len = bytes[host_start..line_end]
                .iter()
                .position(|b| matches!(b, b'"' | b'\'' | b'<' | b'>' | b'`'))
                .unwrap_or(line_end - host_start);
            host_start + host_len
        }
        None => end,
    }
}

/// Whether the byte at `i` is preceded by an odd number of backslashes (a JSON `\"`).
fn escaped(bytes: &[u8], i: usize) -> bool {
    bytes[..i].iter().rev().take_while(|b| **b == b'\\').count() % 2 == 1
}

/// Writes `url` (which starts with its scheme) to `out` with its secrets masked.
fn redact_one(url: &str, out: &mut String) {
    let Some(sep) = url.find("://") else {
        out.push_str(url);
        return;
    };
    let (head, rest) = url.split_at(sep + 3);
    out.push_str(head);
    // The userinfo cannot extend past a secret query key (`?password=` is a query, not a
    // password); anything before it may belong to a raw password.
    let region_end = secret_key_position(rest).unwrap_or(rest.len());
    let region = &rest[..region_end];
    let after_userinfo = match region.rfind('@') {
        Some(at) => {
            let userinfo = &region[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push(':');
                    out.push_str(MASK);
                }
                None => out.push_str(userinfo),
            }
            out.push('@');
            &rest[at + 1..]
        }
        None => match password_without_host(region) {
            Some(colon) => {
                out.push_str(&region[..colon]);
                out.push(':');
                out.push_str(MASK);
                &rest[region_end..]
            }
            None => rest,
        },
    };
    mask_query_values(after_userinfo, out);
}

/// In a URL without `@`, `user:password` with no host (`amqp://guest:Zq7u/Kx9`): the position of
/// that `:` when what follows it is not a port number.
fn password_without_host(region: &str) -> Option<usize> {
    // An IPv6 host's colons are inside its brackets.
    let skip = if region.starts_with('[') {
        region.find(']')?
    } else {
        0
    };
    let authority_end = region[skip..]
        .find(['/', '?', '#'])
        .map_or(region.len(), |i| skip + i);
    let colon = skip + region[skip..authority_end].find(':')?;
    let after = &region[colon + 1..];
    let port_len = after.bytes().take_while(u8::is_ascii_digit).count();
    let is_port = port_len > 0
        && after[port_len..]
            .chars()
            .next()
            .is_none_or(|c| matches!(c, '/' | '?' | '#'));
    (!is_port && !after.is_empty()).then_some(colon)
}

/// The position of the `?` or `&` that starts the first secret query key in `s`.
fn secret_key_position(s: &str) -> Option<usize> {
    s.match_indices(['?', '&'])
        .map(|(i, _)| i)
        .find(|&i| secret_value_start(s, i).is_some())
}

/// When `s[i]` (a `?` or `&`) starts `key=` with a secret-looking key: where the value begins.
fn secret_value_start(s: &str, i: usize) -> Option<usize> {
    let key_start = i + 1;
    let key_len = s[key_start..]
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'%'))
        .count();
    let eq = key_start + key_len;
    if key_len == 0 || s.as_bytes().get(eq) != Some(&b'=') {
        return None;
    }
    let key = s[key_start..eq].to_ascii_lowercase();
    SECRET_KEY_PARTS
        .iter()
        .any(|part| key.contains(part))
        .then_some(eq + 1)
}

/// Writes `s` to `out` with the values of its secret query keys masked, each up to the next `&`.
fn mask_query_values(s: &str, out: &mut String) {
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = s[search..].find(['?', '&']) {
        let i = search + found;
        match secret_value_start(s, i) {
            Some(value) => {
                out.push_str(&s[copied..value]);
                out.push_str(MASK);
                let value_end = s[value..].find('&').map_or(s.len(), |j| value + j);
                copied = value_end;
                search = value_end;
            }
            None => search = i + 1,
        }
    }
    out.push_str(&s[copied..]);
}

/// `/bot<id>:<secret>` (a Telegram Bot API path) becomes `/bot<id>:***`.
fn mask_bot_tokens(text: &str) -> String {
    if !text.contains("/bot") {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("/bot") {
        let after = &rest[i + 4..];
        let id_len = after.bytes().take_while(u8::is_ascii_digit).count();
        let secret_len = after[id_len..].strip_prefix(':').map_or(0, |s| {
            s.bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
                .count()
        });
        if id_len > 0 && secret_len > 0 {
            out.push_str(&rest[..i + 4 + id_len + 1]);
            out.push_str(MASK);
            rest = &after[id_len + 1 + secret_len..];
        } else {
            out.push_str(&rest[..i + 4]);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test password: every character that ends a URL part, raw.
    const RAW: &str = "Zq7u/Kx9?Mw#Tp@Rv:%2Fw";
    /// The same password percent-encoded, as it should be written.
    const ENCODED: &str = "Zq7u%2FKx9%3FMw%23Tp%40Rv%3A%252Fw";

    /// No run of 4 characters of `secret` appears in `text`.
    fn assert_hidden(text: &str, secret: &str) {
        let chars: Vec<char> = secret.chars().collect();
        for w in chars.windows(4) {
            let fragment: String = w.iter().collect();
            assert!(
                !text.contains(&fragment),
                "{fragment:?} of the secret is in {text:?}"
            );
        }
    }

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("amqp://admin:s3cret@rabbit:5672/%2f"),
            "amqp://admin:***@rabbit:5672/%2f"
        );
        assert_eq!(
            redact_url("redis://:pw@localhost:6379/0"),
            "redis://:***@localhost:6379/0"
        );
        assert_eq!(
            redact_url("redis://localhost:6379"),
            "redis://localhost:6379"
        );
        assert_eq!(
            redact_url("postgresql://postgres@h/db"),
            "postgresql://postgres@h/db"
        );
        assert_eq!(redact_url("amqp://[::1]:5672/%2f"), "amqp://[::1]:5672/%2f");
        assert_eq!(
            redact_url("https://api.telegram.org"),
            "https://api.telegram.org"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn raw_url_special_characters_do_not_end_the_password() {
        for (url, expected) in [
            (
                format!("amqp://guest:{RAW}@127.0.0.1:5672/%2f"),
                "amqp://guest:***@127.0.0.1:5672/%2f",
            ),
            (
                format!("redis://:{RAW}@127.0.0.1:6379/0"),
                "redis://:***@127.0.0.1:6379/0",
            ),
            (
                format!("postgresql+asyncpg://app:{RAW}@db:5432/staffprobot"),
                "postgresql+asyncpg://app:***@db:5432/staffprobot",
            ),
            (
                format!("amqp://guest:{ENCODED}@127.0.0.1:5672/%2f"),
                "amqp://guest:***@127.0.0.1:5672/%2f",
            ),
            // No host at all: the rest is the password (had it an `@`, what follows would
            // read as a host: no rule can tell them apart).
            ("amqp://guest:Zq7u/Kx9?Mw#Tp".to_owned(), "amqp://guest:***"),
            ("amqp://guest:a#b".to_owned(), "amqp://guest:***"),
        ] {
            assert_eq!(redact_url(&url), expected, "{url}");
            assert_hidden(&redact_url(&url), RAW);
            assert_hidden(&redact_url(&url), ENCODED);
        }
    }

    #[test]
    fn secret_query_values_are_masked_whatever_they_hold() {
        assert_eq!(
            redact_url(&format!(
                "postgresql://postgres@127.0.0.1:5432/db?password={ENCODED}&sslmode=disable"
            )),
            "postgresql://postgres@127.0.0.1:5432/db?password=***&sslmode=disable"
        );
        // Raw: the value runs to the next `&`, `@` and `#` included.
        assert_eq!(
            redact_url(&format!(
                "postgresql://postgres@127.0.0.1:1/db?password={RAW}"
            )),
            "postgresql://postgres@127.0.0.1:1/db?password=***"
        );
        assert_eq!(
            redact_url(&format!(
                "redis://127.0.0.1:6379/0?protocol=resp3&sentinel_password={RAW}&db=1"
            )),
            "redis://127.0.0.1:6379/0?protocol=resp3&sentinel_password=***&db=1"
        );
        assert_eq!(
            redact_url("redis+unix:///tmp/redis.sock?db=1&pass=hunter22&PWD=x&Token=y&api_key=z"),
            "redis+unix:///tmp/redis.sock?db=1&pass=***&PWD=***&Token=***&api_key=***"
        );
        // Both places at once.
        let both = format!("amqp://u:{RAW}@h:5672/%2f?heartbeat=10&secret={ENCODED}");
        assert_eq!(
            redact_url(&both),
            "amqp://u:***@h:5672/%2f?heartbeat=10&secret=***"
        );
        // Keys that are not secrets stay readable.
        assert_eq!(
            redact_url("amqp://h/%2f?frame_max=131072&heartbeat=10"),
            "amqp://h/%2f?frame_max=131072&heartbeat=10"
        );
    }

    #[test]
    fn an_at_sign_in_the_query_over_masks_but_never_leaks() {
        let r = redact_url("postgresql://u:pw1234@h/db?application_name=a@b");
        assert!(r.starts_with("postgresql://u:***@"), "{r}");
        assert_hidden(&r, "pw1234");
    }

    #[test]
    fn urls_inside_text_are_redacted() {
        let text = format!(
            "cannot connect to RabbitMQ at amqp://guest:{RAW}@127.0.0.1:1/%2f: IO error; \
             redis at 'redis://:{ENCODED}@r:6379/0' and (postgresql://p@h/db?password={RAW})"
        );
        let r = redact_text(&text);
        assert_eq!(
            r,
            "cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:1/%2f: IO error; \
             redis at 'redis://:***@r:6379/0' and (postgresql://p@h/db?password=***"
        );
        assert_hidden(&r, RAW);
        assert_hidden(&r, ENCODED);
        assert_eq!(redact_text("no url here"), "no url here");
        assert_eq!(
            redact_text("see http://host:8080/x and ftp://h"),
            "see http://host:8080/x and ftp://h"
        );
        assert_eq!(redact_text("://nothing"), "://nothing");
    }

    #[test]
    fn quotes_in_a_password_do_not_end_it() {
        // Text logs print a raw `'`; JSON logs escape a `"` as `\"`.
        let r = redact_text("url=amqp://u:ab'cd\"ef@host:5672/%2f error=x");
        assert_eq!(r, "url=amqp://u:***@host:5672/%2f error=x");
        let r = redact_text(r#"{"url":"amqp://u:ab\"cdef@host:5672/%2f","n":1}"#);
        assert_eq!(r, r#"{"url":"amqp://u:***@host:5672/%2f","n":1}"#);
        // A JSON line with the URL between other fields, `@` elsewhere in the line.
        let r = redact_text(
            r#"{"hostname":"worker@vm","url":"amqp://u:pw9876@h:5672/%2f","next":"a@b"}"#,
        );
        assert_eq!(
            r,
            r#"{"hostname":"worker@vm","url":"amqp://u:***@h:5672/%2f","next":"a@b"}"#
        );
    }

    #[test]
    fn telegram_bot_tokens_in_paths_are_masked() {
        assert_eq!(
            redact_text("POST https://api.telegram.org/bot123456:AAE-x_yZ/sendMessage failed"),
            "POST https://api.telegram.org/bot123456:***/sendMessage failed"
        );
        assert_eq!(redact_text("a /botany lesson"), "a /botany lesson");
    }

    proptest::proptest! {
        /// Any password made of URL characters (raw `/ ? # @ : %` included; `=` left out, so
        /// that it cannot spell a secret query key) is masked whole, alone or inside a text.
        #[test]
        fn any_password_is_masked_whole(password in "[A-Za-z0-9/?#@:%!$()*+,;~.\\[\\]-]{1,40}") {
            let url = format!("amqp://guest:{password}@rabbit.internal:5672/%2f");
            proptest::prop_assert_eq!(redact_url(&url), "amqp://guest:***@rabbit.internal:5672/%2f");
            let text = format!("cannot connect to {url}: refused");
            proptest::prop_assert_eq!(
                redact_text(&text),
                "cannot connect to amqp://guest:***@rabbit.internal:5672/%2f: refused"
            );
            let query = format!("postgresql://app@db:5432/x?sslmode=disable&password={password}");
            proptest::prop_assert_eq!(
                redact_url(&query),
                "postgresql://app@db:5432/x?sslmode=disable&password=***"
            );
        }

        #[test]
        fn any_text_is_handled(text in "\\PC{0,80}") {
            let _ = redact_text(&text);
            let _ = redact_url(&text);
        }
    }

    #[test]
    fn arbitrary_text_never_panics() {
        for text in [
            "",
            "://",
            "a://",
            "1://x",
            "x://@",
            "x://:@",
            "x://[",
            "x://[::1",
            "x://u:",
            "x://u:?password=",
            "x://?&=",
            "/bot",
            "/bot1:",
            "é://ü:ö@ä",
            "a://b:c\\\"d",
        ] {
            let _ = redact_text(text);
            let _ = redact_url(text);
        }
    }

    #[test]
    fn sentinel_lists_are_redacted_one_by_one() {
        let out = redact_url(
            "sentinel://:Kx9pw@h1:26379/0;sentinel://u:Mw7pw@h2:26379/0;sentinel://h3:26379",
        );
        assert_eq!(
            out,
            "sentinel://:***@h1:26379/0;sentinel://u:***@h2:26379/0;sentinel://h3:26379"
        );
        assert_eq!(
            redact_text("redis=sentinel://127.0.0.1:1;sentinel://127.0.0.1:2 next"),
            "redis=sentinel://127.0.0.1:1;sentinel://127.0.0.1:2 next"
        );
        // A raw `;` in a password: not a list, masked whole.
        let out = redact_url("sentinel://:a;b@h1:26379");
        assert!(!out.contains("a;b"), "{out}");
    }
}
