//! The schemas' own rules agree with the code's: each migration's CHECK constraint lists, for
//! every terminal state, exactly the reasons `Reason::ALL` gives that state (invariant 1 is
//! enforced by the database, so a reason added in code must be added there too).

use std::collections::BTreeSet;

use jobward_core::{Reason, State};

/// state -> reasons, as `CASE state WHEN 'failed' THEN COALESCE(reason IN (...)` lists them.
fn check_lists(sql: &str) -> Vec<(String, BTreeSet<String>)> {
    let mut out = Vec::new();
    let mut rest = sql;
    while let Some(at) = rest.find("WHEN '") {
        rest = &rest[at + 6..];
        let Some(end) = rest.find('\'') else { break };
        let state = rest[..end].to_string();
        let line = rest.lines().next().unwrap_or_default();
        if let Some(open) = line.find("reason IN (") {
            let list = &line[open + 11..];
            let list = &list[..list.find(')').unwrap_or(list.len())];
            let reasons = list
                .split(',')
                .map(|r| r.trim().trim_matches('\'').to_string())
                .filter(|r| !r.is_empty())
                .collect();
            out.push((state, reasons));
        }
    }
    out
}

#[test]
fn every_migrations_check_reasons_equal_the_codes_reasons_by_state() {
    let mut checked = 0;
    for backend in ["sqlite", "postgres"] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(backend);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let sql = std::fs::read_to_string(&path).unwrap();
            for (state, reasons) in check_lists(&sql) {
                let state: State = state.parse().unwrap();
                let want: BTreeSet<String> = Reason::ALL
                    .iter()
                    .filter(|r| r.state() == state)
                    .map(|r| r.as_str().to_string())
                    .collect();
                assert_eq!(
                    reasons,
                    want,
                    "{}: the CHECK reasons of state {state} differ from Reason::ALL",
                    path.display()
                );
                checked += 1;
            }
        }
    }
    // Both schemas list all four terminal states that carry reasons.
    assert!(
        checked >= 8,
        "only {checked} lists found: has the CHECK's form changed?"
    );
}
