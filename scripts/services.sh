#!/usr/bin/env bash
# Development/CI services for sessionflow: a one-node Apache Kafka (KRaft) and a standalone
# Apache HBase with its Thrift1 gateway, all on 127.0.0.1, assembled from Maven Central jars.
#
#   scripts/services.sh up     [kafka|hbase]...           start (idempotent), wait until ready
#   scripts/services.sh down   [kafka|hbase]... [--purge] stop; --purge also deletes their data
#   scripts/services.sh status [kafka|hbase]...           report; exit 0 only if all are ready
#   scripts/services.sh compact TABLE...                  HBase: flush + major-compact each table
#                                                         (Java Admin API; Thrift1's majorCompact
#                                                         is a minor one), print its store bytes
#
# With no service named, the command applies to both. `up` prints, on stdout and only on
# success, the addresses for the tests (everything else goes to stderr), e.g.
#   eval "$(scripts/services.sh up)"   # sets KAFKA_BROKERS=127.0.0.1:9092 HBASE_THRIFT=127.0.0.1:9090
#
# Kafka also listens with TLS and SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, and OAUTHBEARER
# with unsecured JWTs) on 127.0.0.1:9094 (KAFKA_SASL_SSL_BROKERS), as a managed Kafka does, with a
# self-signed certificate made once per data directory by the JDK's keytool (its PEM:
# KAFKA_TLS_CA) and one test user, `sessionflow` / `sessionflow-secret`, for PLAIN and SCRAM
# (loopback only, for the tests; never a production setup); and with TLS that requires a client
# certificate (mutual TLS, as Aiven and MSK offer) on 127.0.0.1:9095 (KAFKA_SSL_BROKERS): the
# client's key and certificate, also self-signed, in the PKCS12 keystore KAFKA_TLS_CLIENT_KEYSTORE
# (password `sessionflow`), which the listener's truststore trusts; and with TLS and SASL
# OAUTHBEARER tokens from an OIDC token endpoint on 127.0.0.1:9096 (KAFKA_OIDC_BROKERS): a test
# token endpoint (scripts/oidc_idp.java, KAFKA_OIDC_TOKEN_URL) signs tokens for client
# `sessionflow` / `sessionflow-secret`, and the listener verifies them with its public keys.
#
# Environment:
#   SESSIONFLOW_CACHE          jar cache, default ~/.cache/sessionflow ({kafka,hbase}/lib)
#   SESSIONFLOW_SERVICES_DIR   data, config, logs, pid files; default <repo>/.services
#   SESSIONFLOW_START_TIMEOUT  seconds each service may take to become ready (default 240)
#   SESSIONFLOW_STOP_TIMEOUT   seconds between TERM and KILL on `down` (default 60)
#   SESSIONFLOW_ZK_PORT        ZooKeeper client port of the embedded ZooKeeper (default 2181)
#   JAVA_HOME                  Java 17+ to use (else `java` on PATH)
#
# Needs Java 17+, Python 3 and (for the first download only) Maven, which also keeps its own copy
# of the jars in its local repository (~/.m2 unless configured otherwise).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
PROBE="$SCRIPT_DIR/services_probe.py"
CACHE_DIR=${SESSIONFLOW_CACHE:-${HOME:?HOME is not set}/.cache/sessionflow}
SERVICES_DIR=${SESSIONFLOW_SERVICES_DIR:-$REPO_DIR/.services}
START_TIMEOUT=${SESSIONFLOW_START_TIMEOUT:-240}
# HBase takes 2 to 25 s to stop on TERM: it flushes and closes its regions, and when the JVM runs
# the master's shutdown hook first (the order varies), the region server then retries for ~20 s
# to delete its znode in the embedded ZooKeeper that the master has already stopped.
STOP_TIMEOUT=${SESSIONFLOW_STOP_TIMEOUT:-60}
JAVA=${JAVA_HOME:+$JAVA_HOME/bin/}java
KEYTOOL=${JAVA_HOME:+$JAVA_HOME/bin/}keytool

HOST=127.0.0.1                 # everything binds to loopback only
KAFKA_PORT=9092                # PLAINTEXT listener for clients
KAFKA_CONTROLLER_PORT=9093     # KRaft controller listener (same JVM)
KAFKA_SASL_SSL_PORT=9094       # SASL_SSL listener (TLS + SASL) for the security tests
KAFKA_SSL_PORT=9095            # SSL listener requiring a client certificate (mutual TLS)
KAFKA_OIDC_PORT=9096           # SASL_SSL listener taking OIDC tokens (OAUTHBEARER, verified)
KAFKA_IDP_PORT=9097            # the test token endpoint those tokens come from
IDP="$SCRIPT_DIR/oidc_idp.java"
KAFKA_SASL_USER=sessionflow    # its one user (test credentials, loopback only)
KAFKA_SASL_PASSWORD=sessionflow-secret
KAFKA_TLS_PASSWORD=sessionflow # the broker's keystore password (a generated test key)
THRIFT_PORT=9090               # HBase Thrift1 gateway (buffered transport, binary protocol)
ZK_PORT=${SESSIONFLOW_ZK_PORT:-2181}
HBASE_MASTER_PORT=16000        # HBase defaults, set explicitly so the port check knows them
HBASE_RS_PORT=16020

