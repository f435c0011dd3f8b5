# Baton's agent: what Baton runs on a host (through ssh) to start, stop and look at backends there.
#
# Run as `sh -c "$AGENT" baton-agent OP ARGS...`; remote.rs embeds this file. POSIX sh, /proc,
# coreutils and util-linux's setsid only: no bash-isms, no python. Values (names, versions,
# environment variables, scripts) arrive as arguments and are never pasted into shell text.
#
# The answer on stdout: the line `@baton-agent 1` (what a login script printed before it is not
# the agent's), any `note TEXT` lines (for Baton's log), then one result line, then for `run`
# and `tail` raw bytes. A refusal is `error TEXT` and exit status 1.
#
#   status DIR SERVICE BACKEND
#       -> `running VERSION PID` | `stopped WHY`
#   start DIR SERVICE BACKEND VERSION PORT WORKDIR SIGNAL TIMEOUT_MS -- NAME=VALUE... -- PROGRAM ARGS...
#       -> `started PID` | `running VERSION PID` (that version already runs: adopted)
#   stop DIR SERVICE BACKEND SIGNAL TIMEOUT_MS
#       -> `stopped WHY`
#   run DIR LOGNAME MARKER TIMEOUT_MS WORKDIR -- NAME=VALUE... -- SCRIPT
#       -> `ok` | `exit STATUS whole|cut` or `timeout whole|cut`, then what the script appended
#          to DIR/LOGNAME.log (at most the last 64 KiB; `cut` when there was more); exit
#          status: the script's, 124 when it timed out
#   check DIR [PROGRAM]
#       -> `facts`, then `state_dir ok PATH|fail WHY`, `boot_id ok ID|fail WHY`,
#          `tools ok|fail MISSING...`, `program ok PATH|fail WHY` (when asked)
#   tail DIR BACKEND LINES
#       -> `tail`, then the last LINES lines of DIR/BACKEND.log
#
# The rules are process.rs's (its module documentation is the specification): a record
# DIR/BACKEND.json `{"pid":..,"start_time":..,"boot_id":"..","version":".."}` names the backend's
# process while its boot id is this boot's and /proc/PID/stat shows the recorded start time and
# no zombie; a group whose leader has exited is the backend's while its members carry the run's
# BATON_SERVICE, BATON_BACKEND and BATON_VERSION. A process that fails these checks is never
# signalled.

# settings::INHERITED_ENV: what backends and commands get of the host's own environment.
INHERITED='PATH HOME USER LOGNAME SHELL LANG LANGUAGE LC_ALL LC_CTYPE LC_MESSAGES TZ TMPDIR'
BOOT_ID_PATH=/proc/sys/kernel/random/boot_id
# files.rs's ROTATE_LOG_AT.
ROTATE_AT=16777216
# command.rs's STDERR_WINDOW.
TAIL_WINDOW=65536
# How long stop waits for the group to vanish after SIGKILL, in centiseconds.
KILL_GRACE_CS=500
# How often stop looks whether the group is gone.
POLL=0.02
# What the tools the agent needs are called.
TOOLS='setsid timeout env tr wc tail mkdir mv rm sleep'

# Started by `setsid -f` as the new session's leader, this shell writes the record of its own
# PID and start time (read from /proc/self before anything could reap it), tells the agent its
# PID on stdout, and execs the backend with stdout and stderr in the log: the backend keeps its
# PID, session and process group. Run by `setsid -f` from a command substitution rather than as
# `cmd &`, because a non-interactive shell's background jobs get SIGINT and SIGQUIT ignored,
# which exec keeps and no shell can undo: a backend stopped with SIGINT would never hear it.
# Writing the record here, before exec, means a start cut short (Baton gone, the connection
# lost) either started nothing or started a recorded process.
# Arguments: RECORD TMP BOOT_ID VERSION UMASK LOG ARGV...
SPAWN='rec=$1 tmp=$2 boot=$3 version=$4 um=$5 log=$6
shift 6
start_of() { set -- $1; start=${20}; }
st=
IFS= read -r st <"/proc/$$/stat" || exit 1
start_of "${st##*) }"
rm -f -- "$tmp" &&
printf "{\"pid\":%s,\"start_time\":%s,\"boot_id\":\"%s\",\"version\":\"%s\"}" \
    "$$" "$start" "$boot" "$version" >"$tmp" &&
