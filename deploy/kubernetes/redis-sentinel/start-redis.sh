#!/bin/sh
# Starts one Redis of the redis-node StatefulSet (redis-sentinel.yaml): the
# primary, or a replica of the primary the sentinels name.
#
# Environment: REDIS_PASSWORD (the nba-redis Secret), HOSTNAME (the pod's
# name), SERVICE_NAME (the headless Service), SENTINELS (host:port of the
# sentinels, separated by spaces), MASTER_NAME (what they monitor), FIRST (the
# primary of a new installation, pod 0, host:port), REDIS_PORT (6379). CONF_DIR, RUN_DIR and DATA_DIR
# default to the container's mounts, ANNOUNCE_NAME to HOSTNAME.SERVICE_NAME.
#
# Who is primary is the sentinels' call: after a failover pod 0 is a replica
# like the others, and when it restarts it must not come back as a second
# primary. So the script asks the sentinels first and only when none of them
# knows a primary (a new installation: no sentinel has started yet, or they
# all restarted with nothing to go on) falls back to FIRST.
set -eu
umask 077
: "${REDIS_PASSWORD:?is empty: create the Secret nba-redis with a key password (deploy/kubernetes/secrets.example.yaml)}"
CONF_DIR="${CONF_DIR:-/etc/redis-sentinel}"
RUN_DIR="${RUN_DIR:-/run/redis}"
DATA_DIR="${DATA_DIR:-/data}"
SERVICE_NAME="${SERVICE_NAME:-redis-node}"
MASTER_NAME="${MASTER_NAME:-nba}"
FIRST="${FIRST:-redis-node-0.redis-node:6379}"
REDIS_PORT="${REDIS_PORT:-6379}"
ME="${ANNOUNCE_NAME:-$HOSTNAME.$SERVICE_NAME}"  # the name others reach this pod by

. "$(dirname "$0")/ask-sentinels.sh"
check_password
ask_sentinels none
if [ "$from_first" = 1 ]; then
  echo "no sentinel names a primary of $MASTER_NAME: a new installation, $FIRST is the primary"
fi

conf="$RUN_DIR/redis.conf"
{
  cat "$CONF_DIR/redis.conf"
  echo "port $REDIS_PORT"
  echo "dir $DATA_DIR"
  echo "requirepass $REDIS_PASSWORD"
  echo "masterauth $REDIS_PASSWORD"
  # The name the primary and the sentinels know this node by: stable, unlike the pod IP.
  echo "replica-announce-ip $ME"
} >"$conf"

case "$primary:$port" in
  "$ME:$REDIS_PORT" | "${POD_IP:-none}:$REDIS_PORT") echo "starting $ME as the primary" ;;
  *)
    echo "starting $ME as a replica of $primary:$port"
    echo "replicaof $primary $port" >>"$conf"
    ;;
esac

exec redis-server "$conf"
