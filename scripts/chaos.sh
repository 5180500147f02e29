#!/usr/bin/env bash
# Seeded, bounded fault run of a jobward cluster on PostgreSQL: 3 nodes, 4 remote workers (two
# with skewed clocks), a stream of triggers, and faults (SIGKILL/SIGSTOP of nodes and workers,
# network cuts worker<->server and node<->PostgreSQL, a PostgreSQL restart) chosen by a PRNG
# seeded with --seed. At the end everything is healed and settled, stopped with SIGTERM, and
# the ledger is checked; exit 1 on any failed check. See docs/CHAOS.md.
#
#   scripts/chaos.sh [--seed N] [--duration SECONDS] [--keep]
#
# Needs: root (nftables, pg_ctlcluster), a local Debian PostgreSQL cluster, psql, curl, socat,
# nft, libfaketime. JOBWARD_BIN (default target/debug/jobward). PostgreSQL is reached as
# CHAOS_PG (default postgres://postgres@127.0.0.1:5432), trust auth.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SEED=""
DURATION=120
KEEP=0
usage() { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --seed) SEED=${2:?--seed needs a value}; shift 2 ;;
        --seed=*) SEED=${1#*=}; shift ;;
        --duration) DURATION=${2:?--duration needs a value}; shift 2 ;;
        --duration=*) DURATION=${1#*=}; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "chaos: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
[ -n "$SEED" ] || SEED=$(( ($(od -An -N4 -tu4 /dev/urandom) % 999999) + 1 ))
case "$SEED$DURATION" in *[!0-9]*) echo "chaos: --seed and --duration are integers" >&2; exit 2 ;; esac
[ "$DURATION" -ge 30 ] || { echo "chaos: --duration must be at least 30" >&2; exit 2; }
echo "chaos: seed=$SEED duration=${DURATION}s (reproduce: scripts/chaos.sh --seed $SEED --duration $DURATION)"

