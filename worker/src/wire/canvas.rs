//! The canvas a task message carries in its `embed`: `{callbacks, errbacks, chain, chord}`, each
//! null or Celery signature dicts `{task, args, kwargs, options, subtask_type, immutable}`
//! (celery/canvas.py `Signature`). Pure parsing and checking, no I/O.
//!
//! The signatures are attacker input (anyone who can publish to a queue writes them), so the
//! whole canvas is checked before the task runs, without recursion: a work list walks the
//! signatures and the ones nested in their options (`link`, `link_error`, `chain`, `chord`),
//! with a bound on depth and on the number of signatures. A group (`subtask_type` "group") of
//! plain signatures is honoured where Celery's worker sends one on: as a callback and as the
//! last step of a chain. Anything else with a `subtask_type` (a group elsewhere, a `chain` or
//! `chord` signature, which Celery rebuilds into its own classes and runs in-process) is
//! refused as a whole, so no task runs only to leave its canvas half done.

use serde_json::{Map, Value, json};

/// At most this many signatures in one message's canvas, nested ones included. A chain of a
/// thousand links is already far beyond what anyone builds by hand.
pub const MAX_SIGNATURES: usize = 1000;
/// Signatures nest through their options (a callback's own `link`) at most this deep.
pub const MAX_DEPTH: usize = 8;

/// One Celery signature of a plain task (no `subtask_type`).
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    pub task: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub options: Map<String, Value>,
    /// Immutable signatures get no result (or task id) prepended.
    pub immutable: bool,
    /// A group's members (each a plain signature); `None` for a plain task.
    pub group: Option<Vec<Signature>>,
    /// A chain's tasks in order (each a plain signature), when a chain is sent as a link.
    pub chain_of: Option<Vec<Signature>>,
}

/// The canvas of one message, checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Canvas {
    pub callbacks: Vec<Signature>,
    pub errbacks: Vec<Signature>,
    /// Stored reversed, as Celery sends it: the next step is the last element.
    pub chain: Vec<Signature>,
    /// The chord body when this task is a chord header part.
    pub chord: Option<Signature>,
}

/// Why a canvas is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CanvasError {
    /// Well-formed, but something this worker cannot carry out.
    #[error("unsupported canvas: {what} at {at}; this worker runs only plain task signatures")]
    Unsupported { what: String, at: String },
    #[error("invalid canvas: {problem} at {at}")]
    Invalid { problem: String, at: String },
    #[error(
        "canvas too large: more than {MAX_SIGNATURES} signatures or nested more than {MAX_DEPTH} deep"
    )]
    TooLarge,
}

impl CanvasError {
    /// A short stable word for the dead-letter reason and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unsupported { .. } => "unsupported_canvas",
            Self::Invalid { .. } => "invalid_canvas",
            Self::TooLarge => "canvas_too_large",
        }
    }
}

impl Signature {
    /// The signature as Celery serialises it, for passing on (the rest of a chain).
    pub fn to_json(&self) -> Value {
        let compound = match (&self.group, &self.chain_of) {
            (Some(members), _) => Some(("group", members)),
            (None, Some(tasks)) => Some(("chain", tasks)),
            (None, None) => None,
        };
        if let Some((kind, members)) = compound {
            let tasks: Vec<Value> = members.iter().map(Signature::to_json).collect();
            return json!({
                "task": self.task,
                "args": [],
                "kwargs": {"tasks": tasks},
                "options": self.options,
                "subtask_type": kind,
                "immutable": self.immutable,
            });
        }
        json!({
            "task": self.task,
            "args": self.args,
            "kwargs": self.kwargs,
            "options": self.options,
            "subtask_type": null,
            "immutable": self.immutable,
        })
    }

    /// The id the signature was frozen with (`options.task_id`), if any.
    pub fn task_id(&self) -> Option<&str> {
        self.options
            .get("task_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    /// The queue the signature names: `options.queue`, else a `routing_key` on the default or
    /// same-named exchange (how Celery's direct queues are bound).
    pub fn queue(&self) -> Option<&str> {
        if let Some(q) = self
            .options
            .get("queue")
            .and_then(Value::as_str)
            .filter(|q| !q.is_empty())
        {
            return Some(q);
        }
        let key = self
            .options
            .get("routing_key")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())?;
        match self.options.get("exchange") {
            None | Some(Value::Null) => Some(key),
            Some(Value::String(x)) if x.is_empty() || x == key => Some(key),
            _ => None,
        }
    }

    /// Arguments with `first` prepended unless the signature is immutable (Signature._merge).
    pub fn args_with(&self, first: Option<&Value>) -> Vec<Value> {
        match first {
            Some(v) if !self.immutable => {
                let mut args = Vec::with_capacity(self.args.len().saturating_add(1));
                args.push(v.clone());
                args.extend(self.args.iter().cloned());
                args
            }
            _ => self.args.clone(),
        }
    }
}

/// Where a signature sits, for error messages: `chain[2].options.link[0]`.
fn at(path: &str, index: Option<usize>) -> String {
    match index {
        Some(i) => format!("{path}[{i}]"),
        None => path.to_owned(),
    }
}

/// A field of the embed (or of options) that is null, one signature, or a list of them.
fn entries(value: Option<&Value>) -> Result<Vec<&Value>, String> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items.iter().collect()),
        Some(v @ Value::Object(_)) => Ok(vec![v]),
        Some(_) => Err("must be null, a signature or a list of signatures".into()),
    }
}

