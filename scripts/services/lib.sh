# shellcheck shell=bash disable=SC2034
#
# lib.sh - helpers shared by the private-service scripts in this directory.
#
# Sourced (not executed) by rabbitmq-node, rabbitmq-cluster, redis-instance,
# redis-sentinel-set and tls-ca.  Conventions:
#   * machine-readable results go to stdout as KEY=value lines (emit);
#   * human-readable progress / errors go to stderr (log, die);
#   * every state directory carries a marker file (.svc-state) and a
#     state.env file (KEY=value) so that "stop DIR" knows what it owns and
#     never removes a directory it did not create.

SVC_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SVC_SCRIPT=$(basename "$0")

# Port range for random ports.  Deliberately below the Linux ephemeral range
# (32768-60999 here) so outgoing connections cannot grab "our" port between the
# check and the bind, and away from RabbitMQ's well-known ports.
SVC_PORT_MIN=${SVC_PORT_MIN:-20000}
SVC_PORT_MAX=${SVC_PORT_MAX:-32000}
# Ports never handed out (shared services / well-known ports).
SVC_PORT_DENY=" 25672 5672 5671 4369 6379 26379 5432 15672 "
# Ports already handed out by this process (so one script picks distinct ports).
SVC_PORTS_TAKEN=" "

log() { printf '[%s] %s\n' "$SVC_SCRIPT" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# emit KEY VALUE - print KEY=value on stdout and, if SVC_STATE_FILE is set,
# record it there as well.
emit() {
    printf '%s=%s\n' "$1" "$2"
    if [[ -n "${SVC_STATE_FILE:-}" ]]; then
        state_set "$SVC_STATE_FILE" "$1" "$2"
    fi
}

# state_set FILE KEY VALUE - set/replace KEY in a KEY=value file.
state_set() {
    local file=$1 key=$2 value=$3 tmp
    tmp="$file.tmp.$$"
    if [[ -f "$file" ]]; then
        grep -v "^${key}=" "$file" >"$tmp" || true
    else
        : >"$tmp"
    fi
    printf '%s=%s\n' "$key" "$value" >>"$tmp"
    mv -f "$tmp" "$file"
}

# state_get FILE KEY - print the value of KEY (empty if absent).
state_get() {
    local file=$1 key=$2 line
    line=$(grep -m1 "^${key}=" "$file" 2>/dev/null || true)
    printf '%s' "${line#*=}"
}

now_ms() { date +%s%3N; }
# elapsed_s START_MS - seconds (one decimal) since START_MS.
elapsed_s() {
    local d=$(( $(now_ms) - $1 ))
    printf '%d.%d' $((d / 1000)) $(((d % 1000) / 100))
}

rand_hex() { od -An -N"${1:-4}" -tx1 /dev/urandom | tr -d ' \n'; }

# urlencode STRING - percent-encode everything but RFC 3986 unreserved chars
urlencode() {
    local s=$1 out="" c i
    for (( i = 0; i < ${#s}; i++ )); do
        c=${s:i:1}
        case "$c" in
            [a-zA-Z0-9.~_-]) out+=$c ;;
            *) printf -v c '%%%02X' "'$c"; out+=$c ;;
        esac
    done
    printf '%s' "$out"
}

# ---------------------------------------------------------------- ports

# port_in_use PORT - true if something listens on PORT (any address, via
# "ss -ltn"; falls back to a bash /dev/tcp connect if ss is missing).
port_in_use() {
    local p=$1
    if command -v ss >/dev/null 2>&1; then
        [[ -n "$(ss -Hltn "sport = :$p" 2>/dev/null)" ]]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null
    fi
}

# wait_port_listening PORT TIMEOUT_S [PID] - wait until PORT is listening;
# fails early if PID (when given) dies.
wait_port_listening() {
    local p=$1 timeout=$2 pid=${3:-} deadline
    deadline=$(( $(now_ms) + timeout * 1000 ))
    while (( $(now_ms) < deadline )); do
        [[ -n "$(ss -Hltn "sport = :$p" 2>/dev/null)" ]] && return 0
        if [[ -n "$pid" ]] && ! pid_alive "$pid"; then
            return 1
        fi
        sleep 0.1
    done
    return 1
}

# pick_port - print a random free port in [SVC_PORT_MIN, SVC_PORT_MAX] that is
# not listening, not on the deny list and not yet handed out by this process.
# Must be called WITHOUT command substitution if several ports are picked
# (so SVC_PORTS_TAKEN is updated); it sets PICKED_PORT.
pick_port() {
    local tries=0 span p
    span=$((SVC_PORT_MAX - SVC_PORT_MIN + 1))
    while (( tries < 500 )); do
        tries=$((tries + 1))
        p=$(( SVC_PORT_MIN + ( (RANDOM << 15 | RANDOM) % span ) ))
        [[ "$SVC_PORT_DENY" == *" $p "* ]] && continue
        [[ "$SVC_PORTS_TAKEN" == *" $p "* ]] && continue
        port_in_use "$p" && continue
        SVC_PORTS_TAKEN="$SVC_PORTS_TAKEN$p "
        PICKED_PORT=$p
        return 0
    done
    die "could not find a free port in $SVC_PORT_MIN-$SVC_PORT_MAX"
}

# use_port VAR_NAME - if $VAR_NAME is set, check it is free and reserve it;
# otherwise pick a random one and assign it.  Sets <VAR_NAME>_AUTO=1/0.
use_port() {
    local name=$1 val=${!1:-}
    if [[ -n "$val" && "$val" != auto ]]; then
        [[ "$val" =~ ^[0-9]+$ ]] || die "$name=$val is not a port number"
        port_in_use "$val" && die "$name=$val is already in use"
        SVC_PORTS_TAKEN="$SVC_PORTS_TAKEN$val "
        printf -v "${name}_AUTO" '%s' 0
    else
        pick_port
        printf -v "$name" '%s' "$PICKED_PORT"
        printf -v "${name}_AUTO" '%s' 1
    fi
}

# ---------------------------------------------------------------- processes

# pid_alive PID - true if PID exists and is not a zombie.  (PID 1 in this VM
# reaps orphans lazily, so an exited daemon can linger as a zombie for a few
# seconds; "kill -0" would wrongly report it as alive.)
pid_alive() {
    local pid=$1 stat state
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    state=${stat##*) }
    state=${state%% *}
    [[ "$state" != Z && "$state" != X ]]
}

# wait_pid_gone PID TIMEOUT_S - wait until PID has exited.
wait_pid_gone() {
    local pid=$1 timeout=$2 deadline
    deadline=$(( $(now_ms) + timeout * 1000 ))
    while pid_alive "$pid"; do
        (( $(now_ms) >= deadline )) && return 1
        sleep 0.1
    done
    return 0
}

# descendants PID - print all descendant PIDs of PID (children first level
# first), one per line.
descendants() {
    local pid=$1 child
    for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}

# terminate_pid PID GRACE_S - SIGTERM, wait GRACE_S, then SIGKILL; also kills
# any descendants still alive afterwards.  Returns 0 when everything is gone.
terminate_pid() {
    local pid=$1 grace=${2:-10} kids k
    pid_alive "$pid" || return 0
    kids=$(descendants "$pid")
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_pid_gone "$pid" "$grace"; then
        log "PID $pid did not exit after SIGTERM within ${grace}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_pid_gone "$pid" 5 || { log "PID $pid survived SIGKILL"; return 1; }
    fi
    # shellcheck disable=SC2086  # word splitting intended
    reap_leftovers $kids
}

# reap_leftovers PID... - make sure the given (former child) PIDs are gone.
reap_leftovers() {
    local k
    for k in "$@"; do
        if pid_alive "$k"; then
            wait_pid_gone "$k" 3 || { kill -KILL "$k" 2>/dev/null || true; wait_pid_gone "$k" 3 || true; }
        fi
    done
}

# pid_cwd_is PID DIR - true if PID's working directory is DIR (redis-server
# chdirs into its --dir, which makes this a cheap "is it still ours" check).
pid_cwd_is() {
    local cwd
    cwd=$(readlink "/proc/$1/cwd" 2>/dev/null) || return 1
    [[ "$cwd" == "$2" ]]
}

# pid_env_has PID NEEDLE - true if PID's environment contains NEEDLE exactly
# as one NAME=value entry.
pid_env_has() {
    [[ -r "/proc/$1/environ" ]] || return 1
    # (no grep -q: with pipefail an early grep exit could SIGPIPE tr)
    tr '\0' '\n' <"/proc/$1/environ" 2>/dev/null | grep -xF -- "$2" >/dev/null
}

# ---------------------------------------------------------------- state dirs

# make_state_dir KIND - create the state dir and set STATE_DIR_OUT.
#   STATE_DIR    exact directory to use (created; must be empty if it exists)
#   SERVICES_DIR parent for a fresh "mktemp -d KIND.XXXXXX" (default: $TMPDIR
#                or /tmp)
make_state_dir() {
    local kind=$1 dir base
    if [[ -n "${STATE_DIR:-}" ]]; then
        dir=$STATE_DIR
        if [[ -e "$dir" ]]; then
            [[ -d "$dir" ]] || die "STATE_DIR=$dir exists and is not a directory"
            [[ -z "$(ls -A "$dir")" ]] || die "STATE_DIR=$dir is not empty"
        else
            mkdir -p "$dir"
        fi
    else
        base=${SERVICES_DIR:-${TMPDIR:-/tmp}}
        mkdir -p "$base"
        dir=$(mktemp -d "$base/$kind.XXXXXX")
    fi
    dir=$(cd "$dir" && pwd -P)
    printf '%s\n' "$kind" >"$dir/.svc-state"
    STATE_DIR_OUT=$dir
}

# require_state_dir DIR KIND - check DIR is a state dir of KIND.
require_state_dir() {
    local dir=$1 kind=$2
    [[ -n "$dir" ]] || die "missing DIR argument"
    [[ -d "$dir" ]] || die "$dir: no such directory"
    [[ -f "$dir/.svc-state" ]] || die "$dir: not a state dir made by these scripts (no .svc-state)"
    [[ "$(head -n1 "$dir/.svc-state")" == "$kind" ]] || die "$dir: not a $kind state dir"
}

# remove_state_dir DIR - rm -rf DIR, but only if it carries our marker.
remove_state_dir() {
    local dir=$1
    [[ -n "$dir" && "$dir" != / && -f "$dir/.svc-state" ]] || die "refusing to remove $dir"
    rm -rf -- "$dir"
}

# user_can_reach USER DIR - true if USER can traverse DIR (checked for real
# with runuser when we are root).
user_can_reach() {
    local user=$1 dir=$2
    if [[ $EUID -eq 0 ]]; then
        runuser -u "$user" -- test -x "$dir" 2>/dev/null
    elif [[ "$(id -un)" == "$user" ]]; then
        test -x "$dir"
    else
        return 1
    fi
}

# open_services_dir_for USER - when no exact STATE_DIR is given, make sure the
# parent directory ($SERVICES_DIR or $TMPDIR or /tmp) can be traversed by USER.
# A caller-made "mktemp -d" is 0700; if it belongs to us it gets o+x
# (traverse only, no listing).
open_services_dir_for() {
    local user=$1 base
    [[ -n "${STATE_DIR:-}" ]] && return 0
    base=${SERVICES_DIR:-${TMPDIR:-/tmp}}
    mkdir -p "$base"
    if [[ -O "$base" ]] && ! user_can_reach "$user" "$base"; then
        log "adding o+x to $base so the $user user can reach its state dir"
        chmod o+x "$base"
    fi
    return 0
}