KAFKA_DIR="$SERVICES_DIR/kafka"
HBASE_DIR="$SERVICES_DIR/hbase"

# Flags HBase's own bin/hbase adds on JDK 17: HBase and its shaded Netty reach into JDK internals.
HBASE_JDK17_OPTS=(
  --add-opens java.base/java.io=ALL-UNNAMED
  --add-opens java.base/java.nio=ALL-UNNAMED
  --add-opens java.base/sun.nio.ch=ALL-UNNAMED
  --add-opens java.base/java.lang=ALL-UNNAMED
  --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
  --add-opens java.base/java.lang.reflect=ALL-UNNAMED
  --add-opens java.base/java.util=ALL-UNNAMED
  --add-opens java.base/java.util.concurrent=ALL-UNNAMED
  --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
  --add-exports java.security.jgss/sun.security.krb5=ALL-UNNAMED
  --add-exports java.base/sun.net.dns=ALL-UNNAMED
  --add-exports java.base/sun.net.util=ALL-UNNAMED
  --add-modules jdk.unsupported
  -Dorg.apache.hbase.thirdparty.io.netty.tryReflectionSetAccessible=true
)

# Ctrl-C or TERM: stop here (bash would otherwise go on once a child that handles SIGINT, like
# Maven, has exited). Half-done downloads have no marker and are redone; servers keep running.
trap 'log "interrupted"; exit 130' INT TERM