# ---------------------------------------------------------------- settings
TOL=6              # s past a deadline a live row may be seen: heartbeat timeout (3 s) + 3 reaper ticks (1 s)
OUTLIVE_GRACE=5    # s a process may outlive its terminal record once its owner can know (check 11)
SETTLE_MAX=90      # s to wait at the end for every live execution to end
NODES=3
WORKERS=4
CHAOS_PG=${CHAOS_PG:-postgres://postgres@127.0.0.1:5432}
PG_HOSTPORT=${CHAOS_PG#*@}; PG_HOSTPORT=${PG_HOSTPORT%%/*}
PG_HOST=${PG_HOSTPORT%:*}; PG_PORT=${PG_HOSTPORT##*:}
PG_USER=${CHAOS_PG#postgres://}; PG_USER=${PG_USER%@*}
BIN=${JOBWARD_BIN:-target/debug/jobward}

missing=()
for tool in psql curl socat nft ss pg_ctlcluster od; do command -v "$tool" >/dev/null || missing+=("$tool"); done
FAKETIME_LIB=$(ls /usr/lib/*/faketime/libfaketime.so.1 /usr/lib/faketime/libfaketime.so.1 2>/dev/null | head -1)
[ -n "$FAKETIME_LIB" ] || missing+=(libfaketime)
if [ ${#missing[@]} -gt 0 ]; then
    echo "chaos: missing: ${missing[*]} (Debian: apt-get install -y postgresql-client curl socat nftables iproute2 faketime)" >&2
    exit 2
fi
[ "$(id -u)" = 0 ] || { echo "chaos: must run as root (nftables rules, PostgreSQL restart)" >&2; exit 2; }
[ -x "$BIN" ] || { echo "chaos: no jobward binary at $BIN (build it, or set JOBWARD_BIN)" >&2; exit 2; }
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
PG_VERSION=$(ls /etc/postgresql 2>/dev/null | sort -n | tail -1)
[ -n "$PG_VERSION" ] || { echo "chaos: no Debian PostgreSQL cluster under /etc/postgresql" >&2; exit 2; }
psql "$CHAOS_PG/postgres" -XAtqc 'SELECT 1' >/dev/null 2>&1 || { echo "chaos: PostgreSQL unreachable at $CHAOS_PG" >&2; exit 2; }

TAG=chaos$$
DB=jobward_$TAG
ADMIN_URL="$CHAOS_PG/postgres"
DB_URL="$CHAOS_PG/$DB"
NFT_TABLE=jobward_$TAG
RUN=$(mktemp -d /tmp/jobward-chaos.XXXXXX)
T_START=$EPOCHSECONDS
echo "chaos: run directory $RUN, database $DB, binary $BIN"

# ---------------------------------------------------------------- PRNG (seeded, bash-version independent)
# MINSTD (Park-Miller); rnd LO HI sets R to an integer in [LO, HI]. No subshells: the state is global.
PRNG=$(( SEED % 2147483646 + 1 ))
rnd() { PRNG=$(( PRNG * 48271 % 2147483647 )); R=$(( $1 + PRNG % ($2 - $1 + 1) )); }

# ---------------------------------------------------------------- helpers
log() { printf '[%6.1fs] %s\n' "$(( ${EPOCHREALTIME/./} / 1000 - T0_MS ))e-3" "$*"; }
T0_MS=$(( ${EPOCHREALTIME/./} / 1000 ))
now_ms() { NOW_MS=$(( ${EPOCHREALTIME/./} / 1000 )); }
q() { psql "$DB_URL" -XAtq -v ON_ERROR_STOP=1 "$@"; }

# Ports are taken below the kernel's ephemeral range, so that no outgoing connection can take
# one between the check and the bind.
declare -A USED_PORTS=()
EPH_LOW=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null); EPH_LOW=${EPH_LOW:-32768}
PORT_LOW=$(( EPH_LOW > 20000 ? 10000 : 2000 ))
free_port() { # sets PORT to a free loopback TCP port
    local p
    while :; do
        p=$(( PORT_LOW + $(od -An -N2 -tu2 /dev/urandom) % (EPH_LOW - PORT_LOW) ))
        [ -z "${USED_PORTS[$p]:-}" ] || continue
        if [ -z "$(ss -Hltn "sport = :$p" 2>/dev/null)" ]; then USED_PORTS[$p]=1; PORT=$p; return; fi
    done
}

pg_ready() { psql "$ADMIN_URL" -XAtqc 'SELECT 1' >/dev/null 2>&1; }
pg_restart() { pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main restart -m fast >>"$RUN/pg_ctl.log" 2>&1; }
pg_ensure_up() {
    local i
    for i in $(seq 1 100); do pg_ready && return 0; sleep 0.3; done
    echo "chaos: PostgreSQL is not up; starting it" >&2
    pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main start >>"$RUN/pg_ctl.log" 2>&1
    for i in $(seq 1 100); do pg_ready && return 0; sleep 0.3; done
    return 1
}

# ---------------------------------------------------------------- cleanup (also on Ctrl-C)
declare -a NODE_PID=() WORKER_PID=() PROXY_PID=() BG_PID=()
CLEANED=0
RESULT=2
cleanup() {
    [ "$CLEANED" = 1 ] && return
    CLEANED=1
    trap '' INT TERM
    touch "$RUN/stop" 2>/dev/null
    local p
    for p in "${BG_PID[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${NODE_PID[@]}" "${WORKER_PID[@]}"; do
        [ -n "$p" ] && kill -0 "$p" 2>/dev/null && { kill -CONT "$p"; kill -TERM "$p"; } 2>/dev/null
    done
    local i
    for i in $(seq 1 50); do
        local alive=0
        for p in "${NODE_PID[@]}" "${WORKER_PID[@]}"; do [ -n "$p" ] && kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.2
    done
    for p in "${NODE_PID[@]}" "${WORKER_PID[@]}"; do [ -n "$p" ] && kill -KILL "$p" 2>/dev/null; done
    # Execution processes of this run that outlived everything (reported by check 9 if it ran).
    for p in $(our_execution_pids 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
    for p in "${PROXY_PID[@]}"; do [ -n "$p" ] && kill -TERM -- "-$p" 2>/dev/null; done
    nft delete table inet "$NFT_TABLE" 2>/dev/null
    pg_ensure_up || echo "chaos: WARNING: PostgreSQL could not be started" >&2
    if [ "$KEEP" = 1 ]; then
        echo "chaos: kept database $DB and $RUN (--keep)"
    else
        if [ "$RESULT" != 0 ]; then
            pg_dump "$DB_URL" -Fc -f "$RUN/ledger.dump" 2>/dev/null && echo "chaos: ledger dumped to $RUN/ledger.dump (pg_restore -d DB)"
        fi
        psql "$ADMIN_URL" -XAtqc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
        if [ "$RESULT" = 0 ]; then rm -rf "$RUN"; else echo "chaos: logs kept in $RUN"; fi
    fi
}
trap cleanup EXIT
trap 'echo "chaos: interrupted" >&2; exit 130' INT TERM

# Pids of processes (anywhere on the machine) run by an execution of this run: their environment
# names one of this run's node incarnations or workers.
our_execution_pids() {
    local f pid envs
    [ -s "$RUN/nodes.txt" ] || psql "$DB_URL" -XAtqc 'SELECT id FROM nodes' >"$RUN/nodes.txt" 2>/dev/null
    for f in $(grep -l JOBWARD_EXECUTION_ID /proc/[0-9]*/environ 2>/dev/null); do
        pid=${f#/proc/}; pid=${pid%/environ}
        envs=$(tr '\0' '\n' <"$f" 2>/dev/null | grep -E '^JOBWARD_(NODE_ID|WORKER_ID)=') || continue
        if grep -q "^JOBWARD_WORKER_ID=$TAG-w" <<<"$envs" \
            || { grep -q '^JOBWARD_NODE_ID=' <<<"$envs" && grep -qxF "$(sed -n 's/^JOBWARD_NODE_ID=//p' <<<"$envs")" "$RUN/nodes.txt"; }; then
            echo "$pid"
        fi
    done
}

# ---------------------------------------------------------------- database, config, network
psql "$ADMIN_URL" -XAtq -c "CREATE DATABASE $DB" >/dev/null || exit 2

declare -a API_PORT=() DBPROXY_PORT=() WPROXY_PORT=()
for i in $(seq 1 $NODES); do free_port; API_PORT[$i]=$PORT; free_port; DBPROXY_PORT[$i]=$PORT; done
for j in $(seq 1 $WORKERS); do free_port; WPROXY_PORT[$j]=$PORT; done

CFG=$RUN/jobward.toml
cat >"$CFG" <<EOF
# written by scripts/chaos.sh
[server]
db = "$DB_URL"
shutdown_grace = "5s"
max_running = 24

[defaults]
heartbeat_timeout = "3s"
run_timeout = "30s"
queue_timeout = "60s"
kill_grace = "2s"
misfire = "run_once"
history = { keep_last = 100000000, max_age = "3650d" }

[concurrency]
slots = 2
remote = 2

# scheduled, run by the nodes
[[job]]
name = "tick"
command = "sleep 0.2"
every = "1s"

[[job]]
name = "tick-overlap"            # runs longer than its interval: overlap skips
command = "sleep 2.5"
every = "2s"

[[job]]
name = "cron-flaky"              # fails one time in three, retried
command = "sleep 0.3; [ \$((JOBWARD_EXECUTION_ID % 3)) -ne 0 ]"
schedule = "*/2 * * * * *"
retry = { max_attempts = 3, backoff = "1s", max_backoff = "2s" }

[[job]]
name = "slot-tick"
command = "sleep 1.5"
every = "2s"
overlap = "allow"
concurrency_key = "slots"

# manual, triggered in bulk
[[job]]
name = "m-fast"
command = "sleep 0.3"
overlap = "allow"

[[job]]
name = "m-flaky"
command = "sleep 0.5; exit \$((JOBWARD_EXECUTION_ID % 2))"
overlap = "allow"
retry = { max_attempts = 3, backoff = "1s", max_backoff = "2s" }

[[job]]
name = "m-slot"
command = "sleep 1"
overlap = "allow"
concurrency_key = "slots"
queue_timeout = "30s"

[[job]]
name = "m-long"                  # long enough to be caught by faults
command = "sleep 6"
overlap = "allow"
retry = { max_attempts = 2, backoff = "1s", max_backoff = "1s" }

[[job]]
name = "m-timeout"
command = "sleep 10"
overlap = "allow"
run_timeout = "2s"
kill_grace = "1s"

# remote, run by workers
[[job]]
name = "r-fast"
command = "sleep 1"
queue = "qa"
overlap = "allow"
retry = { max_attempts = 2, backoff = "1s", max_backoff = "1s" }

[[job]]
name = "r-long"
command = "sleep 5"
queue = "qa"
overlap = "allow"
retry = { max_attempts = 2, backoff = "1s", max_backoff = "1s" }

[[job]]
name = "r-tick"
command = "sleep 1.5"
queue = "qb"
every = "2s"
overlap = "allow"
concurrency_key = "remote"

[[job]]
name = "r-slot"
command = "sleep 0.8"
queue = "qb"
overlap = "allow"
concurrency_key = "remote"
EOF
MANUAL_JOBS=(m-fast m-fast m-flaky m-slot m-long m-timeout r-fast r-fast r-long r-slot r-slot)

# Network cuts: a socat proxy per path (node i -> PostgreSQL, worker j -> its server) and one
# nftables set of cut proxy ports whose packets are dropped both ways (a real cut: established
# connections stall, new ones time out).
nft -f - <<EOF || { echo "chaos: nft failed" >&2; exit 2; }
table inet $NFT_TABLE {
    set cut { type inet_service; }
    chain input {
        type filter hook input priority -10; policy accept;
        tcp dport @cut drop
        tcp sport @cut drop
    }
}
EOF
cut_on()  { nft add element inet "$NFT_TABLE" cut "{ $1 }"; }
cut_off() { nft delete element inet "$NFT_TABLE" cut "{ $1 }" 2>/dev/null; }

start_proxy() { # LISTEN_PORT TARGET_HOST:TARGET_PORT NAME
    setsid socat "TCP-LISTEN:$1,bind=127.0.0.1,fork,reuseaddr" "TCP:$2" </dev/null >>"$RUN/$3.log" 2>&1 &
    PROXY_PID+=($!)
    local t
    for t in $(seq 1 50); do [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ] && return 0; sleep 0.1; done
    echo "chaos: proxy $3 could not listen on port $1: $(cat "$RUN/$3.log")" >&2; exit 2
}
for i in $(seq 1 $NODES); do start_proxy "${DBPROXY_PORT[$i]}" "$PG_HOST:$PG_PORT" "proxy-n$i-pg"; done

# ---------------------------------------------------------------- nodes and workers
"$BIN" --config "$CFG" migrate >"$RUN/migrate.log" 2>&1 || { echo "chaos: migrate failed: $(cat "$RUN/migrate.log")" >&2; exit 2; }
q -f "$HERE/chaos/setup.sql" >/dev/null || exit 2

start_node() { # i
    local i=$1 url="postgres://$PG_USER@127.0.0.1:${DBPROXY_PORT[$1]}/$DB"
    echo "---- start $(date -u +%FT%T.%3NZ)" >>"$RUN/n$i.log"
    JOBWARD_LOG=info setsid "$BIN" --config "$CFG" --db "$url" serve --node-name "$TAG-n$i" \
        --bind "127.0.0.1:${API_PORT[$i]}" --log-dir "$RUN/logs-n$i" </dev/null >>"$RUN/n$i.log" 2>&1 &
    NODE_PID[$i]=$!
    printf 'n%s\t%s\n' "$i" "$!" >>"$RUN/node_pids.tsv"
}
WORKER_QUEUES=("" "--queue qa --queue qb" "--queue qa" "--queue qb --queue qa" "--queue qa --queue qb")
WORKER_CONC=(0 3 2 2 2)
WORKER_FAKE=("" "" "+30s" "-45s" "")
start_worker() { # j
    local j=$1 env=()
    echo "---- start $(date -u +%FT%T.%3NZ)" >>"$RUN/w$j.log"
    if [ -n "${WORKER_FAKE[$j]}" ]; then
        # libfaketime preloaded directly (not via the faketime wrapper, which forks) so $! is the worker.
        env=(LD_PRELOAD="$FAKETIME_LIB" FAKETIME="${WORKER_FAKE[$j]}" FAKETIME_DONT_RESET=1)
    fi
    # shellcheck disable=SC2086
    env "${env[@]}" JOBWARD_LOG=info setsid "$BIN" worker --server "http://127.0.0.1:${WPROXY_PORT[$j]}" \
        ${WORKER_QUEUES[$j]} --concurrency "${WORKER_CONC[$j]}" --worker-id "$TAG-w$j" \
        --log-dir "$RUN/logs-w$j" --shutdown-grace 5s </dev/null >>"$RUN/w$j.log" 2>&1 &
    WORKER_PID[$j]=$!
}
node_up() { curl -fsS -m 2 "http://127.0.0.1:${API_PORT[$1]}/api/system/health" >/dev/null 2>&1; }

for i in $(seq 1 $NODES); do start_node "$i"; done
for t in $(seq 1 100); do
    ok=1; for i in $(seq 1 $NODES); do node_up "$i" || ok=0; done
    [ $ok = 1 ] && break
    [ "$t" = 100 ] && { echo "chaos: nodes did not come up; see $RUN/n*.log" >&2; exit 2; }
    sleep 0.3
done
for j in $(seq 1 $WORKERS); do
    printf 'w%s\tn%s\n' "$j" "$(( (j - 1) % NODES + 1 ))" >>"$RUN/worker_server.tsv"
    start_proxy "${WPROXY_PORT[$j]}" "127.0.0.1:${API_PORT[$(( (j - 1) % NODES + 1 ))]}" "proxy-w$j"
    start_worker "$j"
done
log "3 nodes (api ${API_PORT[*]}, via PostgreSQL proxies ${DBPROXY_PORT[*]}), $WORKERS workers (via proxies ${WPROXY_PORT[*]}; clocks: +0 +30s -45s +0)"

# ---------------------------------------------------------------- fault schedule (from the seed only)
# Each fault: start time, kind, target, how long until it is healed. At most two nodes are
# impaired at once; a target is never faulted twice at the same time. In the first part of
# the run every kind happens at least once (shuffled); then kinds are drawn by weight.
KINDS=(node_kill node_stop_short node_stop_long node_db_cut worker_kill worker_stop worker_cut pg_restart)
WEIGHTS=(3 2 3 3 3 3 3 0)
declare -a NODE_BUSY_UNTIL=() WORKER_BUSY_UNTIL=()
for i in $(seq 1 $NODES); do NODE_BUSY_UNTIL[$i]=0; done
for j in $(seq 1 $WORKERS); do WORKER_BUSY_UNTIL[$j]=0; done
SCHEDULE=$RUN/schedule.txt; : >"$SCHEDULE"
D_MS=$(( DURATION * 1000 ))
mandatory=("${KINDS[@]}")
for (( k = ${#mandatory[@]} - 1; k > 0; k-- )); do rnd 0 "$k"; tmp=${mandatory[$k]}; mandatory[$k]=${mandatory[$R]}; mandatory[$R]=$tmp; done
PG_RESTARTS=$(( DURATION / 600 + 1 ))
pg_times=()
for (( k = 1; k < PG_RESTARTS; k++ )); do rnd $(( k * 600000 - 120000 )) $(( k * 600000 + 120000 )); pg_times+=("$R"); done
t=5000; m=0
while [ $t -lt $(( D_MS - 8000 )) ]; do
    if [ $m -lt ${#mandatory[@]} ]; then kind=${mandatory[$m]}
    elif [ ${#pg_times[@]} -gt 0 ] && [ $t -ge "${pg_times[0]}" ]; then kind=pg_restart; pg_times=("${pg_times[@]:1}")
    else
        total=0; for w in "${WEIGHTS[@]}"; do total=$(( total + w )); done
        rnd 1 $total; acc=0
        for k in "${!KINDS[@]}"; do acc=$(( acc + WEIGHTS[k] )); if [ $R -le $acc ]; then kind=${KINDS[$k]}; break; fi; done
    fi
    case $kind in
        node_kill) rnd 1000 6000 ;; node_stop_short) rnd 300 2000 ;; node_stop_long) rnd 4500 12000 ;;
        node_db_cut) rnd 2000 12000 ;; worker_kill) rnd 1000 5000 ;; worker_stop) rnd 1000 10000 ;;
        worker_cut) rnd 1000 10000 ;; pg_restart) R=0 ;;
    esac
    dur=$R; target=-
    if [[ $kind == node_* ]]; then
        busy=0; free=()
        for i in $(seq 1 $NODES); do if [ "${NODE_BUSY_UNTIL[$i]}" -gt $t ]; then busy=$(( busy + 1 )); else free+=("$i"); fi; done
        if [ $busy -ge 2 ] || [ ${#free[@]} = 0 ]; then t=$(( t + 1000 )); continue; fi
        rnd 0 $(( ${#free[@]} - 1 )); target=${free[$R]}; NODE_BUSY_UNTIL[$target]=$(( t + dur + 1500 ))
    elif [[ $kind == worker_* ]]; then
        free=(); for j in $(seq 1 $WORKERS); do [ "${WORKER_BUSY_UNTIL[$j]}" -le $t ] && free+=("$j"); done
        if [ ${#free[@]} = 0 ]; then t=$(( t + 1000 )); continue; fi
        rnd 0 $(( ${#free[@]} - 1 )); target=${free[$R]}; WORKER_BUSY_UNTIL[$target]=$(( t + dur + 1000 ))
    fi
    echo "$t start $kind $target" >>"$SCHEDULE"
    [ "$kind" != pg_restart ] && echo "$(( t + dur )) end $kind $target" >>"$SCHEDULE"
    m=$(( m + 1 ))
    if [ $D_MS -le 180000 ]; then rnd 1500 4500; else rnd 2000 9000; fi
    t=$(( t + R ))
done
sort -n -s -k1,1 -o "$SCHEDULE" "$SCHEDULE"
echo "chaos: $(grep -c ' start ' "$SCHEDULE") faults scheduled ($RUN/schedule.txt): $(awk '$2=="start"{print $3}' "$SCHEDULE" | sort | uniq -c | awk '{printf "%s%s=%s", (NR > 1 ? " " : ""), $2, $1}')"

# ---------------------------------------------------------------- health of nodes (for check 1)
# A node is healthy while it runs, is not stopped and is not cut from PostgreSQL. The sampler
# counts a live row as overdue only after max(its deadline, the start of the current stretch in
# which some node was healthy, PostgreSQL's start) + TOL.
declare -a NODE_IMPAIRED=()
for i in $(seq 1 $NODES); do NODE_IMPAIRED[$i]=0; done
HEALTHY=1
echo "$EPOCHREALTIME" >"$RUN/healthy_since"
update_health() {
    local i any=0
    for i in $(seq 1 $NODES); do [ "${NODE_IMPAIRED[$i]}" = 0 ] && any=1; done
    if [ $any = 1 ] && [ $HEALTHY = 0 ]; then echo "$EPOCHREALTIME" >"$RUN/healthy_since.tmp"; mv "$RUN/healthy_since.tmp" "$RUN/healthy_since"; fi
    if [ $any = 0 ] && [ $HEALTHY = 1 ]; then echo 0 >"$RUN/healthy_since.tmp"; mv "$RUN/healthy_since.tmp" "$RUN/healthy_since"; fi
    HEALTHY=$any
}

# ---------------------------------------------------------------- sampler (checks 1 and 6)
sampler() {
    local hs
    while [ ! -e "$RUN/stop_sampler" ] && [ ! -e "$RUN/stop" ]; do
        hs=$(cat "$RUN/healthy_since" 2>/dev/null || echo 0)
        psql "$DB_URL" -XAtq -v hs="${hs:-0}" -v tol=$TOL -f "$HERE/chaos/sample.sql" >>"$RUN/samples.txt" 2>>"$RUN/sampler.err" \
            || echo "sample failed at $EPOCHREALTIME" >>"$RUN/sampler.err"
        sleep 0.5
    done
}
sampler &
BG_PID+=($!)

# ---------------------------------------------------------------- process sampler (check 11)
# Every second: every process on the machine whose environment has JOBWARD_EXECUTION_ID, with
# its owner (JOBWARD_NODE_ID or JOBWARD_WORKER_ID). Filtered to this run's owners at the end.
# Line: epoch pid execution_id owner
proc_sampler() {
    local t
    while [ ! -e "$RUN/stop_sampler" ] && [ ! -e "$RUN/stop" ]; do
        t=$EPOCHREALTIME
        grep -aoE 'JOBWARD_(EXECUTION_ID|NODE_ID|WORKER_ID)=[^[:cntrl:]]*' /proc/[0-9]*/environ 2>/dev/null \
            | awk -F: -v t="$t" '{ split($1, a, "/"); split($2, kv, "=");
                  if (kv[1] == "JOBWARD_EXECUTION_ID") ex[a[3]] = kv[2]; else ow[a[3]] = kv[2] }
                  END { for (p in ex) printf "%s\t%s\t%s\t%s\n", t, p, ex[p], ((p in ow) ? ow[p] : "?") }' >>"$RUN/procs.tsv"
        sleep 1
    done
}
proc_sampler &
BG_PID+=($!)

# ---------------------------------------------------------------- trigger stream
# Keyed triggers over HTTP to a random node (retried on other nodes with the same key until one
# answers); a third of the keys are sent again to a different node. Unkeyed triggers with the
# CLI straight to PostgreSQL. Log: $RUN/triggers.txt
#   key  KEY JOB NODE HTTP_CODE EXECUTION_ID   (one line per answered request)
#   cli  - JOB - EXIT_CODE EXECUTION_ID
trigger_stream() {
    PRNG=$(( (SEED * 7919) % 2147483646 + 1 ))
    local n=0 batch b job key node tries code body id first
    while [ ! -e "$RUN/stop_triggers" ] && [ ! -e "$RUN/stop" ]; do
        rnd 1 6; batch=$R
        for (( b = 0; b < batch; b++ )); do
            rnd 0 $(( ${#MANUAL_JOBS[@]} - 1 )); job=${MANUAL_JOBS[$R]}
            rnd 1 10
            if [ $R -le 7 ]; then
                n=$(( n + 1 )); key="$TAG-k$n"; rnd 1 $NODES; node=$R; first=""
                for (( tries = 0; tries < 12; tries++ )); do
                    body=$(curl -sS -m 4 -o - -w '\n%{http_code}' -X POST "http://127.0.0.1:${API_PORT[$node]}/api/jobs/$job/trigger" \
                        -H 'Content-Type: application/json' -d "{\"idempotency_key\":\"$key\"}" 2>/dev/null)
                    code=${body##*$'\n'}
                    if [ "$code" = 200 ] || [ "$code" = 201 ]; then
                        id=$(sed -n 's/.*"execution":{"id":\([0-9]*\).*/\1/p' <<<"$body" | head -1)
                        echo "key $key $job $node $code ${id:-?}" >>"$RUN/triggers.txt"
                        if [ -z "$first" ]; then
                            first=$node; rnd 1 3
                            [ $R = 1 ] || break
                        else break; fi
                    else
                        echo "keyfail $key $job $node ${code:-000}" >>"$RUN/triggers.txt"
                    fi
                    node=$(( node % NODES + 1 ))
                    [ -n "$first" ] && [ $node = "$first" ] && node=$(( node % NODES + 1 ))
                    [ -z "$first" ] && sleep 0.2
                done
                [ -z "$first" ] && echo "keylost $key $job" >>"$RUN/triggers.txt"
            else
                body=$("$BIN" --config "$CFG" jobs trigger "$job" --json 2>>"$RUN/cli.err"); code=$?
                id=$(sed -n 's/^  "id": \([0-9]*\),$/\1/p' <<<"$body" | head -1)
                echo "cli - $job - $code ${id:--}" >>"$RUN/triggers.txt"
            fi
        done
        rnd 200 1200; sleep "$(( R / 1000 )).$(printf %03d $(( R % 1000 )))"
    done
}
trigger_stream &
TRIGGER_PID=$!
BG_PID+=($TRIGGER_PID)

# ---------------------------------------------------------------- fault executor
declare -A FAULTS=()
UNEXPECTED=0
declare -a NODE_DOWN=() WORKER_DOWN=()
for i in $(seq 1 $NODES); do NODE_DOWN[$i]=0; done
for j in $(seq 1 $WORKERS); do WORKER_DOWN[$j]=0; done
# A node or worker that exited although the script did not kill it is a finding: restart it.
watch_processes() {
    local i j
    for i in $(seq 1 $NODES); do
        if [ "${NODE_DOWN[$i]}" = 0 ] && ! kill -0 "${NODE_PID[$i]}" 2>/dev/null; then
            wait "${NODE_PID[$i]}" 2>/dev/null; local rc=$?
            log "UNEXPECTED: node n$i (pid ${NODE_PID[$i]}) exited by itself (status $rc); restarting it; see $RUN/n$i.log"
            echo "node n$i pid ${NODE_PID[$i]} status $rc at $(date -u +%T)" >>"$RUN/unexpected.txt"
            UNEXPECTED=$(( UNEXPECTED + 1 )); start_node "$i"
        fi
    done
    for j in $(seq 1 $WORKERS); do
        if [ "${WORKER_DOWN[$j]}" = 0 ] && ! kill -0 "${WORKER_PID[$j]}" 2>/dev/null; then
            wait "${WORKER_PID[$j]}" 2>/dev/null; local rc=$?
            log "UNEXPECTED: worker w$j (pid ${WORKER_PID[$j]}) exited by itself (status $rc); restarting it; see $RUN/w$j.log"
            echo "worker w$j pid ${WORKER_PID[$j]} status $rc at $(date -u +%T)" >>"$RUN/unexpected.txt"
            UNEXPECTED=$(( UNEXPECTED + 1 )); start_worker "$j"
        fi
    done
}
# Impairment intervals (for check 11): target kind start end, targets n1.. w1.. pg.
declare -A IMP_START=()
imp_begin() { IMP_START[$1]=$EPOCHREALTIME; }
imp_end() { # target kind
    [ -n "${IMP_START[$1]:-}" ] || return 0
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "${IMP_START[$1]}" "$EPOCHREALTIME" >>"$RUN/impair.tsv"
    unset "IMP_START[$1]"
}
apply() { # action kind target
    local action=$1 kind=$2 x=$3 tgt
    case $kind in node_*) tgt=n$x ;; worker_*) tgt=w$x ;; *) tgt=pg ;; esac
    case "$action:$kind" in
        start:*kill) imp_begin "$tgt" ;; start:*stop*) imp_begin "$tgt" ;; start:*cut) imp_begin "$tgt" ;;
    esac
    case "$action:$kind" in
        start:node_kill) kill -KILL "${NODE_PID[$x]}"; wait "${NODE_PID[$x]}" 2>/dev/null; NODE_DOWN[$x]=1
            NODE_IMPAIRED[$x]=1; log "fault: SIGKILL node n$x (pid ${NODE_PID[$x]})" ;;
        end:node_kill) start_node "$x"; NODE_DOWN[$x]=0; NODE_IMPAIRED[$x]=0; log "heal: restarted node n$x (pid ${NODE_PID[$x]})" ;;
        start:node_stop_*) kill -STOP "${NODE_PID[$x]}"; NODE_IMPAIRED[$x]=1; log "fault: SIGSTOP node n$x (${kind#node_stop_})" ;;
        end:node_stop_*) kill -CONT "${NODE_PID[$x]}"; NODE_IMPAIRED[$x]=0; log "heal: SIGCONT node n$x" ;;
        start:node_db_cut) cut_on "${DBPROXY_PORT[$x]}"; NODE_IMPAIRED[$x]=1; log "fault: cut node n$x <-> PostgreSQL (port ${DBPROXY_PORT[$x]})" ;;
        end:node_db_cut) cut_off "${DBPROXY_PORT[$x]}"; NODE_IMPAIRED[$x]=0; log "heal: node n$x <-> PostgreSQL restored" ;;
        start:worker_kill) kill -KILL "${WORKER_PID[$x]}"; wait "${WORKER_PID[$x]}" 2>/dev/null; WORKER_DOWN[$x]=1
            log "fault: SIGKILL worker w$x (pid ${WORKER_PID[$x]})" ;;
        end:worker_kill) start_worker "$x"; WORKER_DOWN[$x]=0; log "heal: restarted worker w$x (pid ${WORKER_PID[$x]})" ;;
        start:worker_stop) kill -STOP "${WORKER_PID[$x]}"; log "fault: SIGSTOP worker w$x" ;;
        end:worker_stop) kill -CONT "${WORKER_PID[$x]}"; log "heal: SIGCONT worker w$x" ;;
        start:worker_cut) cut_on "${WPROXY_PORT[$x]}"; log "fault: cut worker w$x <-> server (port ${WPROXY_PORT[$x]})" ;;
        end:worker_cut) cut_off "${WPROXY_PORT[$x]}"; log "heal: worker w$x <-> server restored" ;;
        start:pg_restart)
            log "fault: PostgreSQL restart (-m fast) under load"
            imp_begin pg
            pg_restart || log "pg_ctlcluster restart failed (see $RUN/pg_ctl.log)"
            pg_ensure_up; imp_end pg restart; log "heal: PostgreSQL is back" ;;
    esac
    if [ "$action" = end ]; then case $kind in *kill) imp_end "$tgt" kill ;; *stop*) imp_end "$tgt" stop ;; *cut) imp_end "$tgt" cut ;; esac; fi
    [ "$action" = start ] && FAULTS[$kind]=$(( ${FAULTS[$kind]:-0} + 1 ))
    update_health
}

