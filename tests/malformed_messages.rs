//! Malformed messages never stop the worker: each one ends in `<queue>.dead` with its reason (and
//! as a FAILURE result when it carried an id), while valid messages around them complete.

mod harness;

use std::time::Duration;

use harness::*;
use lapin::BasicProperties;
use lapin::types::ShortString;
use serde_json::{Map, Value, json};
use worker::wire::json_to_table;

fn v2_headers(task: &str, id: Option<&str>) -> Map<String, Value> {
    let mut h = json!({"lang": "py", "task": task, "retries": 0, "eta": null, "expires": null,
                       "timelimit": [null, null], "root_id": id, "parent_id": null})
    .as_object()
    .cloned()
    .unwrap();
    if let Some(id) = id {
        h.insert("id".into(), Value::from(id));
    }
    h
}

fn props(headers: &Map<String, Value>, content_type: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from(content_type))
        .with_content_encoding(ShortString::from("utf-8"))
        .with_delivery_mode(2)
        .with_headers(json_to_table(headers))
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_messages_are_dead_lettered_and_valid_ones_complete() {
    let queue = unique("malformed");
    let mut worker = WorkerProcess::start(std::slice::from_ref(&queue), &[]);
    let (_conn, channel) = amqp().await;
    let valid_body =
        br#"[[], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#;

    let mut valid_ids = Vec::new();
    let publish_valid = |n: usize| {
        let id = format!("{queue}-valid-{n}");
        (
            id.clone(),
            props(&v2_headers("worker.ping", Some(&id)), "application/json"),
        )
    };

    // (id if any, body, content type, expected dead-letter reason)
    let five_mb = vec![b'['; 5 * 1024 * 1024];
    let bad: Vec<(Option<String>, Vec<u8>, &str, &str)> = vec![
        (
            Some(format!("{queue}-notjson")),
            b"this is not json".to_vec(),
            "application/json",
            "not_json",
        ),
        (
            Some(format!("{queue}-object")),
            br#"{"args_missing": true}"#.to_vec(),
            "application/json",
            "invalid_message",
        ),
        (None, valid_body.to_vec(), "application/json", "missing_id"),
        (
            Some(format!("{queue}-utf8")),
            b"[[\"\xff\xfe\"], {}, null]".to_vec(),
            "application/json",
            "not_utf8",
        ),
        (
            Some(format!("{queue}-big")),
            five_mb,
            "application/json",
            "too_large",
        ),
        (
            Some(format!("{queue}-pickle")),
            valid_body.to_vec(),
            "application/x-python-serialize",
            "content_type",
        ),
    ];

    for (n, (id, body, ct, _)) in bad.iter().enumerate() {
        let (vid, vprops) = publish_valid(n);
        publish_raw(&channel, &queue, valid_body, vprops).await;
        valid_ids.push(vid);
        publish_raw(
            &channel,
            &queue,
            body,
            props(&v2_headers("worker.ping", id.as_deref()), ct),
        )
        .await;
    }
    // Arguments of the wrong type: a FAILURE (TypeError), not a dead letter.
    let typed_id = format!("{queue}-wrongtype");
    let body = br#"[["not a number"], {}, null]"#;
    publish_raw(
        &channel,
        &queue,
        body,
        props(
            &v2_headers("worker.sleep", Some(&typed_id)),
            "application/json",
        ),
    )
    .await;
    let (vid, vprops) = publish_valid(99);
    publish_raw(&channel, &queue, valid_body, vprops).await;
    valid_ids.push(vid);

    for id in &valid_ids {
        let r = wait_result(id, Some("SUCCESS"), Duration::from_secs(30)).await;
        assert_eq!(
            r.as_ref().map(|r| r["result"].clone()),
            Some(json!("pong")),
            "valid task {id}: {r:?}\n{}",
            worker.logs()
        );
    }
    let r = wait_result(&typed_id, Some("FAILURE"), Duration::from_secs(10))
        .await
        .expect("wrong-type result");
    assert_eq!(r["result"]["exc_type"], "TypeError");
    assert!(
        r["result"]["exc_message"][0]
            .as_str()
            .unwrap()
            .contains("argument 'seconds'"),
        "{r}"
    );

    for (id, _, _, reason) in &bad {
        if let Some(id) = id {
            let r = wait_result(id, Some("FAILURE"), Duration::from_secs(10)).await;
            let r = r.unwrap_or_else(|| panic!("no FAILURE for {id} ({reason})"));
            assert_eq!(r["result"]["exc_type"], "DecodeError", "{r}");
        }
    }

    // Every malformed message is in the dead-letter queue with its reason; the typed one is not.
    let dead_queue = format!("{queue}.dead");
    let mut dead = Vec::new();
    for _ in 0..100 {
        dead.extend(drain(&channel, &dead_queue).await);
        if dead.len() >= bad.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|(h, _)| h["x-dead-letter-reason"].as_str().unwrap_or("?").to_owned())
        .collect();
    reasons.sort();
    let mut expected: Vec<String> = bad.iter().map(|b| b.3.to_owned()).collect();
    expected.sort();
    assert_eq!(reasons, expected);
    // Bodies are kept byte for byte.
    assert!(dead.iter().any(|(_, body)| body.len() == 5 * 1024 * 1024));
    assert!(worker.is_alive(), "the worker died:\n{}", worker.logs());
    assert_eq!(message_count(&channel, &queue).await, 0);
    delete_queue(&channel, &queue).await;
}