mv -f -- "$tmp" "$rec" || exit 1
printf "started %s\n" "$$"
umask "$um"
exec "$@" </dev/null >>"$log" 2>&1'

say() { printf '%s\n' "$*"; }
note() { say "note $*"; }
fail() {
    say "error $*"
    exit 1
}

# Names, backends and versions: what domain.rs accepts (so they are safe in file names too).
is_name() {
    case $1 in
    '' | [!A-Za-z0-9]* | *[!A-Za-z0-9._-]*) return 1 ;;
    esac
}
is_uint() {
    case $1 in
    '' | *[!0-9]*) return 1 ;;
    esac
}
need_name() { is_name "$2" || fail "invalid $1 \"$2\""; }
need_uint() { is_uint "$2" || fail "invalid $1 \"$2\": expected a whole number"; }
need_signal() {
    case $1 in
    TERM | INT | QUIT | HUP | USR1 | USR2) ;;
    *) fail "invalid stop signal \"$1\"" ;;
    esac
}

# Sets abs to $1 made absolute (relative to the login directory), so the agent may change
# directory later.
absolute() {
    case $1 in
    /*) abs=$1 ;;
    *) abs=$PWD/$1 ;;
    esac
}

# Sets st_state, st_pgrp and st_start (fields 3, 5 and 22 of /proc/PID/stat) for $1; fails when
# there is no such process. The command name (field 2) may hold spaces and parentheses, so
# fields are counted from the last ')'.
stat_of() {
    st_line=
    IFS= read -r st_line 2>/dev/null <"/proc/$1/stat"
    case $st_line in
    *') '*) ;;
    *) return 1 ;;
    esac
    set -- ${st_line##*) }
    [ $# -ge 20 ] || return 1
    st_state=$1 st_pgrp=$3 st_start=${20}
}
# Whether the process stat_of read is a zombie or dead: it will never run again.
dead() {
    case $st_state in
    Z | X | x) return 0 ;;
    esac
    return 1
}

boot_id() {
    boot=
    IFS= read -r boot 2>/dev/null <"$BOOT_ID_PATH"
}

# Sets now to the time since boot in centiseconds.
now_cs() {
    up=
    read -r up _ 2>/dev/null </proc/uptime
    up=${up%%.*}${up#*.}
    up=${up#"${up%%[!0]*}"}
    now=${up:-0}
}

# Sets jv to the value of key $2 in the one-line JSON object $1 (strings without their quotes,
# null as empty); fails when the key is missing. Enough for Baton's records, whose strings hold
# no quotes, commas or braces.
json_value() {
    case $1 in
    *"\"$2\":"*) ;;
    *)
        jv=
        return 1
        ;;
    esac
    jv=${1#*"\"$2\":"}
    jv=${jv%%,*}
    jv=${jv%%"}"*}
    case $jv in
    \"*\")
        jv=${jv#\"}
        jv=${jv%\"}
        ;;
    null) jv= ;;
    esac
}

# Reads the record $rec into rec_pid, rec_start, rec_boot (empty in records of a Baton from
# before boot ids) and rec_version; fails when there is none. A file that is not a record Baton
# wrote is an error: the backend may run, and Baton cannot tell which process it is.
read_record() {
    [ -e "$rec" ] || return 1
    text=$(tr -d ' \t\r\n' <"$rec") ||
        fail "cannot read $rec"
    bad="$rec is not a record Baton wrote; remove it once the backend's process is stopped"
    json_value "$text" pid && is_uint "$jv" && [ "$jv" -gt 1 ] 2>/dev/null || fail "$bad"
    rec_pid=$jv
    json_value "$text" start_time && is_uint "$jv" || fail "$bad"
    rec_start=$jv
    json_value "$text" version && is_name "$jv" || fail "$bad"
    rec_version=$jv
    json_value "$text" boot_id
    rec_boot=$jv
}

remove_record() {
    rm -f -- "$rec" || fail "cannot remove $rec"
}

# Whether the recorded PID is alive, not a zombie, and started when the record says.
leader_runs() {
    stat_of "$rec_pid" && [ "$st_start" = "$rec_start" ] && ! dead
}

# Whether process $1 carries the variables Baton gave the recorded run of this backend.
# Newlines inside values become \001 first, so only whole entries can match.
carries_run_env() {
    [ -r "/proc/$1/environ" ] || return 1
    tr '\n\0' '\001\n' 2>/dev/null <"/proc/$1/environ" | {
        s= b= v=
        while IFS= read -r entry; do
            case $entry in
            "BATON_SERVICE=$service") s=1 ;;
            "BATON_BACKEND=$backend") b=1 ;;
            "BATON_VERSION=$rec_version") v=1 ;;
            esac
        done
        [ "$s$b$v" = 111 ]
    }
}

# Sets members to the PIDs of the live (not zombie) processes in process group $1.
group_members() {
    members=
    for proc in /proc/[0-9]*; do
        p=${proc#/proc/}
        stat_of "$p" || continue
        [ "$st_pgrp" = "$1" ] || continue
        dead && continue
        members="$members $p"
    done
}

# Sets live to running, leftovers (the exited backend's group members in $left) or gone (why in
# $why) for the record read: process.rs's `liveness`.
liveness() {
    boot_id
    if [ -n "$rec_boot" ]; then
        if [ -z "$boot" ]; then
            live=gone why="this host's boot id cannot be read from /proc"
            return
        fi
        if [ "$rec_boot" != "$boot" ]; then
            live=gone why="the record was written before the host last booted"
            return
        fi
    elif ! { leader_runs && carries_run_env "$rec_pid"; }; then
        live=gone why="the record has no boot id (an older Baton wrote it) and its PID is not a process Baton started for this backend"
        return
    fi
    if stat_of "$rec_pid"; then
        if [ "$st_start" != "$rec_start" ]; then
            live=gone why="its PID now belongs to a process that started at another time"
            return
        fi
        if ! dead; then
            live=running
            return
        fi
    fi
    left=
    group_members "$rec_pid"
    for p in $members; do
        stat_of "$p" && [ "$st_start" -ge "$rec_start" ] && carries_run_env "$p" &&
            left="$left $p"
    done
    if [ -n "$left" ]; then
        live=leftovers
    else
        live=gone why="the process has exited and left nothing in its process group"
    fi
}

# Sends SIG$1 to the recorded process group, or to the process alone if it left the group.
# The caller has just checked that the record is the backend's.
send() {
    kill -s "$1" -- "-$rec_pid" 2>/dev/null && return 0
    if leader_runs; then
        kill -s "$1" "$rec_pid" 2>/dev/null || ! leader_runs ||
            fail "cannot send SIG$1 to process $rec_pid"
    else
        group_members "$rec_pid"
        [ -z "$members" ] || fail "cannot send SIG$1 to process group $rec_pid"
    fi
}

# Waits up to $1 centiseconds until the recorded process is gone and nothing but zombies is
# left in its group; fails on timeout.
wait_gone() {
    now_cs
    deadline=$((now + $1))
    while :; do
        if ! leader_runs; then
            group_members "$rec_pid"
            [ -z "$members" ] && return 0
        fi
        now_cs
        [ "$now" -lt "$deadline" ] || return 1
        sleep "$POLL"
    done
}

# Sends SIG$1 to the recorded group, waits up to $2 ms for it to end, then sends SIGKILL.
terminate() {
    send "$1"
    wait_gone $((($2 + 9) / 10)) && return 0
    note "process group $rec_pid ignored SIG$1 for $2 ms; sending SIGKILL"
    send KILL
    wait_gone "$KILL_GRACE_CS" ||
        fail "process group $rec_pid is still there 5s after SIGKILL"
}

# Creates $dir (and its parents) private to this user unless it exists. The caller has set
# umask 077.
make_dir() {
    [ -d "$dir" ] && return 0
    err=$(mkdir -p -- "$dir" 2>&1) ||
        fail "cannot create state directory $dir: ${err#mkdir: }"
}

# Appends the marker line $2 to the log $1, created 0600 (umask 077) when missing, after moving
# it to $1.1 if it has grown to ROTATE_AT bytes.
open_log() {
    if [ -f "$1" ]; then
        size=$(wc -c <"$1") || size=0
        if [ "$size" -ge "$ROTATE_AT" ]; then
            mv -f -- "$1" "$1.1" || fail "cannot rotate log $1"
        fi
    fi
    printf '[baton] %s\n' "$2" 2>/dev/null >>"$1" || fail "cannot open log $1"
}

# Sets has to the names of INHERITED that are in this agent's own environment (as it was
# handed over, not whatever defaults the shell filled in).
inherited_names() {
    has=$(tr '\n\0' '\001\n' 2>/dev/null <"/proc/$$/environ" | {
        names=
        while IFS= read -r entry; do
            name=${entry%%=*}
            case " $INHERITED " in
            *" $name "*) names="$names $name" ;;
            esac
        done
        printf '%s' "$names"
    })
}

# Whether execvp(3) finds program $1 on the search path $2 from the current directory; sets
# found to where.
find_program() {
    case $1 in
    */*)
        found=$1
        [ -f "$1" ] && [ -x "$1" ]
        return
        ;;
    esac
    fp_rest=$2:
    while [ -n "$fp_rest" ]; do
        fp_dir=${fp_rest%%:*}
        fp_rest=${fp_rest#*:}
        found=${fp_dir:-.}/$1
        [ -f "$found" ] && [ -x "$found" ] && return 0
    done
    return 1
}