/// Where a signature sits, which decides what it may be: a callback may be a group or a
/// chain, the chain's last step a group; errbacks, chord bodies and group or chain members
/// only plain tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    Callback,
    LastStep,
    Other,
}

/// The raw members of a group or chain signature (`kwargs.tasks`), empty for anything else.
fn raw_members(value: &Value) -> &[Value] {
    if !matches!(
        value.get("subtask_type").and_then(Value::as_str),
        Some("group" | "chain")
    ) {
        return &[];
    }
    value
        .get("kwargs")
        .and_then(|k| k.get("tasks"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// A chain sent as a link has at most this many tasks: its result's `children` entry nests
/// two levels per task, and Python reads it recursively.
pub const MAX_LINKED_CHAIN: usize = 32;

/// The members of a group or chain (`kwargs.tasks`), each a plain signature.
fn members(
    map: &Map<String, Value>,
    at: &str,
    kind: &str,
    max: usize,
) -> Result<Vec<Signature>, CanvasError> {
    let Some(Value::Array(tasks)) = map.get("kwargs").and_then(|k| k.get("tasks")) else {
        return Err(CanvasError::Invalid {
            problem: format!("a {kind} needs kwargs.tasks, a list of signatures"),
            at: at.to_owned(),
        });
    };
    if tasks.len() > max {
        return Err(CanvasError::Unsupported {
            what: format!("a {kind} of {} tasks (at most {max})", tasks.len()),
            at: at.to_owned(),
        });
    }
    tasks
        .iter()
        .enumerate()
        .map(|(i, t)| signature(t, &format!("{at}.tasks[{i}]"), Position::Other))
        .collect()
}

/// Turn one signature dict into a [`Signature`], refusing what is not a plain task (or, where
/// its position allows, a group or chain of plain tasks: one level, whatever the input says).
fn signature(value: &Value, at: &str, position: Position) -> Result<Signature, CanvasError> {
    let invalid = |problem: &str| CanvasError::Invalid {
        problem: problem.to_owned(),
        at: at.to_owned(),
    };
    let Value::Object(map) = value else {
        return Err(invalid("a signature must be a dict"));
    };
    let (mut group, mut chain_of) = (None, None);
    match map.get("subtask_type") {
        None | Some(Value::Null) => {}
        Some(Value::String(kind)) if kind == "group" && position != Position::Other => {
            group = Some(members(map, at, kind, MAX_SIGNATURES)?);
        }
        Some(Value::String(kind)) if kind == "chain" && position == Position::Callback => {
            chain_of = Some(members(map, at, kind, MAX_LINKED_CHAIN)?);
        }
        Some(Value::String(kind)) => {
            return Err(CanvasError::Unsupported {
                what: format!("subtask_type {:?}", super::outgoing::truncate(kind, 64)),
                at: at.to_owned(),
            });
        }
        Some(_) => return Err(invalid("subtask_type must be a string or null")),
    }
    let task = map
        .get("task")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| invalid("a signature needs a task name"))?;
    let args = match map.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(invalid("args must be a list")),
    };
    let kwargs = match map.get("kwargs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(k)) => k.clone(),
        Some(_) => return Err(invalid("kwargs must be a dict")),
    };
    let options = match map.get("options") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(_) => return Err(invalid("options must be a dict")),
    };
    // `immutable` may also sit in options (`.set(immutable=True)`); either makes it so.
    let flag = |v: Option<&Value>| v.and_then(Value::as_bool).unwrap_or(false);
    let immutable = flag(map.get("immutable")) || flag(options.get("immutable"));
    Ok(Signature {
        task: task.to_owned(),
        args,
        kwargs,
        options,
        immutable,
        group,
        chain_of,
    })
}

/// Celery sends a chain only as the one callback (several are sent as one group, which would
/// make the chain a group member, run by Celery's own classes).
fn check_chain_callbacks(items: &[&Value], at: &str) -> Result<(), CanvasError> {
    let chain = |v: &&Value| v.get("subtask_type").and_then(Value::as_str) == Some("chain");
    if items.len() > 1 && items.iter().any(chain) {
        return Err(CanvasError::Unsupported {
            what: "a chain among several callbacks".into(),
            at: at.to_owned(),
        });
    }
    Ok(())
}

