#!/bin/sh
# Starts one node of the redis-cluster StatefulSet (redis-cluster.yaml).
#
# Environment: REDIS_PASSWORD (the nba-redis Secret), POD_IP, HOSTNAME (the
# pod's name, set by Kubernetes), SERVICE_NAME (the headless Service).
# CONF_DIR, RUN_DIR and DATA_DIR default to the container's mounts, REDIS_PORT
# to 6379 (the cluster bus is on REDIS_PORT + 10000).
#
# A pod that is rescheduled gets a new IP, but nodes.conf (on the volume)
# still holds the IPs every node had when it last ran, and the cluster bus
# only speaks IPs. So before Redis starts, each node's IP in nodes.conf is
# replaced by what its host name resolves to now (every node announces its
# stable name, redis-cluster-N.redis-cluster, with cluster-announce-hostname),
# and this node's own by POD_IP. Nodes that do not resolve yet (not started)
# keep their old IP and are corrected by gossip: when they start, they resolve
# this node the same way and contact it from their new address.
set -eu
umask 077
: "${REDIS_PASSWORD:?is empty: create the Secret nba-redis with a key password (deploy/kubernetes/secrets.example.yaml)}"
: "${POD_IP:?is empty (the pod spec sets it from status.podIP)}"
CONF_DIR="${CONF_DIR:-/etc/redis-cluster}"
RUN_DIR="${RUN_DIR:-/run/redis}"
DATA_DIR="${DATA_DIR:-/data}"
SERVICE_NAME="${SERVICE_NAME:-redis-cluster}"
REDIS_PORT="${REDIS_PORT:-6379}"
NAME="${HOSTNAME}.${SERVICE_NAME}"

case "$REDIS_PASSWORD" in
  *[!A-Za-z0-9_-]*) echo "REDIS_PASSWORD: use letters, digits, _ and - only (e.g. openssl rand -hex 32): it is written into redis.conf and URLs" >&2; exit 1 ;;
esac

conf="$RUN_DIR/redis.conf"
{
  cat "$CONF_DIR/redis.conf"
  echo "port $REDIS_PORT"
  echo "dir $DATA_DIR"
  echo "cluster-config-file $DATA_DIR/nodes.conf"
  echo "requirepass $REDIS_PASSWORD"
  echo "masterauth $REDIS_PASSWORD"
  echo "cluster-announce-ip $POD_IP"
  echo "cluster-announce-hostname $NAME"
} >"$conf"

nodes="$DATA_DIR/nodes.conf"
if [ -s "$nodes" ]; then
  updated="$RUN_DIR/nodes.conf.new"
  : >"$updated"
  # A node line: ID IP:PORT@CPORT[,HOSTNAME[,AUX=...]] FLAGS ...; the last line is "vars ...".
  while read -r id addr rest; do
    case "$addr" in
      *@*)
        flags="${rest%% *}"
        host=""
        case "$addr" in *,*) host="${addr#*,}" && host="${host%%,*}" ;; esac
        ip=""
        case ",$flags," in
          *,myself,*) ip="$POD_IP" ;;
          *) [ -z "$host" ] || ip="$(getent hosts "$host" | awk '{print $1; exit}')" || ip="" ;;
        esac
        base="${addr%%,*}"
        old="${base%:*}"
        if [ -n "$ip" ] && [ "$ip" != "$old" ]; then
          echo "nodes.conf: node $id ${host:-(no host name)} moved from $old to $ip" >&2
          addr="$ip:${addr#"$old":}"
        fi
        ;;
    esac
    echo "$id $addr $rest" >>"$updated"
  done <"$nodes"
  cat "$updated" >"$nodes"
  rm -f "$updated"
fi

exec redis-server "$conf"