log() { printf 'services: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

# ---------------------------------------------------------------------------------------------
# Tools

check_java() {
  command -v "$JAVA" >/dev/null || die "java not found (install a JDK 17+ or set JAVA_HOME)"
  local v major
  v=$("$JAVA" -version 2>&1 | sed -n 's/.* version "\([^"]*\)".*/\1/p' | head -n 1)
  major=${v%%.*}
  [[ $major == 1 ]] && major=$(cut -d. -f2 <<<"$v")   # "1.8.0_x" style
  if ! [[ $major =~ ^[0-9]+$ ]] || ((major < 17)); then
    die "Java 17+ needed, found '$v' ($JAVA)"
  fi
}

check_tools() {
  local t
  for t in python3 setsid flock sha256sum; do
    command -v "$t" >/dev/null || die "$t not found"
  done
  check_java
}

# ---------------------------------------------------------------------------------------------
# Jars: copied once from Maven Central into $CACHE_DIR/<name>/lib. The marker file `complete`
# holds the hash of the pom it was made from and is written last, so an interrupted download,
# or a changed pom, is redone on the next `up`.

fetch_jars() {
  local name=$1
  local pom="$SCRIPT_DIR/$name/pom.xml" dest="${CACHE_DIR:?}/$name" want attempt
  want=$(sha256sum "$pom" | cut -d' ' -f1)
  if [[ -d $dest/lib && -f $dest/complete && $(<"$dest/complete") == "$want" ]]; then
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found: needed once to download the $name jars"
  log "$name: downloading jars from Maven Central into $dest/lib (first run only)"
  mkdir -p "$dest"
  rm -rf "${dest:?}/lib" "$dest/lib.partial" "$dest/complete"
  for attempt in 1 2 3; do   # a flaky network should not fail a CI run
    if mvn -B -q -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$dest/lib.partial" >"$dest/mvn.log" 2>&1; then
      break
    fi
    if (( attempt == 3 )); then
      tail -n 40 "$dest/mvn.log" >&2
      die "$name: Maven could not download the jars (full log: $dest/mvn.log)"
    fi
    log "$name: Maven failed (attempt $attempt of 3), retrying in 10 s"
    rm -rf "$dest/lib.partial"
    sleep 10
  done
  # Two SLF4J bindings make SLF4J pick one at random; none silences the logs. Refuse either.
  python3 "$PROBE" slf4j-bindings "$dest/lib.partial" >&2 \
    || die "$name: wrong SLF4J bindings; fix the exclusions in $pom"
  mv "$dest/lib.partial" "$dest/lib"
  printf '%s\n' "$want" >"$dest/complete"
  log "$name: $(find "$dest/lib" -name '*.jar' | wc -l) jars, $(du -sh "$dest/lib" | cut -f1)"
}

# ---------------------------------------------------------------------------------------------
# Processes. Each JVM runs in its own session (setsid: a Ctrl-C or the end of the calling shell
# does not reach it), with stdin from /dev/null and its output in a file, so a caller reading
# our stdout through a pipe does not wait for the servers. A pid file belongs to a service only
# while that pid is alive and its command line names the expected main class.

pid_of() {  # pid_of PIDFILE MAIN_CLASS -> prints the pid, or fails
  local pidfile=$1 main=$2 pid cmdline
  [[ -f $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  # A zombie or a recycled pid has an empty or different command line.
  cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
  [[ $cmdline == *" $main "* ]] || return 1
  printf '%s\n' "$pid"
}

launch() {  # launch PIDFILE OUTFILE COMMAND... (the pid is written before exec, so it is java's)
  local pidfile=$1 out=$2
  shift 2
  rm -f "$pidfile"
  # 9>&-: do not hand the lock of this script to a server that outlives it.
  # shellcheck disable=SC2016  # $$, $0 and $@ are for the inner bash
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >>"$out" 2>&1 9>&- &
  local _
  for _ in $(seq 50); do [[ -s $pidfile ]] && return 0; sleep 0.1; done
  die "could not start: $*"
}

port_in_use() { python3 "$PROBE" --timeout 2 port "$HOST:$1" 2>/dev/null; }

check_ports_free() {  # check_ports_free NAME PORT...
  local name=$1 port
  shift
  for port in "$@"; do
    if port_in_use "$port"; then
      die "$name: port $HOST:$port is taken by a process this script did not start"
    fi
  done
}

show_logs() {  # show_logs FILE... : the end of each non-empty file, on stderr
  local f
  for f in "$@"; do
    [[ -s $f ]] || continue
    printf '\n===== last lines of %s =====\n' "$f" >&2
    tail -n 60 "$f" >&2
  done
  printf '\n' >&2
}

# ---------------------------------------------------------------------------------------------
# Kafka: one KRaft node that is both broker and controller.

# The TLS listeners' key: a self-signed certificate for 127.0.0.1 in a PKCS12 keystore, and the
# certificate alone in PEM for clients (`ssl.ca.location`); and a client's key and self-signed
# certificate (CN=sessionflow-client) in a PKCS12 keystore, trusted by the mutual-TLS listener's
# truststore. Made once per data directory (again when a file is missing, e.g. storage made by an
# older version of this script).
make_kafka_tls() {
  local tls="$KAFKA_DIR/tls" f
  local files=(ca.pem broker.p12 client.p12 clients.p12)
  local missing=0
  for f in "${files[@]}"; do [[ -s $tls/$f ]] || missing=1; done
  ((missing)) || return 0
  command -v "$KEYTOOL" >/dev/null || die "keytool not found (it comes with the JDK)"
  mkdir -p "$tls"
  for f in "${files[@]}" client.pem; do rm -f "${tls:?}/$f"; done
  local pw=(-storepass "$KAFKA_TLS_PASSWORD") kt=(-storetype PKCS12)
  if ! "$KEYTOOL" -genkeypair -alias broker -keyalg RSA -keysize 2048 -validity 3650 \
      -dname "CN=$HOST" -ext "SAN=ip:$HOST,dns:localhost" "${kt[@]}" \
      -keystore "$tls/broker.p12" "${pw[@]}" \
      >"$KAFKA_DIR/logs/keytool.log" 2>&1 9>&- ||
    ! "$KEYTOOL" -exportcert -rfc -alias broker -keystore "$tls/broker.p12" \
      "${pw[@]}" -file "$tls/ca.pem" >>"$KAFKA_DIR/logs/keytool.log" 2>&1 9>&- ||
    ! "$KEYTOOL" -genkeypair -alias client -keyalg RSA -keysize 2048 -validity 3650 \
      -dname "CN=sessionflow-client" "${kt[@]}" -keystore "$tls/client.p12" "${pw[@]}" \
      >>"$KAFKA_DIR/logs/keytool.log" 2>&1 9>&- ||
    ! "$KEYTOOL" -exportcert -rfc -alias client -keystore "$tls/client.p12" \
      "${pw[@]}" -file "$tls/client.pem" >>"$KAFKA_DIR/logs/keytool.log" 2>&1 9>&- ||
    ! "$KEYTOOL" -importcert -noprompt -alias client -file "$tls/client.pem" "${kt[@]}" \
      -keystore "$tls/clients.p12" "${pw[@]}" >>"$KAFKA_DIR/logs/keytool.log" 2>&1 9>&-; then
    show_logs "$KAFKA_DIR/logs/keytool.log"
    die "kafka: making the TLS keys failed"
  fi
}

write_kafka_config() {
  cat >"$KAFKA_DIR/server.properties" <<EOF
# Generated by scripts/services.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT,SASL_SSL://$HOST:$KAFKA_SASL_SSL_PORT,SSL://$HOST:$KAFKA_SSL_PORT,OIDC://$HOST:$KAFKA_OIDC_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT,SASL_SSL://$HOST:$KAFKA_SASL_SSL_PORT,SSL://$HOST:$KAFKA_SSL_PORT,OIDC://$HOST:$KAFKA_OIDC_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL,OIDC:SASL_SSL
# TLS + SASL on the SASL_SSL listener: one user, for the security tests. PLAIN's users are in
# its JAAS line; SCRAM's credentials live in the cluster metadata (StorageTool's --add-scram).
# OAUTHBEARER takes unsecured JWTs (Kafka's default validator without an OIDC provider).
listener.name.sasl_ssl.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512,OAUTHBEARER
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_SASL_USER="$KAFKA_SASL_PASSWORD";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;
listener.name.sasl_ssl.ssl.keystore.location=$KAFKA_DIR/tls/broker.p12
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.password=$KAFKA_TLS_PASSWORD
listener.name.sasl_ssl.ssl.key.password=$KAFKA_TLS_PASSWORD
# Mutual TLS on the SSL listener: the same server key; a client must present a certificate its
# truststore holds (the test client's), and is then user CN=sessionflow-client.
listener.name.ssl.ssl.keystore.location=$KAFKA_DIR/tls/broker.p12
listener.name.ssl.ssl.keystore.type=PKCS12
listener.name.ssl.ssl.keystore.password=$KAFKA_TLS_PASSWORD
listener.name.ssl.ssl.key.password=$KAFKA_TLS_PASSWORD
listener.name.ssl.ssl.client.auth=required
listener.name.ssl.ssl.truststore.location=$KAFKA_DIR/tls/clients.p12
listener.name.ssl.ssl.truststore.type=PKCS12
listener.name.ssl.ssl.truststore.password=$KAFKA_TLS_PASSWORD
# OAUTHBEARER with verified tokens on the OIDC listener: signed by the test token endpoint
# (scripts/oidc_idp.java), checked against its public keys, issuer and audience.
listener.name.oidc.sasl.enabled.mechanisms=OAUTHBEARER
listener.name.oidc.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;
listener.name.oidc.oauthbearer.sasl.server.callback.handler.class=org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler
listener.name.oidc.ssl.keystore.location=$KAFKA_DIR/tls/broker.p12
listener.name.oidc.ssl.keystore.type=PKCS12
listener.name.oidc.ssl.keystore.password=$KAFKA_TLS_PASSWORD
listener.name.oidc.ssl.key.password=$KAFKA_TLS_PASSWORD
sasl.oauthbearer.jwks.endpoint.url=file://$KAFKA_DIR/oidc/jwks.json
sasl.oauthbearer.expected.issuer=sessionflow-test-idp
sasl.oauthbearer.expected.audience=sessionflow-kafka
log.dirs=$KAFKA_DIR/data
# One broker: every internal and default topic gets a single replica.
default.replication.factor=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
min.insync.replicas=1
# Internal topics with one partition are created in a blink (defaults: 50 each).
offsets.topic.num.partitions=1
transaction.state.log.num.partitions=1
# Consumer groups form at once instead of waiting 3 s for more members.
group.initial.rebalance.delay.ms=0
num.partitions=4
auto.create.topics.enable=true
# Fewer threads than the defaults (3 network, 8 I/O): a 2-core machine shared with builds.
num.network.threads=2
num.io.threads=4
# The log cleaner (compacts __consumer_offsets) preallocates this buffer: 128 MiB by default,
# a quarter of our 512 MiB heap.
log.cleaner.dedupe.buffer.size=33554432
EOF
  # reload4j (log4j 1) configuration: to a size-capped file, never to the console.
  cat >"$KAFKA_DIR/log4j.properties" <<EOF
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File=$KAFKA_DIR/logs/server.log
log4j.appender.file.MaxFileSize=50MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
# Per-partition state changes and per-request lines: noise at INFO.
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.request.logger=WARN
EOF
}

# The test token endpoint of the OIDC listener (scripts/oidc_idp.java, a single-file Java
# program on Kafka's jars); it writes the key set the broker reads at its start.
start_idp() {
  local lib="$CACHE_DIR/kafka/lib" _
  pid_of "$KAFKA_DIR/idp.pid" "$IDP" >/dev/null && return 0
  check_ports_free kafka "$KAFKA_IDP_PORT"
  mkdir -p "$KAFKA_DIR/oidc" "$KAFKA_DIR/logs"
  rm -f "$KAFKA_DIR/oidc/jwks.json"
  launch "$KAFKA_DIR/idp.pid" "$KAFKA_DIR/logs/idp.out" \
    "$JAVA" -Xmx64m -cp "$lib/*" "$IDP" "$HOST" "$KAFKA_IDP_PORT" "$KAFKA_DIR/oidc" \
    "$KAFKA_SASL_USER" "$KAFKA_SASL_PASSWORD"
  for _ in $(seq 600); do
    [[ -s $KAFKA_DIR/oidc/jwks.json ]] && return 0
    pid_of "$KAFKA_DIR/idp.pid" "$IDP" >/dev/null || break
    sleep 0.1
  done
  show_logs "$KAFKA_DIR/logs/idp.out"
  die "kafka: the test token endpoint did not start"
}

start_kafka() {
  local lib="$CACHE_DIR/kafka/lib" pid
  start_idp
  if pid=$(pid_of "$KAFKA_DIR/kafka.pid" kafka.Kafka); then
    log "kafka: already running (pid $pid)"
    return 0
  fi
  check_ports_free kafka "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$KAFKA_SASL_SSL_PORT" "$KAFKA_SSL_PORT" \
    "$KAFKA_OIDC_PORT"
  mkdir -p "$KAFKA_DIR/data" "$KAFKA_DIR/logs"
  make_kafka_tls
  write_kafka_config
  local jvm=("$JAVA" -Djava.awt.headless=true "-Dlog4j.configuration=file:$KAFKA_DIR/log4j.properties")
  if [[ ! -f $KAFKA_DIR/data/meta.properties ]]; then
    # KRaft needs its storage formatted once with a cluster id. StorageTool calls System.exit,
    # hence its own JVM; --ignore-formatted makes a repeated format harmless.
    [[ -s $KAFKA_DIR/cluster.id ]] || python3 "$PROBE" cluster-id >"$KAFKA_DIR/cluster.id"
    log "kafka: formatting storage (cluster id $(<"$KAFKA_DIR/cluster.id"))"
    # The test user's SCRAM credentials go into the initial metadata with it.
    local scram="=[name=$KAFKA_SASL_USER,iterations=4096,password=$KAFKA_SASL_PASSWORD]"
    if ! "${jvm[@]}" -Xmx256m -cp "$lib/*" kafka.tools.StorageTool format \
        -t "$(<"$KAFKA_DIR/cluster.id")" -c "$KAFKA_DIR/server.properties" --ignore-formatted \
        --add-scram "SCRAM-SHA-256$scram" --add-scram "SCRAM-SHA-512$scram" \
        >"$KAFKA_DIR/logs/format.log" 2>&1 9>&-; then
      show_logs "$KAFKA_DIR/logs/format.log"
      die "kafka: formatting the storage failed"
    fi
    touch "$KAFKA_DIR/data/.scram-user"
  elif [[ ! -f $KAFKA_DIR/data/.scram-user ]]; then
    log "kafka: warning: this storage was formatted before the SCRAM user existed; SCRAM logins" \
      "fail until \`scripts/services.sh down --purge kafka\` (which deletes its topics)"
  fi
  log "kafka: starting"
  launch "$KAFKA_DIR/kafka.pid" "$KAFKA_DIR/logs/kafka.out" \
    "${jvm[@]}" -Xmx512m -cp "$lib/*" kafka.Kafka "$KAFKA_DIR/server.properties"
}

# ---------------------------------------------------------------------------------------------
# HBase: standalone HMaster (master, one region server and ZooKeeper in a single JVM, data on the
# local filesystem) plus the Thrift1 gateway in a second JVM.

write_hbase_config() {
  mkdir -p "$HBASE_DIR/conf"
  local p
  {
    printf '<?xml version="1.0"?>\n<!-- Generated by scripts/services.sh on every start. -->\n'
    printf '<configuration>\n'
    while read -r name value; do
      [[ -z $name || $name == '#'* ]] && continue
      printf '  <property><name>%s</name><value>%s</value></property>\n' "$name" "$value"
    done <<EOF
# Standalone: HMaster also runs a region server and ZooKeeper in its JVM.
hbase.cluster.distributed false
hbase.rootdir file://$HBASE_DIR/data/root
hbase.tmp.dir $HBASE_DIR/data/tmp
hbase.zookeeper.property.dataDir $HBASE_DIR/data/zookeeper
hbase.zookeeper.quorum $HOST
hbase.zookeeper.property.clientPort $ZK_PORT
hbase.zookeeper.property.clientPortAddress $HOST
# Ride out host stalls (a loaded 2-core machine saw 8 s fsyncs and JVM pauses) instead of
# losing the ZooKeeper session and aborting the master; the embedded ZooKeeper caps sessions
# at its maxSessionTimeout.
zookeeper.session.timeout 120000
hbase.zookeeper.property.maxSessionTimeout 120000
# The local filesystem has no hflush/hsync; without this the WAL refuses to start.
hbase.unsafe.stream.capability.enforce false
# No web UIs.
hbase.master.info.port -1
hbase.regionserver.info.port -1
# Register and bind as 127.0.0.1 whatever the hostname resolves to (or if it does not).
hbase.master.hostname $HOST
hbase.unsafe.regionserver.hostname $HOST
hbase.master.ipc.address $HOST
hbase.regionserver.ipc.address $HOST
hbase.master.port $HBASE_MASTER_PORT
hbase.regionserver.port $HBASE_RS_PORT
# Fewer RPC handler threads than the default 30: a small shared machine.
hbase.regionserver.handler.count 10
# Column family compression (--hbase-compression): GZ is pure Java in HBase itself; LZ4,
# SNAPPY, ZSTD and LZO would need Hadoop's native library, so they use HBase's pure-Java
# aircompressor codecs (hbase-compression-aircompressor in the pom) instead.
hbase.io.compress.lz4.codec org.apache.hadoop.hbase.io.compress.aircompressor.Lz4Codec
hbase.io.compress.snappy.codec org.apache.hadoop.hbase.io.compress.aircompressor.SnappyCodec
hbase.io.compress.zstd.codec org.apache.hadoop.hbase.io.compress.aircompressor.ZstdCodec
hbase.io.compress.lzo.codec org.apache.hadoop.hbase.io.compress.aircompressor.LzoCodec
EOF
    printf '</configuration>\n'
  } >"$HBASE_DIR/conf/hbase-site.xml"
  # log4j2: each JVM names its file with -Dsessionflow.log.file; size-capped, never the console.
  cat >"$HBASE_DIR/conf/log4j2.properties" <<'EOF'
status = warn
dest = err
name = sessionflow-services
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = ${sys:sessionflow.log.file}
appender.file.filePattern = ${sys:sessionflow.log.file}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{ISO8601} %-5p [%t] %c{2}: %m%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger = INFO, file
# ZooKeeper logs every client session at INFO; Hadoop only warns about things that do not
# apply to a local filesystem (native libraries, ...).
logger.zookeeper.name = org.apache.zookeeper
logger.zookeeper.level = WARN
logger.hadoop.name = org.apache.hadoop
logger.hadoop.level = WARN
logger.hbase.name = org.apache.hadoop.hbase
logger.hbase.level = INFO
EOF
}

hbase_jvm() {  # hbase_jvm LOGNAME: the java command line shared by both HBase JVMs
  local logname=$1
  HBASE_JVM=("$JAVA" "${HBASE_JDK17_OPTS[@]}" -Djava.awt.headless=true
    -Djava.net.preferIPv4Stack=true    # HBase's own recommendation: no IPv6 surprises
    "-Dlog4j2.configurationFile=file:$HBASE_DIR/conf/log4j2.properties"
    "-Dsessionflow.log.file=$HBASE_DIR/logs/$logname.log"
    "-Dhbase.log.dir=$HBASE_DIR/logs"
    -cp "$HBASE_DIR/conf:$CACHE_DIR/hbase/lib/*")  # conf first: hbase-site.xml is found there
}

start_hbase() {
  local master thrift
  master=$(pid_of "$HBASE_DIR/master.pid" org.apache.hadoop.hbase.master.HMaster) || master=
  thrift=$(pid_of "$HBASE_DIR/thrift.pid" org.apache.hadoop.hbase.thrift.ThriftServer) || thrift=
  if [[ -n $master && -n $thrift ]]; then
    log "hbase: already running (master pid $master, thrift pid $thrift)"
    return 0
  fi
  [[ -n $master ]] || check_ports_free hbase "$ZK_PORT" "$HBASE_MASTER_PORT" "$HBASE_RS_PORT"
  [[ -n $thrift ]] || check_ports_free hbase-thrift "$THRIFT_PORT"
  mkdir -p "$HBASE_DIR/data" "$HBASE_DIR/logs"
  write_hbase_config
  if [[ -z $master ]]; then
    log "hbase: starting master (with region server and ZooKeeper on $HOST:$ZK_PORT)"
    hbase_jvm hbase-master
    launch "$HBASE_DIR/master.pid" "$HBASE_DIR/logs/hbase-master.out" \
      "${HBASE_JVM[@]}" -Xmx2g org.apache.hadoop.hbase.master.HMaster start
  fi
  if [[ -z $thrift ]]; then
    # Started together with the master: it only connects (through ZooKeeper) on a first call,
    # and answers with an error until the master is up. Thrift1, buffered transport, binary
    # protocol (no -f/-c/-hsha), web UI off.
    log "hbase: starting thrift gateway"
    hbase_jvm hbase-thrift
    launch "$HBASE_DIR/thrift.pid" "$HBASE_DIR/logs/hbase-thrift.out" \
      "${HBASE_JVM[@]}" -Xmx256m org.apache.hadoop.hbase.thrift.ThriftServer \
      -b "$HOST" -p "$THRIFT_PORT" --infoport -1 start
  fi
}

# ---------------------------------------------------------------------------------------------
# Readiness

kafka_alive() { pid_of "$KAFKA_DIR/kafka.pid" kafka.Kafka >/dev/null; }
hbase_alive() {
  pid_of "$HBASE_DIR/master.pid" org.apache.hadoop.hbase.master.HMaster >/dev/null &&
    pid_of "$HBASE_DIR/thrift.pid" org.apache.hadoop.hbase.thrift.ThriftServer >/dev/null
}
# The probes: a Kafka Metadata request that lists this broker; a Thrift getTableNames call.
kafka_probe() { python3 "$PROBE" --timeout 5 kafka "$HOST:$KAFKA_PORT" 2>&1; }
# A first call can take long: the gateway's HBase client retries while the master starts.
hbase_probe() { python3 "$PROBE" --timeout 20 hbase "$HOST:$THRIFT_PORT" 2>&1; }
kafka_logs() { echo "$KAFKA_DIR/logs/kafka.out" "$KAFKA_DIR/logs/server.log"; }
hbase_logs() {
  echo "$HBASE_DIR/logs/hbase-master.out" "$HBASE_DIR/logs/hbase-master.log" \
    "$HBASE_DIR/logs/hbase-thrift.out" "$HBASE_DIR/logs/hbase-thrift.log"
}

wait_ready() {  # wait_ready NAME STARTED_AT(seconds): poll the probe until the deadline
  local name=$1 deadline=$(($2 + START_TIMEOUT)) out
  while true; do
    if out=$("${name}_probe"); then
      log "$name: ready after $((SECONDS - $2)) s ($out)"
      return 0
    fi
    if ! "${name}_alive"; then
      log "$name: a server process exited during startup (last probe: $out)"
      # shellcheck disable=SC2046  # the file lists have no spaces in their names
      show_logs $("${name}_logs")
      return 1
    fi
    if ((SECONDS >= deadline)); then
      log "$name: not ready after $START_TIMEOUT s (last probe: $out)"
      # shellcheck disable=SC2046
      show_logs $("${name}_logs")
      log "$name: left running for inspection; \`scripts/services.sh down\` stops it"
      return 1
    fi
    sleep 2
  done
}

# ---------------------------------------------------------------------------------------------
# Commands

lock() {  # one up/down at a time per services dir (a second CI step waits for the first)
  mkdir -p "$SERVICES_DIR"
  exec 9>"$SERVICES_DIR/.lock"
  flock -w 900 9 || die "another scripts/services.sh holds $SERVICES_DIR/.lock"
}

cmd_up() {
  check_tools
  lock
  local -A started=()
  local s rc=0
  # Download and start one after the other (two Mavens would share ~/.m2 without locking), but
  # do not wait in between: Kafka boots while the HBase jars download, then both boot together.
  for s in "$@"; do
    fetch_jars "$s"
    "start_$s"
    started[$s]=$SECONDS
  done
  for s in "$@"; do
    wait_ready "$s" "${started[$s]}" || rc=1
  done
  ((rc == 0)) || die "not all services came up (logs in $SERVICES_DIR/*/logs)"
  for s in "$@"; do
    case $s in
      kafka)
        echo "KAFKA_BROKERS=$HOST:$KAFKA_PORT"
        echo "KAFKA_SASL_SSL_BROKERS=$HOST:$KAFKA_SASL_SSL_PORT"
        echo "KAFKA_TLS_CA=$KAFKA_DIR/tls/ca.pem"
        echo "KAFKA_SSL_BROKERS=$HOST:$KAFKA_SSL_PORT"
        echo "KAFKA_TLS_CLIENT_KEYSTORE=$KAFKA_DIR/tls/client.p12"
        echo "KAFKA_OIDC_BROKERS=$HOST:$KAFKA_OIDC_PORT"
        echo "KAFKA_OIDC_TOKEN_URL=http://$HOST:$KAFKA_IDP_PORT/token"
        ;;
      hbase) echo "HBASE_THRIFT=$HOST:$THRIFT_PORT" ;;
    esac
  done
}

# The server processes of a service, as PIDFILE:MAIN_CLASS (HBase: Thrift first, it is a client).
server_procs() {
  case $1 in
    kafka) echo "$KAFKA_DIR/kafka.pid:kafka.Kafka" "$KAFKA_DIR/idp.pid:$IDP" ;;
    hbase) echo "$HBASE_DIR/thrift.pid:org.apache.hadoop.hbase.thrift.ThriftServer" \
                "$HBASE_DIR/master.pid:org.apache.hadoop.hbase.master.HMaster" ;;
  esac
}