FAULT_T0=$(( ${EPOCHREALTIME/./} / 1000 ))
while read -r at action kind target <&3; do
    while :; do
        now_ms; left=$(( FAULT_T0 + at - NOW_MS ))
        [ $left -le 0 ] && break
        [ $left -gt 500 ] && left=500
        sleep "0.$(printf %03d $left)"
        watch_processes
    done
    apply "$action" "$kind" "$target"
done 3<"$SCHEDULE"
while now_ms; [ $NOW_MS -lt $(( FAULT_T0 + D_MS )) ]; do sleep 0.5; watch_processes; done

# ---------------------------------------------------------------- settle
log "faults over; healing everything and settling"
for i in $(seq 1 $NODES); do kill -CONT "${NODE_PID[$i]}" 2>/dev/null; cut_off "${DBPROXY_PORT[$i]}"; NODE_IMPAIRED[$i]=0; done
for j in $(seq 1 $WORKERS); do kill -CONT "${WORKER_PID[$j]}" 2>/dev/null; cut_off "${WPROXY_PORT[$j]}"; done
pg_ensure_up
for tgt in "${!IMP_START[@]}"; do imp_end "$tgt" healed_at_end; done
watch_processes
update_health
touch "$RUN/stop_triggers"
for t in $(seq 1 120); do kill -0 $TRIGGER_PID 2>/dev/null || break; sleep 0.5; done
kill $TRIGGER_PID 2>/dev/null
# Stop the schedules so the ledger can drain: the nodes reload a configuration in which the
# scheduled jobs are manual (pausing them instead would hold their queued retries until their
# queue timeout: claims skip paused jobs).
sed -E '/^(every|schedule) = /d' "$CFG" >"$CFG.tmp" && mv "$CFG.tmp" "$CFG"
for i in $(seq 1 $NODES); do
    code=000
    for t in 1 2 3 4 5; do
        code=$(curl -sS -m 10 -o "$RUN/reload-n$i.json" -w '%{http_code}' -X POST "http://127.0.0.1:${API_PORT[$i]}/api/system/reload" 2>/dev/null)
        [ "$code" = 200 ] && break
        sleep 1
    done
    [ "$code" = 200 ] || log "reload of node n$i failed (status $code)"