# Rebuilds the caller's "$@", `-- NAME=VALUE... -- WORDS...`, into `env -i INHERITED...
# NAME=VALUE... TAIL... PREFIX... WORDS...`: INHERITED the host's own values of the INHERITED
# names this agent was given, TAIL the variables named in $tail_vars (values in tv_NAME, so
# they win over the given ones), PREFIX the words of $words_prefix. Sets program to the first
# word after PREFIX (the first of WORDS without one), words to how many WORDS there were, and
# child_path to the PATH the child will search (execvp's default when it has none).
#
# Used as `eval "$BUILD_ARGV"`, since a function cannot change its caller's "$@". Values are
# only ever referenced here, never pasted into the text that eval reads.
BUILD_ARGV='
[ "$1" = -- ] || fail "expected -- before the environment"
shift
n=$#
inherited_names
child_path=/bin:/usr/bin
set -- "$@" env -i
for name in $has; do
    eval "set -- \"\$@\" \"$name=\${$name}\""
    [ "$name" = PATH ] && child_path=$PATH
done
phase=env
words=0
program=
while [ "$n" -gt 0 ]; do
    a=$1
    shift
    n=$((n - 1))
    if [ "$phase" = env ]; then
        if [ "$a" = -- ]; then
            phase=words
            for a in $tail_vars; do
                eval "set -- \"\$@\" \"$a=\${tv_$a}\""
            done
            for a in $words_prefix; do
                [ -n "$program" ] || program=$a
                set -- "$@" "$a"
            done
            continue
        fi
        case ${a%%=*} in
        "$a" | "" | [0-9]* | *[!A-Za-z0-9_]*)
            fail "invalid environment entry \"${a%%=*}\": expected NAME=VALUE" ;;
        PATH) child_path=${a#PATH=} ;;
        esac
    else
        words=$((words + 1))
        [ -n "$program" ] || program=$a
    fi
    set -- "$@" "$a"
done
[ "$phase" = words ] || fail "expected -- before the command"
[ "$words" -gt 0 ] || fail "no command given"
'

op_status() {
    [ $# -eq 3 ] || fail "usage: status DIR SERVICE BACKEND"
    absolute "$1"
    dir=$abs service=$2 backend=$3
    need_name service "$service"
    need_name backend "$backend"
    rec=$dir/$backend.json
    if ! read_record; then
        say "stopped nothing is recorded"
        return
    fi
    liveness
    case $live in
    running) say "running $rec_version $rec_pid" ;;
    leftovers) say "stopped process $rec_pid exited, leaving$left in its group" ;;
    gone) say "stopped $why" ;;
    esac
}

