//! Several `jobward serve` nodes on one PostgreSQL database: a node killed mid-run, cron
//! instants across a failover, and a concurrency limit shared by every node.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::*;

/// node incarnation id -> node name
fn node_names(env: &Env) -> HashMap<String, String> {
    env.json(&["nodes", "list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_string(),
                n["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Three nodes, one SIGKILLed mid-run: its executions are settled by the others (node_lost)
/// within the node lease plus one tick, then retried and completed on a live node.
#[test]
fn a_killed_node_is_recovered_by_the_others_and_its_work_retried() {
    let (env, _schema) = Env::postgres(
        "",
        r#"[[job]]
name = "long"
command = "if [ $JOBWARD_ATTEMPT = 1 ]; then sleep 60; fi; echo done on $JOBWARD_NODE_ID"
overlap = "allow"
retry = { max_attempts = 2, backoff = "100ms" }
"#,
    );
    let mut nodes: HashMap<String, Server> = ["a", "b", "c"]
        .iter()
        .map(|n| (n.to_string(), env.serve_as(Some(n))))
        .collect();
    let ids: Vec<i64> = (0..6).map(|_| env.trigger("long")).collect();
    for id in &ids {
        env.wait_state(*id, "running", Duration::from_secs(15));
    }
    let names = node_names(&env);
    let victim_exec = env.execution(ids[0]);
    let victim = names[victim_exec["node_id"].as_str().unwrap()].clone();
    let on_victim: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| names[env.execution(*id)["node_id"].as_str().unwrap()] == victim)
        .collect();
    let killed_at = chrono::Utc::now();
    nodes.get_mut(&victim).unwrap().kill9();
    for id in &on_victim {
        let e = env.wait_state(*id, "failed", Duration::from_secs(15));
        assert_eq!(e["reason"], "node_lost", "{e}");
        let took = parse_time(&e["finished_at"]) - killed_at;
        // Node lease 3 s (the default) plus one reaper tick (200 ms here), with room for the
        // victim's last heartbeat having been up to a second before the kill.
        assert!(
            took <= chrono::TimeDelta::milliseconds(3200 + 500),
            "settled {took:?} after the kill: {e}"
        );
    }
    for id in &on_victim {
        let retry = env
            .runs(&["--job", "long"])
            .into_iter()
            .find(|r| r["retry_of"] == *id)
            .expect("a retry");
        let done = env.wait_state(
            retry["id"].as_i64().unwrap(),
            "completed",
            Duration::from_secs(15),
        );
        assert_ne!(
            names[done["node_id"].as_str().unwrap()],
            victim,
            "retried on a live node"
        );
    }
    for id in ids.iter().filter(|id| !on_victim.contains(id)) {
        assert_eq!(
            env.execution(*id)["status"],
            "running",
            "the other nodes' work is untouched"
        );
    }
    let nodes_now = env.json(&["nodes", "list", "--json"]);
    let lost = nodes_now
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == victim.as_str())
        .unwrap();
    assert!(
        lost["stop_reason"].as_str().unwrap().starts_with("lost"),
        "{lost}"
    );
}

/// A limit of 2 on one key holds while all three nodes are triggered at once through their
/// own HTTP APIs; and a slot is used as soon as one frees.
#[test]
fn a_concurrency_limit_holds_across_nodes() {
    let (env, _schema) = Env::postgres(
        "",
        r#"[concurrency]
reports = 2
[[job]]
name = "report"
command = "echo start >> spans.txt; sleep 0.3; echo end >> spans.txt"
overlap = "allow"
concurrency_key = "reports"
queue_timeout = "5m"
"#,
    );
    let nodes: Vec<Server> = ["a", "b", "c"]
        .iter()
        .map(|n| env.serve_as(Some(n)))
        .collect();
    let apis: Vec<String> = nodes.iter().map(|n| n.api()).collect();
    let triggers: Vec<_> = (0..30)
        .map(|i| {
            let api = apis[i % 3].clone();
            std::thread::spawn(move || assert_eq!(http_post(&api, "/api/jobs/report/trigger"), 201))
        })
        .collect();
    for t in triggers {
        t.join().unwrap();
    }
    wait_until(Duration::from_secs(60), "all 30 to complete", || {
        let runs = env.runs(&["--job", "report"]);
        runs.len() == 30 && runs.iter().all(|r| r["status"] == "completed")
    });
    let spans = std::fs::read_to_string(env.path("spans.txt")).unwrap();
    let (mut now, mut max) = (0i32, 0i32);
    for line in spans.lines() {
        now += if line == "start" { 1 } else { -1 };
        max = max.max(now);
    }
    assert!(
        max <= 2,
        "{max} ran at once across the nodes with a limit of 2"
    );
    assert_eq!(max, 2);
    let names = node_names(&env);
    let ran_on: BTreeSet<String> = env
        .runs(&["--job", "report"])
        .iter()
        .map(|r| names[r["node_id"].as_str().unwrap()].clone())
        .collect();
    assert!(
        ran_on.len() >= 2,
        "the work was shared by the nodes: {ran_on:?}"
    );
    assert!(env.run(&["audit"]).status.success());
}
