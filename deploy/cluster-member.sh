#!/bin/sh
# One member of an N-process Bytewax cluster in a Kubernetes StatefulSet.
#
# The pod's ordinal (the number after the last "-" of its hostname, e.g. orderbook-2) is
# the Bytewax process id; the addresses are the StatefulSet's pods behind its headless
# service, in ordinal order. Extra arguments go to bytewax.run (e.g. -r/-s/-b).
#   REPLICAS  number of pods (required)       SERVICE  headless service name (orderbook)
#   PORT      cluster port (2101)             WORKERS  worker threads per pod (1)
set -eu
: "${REPLICAS:?set REPLICAS to the number of pods in the StatefulSet}"
SERVICE="${SERVICE:-orderbook}"
PORT="${PORT:-2101}"
WORKERS="${WORKERS:-1}"
HOST="${HOSTNAME:-$(hostname)}"
ID="${HOST##*-}"
case "$ID" in
  ''|*[!0-9]*) echo "cluster-member: hostname '$HOST' does not end in a pod ordinal" >&2; exit 2 ;;
esac
if [ "$ID" -ge "$REPLICAS" ]; then
  echo "cluster-member: ordinal $ID is not below REPLICAS=$REPLICAS" >&2; exit 2
fi
ADDRESSES=""
i=0
while [ "$i" -lt "$REPLICAS" ]; do
  ADDRESSES="${ADDRESSES:+$ADDRESSES;}${SERVICE}-${i}.${SERVICE}:${PORT}"
  i=$((i + 1))
done
# Say which peers this member will connect to (kubectl logs): a member that waits for a
# peer forever, or a wrong REPLICAS, shows here first.
echo "cluster-member: process $ID of $REPLICAS (${WORKERS} workers), peer addresses: $ADDRESSES" >&2
set -- python -m bytewax.run dataflow:flow -i "$ID" -a "$ADDRESSES" -w "$WORKERS" "$@"
if [ "${DRY_RUN:-}" = 1 ]; then echo "$@"; exit 0; fi
exec "$@"
