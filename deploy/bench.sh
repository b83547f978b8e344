#!/bin/sh
# A test bench in one place: the emulated line (`parcel-sorter emulate`, its diverters as MQTT
# nodes on the broker) and the real controller (`parcel-sorter run`) on the config it writes.
# They share one host or container: the I/O board is a pseudo-terminal, the cameras MJPEG on
# loopback. compose.yaml's "bench" runs it; it runs as well beside any broker with the
# production rules. It prints the emulator's log and report summary, and exits with
# emulate's status (the controller's if that failed).
#   PARCELS (200)  SEED (1)  MQTT (mosquitto:1883)  SECRETS (/auth/bench.secrets: user:password
#   lines for the accounts of mosquitto.acl)  STATE (/var/lib/parcel-sorter: report, journal)
set -eu
parcels=${PARCELS:-200}
seed=${SEED:-1}
mqtt=${MQTT:-mosquitto:1883}
secrets=${SECRETS:-/auth/bench.secrets}
cd "${STATE:-/var/lib/parcel-sorter}"
rm -f emulate.log line.toml report.json

parcel-sorter emulate --parcels "$parcels" --seed "$seed" --mqtt "$mqtt" \
    --mqtt-secrets "$secrets" --report report.json --write-config line.toml \
    >emulate.log 2>&1 &
emulator=$!
# "config: PATH" is printed once the config is written whole
until grep -q '^config: ' emulate.log; do
    if ! kill -0 "$emulator" 2>/dev/null; then
        cat emulate.log
        echo "bench.sh: emulate stopped before writing its config" >&2
        exit 1
    fi
    sleep 0.2
done
parcel-sorter run --config line.toml &
controller=$!
trap 'kill -TERM "$emulator" "$controller" 2>/dev/null || true' TERM INT

status=0
wait "$emulator" || status=$?
kill -TERM "$controller" 2>/dev/null || true
controller_status=0
wait "$controller" || controller_status=$?
cat emulate.log
[ "$status" -ne 0 ] || status=$controller_status
exit "$status"