op_stop() {
    [ $# -eq 5 ] || fail "usage: stop DIR SERVICE BACKEND SIGNAL TIMEOUT_MS"
    absolute "$1"
    dir=$abs service=$2 backend=$3 signal=$4 timeout_ms=$5
    need_name service "$service"
    need_name backend "$backend"
    need_signal "$signal"
    need_uint "stop timeout" "$timeout_ms"
    rec=$dir/$backend.json
    if ! read_record; then
        say "stopped nothing is recorded"
        return
    fi
    liveness
    case $live in
    gone)
        note "nothing of $backend runs ($why); removing its record"
        remove_record
        say "stopped $why"
        return
        ;;
    running) ;;
    leftovers) note "the process $rec_pid of $backend exited but left$left in its group; stopping them" ;;
    esac
    terminate "$signal" "$timeout_ms"
    remove_record
    say "stopped process group $rec_pid ended"
}

op_start() {
    [ $# -ge 11 ] || fail "usage: start DIR SERVICE BACKEND VERSION PORT WORKDIR SIGNAL TIMEOUT_MS -- NAME=VALUE... -- PROGRAM ARGS..."
    absolute "$1"
    dir=$abs service=$2 backend=$3 version=$4 port=$5 wd=$6 signal=$7 timeout_ms=$8
    shift 8
    need_name service "$service"
    need_name backend "$backend"
    need_name version "$version"
    need_uint port "$port"
    need_signal "$signal"
    need_uint "stop timeout" "$timeout_ms"
    command -v setsid >/dev/null 2>&1 || fail "setsid (util-linux) is not installed"
    rec=$dir/$backend.json
    log=$dir/$backend.log

    if read_record; then
        liveness
        case $live in
        running)
            [ "$rec_version" = "$version" ] ||
                fail "version $rec_version is still running there (pid $rec_pid); stop it first"
            say "running $rec_version $rec_pid"
            return
            ;;
        leftovers)
            note "the previous process $rec_pid of $backend exited but left$left in its group; stopping them before starting"
            terminate "$signal" "$timeout_ms"
            ;;
        gone) note "not adopting the recorded process $rec_pid of $backend: $why" ;;
        esac
    fi
    boot_id
    [ -n "$boot" ] ||
        fail "cannot read $BOOT_ID_PATH, which Baton needs to recognise its processes after a reboot"

    tail_vars='BATON_VERSION BATON_PORT BATON_BACKEND BATON_SERVICE'
    tv_BATON_VERSION=$version tv_BATON_PORT=$port tv_BATON_BACKEND=$backend tv_BATON_SERVICE=$service
    words_prefix=
    eval "$BUILD_ARGV"
    case $program in
    *=*) fail "command \"$program\" holds a '=', which env(1) would take for a variable" ;;
    esac

    um=$(umask)
    umask 077
    make_dir
    if [ -n "$wd" ]; then
        [ -d "$wd" ] || fail "working directory $wd does not exist or is not a directory"
        cd "$wd" 2>/dev/null || fail "cannot enter working directory $wd"
    fi
    find_program "$program" "$child_path" ||
        fail "command \"$program\" not found (no such executable file, or not on PATH)"
    open_log "$log" "starting version $version of $backend"

    out=$(setsid -f /bin/sh -c "$SPAWN" baton-spawn "$rec" "$dir/.$backend.json.tmp" "$boot" \
        "$version" "$um" "$log" "$@" </dev/null 2>>"$log")
    case $out in
    "started "*) say "$out" ;;
    *) fail "the process could not be started or recorded; see $log" ;;
    esac
}

