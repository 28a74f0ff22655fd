//! A local stand-in for the Telegram Bot API: records every request and answers as scripted
//! (200, 400, 403, 429 with `retry_after`, 500). Like Telegram, it refuses (400) a message whose
//! HTML has a bare `<`, `>` or `&`, so an unescaped object name fails the test the way it failed
//! production.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the fake answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Ok,
    BadRequest,
    Forbidden,
    TooManyRequests(u64),
    ServerError,
}

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub body: Value,
    pub at: Instant,
    pub status: u16,
}

impl Recorded {
    pub fn chat_id(&self) -> i64 {
        self.body["chat_id"].as_i64().unwrap_or_default()
    }

    pub fn text(&self) -> &str {
        self.body["text"].as_str().unwrap_or_default()
    }
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    per_chat: HashMap<i64, VecDeque<Reply>>,
    next_message_id: i64,
}

#[derive(Clone)]
pub struct FakeTelegram {
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl FakeTelegram {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake telegram");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let state = Arc::new(Mutex::new(State::default()));
        let server_state = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = server_state.clone();
                tokio::spawn(async move {
                    let _ = handle(stream, state).await;
                });
            }
        });
        Self { url, state }
    }

    /// Answers the next requests to `chat_id` with these, then 200.
    pub fn script_chat(&self, chat_id: i64, replies: &[Reply]) {
        self.lock()
            .per_chat
            .entry(chat_id)
            .or_default()
            .extend(replies.iter().copied());
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    pub fn requests_to(&self, chat_id: i64) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.chat_id() == chat_id)
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fake telegram state")
    }
}

async fn handle(mut stream: TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let path = head
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    while buf.len() < header_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body: Value = serde_json::from_slice(&buf[header_end..]).unwrap_or(Value::Null);
    let chat_id = body["chat_id"].as_i64().unwrap_or_default();
    let text = body["text"].as_str().unwrap_or_default().to_owned();

    let (status, answer) = {
        let mut state = state.lock().expect("fake telegram state");
        let reply = state
            .per_chat
            .get_mut(&chat_id)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Reply::Ok);
        let reply = if reply == Reply::Ok && !valid_telegram_html(&text) {
            Reply::BadRequest
        } else {
            reply
        };
        state.next_message_id += 1;
        let (status, answer) = match reply {
            Reply::Ok => (
                200,
                json!({"ok": true, "result": {"message_id": state.next_message_id,
                        "chat": {"id": chat_id}, "date": 0, "text": text}}),
            ),
            Reply::BadRequest => (
                400,
                json!({"ok": false, "error_code": 400,
                       "description": "Bad Request: can't parse entities"}),
            ),
            Reply::Forbidden => (
                403,
                json!({"ok": false, "error_code": 403,
                       "description": "Forbidden: bot was blocked by the user"}),
            ),
            Reply::TooManyRequests(after) => (
                429,
                json!({"ok": false, "error_code": 429,
                       "description": format!("Too Many Requests: retry after {after}"),
                       "parameters": {"retry_after": after}}),
            ),
            Reply::ServerError => (
                500,
                json!({"ok": false, "error_code": 500, "description": "Internal Server Error"}),
            ),
        };
        state.requests.push(Recorded {
            path,
            body,
            at: Instant::now(),
            status,
        });
        (status, answer)
    };
    let payload = answer.to_string();
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{payload}",
        payload.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Telegram's HTML mode: only known tags, only the four entities, no bare `<`, `>` or `&`.
fn valid_telegram_html(text: &str) -> bool {
    const TAGS: [&str; 8] = [
        "<b>", "</b>", "<i>", "</i>", "<u>", "</u>", "<code>", "</code>",
    ];
    const ENTITIES: [&str; 4] = ["&amp;", "&lt;", "&gt;", "&quot;"];
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let skip = match c {
            '<' => match TAGS.iter().find(|t| rest.starts_with(**t)) {
                Some(tag) => tag.len(),
                None => return false,
            },
            '&' => match ENTITIES.iter().find(|e| rest.starts_with(**e)) {
                Some(entity) => entity.len(),
                None => return false,
            },
            '>' => return false,
            c => c.len_utf8(),
        };
        rest = &rest[skip..];
    }
    true
}

#[test]
fn the_fake_is_as_strict_as_telegram() {
    assert!(valid_telegram_html("<b>Tom &amp; Jerry</b> &lt;x&gt;"));
    assert!(!valid_telegram_html("<b>Tom & Jerry</b>"));
    assert!(!valid_telegram_html("a < b"));
    assert!(!valid_telegram_html("a > b"));
}
