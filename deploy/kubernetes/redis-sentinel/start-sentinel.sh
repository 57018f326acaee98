#!/bin/sh
# Starts one sentinel of the redis-sentinel StatefulSet (redis-sentinel.yaml).
#
# Environment: REDIS_PASSWORD (the nba-redis Secret: the Redis nodes' password,
# and the sentinels' own, which they also use between themselves), HOSTNAME
# (the pod's name), SERVICE_NAME (the sentinels' headless Service), SENTINELS
# (host:port of every sentinel, separated by spaces), MASTER_NAME, FIRST (the
# primary of a new installation, host:port), QUORUM, DOWN_AFTER_MS, FAILOVER_TIMEOUT_MS.
# RUN_DIR defaults to the container's writable mount, SENTINEL_PORT to 26379,
# ANNOUNCE_NAME to HOSTNAME.SERVICE_NAME.
#
# A sentinel keeps what it learns (the current primary, the replicas, the
# other sentinels) in its configuration file, here on an emptyDir that a
# restart loses. So it asks the other sentinels which primary they follow and
# monitors that one; only when none answers (a new installation) does it start
# from FIRST. The replicas and the other sentinels it discovers by itself.
set -eu
umask 077
: "${REDIS_PASSWORD:?is empty: create the Secret nba-redis with a key password (deploy/kubernetes/secrets.example.yaml)}"
RUN_DIR="${RUN_DIR:-/run/sentinel}"
SERVICE_NAME="${SERVICE_NAME:-redis-sentinel}"
MASTER_NAME="${MASTER_NAME:-nba}"
FIRST="${FIRST:-redis-node-0.redis-node:6379}"
QUORUM="${QUORUM:-2}"
DOWN_AFTER_MS="${DOWN_AFTER_MS:-5000}"
FAILOVER_TIMEOUT_MS="${FAILOVER_TIMEOUT_MS:-60000}"
SENTINEL_PORT="${SENTINEL_PORT:-26379}"
ME="${ANNOUNCE_NAME:-$HOSTNAME.$SERVICE_NAME}"  # the name others reach this pod by

. "$(dirname "$0")/ask-sentinels.sh"
check_password
ask_sentinels "$ME:$SENTINEL_PORT"
if [ "$from_first" = 1 ]; then
  echo "no other sentinel names a primary of $MASTER_NAME: a new installation, monitoring $FIRST"
fi

# With resolve-hostnames a sentinel refuses to start on a name that does not
# resolve: wait for the primary's pod to have an address.
until getent hosts "$primary" >/dev/null; do
  echo "waiting for $primary to resolve"
  sleep 2
done

conf="$RUN_DIR/sentinel.conf"
cat >"$conf" <<EOF
port $SENTINEL_PORT
dir $RUN_DIR
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $ME
requirepass $REDIS_PASSWORD
sentinel monitor $MASTER_NAME $primary $port $QUORUM
sentinel auth-pass $MASTER_NAME $REDIS_PASSWORD
sentinel down-after-milliseconds $MASTER_NAME $DOWN_AFTER_MS
sentinel failover-timeout $MASTER_NAME $FAILOVER_TIMEOUT_MS
sentinel parallel-syncs $MASTER_NAME 1
EOF

exec redis-sentinel "$conf"
