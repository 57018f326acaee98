# Sourced by start-redis.sh and start-sentinel.sh (same ConfigMap, same folder).
#
# ask_sentinels SKIP: asks the sentinels of $SENTINELS (host:port, separated by
# spaces; SKIP, this pod's own host:port, is not asked) which primary of
# $MASTER_NAME they follow; sets primary and port to the first answer, or to
# $FIRST (a new installation: no sentinel knows one) and sets from_first=1.
ask_sentinels() {
  primary=""
  port=6379
  from_first=0
  for sentinel in ${SENTINELS:-}; do
    [ "$sentinel" != "$1" ] || continue
    answer="$(REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -h "${sentinel%:*}" -p "${sentinel##*:}" \
      sentinel get-master-addr-by-name "$MASTER_NAME" 2>/dev/null | tr -d '\r' || true)"
    host="$(echo "$answer" | sed -n 1p)"
    if [ -n "$host" ] && [ "$(echo "$answer" | wc -l)" -eq 2 ]; then
      primary="$host"
      port="$(echo "$answer" | sed -n 2p)"
      echo "sentinel $sentinel names $primary:$port as the primary of $MASTER_NAME"
      return 0
    fi
  done
  primary="${FIRST%:*}"
  port="${FIRST##*:}"
  from_first=1
}

# check_password: the password is written into config files and URLs.
check_password() {
  case "$REDIS_PASSWORD" in
    *[!A-Za-z0-9_-]*) echo "REDIS_PASSWORD: use letters, digits, _ and - only (e.g. openssl rand -hex 32): it is written into redis.conf and URLs" >&2; exit 1 ;;
  esac
}
