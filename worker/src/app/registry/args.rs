//! Binding Celery's `args` and `kwargs` to a job's typed arguments, as Python binds a call.
//!
//! Positional values fill parameters in declaration order, keyword values fill them by name; a
//! value given both ways, an unknown keyword or too many positional values are errors, exactly
//! as Python's `TypeError`s. The typed conversion goes through serde, with the failing path
//! reported (`user_id: invalid type: string "x", expected i32`) so the message names the task,
//! the argument and what was expected.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::wire::TaskError;

/// The call as the producer made it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CallArgs {
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
}

/// A job's argument type.
pub(crate) trait JobArgs: Sized {
    fn bind(task: &str, call: &CallArgs) -> Result<Self, TaskError>;
}

/// Arguments of a Python function `def f(p0, p1, ...)`: a serde struct whose fields are named
/// after the parameters, in `params` order. Missing optional parameters use `#[serde(default)]`.
pub(crate) fn bind_named<T: DeserializeOwned>(
    task: &str,
    params: &[&str],
    call: &CallArgs,
) -> Result<T, TaskError> {
    if call.args.len() > params.len() {
        return Err(TaskError::type_error(format!(
            "{task}() takes {} positional argument{} but {} were given",
            params.len(),
            if params.len() == 1 { "" } else { "s" },
            call.args.len()
        )));
    }
    let mut named = Map::new();
    for (name, value) in params.iter().zip(&call.args) {
        named.insert((*name).to_owned(), value.clone());
    }
    for (key, value) in &call.kwargs {
        if !params.contains(&key.as_str()) {
            return Err(TaskError::type_error(format!(
                "{task}() got an unexpected keyword argument '{key}'"
            )));
        }
        if named.contains_key(key) {
            return Err(TaskError::type_error(format!(
                "{task}() got multiple values for argument '{key}'"
            )));
        }
        named.insert(key.clone(), value.clone());
    }
    serde_path_to_error::deserialize(Value::Object(named)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            TaskError::type_error(format!("{task}(): {inner}"))
        } else {
            TaskError::type_error(format!("{task}() argument '{path}': {inner}"))
        }
    })
}

/// For tasks without parameters.
impl JobArgs for () {
    fn bind(task: &str, call: &CallArgs) -> Result<Self, TaskError> {
        if call.args.is_empty() && call.kwargs.is_empty() {
            Ok(())
        } else {
            Err(TaskError::type_error(format!(
                "{task}() takes no arguments but {} were given",
                call.args.len() + call.kwargs.len()
            )))
        }
    }
}

/// `*args, **kwargs`: takes anything.
impl JobArgs for CallArgs {
    fn bind(_task: &str, call: &CallArgs) -> Result<Self, TaskError> {
        Ok(call.clone())
    }
}

/// Implements [`JobArgs`] for a struct through [`bind_named`], listing its parameters in order.
macro_rules! job_args {
    ($ty:ty, [$($param:literal),* $(,)?]) => {
        impl $crate::app::registry::JobArgs for $ty {
            fn bind(task: &str, call: &$crate::app::registry::CallArgs) -> Result<Self, $crate::wire::TaskError> {
                $crate::app::registry::args::bind_named(task, &[$($param),*], call)
            }
        }
    };
}
pub(crate) use job_args;

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Notify {
        user_id: i32,
        notification_type: String,
        #[serde(default)]
        data: Option<Value>,
    }
    const PARAMS: &[&str] = &["user_id", "notification_type", "data"];

    fn call(args: Value, kwargs: Value) -> CallArgs {
        CallArgs {
            args: args.as_array().cloned().unwrap_or_default(),
            kwargs: kwargs.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn binds_positional_and_keyword_like_python() {
        let n: Notify = bind_named(
            "t",
            PARAMS,
            &call(json!([7]), json!({"notification_type": "x"})),
        )
        .unwrap();
        assert_eq!(
            n,
            Notify {
                user_id: 7,
                notification_type: "x".into(),
                data: None
            }
        );
    }

    #[test]
    fn type_errors_name_task_argument_and_expectation() {
        let e = bind_named::<Notify>("t.notify", PARAMS, &call(json!(["seven", "x"]), json!({})))
            .unwrap_err();
        assert_eq!(e.exc_type, "TypeError");
        assert!(
            e.message.contains("t.notify() argument 'user_id'"),
            "{}",
            e.message
        );
        assert!(e.message.contains("expected i32"), "{}", e.message);

        let e = bind_named::<Notify>("t", PARAMS, &call(json!([1]), json!({"user_id": 2})))
            .unwrap_err();
        assert!(
            e.message.contains("multiple values for argument 'user_id'"),
            "{}",
            e.message
        );
        let e = bind_named::<Notify>("t", PARAMS, &call(json!([1, "a", {}, 4]), json!({})))
            .unwrap_err();
        assert!(
            e.message
                .contains("takes 3 positional arguments but 4 were given"),
            "{}",
            e.message
        );
        let e =
            bind_named::<Notify>("t", PARAMS, &call(json!([1]), json!({"typo": 1}))).unwrap_err();
        assert!(
            e.message.contains("unexpected keyword argument 'typo'"),
            "{}",
            e.message
        );
        let e = bind_named::<Notify>("t", PARAMS, &call(json!([1]), json!({}))).unwrap_err();
        assert!(
            e.message.contains("missing field `notification_type`"),
            "{}",
            e.message
        );
    }
}
