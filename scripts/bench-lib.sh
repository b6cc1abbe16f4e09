# Helpers shared by bench.sh, ab.sh, profile.sh and instructions.sh (sourced, not run).

# install_missing <who> <command>=<Debian package>...: installs the packages whose command
# is not on PATH (with sudo unless root), saying so on stderr.
install_missing() {
  local who=$1 wanted missing=()
  shift
  for wanted in "$@"; do
    command -v "${wanted%%=*}" >/dev/null 2>&1 || missing+=("${wanted#*=}")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  echo "$who: installing ${missing[*]} (Debian packages)" >&2
  local sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# listening_addr <log>: the address a host or test server logged as listening on, or
# nothing yet.
listening_addr() {
  grep -oE 'listening on (http://)?[0-9.]+:[0-9]+' "$1" | head -1 | sed -E 's|listening on (http://)?||' || true
}

# await_listening <who> <log>: waits up to 60 s for that log's listening line and sets
# $started_addr; otherwise prints the log and exits.
await_listening() {
  local addr=
  for _ in $(seq 1 600); do
    addr=$(listening_addr "$2")
    [ -n "$addr" ] && { started_addr=$addr; return; }
    sleep 0.1
  done
  echo "$1 did not start:" >&2; cat "$2" >&2; exit 1
}

# token_for <addr>: a fresh access token for the root user the scripts configure.
token_for() {
  curl -sf -X POST "http://$1/api/v1/auth/login" -H 'content-type: application/json' \
    -d '{"email":"root@example.com","password":"root-password"}' |
    sed -E 's/.*"access_token":"([^"]+)".*/\1/'
}

# to_ms: wrk's latency (850.00us, 1.20ms, 2.01s) on stdin, as milliseconds.
to_ms() {
  awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); v=v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v=v*1000 } printf "%.2f", v }'
}
