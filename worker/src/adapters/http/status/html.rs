//! The status page's HTML: server-rendered, no JavaScript, readable on a phone (a viewport meta
//! and tables that scroll sideways inside their own box). Every value that comes from outside —
//! a message, Redis, a worker's reply — is written through [`esc`].

use std::fmt::Write;

use serde_json::Value;

use super::{DeadLetters, Overview, Section};
use crate::adapters::failures::{Entry, Kind};
use crate::adapters::overview::{QueueRow, Role, WorkerRow};

/// `text` safe inside HTML text and inside a double- or single-quoted attribute.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment safe in a URL (the form's action names a schedule or a queue).
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The text of a note after an action; only fixed codes (nothing from the URL is echoed).
pub(crate) fn note_text(code: &str, n: Option<u32>) -> Option<String> {
    let n = n.unwrap_or(0);
    Some(match code {
        "published" => "Published: the schedule's task was sent once, now.".to_owned(),
        "paused" => "Paused: no tick is published until it is resumed.".to_owned(),
        "resumed" => "Resumed: it ticks again from its next fire time.".to_owned(),
        "replayed" => format!("Replayed {n} dead letter(s) to their queue."),
        "deleted" => format!("Deleted {n} dead letter(s)."),
        "not-found" => "Nothing done: it was not found (already replayed or deleted?).".to_owned(),
        "failed" => "Nothing done: RabbitMQ could not be reached.".to_owned(),
        _ => return None,
    })
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0 auto;padding:0 .8rem 2rem;max-width:72rem;color:#222}\
h1{font-size:1.3rem}h2{font-size:1.1rem;margin-top:1.6rem;border-bottom:1px solid #ccc}\
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;font-size:.9rem}\
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #eee;vertical-align:top}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.err{color:#a00}.muted{color:#777}\
.note{background:#eef6ee;border:1px solid #9c9;padding:.5rem}pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:.8rem}\
form{display:inline}button{font-size:.9rem;padding:.25rem .6rem;margin:.1rem}\
.FAILURE,.failure{color:#a00}.SUCCESS{color:#070}.RETRY,.retry{color:#a60}";

/// The whole page.
pub(crate) fn render(o: &Overview, note: Option<&str>) -> String {
    let mut p = String::with_capacity(16 * 1024);
    p.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    p.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    p.push_str("<title>Worker status</title><style>");
    p.push_str(STYLE);
    p.push_str("</style></head><body><h1>Worker status</h1>");
    let _ = write!(
        p,
        "<p class=\"muted\">As of {} UTC · <a href=\"/status\">refresh</a> · JSON: <a href=\"/api/status\">/api/status</a></p>",
        o.at.format("%Y-%m-%d %H:%M:%S")
    );
    if let Some(note) = note {
        let _ = write!(p, "<p class=\"note\" id=\"note\">{}</p>", esc(note));
    }
    workers(&mut p, &o.workers);
    queues(&mut p, &o.queues);
    schedules(&mut p, &o.schedules);
    failures(&mut p, &o.failures);
    dead_letters(&mut p, &o.dead_letters);
    p.push_str("</body></html>");
    p
}

fn error(p: &mut String, e: &str) {
    let _ = write!(p, "<p class=\"err\">{}</p>", esc(e));
}

fn workers(p: &mut String, s: &Section<Vec<WorkerRow>>) {
    p.push_str("<h2 id=\"workers\">Workers online</h2>");
    let rows = match s {
        Ok(rows) => rows,
        Err(e) => return error(p, e),
    };
    if rows.is_empty() {
        p.push_str("<p class=\"err\">No worker answered.</p>");
        return;
    }
    p.push_str("<div class=\"scroll\"><table><tr><th>node</th><th>pid</th><th>uptime</th><th>concurrency</th><th>tasks run</th></tr>");
    for w in rows {
        let total: u64 = w.total.values().filter_map(Value::as_u64).sum();
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let _ = write!(
            p,
            "<tr class=\"worker\"><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{total}</td></tr>",
            esc(&w.node),
            opt(w.pid),
            w.uptime
                .map_or_else(|| "-".to_owned(), |s| format!("{s} s")),
            opt(w.concurrency),
        );
    }
    p.push_str("</table></div>");
}

fn queues(p: &mut String, s: &Section<Vec<QueueRow>>) {
    p.push_str("<h2 id=\"queues\">Queues</h2>");
    let rows = match s {
        Ok(rows) => rows,
        Err(e) => return error(p, e),
    };
    p.push_str("<div class=\"scroll\"><table><tr><th>queue</th><th>messages</th><th>consumers</th><th>kind</th></tr>");
    // The 28 delay levels as one line, plus each level that holds messages now.
    let delayed: Vec<&QueueRow> = rows.iter().filter(|r| r.role == Role::Delayed).collect();
    for r in rows
        .iter()
        .filter(|r| r.role != Role::Delayed || r.depth.is_some_and(|d| d.messages > 0))
    {
        let kind = match r.role {
            Role::Tasks => "tasks",
            Role::DeadLetters => "dead letters",
            Role::UndeliveredResults => "undelivered results",
            Role::Delayed => "delayed",
        };
        let (m, c) = match r.depth {
            Some(d) => (d.messages.to_string(), d.consumers.to_string()),
            None => (
                "<span class=\"muted\">missing</span>".to_owned(),
                "-".to_owned(),
            ),
        };
        let _ = write!(
            p,
            "<tr class=\"queue\" data-queue=\"{name}\"><td>{name}</td><td class=\"n messages\">{m}</td><td class=\"n consumers\">{c}</td><td>{kind}</td></tr>",
            name = esc(&r.name),
        );
    }
    if !delayed.is_empty() {
        let total: u64 = delayed
            .iter()
            .filter_map(|r| r.depth)
            .map(|d| u64::from(d.messages))
            .sum();
        let _ = write!(
            p,
            "<tr class=\"queue delayed-total\"><td>celery_delayed_* ({} levels)</td><td class=\"n messages\">{total}</td><td class=\"n\">-</td><td>delayed, all levels</td></tr>",
            delayed.len()
        );
    }
    p.push_str("</table></div>");
}

fn text(v: &Value, path: &[&str]) -> String {
    let mut at = v;
    for key in path {
        match at.get(key) {
            Some(next) => at = next,
            None => return String::new(),
        }
    }
    match at {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn schedules(p: &mut String, s: &Section<Value>) {
    p.push_str("<h2 id=\"schedules\">Schedules</h2>");
    let doc = match s {
        Ok(doc) => doc,
        Err(e) => return error(p, e),
    };
    let Some(list) = doc.as_array() else {
        return error(p, &text(doc, &["error"]));
    };
    p.push_str("<div class=\"scroll\"><table><tr><th>schedule</th><th>task → queue</th><th>when</th><th>next (UTC)</th><th>last run (UTC)</th><th>last state</th><th></th></tr>");
    for sch in list {
        let name = text(sch, &["name"]);
        let when = match (text(sch, &["cron"]), text(sch, &["every"])) {
            (cron, _) if !cron.is_empty() => format!("cron {cron}"),
            (_, every) => format!("every {every}"),
        };
        let next = sch
            .get("next")
            .and_then(|n| n.get(0))
            .map(|n| text(n, &["utc"]))
            .unwrap_or_else(|| "—".to_owned());
        let (last, state, id) = match sch.get("last_run").filter(|v| !v.is_null()) {
            Some(run) => (
                text(run, &["tick", "utc"]),
                text(run, &["state"]),
                text(run, &["task_id"]),
            ),
            None => ("never".to_owned(), String::new(), String::new()),
        };
        let _ = write!(
            p,
            "<tr class=\"schedule\" data-schedule=\"{n}\"><td>{n}</td><td>{} → {}</td><td>{}</td><td>{}</td><td>{}<br><span class=\"muted\">{}</span></td><td class=\"{st}\">{st}</td>\
             <td><form method=\"post\" action=\"/status/schedules/{seg}/run\"><button type=\"submit\" class=\"run\">Run now</button></form>{toggle}</td></tr>",
            esc(&text(sch, &["task"])),
            esc(&text(sch, &["queue"])),
            esc(&when),
            esc(&next),
            esc(&last),
            esc(&id),
            n = esc(&name),
            st = esc(&state),
            seg = segment(&name),
            toggle = pause_button(sch, &segment(&name)),
        );
    }
    p.push_str("</table></div>");
}

/// "Pause" or "Resume" as the schedule is; nothing when the pauses could not be read.
fn pause_button(sch: &Value, seg: &str) -> String {
    let (action, label) = match sch.get("paused").and_then(Value::as_bool) {
        Some(true) => ("resume", "Resume"),
        Some(false) => ("pause", "Pause"),
        None => return "<span class=\"muted\">pause state unknown</span>".to_owned(),
    };
    let flag = if action == "resume" {
        "<br><b class=\"paused\">paused</b>"
    } else {
        ""
    };
    format!(
        "<form method=\"post\" action=\"/status/schedules/{seg}/{action}\"><button type=\"submit\" class=\"{action}\">{label}</button></form>{flag}"
    )
}

fn failures(p: &mut String, s: &Section<Vec<Entry>>) {
    p.push_str("<h2 id=\"failures\">Recent failures and retries (24 h)</h2>");
    let rows = match s {
        Ok(rows) => rows,
        Err(e) => return error(p, e),
    };
    if rows.is_empty() {
        p.push_str("<p class=\"muted\">None.</p>");
        return;
    }
    p.push_str("<div class=\"scroll\"><table><tr><th>when (UTC)</th><th>what</th><th>task</th><th>exception</th></tr>");
    for e in rows {
        let kind = match e.kind {
            Kind::Failure => "failure",
            Kind::Retry => "retry",
        };
        let _ = write!(
            p,
            "<tr class=\"failure-row\" data-task-id=\"{id}\"><td>{}</td><td class=\"{kind}\">{kind} (retries {})</td><td>{}<br><span class=\"muted\">{id} · {} · {}</span></td><td><b>{}</b><pre>{}</pre></td></tr>",
            e.at.format("%Y-%m-%d %H:%M:%S"),
            e.retries,
            esc(&e.task),
            esc(&e.queue),
            esc(&e.worker),
            esc(&e.exc_type),
            esc(&e.exception),
            id = esc(&e.task_id),
        );
    }
    p.push_str("</table></div>");
}

fn dead_letters(p: &mut String, s: &Section<Vec<DeadLetters>>) {
    p.push_str("<h2 id=\"dead-letters\">Dead letters</h2>");
    let groups = match s {
        Ok(groups) => groups,
        Err(e) => return error(p, e),
    };
    for g in groups {
        let q = esc(&g.queue);
        if !g.exists {
            let _ = write!(
                p,
                "<p class=\"muted\">{q}.dead: none (the queue does not exist).</p>"
            );
            continue;
        }
        // By reason, as an operator sorts them.
        let mut reasons: Vec<&str> = g
            .letters
            .iter()
            .map(|l| l.reason.as_deref().unwrap_or("-"))
            .collect();
        reasons.sort_unstable();
        reasons.dedup();
        let _ = write!(p, "<h3>{q}.dead ({} shown)</h3>", g.letters.len());
        if g.letters.is_empty() {
            p.push_str("<p class=\"muted\">Empty.</p>");
        }
        let seg = segment(&g.queue);
        for reason in reasons {
            let _ = write!(
                p,
                "<p>reason <b>{}</b></p><div class=\"scroll\"><table><tr><th>task</th><th>at</th><th>detail</th><th></th></tr>",
                esc(reason)
            );
            for l in g
                .letters
                .iter()
                .filter(|l| l.reason.as_deref().unwrap_or("-") == reason)
            {
                let id = esc(l.task_id.as_deref().unwrap_or(""));
                let actions = if l.task_id.is_some() {
                    format!(
                        "<form method=\"post\" action=\"/status/dead-letters/{seg}/replay\"><input type=\"hidden\" name=\"task_id\" value=\"{id}\"><button type=\"submit\" class=\"replay\">Replay</button></form>\
                         <form method=\"post\" action=\"/status/dead-letters/{seg}/delete\"><input type=\"hidden\" name=\"task_id\" value=\"{id}\"><button type=\"submit\" class=\"delete\">Delete</button></form>"
                    )
                } else {
                    "<span class=\"muted\">no task id: use the CLI</span>".to_owned()
                };
                let _ = write!(
                    p,
                    "<tr class=\"dead-letter\" data-task-id=\"{id}\"><td>{}<br><span class=\"muted\">{id} · {} bytes</span></td><td>{}</td><td><pre>{}</pre></td><td>{actions}</td></tr>",
                    esc(l.task.as_deref().unwrap_or("-")),
                    l.body_bytes,
                    esc(l.at.as_deref().unwrap_or("-")),
                    esc(l.detail.as_deref().unwrap_or("")),
                );
            }
            p.push_str("</table></div>");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_could_open_a_tag_or_leave_an_attribute() {
        assert_eq!(
            esc(r#"<script>alert("x")</script>&'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
        assert_eq!(segment("a b/../c"), "a%20b%2F..%2Fc");
        assert_eq!(note_text("<b>", Some(3)), None);
    }
}
