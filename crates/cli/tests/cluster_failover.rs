//! Twenty jobs every second for a minute across three nodes on PostgreSQL, one killed half
//! way. Alone in its test binary: it loads the machine, and timing-sensitive tests should
//! not share the cores with it.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

/// Twenty jobs every second for 60 s across three nodes, one node killed half way: every
/// instant of every job has exactly one execution, before, during and after the failover.
#[test]
fn every_instant_fires_exactly_once_across_a_failover() {
    let jobs: String = (0..20).map(|i| format!("[[job]]\nname = \"j{i:02}\"\ncommand = \"true\"\nevery = \"1s\"\noverlap = \"allow\"\n")).collect();
    let (env, _schema) = Env::postgres("", &jobs);
    let mut nodes: Vec<Server> = ["a", "b", "c"]
        .iter()
        .map(|n| env.serve_as(Some(n)))
        .collect();
    std::thread::sleep(Duration::from_secs(30));
    nodes[1].kill9();
    std::thread::sleep(Duration::from_secs(30));
    for n in [&nodes[0], &nodes[2]] {
        n.signal(Signal::SIGTERM);
    }
    nodes[0].wait(Duration::from_secs(20));
    nodes[2].wait(Duration::from_secs(20));
    let runs = env
        .json(&["runs", "list", "--json", "--limit", "5000"])
        .as_array()
        .unwrap()
        .clone();
    let mut per_job: HashMap<String, Vec<chrono::DateTime<chrono::Utc>>> = HashMap::new();
    for r in &runs {
        assert_ne!(
            r["trigger"], "catch_up",
            "nothing was missed, so nothing was caught up: {r}"
        );
        assert_ne!(r["reason"], "missed_schedule", "{r}");
        if r["attempt"] == 1 {
            per_job
                .entry(r["job"].as_str().unwrap().into())
                .or_default()
                .push(parse_time(&r["scheduled_for"]));
        }
    }
    assert_eq!(per_job.len(), 20);
    for (job, mut instants) in per_job {
        instants.sort();
        let unique: BTreeSet<_> = instants.iter().collect();
        assert_eq!(
            unique.len(),
            instants.len(),
            "job {job}: an instant fired twice"
        );
        let span = (*instants.last().unwrap() - instants[0]).num_seconds() + 1;
        assert_eq!(
            instants.len() as i64,
            span,
            "job {job}: {} instants between its first and last, {} fired",
            span,
            instants.len()
        );
        assert!(
            instants.len() >= 55,
            "job {job} fired only {} times in about 60 s",
            instants.len()
        );
    }
}