op_run() {
    [ $# -ge 8 ] || fail "usage: run DIR LOGNAME MARKER TIMEOUT_MS WORKDIR -- NAME=VALUE... -- SCRIPT"
    absolute "$1"
    dir=$abs logname=$2 marker=$3 timeout_ms=$4 wd=$5
    shift 5
    need_name "log name" "$logname"
    need_uint timeout "$timeout_ms"
    [ "$timeout_ms" -gt 0 ] || fail "invalid timeout 0"
    command -v timeout >/dev/null 2>&1 || fail "timeout (coreutils) is not installed"
    # The script runs as `/bin/sh -c SCRIPT` in the clean environment.
    tail_vars=
    words_prefix='/bin/sh -c'
    eval "$BUILD_ARGV"
    [ "$words" -eq 1 ] || fail "expected one script, got $words words"

    um=$(umask)
    umask 077
    make_dir
    log=$dir/$logname.log
    open_log "$log" "$marker"
    from=$(wc -c <"$log") || fail "cannot read log $log"
    if [ -z "$wd" ]; then wd=$dir; fi
    cd "$wd" 2>/dev/null || fail "working directory $wd does not exist or is not a directory"
    umask "$um"
    secs=$((timeout_ms / 1000)).$((timeout_ms % 1000 / 100))$((timeout_ms % 100 / 10))$((timeout_ms % 10))
    now_cs
    began=$now
    # timeout(1) puts itself and the script in a process group of their own and waits for the
    # script's shell alone; at the deadline it sends SIGKILL to that whole group (itself
    # included, hence status 137). What the script leaves running holds /dev/null and the log,
    # never this agent's stdout, so it does not keep the connection open. In a subshell that
    # execs it, so that the shell's own "Killed" goes to /dev/null rather than into the log.
    (exec timeout -s KILL "$secs" "$@" </dev/null >/dev/null 2>>"$log") 2>/dev/null
    status=$?
    now_cs
    [ "$status" -eq 0 ] && {
        say ok
        exit 0
    }
    timed_out=
    [ "$status" -eq 137 ] && [ $((now - began)) -ge $((timeout_ms / 10 - 5)) ] && timed_out=1
    end=$(wc -c <"$log") || end=$from
    cut=whole
    [ $((end - from)) -gt "$TAIL_WINDOW" ] && cut=cut
    if [ -n "$timed_out" ]; then
        say "timeout $cut"
    else
        say "exit $status $cut"
    fi
    if [ "$cut" = cut ]; then
        tail -c "$TAIL_WINDOW" -- "$log"
    else
        tail -c +$((from + 1)) -- "$log"
    fi
    if [ -n "$timed_out" ]; then exit 124; fi
    exit "$status"
}

op_check() {
    [ $# -eq 1 ] || [ $# -eq 2 ] || fail "usage: check DIR [PROGRAM]"
    absolute "$1"
    dir=$abs
    say facts
    probe=$dir/.baton-check.$$
    if err=$(umask 077 && mkdir -p -- "$dir" 2>&1 && printf '' 2>&1 >"$probe" && rm -f -- "$probe"); then
        say "state_dir ok $dir"
    else
        say "state_dir fail cannot create or write to $dir: $(printf '%s' "$err" | tr '\n' ' ')"
    fi
    boot_id
    if [ -n "$boot" ]; then
        say "boot_id ok $boot"
    else
        say "boot_id fail cannot read $BOOT_ID_PATH"
    fi
    missing=
    for tool in $TOOLS; do
        command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
    done
    # `start` needs setsid's --fork (util-linux 2.31, 2017).
    case $missing in
    *setsid*) ;;
    *)
        case $(setsid --help 2>&1) in
        *--fork*) ;;
        *) missing="$missing setsid--fork" ;;
        esac
        ;;
    esac
    if [ -n "$missing" ]; then
        say "tools fail$missing"
    else
        say "tools ok"
    fi
    if [ $# -eq 2 ]; then
        if find_program "$2" "${PATH-/bin:/usr/bin}"; then
            say "program ok $found"
        else
            say "program fail \"$2\" is not an executable file on PATH"
        fi
    fi
}

op_tail() {
    [ $# -eq 3 ] || fail "usage: tail DIR BACKEND LINES"
    absolute "$1"
    dir=$abs
    need_name backend "$2"
    need_uint lines "$3"
    say tail
    if [ -f "$dir/$2.log" ]; then
        tail -n "$3" -- "$dir/$2.log"
    fi
}

say '@baton-agent 1'
[ $# -gt 0 ] || fail "no operation given"
op=$1
shift
case $op in
status) op_status "$@" ;;
start) op_start "$@" ;;
stop) op_stop "$@" ;;
run) op_run "$@" ;;
check) op_check "$@" ;;
tail) op_tail "$@" ;;
*) fail "unknown operation \"$op\"" ;;
esac
exit 0