/// The signatures of an option that holds null, one or a list (a chord body's `link_error`,
/// its `chain`): already checked by [`parse`] when the canvas was, read again when needed.
pub fn signatures(value: Option<&Value>, path: &str) -> Result<Vec<Signature>, CanvasError> {
    let position = if path.ends_with(".chain") {
        Position::LastStep
    } else {
        Position::Other
    };
    let items = entries(value).map_err(|problem| CanvasError::Invalid {
        problem,
        at: path.to_owned(),
    })?;
    items
        .into_iter()
        .take(MAX_SIGNATURES)
        .enumerate()
        .map(|(i, item)| signature(item, &at(path, Some(i)), position))
        .collect()
}

/// Check the whole canvas of `embed` (every signature, nested ones too) and return its top level.
pub fn parse(embed: &Map<String, Value>) -> Result<Canvas, CanvasError> {
    let mut canvas = Canvas::default();
    // The work list: (value, where, depth). Nested signatures are checked, not kept: they are
    // passed on as they came and read again by whichever worker runs their task.
    let mut pending: Vec<(&Value, String, usize)> = Vec::new();
    let mut seen = 0usize;
    for key in ["callbacks", "errbacks", "chain"] {
        let items = entries(embed.get(key)).map_err(|problem| CanvasError::Invalid {
            problem,
            at: key.to_owned(),
        })?;
        if key == "callbacks" {
            check_chain_callbacks(&items, key)?;
        }
        for (i, item) in items.into_iter().enumerate() {
            seen = seen.saturating_add(1);
            if seen > MAX_SIGNATURES {
                return Err(CanvasError::TooLarge);
            }
            let here = at(key, Some(i));
            let position = match (key, i) {
                ("callbacks", _) => Position::Callback,
                ("chain", 0) => Position::LastStep,
                _ => Position::Other,
            };
            let sig = signature(item, &here, position)?;
            for (m, member) in raw_members(item).iter().enumerate() {
                seen = seen.saturating_add(1);
                pending.push((member, format!("{here}.tasks[{m}]"), 1));
            }
            if seen > MAX_SIGNATURES {
                return Err(CanvasError::TooLarge);
            }
            pending.push((item, here, 0));
            match key {
                "callbacks" => canvas.callbacks.push(sig),
                "errbacks" => canvas.errbacks.push(sig),
                _ => canvas.chain.push(sig),
            }
        }
    }
    match embed.get("chord") {
        None | Some(Value::Null) => {}
        Some(body) => {
            seen = seen.saturating_add(1);
            canvas.chord = Some(signature(body, "chord", Position::Other)?);
            pending.push((body, "chord".into(), 0));
        }
    }
    while let Some((value, here, depth)) = pending.pop() {
        let Some(options) = value.get("options").and_then(Value::as_object) else {
            continue;
        };
        for key in ["link", "link_error", "chain", "chord"] {
            let path = format!("{here}.options.{key}");
            let items = entries(options.get(key)).map_err(|problem| CanvasError::Invalid {
                problem,
                at: path.clone(),
            })?;
            if key == "link" {
                check_chain_callbacks(&items, &path)?;
            }
            for (i, item) in items.into_iter().enumerate() {
                seen = seen.saturating_add(1);
                if seen > MAX_SIGNATURES || depth >= MAX_DEPTH {
                    return Err(CanvasError::TooLarge);
                }
                let nested = at(&path, Some(i));
                let position = match (key, i) {
                    ("link", _) => Position::Callback,
                    ("chain", 0) => Position::LastStep,
                    _ => Position::Other,
                };
                signature(item, &nested, position)?;
                for (m, member) in raw_members(item).iter().enumerate() {
                    seen = seen.saturating_add(1);
                    pending.push((member, format!("{nested}.tasks[{m}]"), depth + 1));
                }
                if seen > MAX_SIGNATURES {
                    return Err(CanvasError::TooLarge);
                }
                pending.push((item, nested, depth + 1));
            }
        }
    }
    Ok(canvas)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn embed(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn sig(task: &str) -> Value {
        json!({"task": task, "args": [1], "kwargs": {}, "options": {"queue": "q", "task_id": "t-1"}, "subtask_type": null, "immutable": false})
    }

    #[test]
    fn parses_celerys_own_shapes() {
        let c = parse(&embed(json!({
            "callbacks": [sig("a")], "errbacks": null,
            "chain": [sig("c2"), sig("c1")], "chord": null
        })))
        .unwrap();
        assert_eq!(c.callbacks.len(), 1);
        assert_eq!(c.chain[1].task, "c1");
        assert_eq!(c.chain[0].task_id(), Some("t-1"));
        assert_eq!(c.chain[0].queue(), Some("q"));
        assert_eq!(
            c.callbacks[0].args_with(Some(&json!(0))),
            vec![json!(0), json!(1)]
        );
        assert!(parse(&Map::new()).unwrap().callbacks.is_empty());
    }

    #[test]
    fn immutable_signatures_take_no_result() {
        let mut s = sig("a");
        s["immutable"] = json!(true);
        let c = parse(&embed(json!({"callbacks": [s]}))).unwrap();
        assert_eq!(c.callbacks[0].args_with(Some(&json!(0))), vec![json!(1)]);
    }

    #[test]
    fn refuses_what_it_cannot_honour_wherever_it_is() {
        let mut group = sig("celery.group");
        group["subtask_type"] = json!("group");
        group["kwargs"] = json!({"tasks": [sig("m1"), sig("m2")]});
        let e = parse(&embed(json!({"chain": [sig("a"), group.clone()]}))).unwrap_err();
        assert_eq!(e.reason(), "unsupported_canvas");
        assert!(e.to_string().contains("\"group\""), "{e}");
        assert!(e.to_string().contains("chain[1]"), "{e}");
        let e = parse(&embed(json!({"errbacks": [group.clone()]}))).unwrap_err();
        assert!(e.to_string().contains("errbacks[0]"), "{e}");
        let mut chord = sig("celery.chord");
        chord["subtask_type"] = json!("chord");
        let mut cb = sig("a");
        cb["options"]["link"] = json!([chord]);
        let e = parse(&embed(json!({"callbacks": [cb]}))).unwrap_err();
        assert!(
            e.to_string().contains("callbacks[0].options.link[0]"),
            "{e}"
        );
        // A group is honoured as a callback and as the chain's last step, of plain members.
        let c = parse(&embed(
            json!({"callbacks": [group.clone()], "chain": [group.clone()]}),
        ))
        .unwrap();
        assert_eq!(c.callbacks[0].group.as_ref().map(Vec::len), Some(2));
        assert_eq!(c.chain[0].to_json()["kwargs"]["tasks"][1]["task"], "m2");
        let mut chain = group.clone();
        chain["subtask_type"] = json!("chain");
        let c = parse(&embed(json!({"callbacks": [chain.clone()]}))).unwrap();
        assert_eq!(c.callbacks[0].chain_of.as_ref().map(Vec::len), Some(2));
        let e = parse(&embed(json!({"callbacks": [chain.clone(), sig("a")]}))).unwrap_err();
        assert!(
            e.to_string().contains("a chain among several callbacks"),
            "{e}"
        );
        let e = parse(&embed(json!({"chain": [chain]}))).unwrap_err();
        assert!(e.to_string().contains("\"chain\""), "{e}");
        let mut nested = group.clone();
        nested["kwargs"]["tasks"] = json!([group]);
        let e = parse(&embed(json!({"callbacks": [nested]}))).unwrap_err();
        assert!(e.to_string().contains("callbacks[0].tasks[0]"), "{e}");
        assert_eq!(
            parse(&embed(json!({"callbacks": 3}))).unwrap_err().reason(),
            "invalid_canvas"
        );
        assert_eq!(
            parse(&embed(json!({"chain": [{"args": []}]})))
                .unwrap_err()
                .reason(),
            "invalid_canvas"
        );
    }

    #[test]
    fn bounds_length_and_nesting() {
        let long: Vec<Value> = (0..=MAX_SIGNATURES).map(|_| sig("a")).collect();
        assert_eq!(
            parse(&embed(json!({"chain": long}))).unwrap_err(),
            CanvasError::TooLarge
        );
        let mut deep = sig("a");
        for _ in 0..=MAX_DEPTH {
            let mut outer = sig("a");
            outer["options"]["link"] = json!([deep]);
            deep = outer;
        }
        assert_eq!(
            parse(&embed(json!({"callbacks": [deep]}))).unwrap_err(),
            CanvasError::TooLarge
        );
    }

    proptest! {
        #[test]
        fn never_panics(keys in prop::collection::vec(prop_oneof![Just("callbacks"), Just("chain"), Just("chord"), Just("errbacks")], 0..4),
                        depth in 0usize..20, kind in prop_oneof![Just(Value::Null), Just(json!("group")), Just(json!(3))]) {
            let mut s = sig("a");
            s["subtask_type"] = kind;
            for _ in 0..depth {
                let mut outer = sig("b");
                outer["options"]["chain"] = json!([s]);
                s = outer;
            }
            let mut e = Map::new();
            for k in keys { e.insert(k.to_owned(), json!([s.clone()])); }
            let _ = parse(&e);
        }
    }
}
