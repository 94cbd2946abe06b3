#!/usr/bin/env bash
# One real Apache Kafka broker (KRaft, single node) on 127.0.0.1, for tests,
# benchmarks and local use. No Docker: the broker's jars come from Maven
# Central through mvn and are cached outside the repository.
#
#   deploy/kafka.sh start [DIR]   start a broker in DIR (default: a new temp dir),
#                                 wait until it serves, print its address on stdout
#                                 and write DIR/broker.env (KAFKA_BOOTSTRAP, KAFKA_PID)
#   deploy/kafka.sh stop DIR      stop the broker started in DIR, by PID
#   deploy/kafka.sh restart DIR   start a stopped broker of DIR again, same storage
#                                 and port (for outage tests)
#   deploy/kafka.sh topics BOOTSTRAP [PARTITIONS]
#                                 create the contract's topics (settings compacted)
#   deploy/kafka.sh jars          only resolve the jars into the cache
#
# Environment: RECEIPTD_KAFKA_CACHE (jar cache, default ~/.cache/receiptd/kafka-<version>),
# KAFKA_HEAP_OPTS (default, as Kafka's own scripts: -Xmx1G -Xms1G for the broker,
# -Xmx256M for its tools), KAFKA_JVM_PERFORMANCE_OPTS (default, as Kafka's
# kafka-run-class.sh: G1 with a 20 ms pause goal; the JVM's own 200 ms goal and
# a 256 MiB heap paused this broker 11 to 25 ms about once a second under load),
# KAFKA_START_TIMEOUT (seconds, default 90).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pom="$here/kafka/pom.xml"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")"
cache="${RECEIPTD_KAFKA_CACHE:-$HOME/.cache/receiptd/kafka-$version}"

die() { echo "deploy/kafka.sh: $*" >&2; exit 1; }

resolve_jars() {
  if [ -f "$cache/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || die "mvn not found: Maven is needed to fetch the Kafka broker"
  command -v java >/dev/null || die "java not found: Java 17+ is needed to run the Kafka broker"
  mkdir -p "$cache/libs"
  echo "deploy/kafka.sh: resolving Apache Kafka $version jars into $cache" >&2
  mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$cache/libs" >&2 || die "mvn could not resolve the Kafka jars"
  ls "$cache/libs"/kafka_2.13-*.jar >/dev/null 2>&1 || die "kafka_2.13 jar missing after mvn"
  touch "$cache/.complete"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

jvm_performance_opts="${KAFKA_JVM_PERFORMANCE_OPTS--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -Djava.awt.headless=true}"

java_run() { # java_run MAIN_CLASS ARGS...
  java ${KAFKA_HEAP_OPTS:--Xmx256M} $jvm_performance_opts -cp "$cache/libs/*" \
       -Dlog4j2.configurationFile="$here/kafka/log4j2.xml" -Dkafka.logs.dir="$dir" "$@"
}

cmd_start() {
  dir="${1:-$(mktemp -d -t receiptd-kafka.XXXXXX)}"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if [ -f "$dir/broker.env" ]; then
    # shellcheck disable=SC1091
    . "$dir/broker.env"
    if kill -0 "$KAFKA_PID" 2>/dev/null; then die "a broker already runs in $dir (pid $KAFKA_PID)"; fi
  fi
  resolve_jars
  local port cport id
  port="$(free_port)"; cport="$(free_port)"
  while [ "$cport" = "$port" ]; do cport="$(free_port)"; done
  rm -rf "$dir/logs" "$dir/server.log"
  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/logs
num.partitions=4
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.consumer.min.session.timeout.ms=1000
group.classic.min.session.timeout.ms=1000
log.flush.interval.messages=9223372036854775807
PROPS
  id="$(java_run kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
  [ -n "$id" ] || die "could not generate a cluster id"
  java_run kafka.tools.StorageTool format --standalone -t "$id" -c "$dir/server.properties" \
      > "$dir/format.log" 2>&1 || { cat "$dir/format.log" >&2; die "formatting KRaft storage failed"; }
  launch_and_wait "$dir" "$port"
}

# Starts the broker of DIR (already formatted) and waits until it serves.
launch_and_wait() {
  local dir="$1" port="$2"
  nohup java ${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G} $jvm_performance_opts -cp "$cache/libs/*" \
      -Dlog4j2.configurationFile="$here/kafka/log4j2.xml" -Dkafka.logs.dir="$dir" \
      kafka.Kafka "$dir/server.properties" > "$dir/stdout.log" 2>&1 < /dev/null &
  local pid=$!
  printf 'KAFKA_BOOTSTRAP=127.0.0.1:%s\nKAFKA_PID=%s\nKAFKA_DIR=%s\n' "$port" "$pid" "$dir" > "$dir/broker.env"
  local deadline=$(( $(date +%s) + ${KAFKA_START_TIMEOUT:-90} ))
  until grep -q "Kafka Server started" "$dir/server.log" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 40 "$dir/stdout.log" "$dir/server.log" >&2 2>/dev/null || true
      die "the broker exited during start-up (logs in $dir)"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      kill "$pid" 2>/dev/null || true
      die "the broker did not start within ${KAFKA_START_TIMEOUT:-90}s (logs in $dir)"
    fi
    sleep 0.3
  done
  echo "deploy/kafka.sh: broker pid $pid serving on 127.0.0.1:$port (dir $dir)" >&2
  echo "127.0.0.1:$port"
}

cmd_restart() {
  dir="${1:?usage: deploy/kafka.sh restart DIR}"
  [ -f "$dir/broker.env" ] && [ -f "$dir/server.properties" ] || die "no stopped broker in $dir"
  # shellcheck disable=SC1091
  . "$dir/broker.env"
  if kill -0 "$KAFKA_PID" 2>/dev/null; then die "the broker in $dir still runs (pid $KAFKA_PID)"; fi
  resolve_jars
  rm -f "$dir/server.log"
  launch_and_wait "$dir" "${KAFKA_BOOTSTRAP##*:}"
}

cmd_stop() {
  dir="${1:?usage: deploy/kafka.sh stop DIR}"
  [ -f "$dir/broker.env" ] || die "no broker.env in $dir"
  # shellcheck disable=SC1091
  . "$dir/broker.env"
  if kill -0 "$KAFKA_PID" 2>/dev/null; then
    kill "$KAFKA_PID"
    for _ in $(seq 1 100); do kill -0 "$KAFKA_PID" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$KAFKA_PID" 2>/dev/null; then kill -9 "$KAFKA_PID" 2>/dev/null || true; fi
  fi
  echo "deploy/kafka.sh: broker pid $KAFKA_PID stopped" >&2
}

cmd_topics() {
  local bootstrap="${1:?usage: deploy/kafka.sh topics BOOTSTRAP [PARTITIONS]}" parts="${2:-4}"
  resolve_jars
  dir="$(mktemp -d -t receiptd-topics.XXXXXX)"
  local t
  for t in receipts.events receipts.deltas receipts.dlq; do
    java_run org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" --create \
        --if-not-exists --topic "$t" --partitions "$parts" --replication-factor 1 >&2
  done
  java_run org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" --create \
      --if-not-exists --topic receipts.settings --partitions 1 --replication-factor 1 \
      --config cleanup.policy=compact >&2
  rm -rf "$dir"
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  restart) shift; cmd_restart "$@" ;;
  topics) shift; cmd_topics "$@" ;;
  jars) resolve_jars ;;
  *) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
