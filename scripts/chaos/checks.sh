# The end-of-run checks of scripts/chaos.sh (sourced by it; uses its variables and helpers:
# RUN, DB_URL, BIN, CFG, TOL, OUTLIVE_GRACE, TAG, FAULTS, UNEXPECTED, STOP_RC, q, our_execution_pids).
# Each check prints one line: PASS/FAIL, its number and name, and its counts.

CHECKS_FAILED=0
check() { # N NAME OK(0/1) DETAIL
    local verdict=PASS
    [ "$3" = 1 ] || { verdict=FAIL; CHECKS_FAILED=$(( CHECKS_FAILED + 1 )); }
    printf '%s  %2s %-34s %s\n' "$verdict" "$1" "$2" "$4"
}
TERMINAL="('completed','failed','timed_out','cancelled','skipped')"

run_checks() {
    echo "chaos: checks"
    local samples checked viol first slots_bad slots_max

    # 1. Nothing live past its deadline while a node lives (sampled during the run).
    samples=$(grep -c . "$RUN/samples.txt" 2>/dev/null); samples=${samples:-0}
    checked=$(awk -F'|' '$2 >= 0' "$RUN/samples.txt" 2>/dev/null | grep -c .)
    viol=$(awk -F'|' '$2 > 0' "$RUN/samples.txt" 2>/dev/null | grep -c .)
    first=$(awk -F'|' '$2 > 0 {print "at " $1 ": " $3; exit}' "$RUN/samples.txt" 2>/dev/null)
    local late; late=$(awk -F'|' '$6 + 0 > m {m = $6 + 0} END {printf "%.1f", m}' "$RUN/samples.txt" 2>/dev/null)
    local failed_samples; failed_samples=$(grep -c 'sample failed' "$RUN/sampler.err" 2>/dev/null)
    check 1 "no live row past its deadline" "$([ "$viol" = 0 ] && [ "$checked" -gt 0 ] && echo 1)" \
        "$checked samples with a healthy node ($samples in all, ${failed_samples:-0} failed while PostgreSQL was away), $viol with a row past deadline+${TOL}s (largest lateness seen ${late}s)${first:+; first: $first}"

    # 2. Nothing lost: every trigger got exactly one execution; everything is terminal.
    awk 'BEGIN {OFS = "\t"} {for (i = NF + 1; i <= 6; i++) $i = "\\N"; $1 = $1; print}' "$RUN/triggers.txt" >"$RUN/triggers.tsv" 2>/dev/null
    q >/dev/null <<SQL
CREATE TABLE chaos.triggers (kind text, key text, job text, node text, code text, id text);
\copy chaos.triggers FROM '$RUN/triggers.tsv'
SQL
    local r; r=$(q -F ' ' <<'SQL'
WITH k AS (
    SELECT key, min(job) AS job, count(*) FILTER (WHERE kind = 'key') AS answers,
           count(*) FILTER (WHERE code = '201') AS created,
           count(DISTINCT id) FILTER (WHERE kind = 'key') AS ids, min(id) FILTER (WHERE kind = 'key') AS id,
           count(DISTINCT node) FILTER (WHERE kind = 'key') AS nodes
    FROM chaos.triggers WHERE kind IN ('key', 'keylost') GROUP BY key
), kd AS (
    SELECT k.*, (SELECT count(*) FROM executions e WHERE e.job = k.job AND e.idempotency_key = k.key AND e.attempt = 1) AS rows,
           (SELECT min(e.id)::text FROM executions e WHERE e.job = k.job AND e.idempotency_key = k.key AND e.attempt = 1) AS row_id
    FROM k
), c AS (
    SELECT t.*, (SELECT count(*) FROM executions e WHERE e.id::text = t.id AND e.job = t.job AND e.trigger = 'manual'
                 AND e.attempt = 1 AND e.idempotency_key IS NULL) AS found
    FROM chaos.triggers t WHERE kind = 'cli'
)
SELECT (SELECT count(*) FROM kd WHERE answers > 0),
       (SELECT count(*) FROM kd WHERE answers > 0 AND (rows <> 1 OR ids <> 1 OR id <> row_id OR created > 1)),
       (SELECT count(*) FROM kd WHERE answers > 0 AND nodes > 1),
       (SELECT count(*) FROM kd WHERE answers = 0),
       (SELECT count(*) FROM kd WHERE answers = 0 AND rows > 1),
       (SELECT count(*) FROM c WHERE code = '0'),
       (SELECT count(*) FROM c WHERE code = '0' AND found <> 1),
       (SELECT count(*) FROM c WHERE code <> '0'),
       (SELECT count(*) FROM executions e WHERE e.trigger = 'manual' AND e.attempt = 1 AND e.idempotency_key IS NULL),
       (SELECT count(*) FROM executions WHERE state IN ('queued', 'running')),
       (SELECT count(*) FROM chaos.triggers WHERE kind = 'keyfail'),
       (SELECT COALESCE(string_agg(key || ':rows=' || rows || ',ids=' || ids || ',201s=' || created, ' '), '')
          FROM (SELECT * FROM kd WHERE answers > 0 AND (rows <> 1 OR ids <> 1 OR id <> row_id OR created > 1) LIMIT 5) x)
SQL
    )
    local keys keys_bad keys_twice keys_lost keys_lost_bad cli_ok cli_bad cli_fail cli_rows live keyfail bad_list
    read -r keys keys_bad keys_twice keys_lost keys_lost_bad cli_ok cli_bad cli_fail cli_rows live keyfail bad_list <<<"$r"
    local ok2=0
    [ "${keys_bad:-1}" = 0 ] && [ "${keys_lost_bad:-1}" = 0 ] && [ "${cli_bad:-1}" = 0 ] && [ "${live:-1}" = 0 ] \
        && [ "${cli_rows:-0}" -ge "${cli_ok:-1}" ] && [ "${cli_rows:-0}" -le $(( ${cli_ok:-0} + ${cli_fail:-0} )) ] && ok2=1
    check 2 "nothing lost, all terminal" "$ok2" \
        "$keys keyed triggers answered ($keys_twice of them sent to two nodes; $keyfail failed requests retried), $keys_bad without exactly one execution${bad_list:+ [$bad_list]}; $keys_lost keys never answered ($keys_lost_bad with >1 execution); CLI: $cli_ok ok ($cli_bad without their execution), $cli_fail failed, $cli_rows unkeyed manual executions in the ledger (must be in [$cli_ok, $(( ${cli_ok:-0} + ${cli_fail:-0} ))]); live at end: $live"

    # 3. Exactly one transition event into a terminal state per terminal execution (and none for live ones).
    r=$(q -F ' ' -c "
        WITH x AS (SELECT e.id, e.state, count(ev.id) AS n, bool_and(ev.to_state = e.state) AS same
                   FROM executions e LEFT JOIN events ev ON ev.execution_id = e.id AND ev.kind = 'transition'
                        AND ev.to_state IN $TERMINAL GROUP BY e.id, e.state)
        SELECT count(*) FILTER (WHERE state IN $TERMINAL),
               count(*) FILTER (WHERE state IN $TERMINAL AND (n <> 1 OR NOT same)) + count(*) FILTER (WHERE state NOT IN $TERMINAL AND n > 0),
               count(*) FILTER (WHERE n > 1),
               COALESCE(string_agg(id || ':' || state || ':' || n, ' ') FILTER (WHERE (state IN $TERMINAL AND (n <> 1 OR NOT same)) OR (state NOT IN $TERMINAL AND n > 0)), '')
        FROM x")
    local term bad3 dbl list3; read -r term bad3 dbl list3 <<<"$r"
    check 3 "one terminal transition each" "$([ "${bad3:-1}" = 0 ] && echo 1)" \
        "$term terminal executions, $bad3 without exactly one matching terminal event ($dbl with two or more)${list3:+ [$(cut -c1-300 <<<"$list3")]}"

    # 4. Terminal => finished_at; non-completed terminal => reason and message.
    r=$(q -F ' ' -c "
        SELECT count(*) FILTER (WHERE finished_at IS NULL),
               count(*) FILTER (WHERE state <> 'completed' AND (reason IS NULL OR COALESCE(message, '') = ''))
        FROM executions WHERE state IN $TERMINAL")
    local nofin noreason; read -r nofin noreason <<<"$r"
    check 4 "terminal rows complete" "$([ "${nofin:-1}" = 0 ] && [ "${noreason:-1}" = 0 ] && echo 1)" \
        "$nofin terminal without finished_at, $noreason non-completed without reason/message"

    # 5. Stale reports were refused (proves the fault cases happened).
    local refused by_actor
    refused=$(q -c "SELECT count(*) FROM events WHERE kind = 'refused'")
    by_actor=$(q -c "SELECT COALESCE(string_agg(a || '=' || n, ' '), '') FROM (SELECT CASE WHEN actor LIKE '$TAG-w%' THEN 'by-workers' ELSE 'by-nodes' END AS a, count(*) AS n FROM events WHERE kind = 'refused' GROUP BY 1 ORDER BY 1) x")
    check 5 "stale reports refused > 0" "$([ "${refused:-0}" -gt 0 ] && echo 1)" "$refused refused reports ($by_actor)"

    # 6. Slot occupancy never above its limit (sampled).
    slots_bad=$(awk -F'|' '{n = split($4, a, ","); for (i = 1; i <= n; i++) { split(a[i], kv, "="); split(kv[2], v, "/"); if (v[1] + 0 > v[2] + 0) { bad++; break } } } END {print bad + 0}' "$RUN/samples.txt" 2>/dev/null)
    slots_max=$(awk -F'|' '{n = split($4, a, ","); for (i = 1; i <= n; i++) { split(a[i], kv, "="); split(kv[2], v, "/"); if (v[1] + 0 > m[kv[1]] + 0) m[kv[1]] = v[1] + 0; lim[kv[1]] = v[2] } } END {for (k in m) printf "%s max %d/%d ", k, m[k], lim[k]}' "$RUN/samples.txt" 2>/dev/null)
    check 6 "slot occupancy <= limit" "$([ "${slots_bad:-1}" = 0 ] && [ "$samples" -gt 0 ] && echo 1)" \
        "$samples samples, $slots_bad over a limit; ${slots_max% }"

    # 7. Every scheduled instant at most once.
    r=$(q -F ' ' -c "
        SELECT (SELECT count(*) FROM executions WHERE scheduled_for IS NOT NULL AND attempt = 1),
               (SELECT count(*) FROM (SELECT 1 FROM executions WHERE scheduled_for IS NOT NULL AND attempt = 1
                                      GROUP BY job, scheduled_for HAVING count(*) > 1) d)")
    local fires dup; read -r fires dup <<<"$r"
    check 7 "each scheduled instant once" "$([ "${dup:-1}" = 0 ] && echo 1)" "$fires scheduled fires, $dup instants fired more than once"

    # 8. jobward audit.
    "$BIN" --config "$CFG" audit >"$RUN/audit.txt" 2>&1; local arc=$?
    check 8 "jobward audit clean" "$([ $arc = 0 ] && echo 1)" "exit $arc$([ $arc = 0 ] || echo ": $(head -3 "$RUN/audit.txt" | tr '\n' ' ')")"

    # 9. No process of any execution of this run is alive.
    q -c 'SELECT id FROM nodes' >"$RUN/nodes.txt"
    local left; left=$(our_execution_pids | tr '\n' ' ')
    local detail=""
    for p in $left; do detail+=" $p:$(tr '\0' ' ' </proc/$p/cmdline 2>/dev/null | cut -c1-40)(exec $(tr '\0' '\n' </proc/$p/environ 2>/dev/null | sed -n 's/^JOBWARD_EXECUTION_ID=//p'))"; done
    check 9 "no execution process alive" "$([ -z "$left" ] && echo 1)" \
        "$(wc -l <"$RUN/nodes.txt") node incarnations and workers $TAG-w*: $(wc -w <<<"$left") processes alive${detail:+ [$detail ]}"

    # 10. Nodes and workers exited only when the script killed them, and 0 on SIGTERM.
    local bad_rc=0 s; for s in "${STOP_RC[@]}"; do [ "${s#*=}" = 0 ] || bad_rc=$(( bad_rc + 1 )); done
    check 10 "no crash, graceful stop" "$([ "$UNEXPECTED" = 0 ] && [ $bad_rc = 0 ] && echo 1)" \
        "$UNEXPECTED unexpected exits$([ -s "$RUN/unexpected.txt" ] && echo " ($(tr '\n' ';' <"$RUN/unexpected.txt"))"); SIGTERM exit statuses: ${STOP_RC[*]}"

    # 11. No process outlives its record (invariant 11), sampled every second during the run. A
    # process seen alive after its execution became terminal is excused while its owner was
    # stopped or cut off (a worker also while its server node was killed, stopped or cut, and
    # everyone while PostgreSQL restarted): an owner that cannot hear it lost the lease cannot
    # kill. Counted from the later of the record's finished_at and the end of such an
    # impairment, it may live at most OUTLIVE_GRACE s (a heartbeat interval, the kill, the
    # sampling period). A SIGKILLed owner excuses nothing: its lifeline kills its processes.
    touch "$RUN/procs.tsv" "$RUN/impair.tsv"
    q >/dev/null <<SQL
CREATE TABLE chaos.procs (t float8, pid bigint, exec bigint, owner text);
CREATE TABLE chaos.impair (target text, kind text, s float8, e float8);
CREATE TABLE chaos.node_pids (target text, pid bigint);
CREATE TABLE chaos.worker_server (worker text, server text);
\copy chaos.procs FROM '$RUN/procs.tsv'
\copy chaos.impair FROM '$RUN/impair.tsv'
\copy chaos.node_pids FROM '$RUN/node_pids.tsv'
\copy chaos.worker_server FROM '$RUN/worker_server.tsv'
SQL
    r=$(q -F ' ' <<SQL
WITH p AS (
    SELECT pr.t, pr.pid, pr.exec, e.job, e.state, COALESCE(e.reason, '-') AS reason,
           extract(epoch FROM chaos.ts(e.finished_at))::float8 AS f,
           CASE WHEN pr.owner LIKE '$TAG-w%' THEN substr(pr.owner, length('$TAG-') + 1)
                ELSE (SELECT np.target FROM nodes n JOIN chaos.node_pids np ON np.pid = n.pid WHERE n.id = pr.owner LIMIT 1)
           END AS target
    FROM chaos.procs pr JOIN executions e ON e.id = pr.exec
    WHERE e.finished_at IS NOT NULL AND (pr.owner LIKE '$TAG-w%' OR pr.owner IN (SELECT id FROM nodes))
), x AS (
    SELECT p.*, GREATEST(p.f, COALESCE((
        SELECT max(i.e) FROM chaos.impair i
        WHERE i.s <= p.t AND ((i.target = p.target AND i.kind <> 'kill') OR i.target = 'pg'
              OR i.target = (SELECT server FROM chaos.worker_server w WHERE w.worker = p.target))), 0)) AS base
    FROM p
), per AS (
    SELECT exec, min(job) AS job, min(state || '/' || reason) AS sr, min(target) AS target,
           max(t - f) AS outlived, max(t - base) AS unexcused
    FROM x WHERE t > f GROUP BY exec
)
SELECT (SELECT count(*) FROM (SELECT DISTINCT t FROM chaos.procs) s),
       count(*), COALESCE(round(max(outlived)::numeric, 1), 0),
       count(*) FILTER (WHERE unexcused > $OUTLIVE_GRACE),
       COALESCE(string_agg(exec || ':' || job || ':' || sr || ':' || target || ':+' || round(unexcused::numeric, 1) || 's', ' ')
                FILTER (WHERE unexcused > $OUTLIVE_GRACE), '')
FROM per
SQL
    )
    local psamples outl maxout unexc list11; read -r psamples outl maxout unexc list11 <<<"$r"
    local r12; r12=$(q -F '|' <<SQL
WITH o AS (
    SELECT DISTINCT e.id, e.reason, e.message FROM chaos.procs pr JOIN executions e ON e.id = pr.exec
    WHERE e.finished_at IS NOT NULL AND pr.t > extract(epoch FROM chaos.ts(e.finished_at))
      AND (pr.owner LIKE '$TAG-w%' OR pr.owner IN (SELECT id FROM nodes))
      AND e.reason IN ('heartbeat_timeout', 'node_lost', 'manual_cleanup')
)
SELECT count(*), count(*) FILTER (WHERE message !~* '(may|might|could) (still )?be (alive|running)|still (alive|running)'),
       COALESCE((SELECT string_agg(reason || '=' || n, ' ') FROM (SELECT reason, count(*) n FROM o
                 WHERE message !~* '(may|might|could) (still )?be (alive|running)|still (alive|running)' GROUP BY 1) x), ''),
       COALESCE((SELECT id || ': ' || message FROM o WHERE message !~* '(may|might|could) (still )?be (alive|running)|still (alive|running)' ORDER BY id LIMIT 1), '')
FROM o
SQL
    )
    local settled_alive silent silent_by example12; IFS='|' read -r settled_alive silent silent_by example12 <<<"$r12"
    check 11 "no process outlives its record" "$([ "${unexc:-1}" = 0 ] && [ "${psamples:-0}" -gt 0 ] && echo 1)" \
        "$psamples process samples; $outl executions seen alive after their record ended (longest ${maxout}s), $unexc of them more than ${OUTLIVE_GRACE}s beyond what their owner's faults excuse${list11:+ [$(cut -c1-400 <<<"$list11")]}"

    # 12. A record settled by someone else while its process was still alive says so (invariant 11).
    check 12 "settled-while-alive says so" "$([ "${silent:-1}" = 0 ] && echo 1)" \
        "$settled_alive executions settled by a reaper/cleanup while a process of theirs was seen alive, $silent of them with a message that does not say it may still be alive${silent_by:+ ($silent_by)}${example12:+; e.g. $example12}"

    # 13. A refusal means a lost lease (invariant 12): each refused report came after its
    # execution's terminal transition, and that transition was made by someone else.
    r=$(q -F ' ' -c "
        WITH r AS (
            SELECT ev.id, ev.execution_id, ev.actor,
                   (SELECT t.id FROM events t WHERE t.execution_id = ev.execution_id AND t.kind = 'transition'
                        AND t.to_state IN $TERMINAL ORDER BY t.id LIMIT 1) AS tid,
                   (SELECT t.actor FROM events t WHERE t.execution_id = ev.execution_id AND t.kind = 'transition'
                        AND t.to_state IN $TERMINAL ORDER BY t.id LIMIT 1) AS tactor
            FROM events ev WHERE ev.kind = 'refused')
        SELECT count(*), count(*) FILTER (WHERE tid IS NULL OR tid > id OR tactor = actor),
               COALESCE(string_agg(execution_id || ':' || actor || '/' || COALESCE(tactor, 'live'), ' ')
                        FILTER (WHERE tid IS NULL OR tid > id OR tactor = actor), '')
        FROM r")
    local nref badref list13; read -r nref badref list13 <<<"$r"
    check 13 "refusals only for lost leases" "$([ "${badref:-1}" = 0 ] && echo 1)" \
        "$nref refused reports, $badref refused before their execution ended or after it ended by the refused owner itself${list13:+ [$(cut -c1-300 <<<"$list13")]}"

    # 14. Only an impaired node is declared lost (invariant 12: "a database outage alone never
    # makes a node lost"): every node incarnation stopped as lost was stopped, cut off or killed
    # by the script at some time between its last heartbeat and the moment it was declared lost.
    r=$(q -F '|' <<'SQL'
WITH lost AS (
    SELECT n.id, n.name, n.heartbeat_at, n.stopped_at, n.stop_reason, np.target,
           EXISTS (SELECT 1 FROM chaos.impair i WHERE i.target = np.target
                   AND i.s <= extract(epoch FROM chaos.ts(n.stopped_at)) AND i.e >= extract(epoch FROM chaos.ts(n.heartbeat_at))) AS excused
    FROM nodes n LEFT JOIN chaos.node_pids np ON np.pid = n.pid
    WHERE n.stop_reason LIKE 'lost%'
)
SELECT count(*), count(*) FILTER (WHERE NOT excused),
       (SELECT count(*) FROM executions e WHERE e.reason = 'node_lost' AND e.node_id IN (SELECT id FROM lost WHERE NOT excused)),
       COALESCE(string_agg(name || ' ' || left(id, 8) || ' last heartbeat ' || to_char(chaos.ts(heartbeat_at) AT TIME ZONE 'UTC', 'HH24:MI:SS.MS')
                           || ', declared lost ' || to_char(chaos.ts(stopped_at) AT TIME ZONE 'UTC', 'HH24:MI:SS.MS') || ' ('
                           || split_part(stop_reason, '; ', 2) || ')', '; ' ORDER BY stopped_at) FILTER (WHERE NOT excused), '')
FROM lost
SQL
    )
    local nlost badlost badexec list14; IFS='|' read -r nlost badlost badexec list14 <<<"$r"
    check 14 "only impaired nodes declared lost" "$([ "${badlost:-1}" = 0 ] && echo 1)" \
        "$nlost incarnations declared lost, $badlost of them while running unimpaired ($badexec executions failed node_lost with them)${list14:+ [$(cut -c1-600 <<<"$list14")]}"

    echo "chaos: totals"
    echo "  executions by state:  $(q -c "SELECT string_agg(state || '=' || n, ' ' ORDER BY n DESC) FROM (SELECT state, count(*) n FROM executions GROUP BY 1) x")"
    echo "  by reason:            $(q -c "SELECT string_agg(state || '/' || reason || '=' || n, ' ' ORDER BY n DESC) FROM (SELECT state, reason, count(*) n FROM executions WHERE reason IS NOT NULL GROUP BY 1, 2) x")"
    echo "  by trigger:           $(q -c "SELECT string_agg(trigger || '=' || n, ' ' ORDER BY n DESC) FROM (SELECT trigger, count(*) n FROM executions GROUP BY 1) x")"
    echo "  remote / local:       $(q -c "SELECT string_agg(runner || '=' || n, ' ') FROM (SELECT CASE WHEN runner = 'local' THEN 'local' ELSE 'remote' END AS runner, count(*) n FROM executions GROUP BY 1) x")"
    echo "  node incarnations:    $(q -c "SELECT sum(n) || ': ' || string_agg(r || '=' || n, ' ') FROM (SELECT COALESCE(split_part(split_part(stop_reason, ':', 1), ' by ', 1), 'running') r, count(*) n FROM nodes GROUP BY 1) x")"
    local f; f=""; for k in "${!FAULTS[@]}"; do f+="$k=${FAULTS[$k]} "; done
    echo "  faults injected:      $(tr ' ' '\n' <<<"$f" | sort | tr '\n' ' ')"
}