done
SETTLE_T0=$EPOCHSECONDS
while :; do
    live=$(q -c "SELECT count(*) FROM executions WHERE state IN ('queued','running')" 2>/dev/null)
    [ "$live" = 0 ] && break
    waited=$(( EPOCHSECONDS - SETTLE_T0 ))
    if [ $waited -ge $SETTLE_MAX ] || [ $waited = 15 ]; then
        log "still $live live executions after ${waited}s:"
        q -F ' ' -c "SELECT id, job, state, runner, COALESCE(lease_owner, '-'), 'queued ' || round(extract(epoch FROM clock_timestamp() - chaos.ts(queued_at))) || 's ago',
                            'lease ' || COALESCE(round(extract(epoch FROM chaos.ts(lease_expires_at) - clock_timestamp()))::text, '-')
                     FROM executions WHERE state IN ('queued', 'running') ORDER BY id LIMIT 10" 2>/dev/null | sed 's/^/           /'
        [ $waited -ge $SETTLE_MAX ] && break
        sleep 1
    fi
    sleep 1; watch_processes
done
log "settled in $(( EPOCHSECONDS - SETTLE_T0 ))s (live: ${live:-?})"
touch "$RUN/stop_sampler"
sleep 1
# Graceful stop: workers, then nodes.
declare -a STOP_RC=()
for j in $(seq 1 $WORKERS); do kill -TERM "${WORKER_PID[$j]}" 2>/dev/null; done
for j in $(seq 1 $WORKERS); do wait "${WORKER_PID[$j]}"; STOP_RC+=("w$j=$?"); done
for i in $(seq 1 $NODES); do kill -TERM "${NODE_PID[$i]}" 2>/dev/null; done
for i in $(seq 1 $NODES); do wait "${NODE_PID[$i]}"; STOP_RC+=("n$i=$?"); done
log "stopped (exit statuses: ${STOP_RC[*]})"
NODE_PID=(); WORKER_PID=()

# ---------------------------------------------------------------- checks
# shellcheck source=chaos/checks.sh
. "$HERE/chaos/checks.sh"
run_checks
RESULT=$CHECKS_FAILED
echo "chaos: total wall time $(( EPOCHSECONDS - T_START ))s"
if [ "$RESULT" = 0 ]; then echo "chaos: PASS (seed $SEED, duration ${DURATION}s)"; exit 0; fi
echo "chaos: FAIL: $RESULT check(s) failed (seed $SEED, duration ${DURATION}s)"; exit 1
