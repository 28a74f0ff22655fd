//! The error a task ends with, in the shape Python re-raises.
//!
//! Celery's result backend stores an exception as `{exc_type, exc_message, exc_module}`; the
//! Python client looks `exc_module` up among already-imported modules and otherwise synthesises
//! a class with that name, then splats `exc_message` (a list) into its constructor. So errors
//! Python code should catch use `builtins` or `celery.exceptions` names.

use serde_json::{Value, json};

/// A task's failure: what Python sees, plus the chain of causes for the traceback field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{exc_type}: {message}")]
pub struct TaskError {
    pub exc_type: String,
    pub exc_module: String,
    pub message: String,
    /// The causes behind `message`, outermost first: becomes the readable `traceback`.
    pub causes: Vec<String>,
    /// Whether running the task again may succeed (network down, database restarting...).
    pub transient: bool,
    /// The job asks to be retried after this long (Celery's `self.retry(countdown=...)`).
    pub retry_in: Option<std::time::Duration>,
}

impl TaskError {
    pub fn new(exc_module: &str, exc_type: &str, message: impl Into<String>) -> Self {
        Self {
            exc_type: exc_type.to_owned(),
            exc_module: exc_module.to_owned(),
            message: message.into(),
            causes: Vec::new(),
            transient: false,
            retry_in: None,
        }
    }

    /// Raised in Python as `TypeError`: the arguments do not fit the task's signature.
    pub fn type_error(message: impl Into<String>) -> Self {
        Self::new("builtins", "TypeError", message)
    }

    /// Raised in Python as `ValueError`.
    pub fn value_error(message: impl Into<String>) -> Self {
        Self::new("builtins", "ValueError", message)
    }

    /// Raised in Python as `RuntimeError`: a failure of the worker itself, not of the task.
    pub fn runtime_error(message: impl Into<String>) -> Self {
        Self::new("builtins", "RuntimeError", message)
    }

    /// `celery.exceptions.NotRegistered(name)`, as Celery's worker stores it.
    pub fn not_registered(task: &str) -> Self {
        Self::new("celery.exceptions", "NotRegistered", task)
    }

    /// `celery.exceptions.TaskRevokedError('expired')`.
    pub fn expired() -> Self {
        Self::new("celery.exceptions", "TaskRevokedError", "expired")
    }

    /// `celery.exceptions.TaskRevokedError(reason)`: `revoked` before it ran, `terminated` while
    /// it ran.
    pub fn revoked(reason: &str) -> Self {
        Self::new("celery.exceptions", "TaskRevokedError", reason)
    }

    /// Any Rust error with its `source()` chain.
    pub fn from_error(exc_module: &str, exc_type: &str, err: &dyn std::error::Error) -> Self {
        let mut e = Self::new(exc_module, exc_type, err.to_string());
        let mut source = err.source();
        while let Some(s) = source {
            e.causes.push(s.to_string());
            source = s.source();
        }
        e
    }

    pub fn with_cause(mut self, cause: impl Into<String>) -> Self {
        self.causes.push(cause.into());
        self
    }

    pub fn transient(mut self, transient: bool) -> Self {
        self.transient = transient;
        self
    }

    pub fn retry_in(mut self, countdown: std::time::Duration) -> Self {
        self.retry_in = Some(countdown);
        self
    }

    /// The `result` field of a FAILURE/RETRY/REVOKED document.
    pub fn to_result_json(&self) -> Value {
        json!({
            "exc_type": self.exc_type,
            "exc_message": [self.message],
            "exc_module": self.exc_module,
        })
    }

    /// The `traceback` field: Python has no frames of ours to show, so we give the error chain.
    pub fn traceback(&self) -> String {
        let mut text = format!("{}.{}: {}", self.exc_module, self.exc_type, self.message);
        for cause in &self.causes {
            text.push_str("\n  caused by: ");
            text.push_str(cause);
        }
        text
    }
}