running() {  # running PID: the process exists and is not a zombie
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }       # the fields after "(command name) "; the first is the state
  [[ ${stat%% *} != Z ]]
}

wait_gone() {  # wait_gone SECONDS PID...: until none of the processes runs; fails on timeout
  local deadline=$((SECONDS + $1)) pid alive
  shift
  while true; do
    alive=0
    for pid in "$@"; do
      running "$pid" && alive=1
    done
    ((alive == 0)) && return 0
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

cmd_down() {
  local purge=$1 s p pid
  shift
  lock
  local -a pids=()
  for s in "$@"; do
    for p in $(server_procs "$s"); do
      if pid=$(pid_of "${p%:*}" "${p##*:}"); then
        log "$s: stopping ${p##*.} (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        pids+=("$pid")
      fi
    done
  done
  if ((${#pids[@]} > 0)) && ! wait_gone "$STOP_TIMEOUT" "${pids[@]}"; then
    for pid in "${pids[@]}"; do
      if running "$pid"; then
        log "pid $pid still running after $STOP_TIMEOUT s: killing it"
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done
    wait_gone 10 "${pids[@]}" || die "could not stop pids ${pids[*]}"
  fi
  for s in "$@"; do
    for p in $(server_procs "$s"); do rm -f "${p%:*}"; done
    if [[ $purge == 1 ]]; then
      log "$s: deleting $SERVICES_DIR/$s (data, config, logs)"
      rm -rf "${SERVICES_DIR:?}/$s"
    fi
  done
  log "stopped: $*"
}

cmd_status() {
  local s rc=0 out pid master thrift
  for s in "$@"; do
    case $s in
      kafka)
        if pid=$(pid_of "$KAFKA_DIR/kafka.pid" kafka.Kafka); then
          if out=$(kafka_probe); then
            echo "kafka: running (pid $pid), ready on $HOST:$KAFKA_PORT: $out"
          else
            echo "kafka: running (pid $pid), NOT ready: $out"; rc=1
          fi
        else
          echo "kafka: stopped"; rc=1
        fi ;;
      hbase)
        master=$(pid_of "$HBASE_DIR/master.pid" org.apache.hadoop.hbase.master.HMaster) || master=
        thrift=$(pid_of "$HBASE_DIR/thrift.pid" org.apache.hadoop.hbase.thrift.ThriftServer) || thrift=
        if [[ -z $master && -z $thrift ]]; then
          echo "hbase: stopped"; rc=1
        elif [[ -z $master || -z $thrift ]]; then
          echo "hbase: master ${master:+running (pid $master)}${master:-stopped}," \
            "thrift ${thrift:+running (pid $thrift)}${thrift:-stopped}: NOT ready"; rc=1
        elif out=$(hbase_probe); then
          echo "hbase: running (master pid $master, thrift pid $thrift), ready on $HOST:$THRIFT_PORT: $out"
        else
          echo "hbase: running (master pid $master, thrift pid $thrift), NOT ready: $out"; rc=1
        fi ;;
    esac
  done
  return "$rc"
}

cmd_compact() {  # cmd_compact TABLE...: scripts/HbaseMajorCompact.java on the running HBase
  (($# >= 1)) || usage
  hbase_alive || die "hbase is not running (scripts/services.sh up hbase)"
  hbase_jvm hbase-admin
  # Java 11+ runs a single source file directly; the client's logs go to logs/hbase-admin.log.
  "${HBASE_JVM[@]}" "$SCRIPT_DIR/HbaseMajorCompact.java" "$@"
}

main() {
  (($# >= 1)) || usage
  local cmd=$1 purge=0 a
  shift
  if [[ $cmd == compact ]]; then
    mkdir -p "$SERVICES_DIR"
    SERVICES_DIR=$(cd "$SERVICES_DIR" && pwd)
    HBASE_DIR="$SERVICES_DIR/hbase"
    cmd_compact "$@"
    return
  fi
  SERVICES=()
  for a in "$@"; do
    case $a in
      kafka | hbase) SERVICES+=("$a") ;;
      --purge) [[ $cmd == down ]] || usage; purge=1 ;;
      *) usage ;;
    esac
  done
  ((${#SERVICES[@]} > 0)) || SERVICES=(kafka hbase)
  mkdir -p "$SERVICES_DIR"
  SERVICES_DIR=$(cd "$SERVICES_DIR" && pwd)   # absolute: it is written into the configs
  KAFKA_DIR="$SERVICES_DIR/kafka"
  HBASE_DIR="$SERVICES_DIR/hbase"
  case $cmd in
    up) cmd_up "${SERVICES[@]}" ;;
    down) cmd_down "$purge" "${SERVICES[@]}" ;;
    status) cmd_status "${SERVICES[@]}" ;;
    -h | --help | help) usage ;;
    *) usage ;;
  esac
}

main "$@"
