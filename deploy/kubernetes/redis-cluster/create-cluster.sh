#!/bin/sh
# Creates the Redis Cluster of the redis-cluster StatefulSet, once: run by the
# Job redis-cluster-create (redis-cluster-create-job.yaml). Safe to run again:
#
# - every node empty (a new StatefulSet): waits until each answers, then
#   `redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`
#   (3 primaries and 3 replicas out of 6 nodes), and waits for cluster_state:ok;
# - every node already in a cluster: waits for cluster_state:ok, prints
#   `redis-cli --cluster check` and exits 0 without changing anything;
# - some nodes in a cluster and others empty (a node lost its volume): changes
#   nothing, exits 1 and prints the command that adds the empty node back.
#
# Environment: NODES (host:port of every node, separated by spaces),
# REDIS_PASSWORD (the nba-redis Secret), REPLICAS (replicas per primary,
# default 1), WAIT_SECONDS (how long to wait for the nodes, default 600).
set -eu
: "${NODES:?is empty: the nodes, host:port separated by spaces}"
: "${REDIS_PASSWORD:?is empty: create the Secret nba-redis with a key password (deploy/kubernetes/secrets.example.yaml)}"
REPLICAS="${REPLICAS:-1}"
WAIT_SECONDS="${WAIT_SECONDS:-600}"
export REDISCLI_AUTH="$REDIS_PASSWORD"   # redis-cli's password, kept off the command line
deadline=$(($(date +%s) + WAIT_SECONDS))

cli() {
  node="$1"
  shift
  redis-cli -h "${node%:*}" -p "${node##*:}" "$@"
}

info() { # info NODE FIELD: one field of CLUSTER INFO
  cli "$1" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"
}

in_time() {
  [ "$(date +%s)" -lt "$deadline" ] || { echo "gave up after ${WAIT_SECONDS}s: $1" >&2; exit 1; }
}

wait_ok() {
  for node in $NODES; do
    until [ "$(info "$node" cluster_state)" = ok ]; do
      in_time "node $node says cluster_state:$(info "$node" cluster_state); see redis-cli --cluster check $node (and --cluster fix)"
      sleep 2
    done
  done
  echo "cluster_state:ok on every node"
}

first=""
for node in $NODES; do
  first="${first:-$node}"
  until [ "$(cli "$node" ping 2>/dev/null)" = PONG ]; do
    in_time "node $node does not answer PING (pod not running, or a wrong password)"
    sleep 2
  done
  echo "node $node answers"
done

empty=""
member=""
for node in $NODES; do
  if [ "$(info "$node" cluster_known_nodes)" = 1 ] && [ "$(info "$node" cluster_slots_assigned)" = 0 ]; then
    empty="$empty $node"
  else
    member="$member $node"
  fi
done

if [ -n "$member" ]; then
  if [ -n "$empty" ]; then
    echo "nodes$member are in a cluster but$empty are empty (a lost volume?); not creating a cluster." >&2
    echo "Add each empty node back as a replica, e.g.:" >&2
    set -- $member
    for node in $empty; do
      echo "  redis-cli --cluster add-node $node $1 --cluster-slave   # with REDISCLI_AUTH set" >&2
    done
    exit 1
  fi
  echo "the cluster exists already; not creating it"
  wait_ok
  redis-cli --cluster check "$first"
  exit 0
fi

# CLUSTER MEET takes IP addresses: resolve the pods' names.
addresses=""
for node in $NODES; do
  ip="$(getent hosts "${node%:*}" | awk '{print $1; exit}')"
  [ -n "$ip" ] || { echo "cannot resolve ${node%:*}" >&2; exit 1; }
  addresses="$addresses $ip:${node##*:}"
done
echo "creating the cluster:$addresses, $REPLICAS replica(s) per primary"
# shellcheck disable=SC2086 # one argument per node
redis-cli --cluster create $addresses --cluster-replicas "$REPLICAS" --cluster-yes
wait_ok
redis-cli --cluster check "$first"
