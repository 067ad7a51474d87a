//! On the real broker's SASL_SSL listener (TLS with the self-signed certificate
//! `scripts/services.sh` makes; SASL/PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 and OAUTHBEARER), the
//! way a managed Kafka is reached: only `-X` options (`security.protocol`, `sasl.*`,
//! `ssl.ca.location`) differ from a plaintext job.
//! `generate` produces over it (options as `-X`), and `run --stop-at-end` reads the topic and
//! produces its snapshots over it (the same options from a `--kafka-config` file, the password
//! off the command line), writing byte for byte what `replay` writes for the same files. A
//! wrong password and an unverifiable certificate are clear errors within `--connect-timeout`,
//! naming the cause. The same job with OAUTHBEARER tokens from an OIDC token endpoint (the
//! services' test provider), and over mutual TLS (the client's certificate from a PKCS12
//! keystore, no SASL) on the listener that requires one; without a certificate, a clear error.
//!
//! `#[ignore]`d: needs Kafka (`scripts/test.sh` starts it and sets `KAFKA_SASL_SSL_BROKERS`
//! and `KAFKA_TLS_CA` from `scripts/services.sh up`).
#![allow(clippy::unwrap_used)]

mod kafka_support;

use std::time::Duration;

use kafka_support::*;

const PARTITIONS: u32 = 4;
/// The one user of the services' SASL_SSL listener (`scripts/services.sh`).
const USER: &str = "sessionflow";
const PASSWORD: &str = "sessionflow-secret";

/// The services' address or file in environment variable `name` (`listener` names what needs
/// it, for the error when it is missing).
fn service_var(name: &str, listener: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: scripts/test.sh sets it from `scripts/services.sh up` (restart an older Kafka of the services: it has no {listener} listener)")
    })
}

/// The SASL_SSL bootstrap address and the PEM of the broker's certificate.
fn secure() -> (String, String) {
    let var = |name: &str| service_var(name, "SASL_SSL");
    (var("KAFKA_SASL_SSL_BROKERS"), var("KAFKA_TLS_CA"))
}

/// `-X` options for the SASL_SSL listener: SASL `mechanism` as `USER` with `password` (for
/// OAUTHBEARER an unsecured JWT naming `USER`, which the services' broker accepts), the
/// server's certificate checked against `ca` (none: against the system's CAs, which do not
/// know it).
fn security(mechanism: &str, password: &str, ca: Option<&str>) -> Vec<String> {
    let mut opts = vec![
        "security.protocol=SASL_SSL".to_string(),
        format!("sasl.mechanism={mechanism}"),
    ];
    if mechanism == "OAUTHBEARER" {
        opts.push("enable.sasl.oauthbearer.unsecure.jwt=true".to_string());
        opts.push(format!("sasl.oauthbearer.config=principal={USER}"));
    } else {
        opts.push(format!("sasl.username={USER}"));
        opts.push(format!("sasl.password={password}"));
    }
    if let Some(ca) = ca {
        opts.push(format!("ssl.ca.location={ca}"));
    }
    opts.into_iter().flat_map(|o| ["-X".to_string(), o]).collect()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_job_over_tls_and_sasl_plain_equals_replay() {
    job_over_sasl_equals_replay("PLAIN", "PLAIN");
}

/// SCRAM, as most managed Kafkas (MSK, Aiven, Redpanda Cloud) ask for: the password never
/// crosses the wire, and a wrong one fails the same way.
#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_job_over_tls_and_sasl_scram_equals_replay() {
    job_over_sasl_equals_replay("SCRAM-SHA-256", "SCRAM-SHA-512");
}

/// OAUTHBEARER with librdkafka's unsecured JWT (development setups; see the OIDC test below
/// for a managed Kafka's tokens).
#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_job_over_tls_and_sasl_oauthbearer_equals_replay() {
    job_over_sasl_equals_replay("OAUTHBEARER", "OAUTHBEARER");
}

/// The SSL listener with mutual TLS, as Aiven (by default) and MSK offer: the client proves
/// who it is with its certificate (here from a PKCS12 keystore; PEM files work the same with
/// `ssl.certificate.location` and `ssl.key.location`), no SASL.
#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_job_over_mutual_tls_equals_replay() {
    let (brokers, ca, keystore) = mutual();
    let opts = mutual_tls(&ca, Some(&keystore));
    job_over_tls_equals_replay(&brokers, opts.clone(), opts, None);
}

/// OAUTHBEARER with OIDC, as Confluent Cloud and other managed Kafkas offer: librdkafka gets a
/// signed token from the token endpoint (client-credentials grant, through libcurl) and the
/// broker verifies it against the provider's keys. The client secret is never printed.
#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_job_over_tls_and_oidc_tokens_equals_replay() {
    let (brokers, ca, token_url) = oidc();
    let opts = oidc_options(&ca, &token_url, PASSWORD);
    job_over_tls_equals_replay(&brokers, opts.clone(), opts, Some(PASSWORD));
}

/// A client secret the token endpoint refuses is a clear error naming the token request; an
/// unsigned token is refused by the broker.
#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn an_oidc_client_secret_the_provider_refuses_is_a_clear_error() {
    let (brokers, ca, token_url) = oidc();
    let error = failing_run(&brokers, oidc_options(&ca, &token_url, "not-the-secret"));
    assert!(
        error.contains("Failed to acquire SASL OAUTHBEARER token") && error.contains("invalid_client"),
        "the error does not name the refused token request: {error}"
    );
    assert!(!error.contains("not-the-secret"), "the secret was printed: {error}");
    // The listener verifies its tokens: an unsigned one (which the SASL_SSL listener takes)
    // is refused.
    let error = failing_run(&brokers, security("OAUTHBEARER", PASSWORD, Some(&ca)));
    assert!(
        error.contains("SASL authentication error"),
        "an unsigned token was not refused: {error}"
    );
}

/// The OIDC listener's bootstrap address, the PEM of the broker's certificate and the test
/// token endpoint's URL.
fn oidc() -> (String, String, String) {
    let var = |name: &str| service_var(name, "OIDC");
    (
        var("KAFKA_OIDC_BROKERS"),
        var("KAFKA_TLS_CA"),
        var("KAFKA_OIDC_TOKEN_URL"),
    )
}

/// `-X` options for the OIDC listener: client `USER` with `secret` at `token_url`.
fn oidc_options(ca: &str, token_url: &str, secret: &str) -> Vec<String> {
    [
        "security.protocol=SASL_SSL".to_string(),
        "sasl.mechanism=OAUTHBEARER".to_string(),
        "sasl.oauthbearer.method=oidc".to_string(),
        format!("sasl.oauthbearer.client.id={USER}"),
        format!("sasl.oauthbearer.client.secret={secret}"),
        format!("sasl.oauthbearer.token.endpoint.url={token_url}"),
        "sasl.oauthbearer.scope=kafka".to_string(),
        format!("ssl.ca.location={ca}"),
    ]
    .into_iter()
    .flat_map(|o| ["-X".to_string(), o])
    .collect()
}

/// The mutual-TLS listener's bootstrap address, the PEM of the broker's certificate, and the
/// client's PKCS12 keystore.
fn mutual() -> (String, String, String) {
    let var = |name: &str| service_var(name, "mutual-TLS");
    (
        var("KAFKA_SSL_BROKERS"),
        var("KAFKA_TLS_CA"),
        var("KAFKA_TLS_CLIENT_KEYSTORE"),
    )
}

/// `-X` options for the mutual-TLS listener: the server checked against `ca`, the client's
/// certificate from `keystore` (none: no client certificate).
fn mutual_tls(ca: &str, keystore: Option<&str>) -> Vec<String> {
    let mut opts = vec!["security.protocol=SSL".to_string(), format!("ssl.ca.location={ca}")];
    if let Some(k) = keystore {
        opts.push(format!("ssl.keystore.location={k}"));
        // The services' test keystore password (`scripts/services.sh`).
        opts.push("ssl.keystore.password=sessionflow".to_string());
    }
    opts.into_iter().flat_map(|o| ["-X".to_string(), o]).collect()
}

/// [`job_over_tls_equals_replay`] on the SASL_SSL listener: `generate` with SASL mechanism
/// `produce_with`, the job with `run_with`.
fn job_over_sasl_equals_replay(produce_with: &str, run_with: &str) {
    let (brokers, ca) = secure();
    job_over_tls_equals_replay(
        &brokers,
        security(produce_with, PASSWORD, Some(&ca)),
        security(run_with, PASSWORD, Some(&ca)),
        Some(PASSWORD),
    );
}

/// `generate` produces to `brokers` with the `-X` options `produce_opts`; `run` reads the
/// topic and produces its snapshots with `run_opts` (from a `--kafka-config` file): the job's
/// files equal replay's, every snapshot is on the topic, the committed offsets are the input's
/// end, and the job never prints `secret`.
fn job_over_tls_equals_replay(brokers: &str, produce_opts: Vec<String>, run_opts: Vec<String>, secret: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("secure");
    let snapshots = unique("secure-snapshots");
    let stream = args(&[
        "--events",
        "12000",
        "--partitions",
        "4",
        "--seed",
        "77",
        "--late",
        "0.01",
    ]);
    // The reference: the generator's files for the same flags, replayed.
    let mut files_args = args(&["generate", "--out-dir"]);
    files_args.push(dir.path().join("in").display().to_string());
    files_args.extend(stream.clone());
    run_ok(sessionflow(&files_args), Duration::from_secs(120));
    let inputs: Vec<_> = (0..PARTITIONS)
        .map(|p| dir.path().join("in").join(format!("p{p}.jsonl")))
        .collect();
    let reference = Files::new(dir.path(), "replay");
    replay(&inputs, &reference);
    // The same stream produced over TLS and SASL.
    let mut produce = args(&["generate", "--brokers", brokers, "--topic", &topic]);
    produce.extend(stream);
    produce.extend(produce_opts);
    run_ok(sessionflow(&produce), Duration::from_secs(120));
    // The job reads it and produces its snapshots over TLS and SASL too.
    let files = Files::new(dir.path(), "secure");
    let group = unique("secure");
    let mut run = args(&[
        "run",
        "--brokers",
        brokers,
        "--topic",
        &topic,
        "--group",
        &group,
        "--workers",
        "2",
        "--progress",
        "0",
        "--stop-at-end",
        "--snapshot-topic",
        &snapshots,
    ]);
    run.extend(files.flags());
    // The same options from a file (kcat's -F): `key=value` lines.
    let config = dir.path().join("client.properties");
    let lines: Vec<String> = run_opts.into_iter().filter(|a| a != "-X").collect();
    std::fs::write(&config, format!("# the TLS listener\n{}\n", lines.join("\n"))).unwrap();
    run.extend(["--kafka-config".to_string(), config.display().to_string()]);
    let out = run_ok(sessionflow(&run), Duration::from_secs(180));
    if let Some(secret) = secret {
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains(secret),
            "the password was printed"
        );
    }
    files.assert_same(&reference.read(), "over TLS and SASL");
    // Read back on the plaintext listener: every snapshot reached the topic, and the
    // committed offsets are the input's end offsets.
    let emitted = files.stats_json()["snapshots"].as_u64().unwrap();
    assert!(emitted > 0);
    assert_eq!(
        consume_all(&snapshots, PARTITIONS).len() as u64,
        emitted,
        "snapshots on the topic"
    );
    let ends = end_offsets(&topic, PARTITIONS);
    let commits = committed(&group, &topic, PARTITIONS);
    for (p, (c, end)) in commits.iter().zip(&ends).enumerate() {
        let (offset, _) = c.clone().unwrap_or_else(|| panic!("partition {p}: no commit"));
        assert_eq!(offset, *end, "partition {p}: committed offset");
    }
}

/// Runs a job on a missing topic with `opts` and a 5 s connect timeout; returns its final
/// error line after checking it failed.
fn failing_run(brokers: &str, opts: Vec<String>) -> String {
    let mut run = args(&[
        "run",
        "--brokers",
        brokers,
        "--topic",
        "sf-test-never-read",
        "--group",
        "sf-test-never-read",
        "--progress",
        "0",
        "--stop-at-end",
        "--connect-timeout",
        "5s",
    ]);
    run.extend(opts);
    let out = run_capture(&mut sessionflow(&run), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "the job ran:\n{stderr}");
    stderr
        .lines()
        .find(|l| l.starts_with("sessionflow: error:"))
        .unwrap_or_else(|| panic!("no final error line:\n{stderr}"))
        .to_string()
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_wrong_password_is_a_clear_error() {
    let (brokers, ca) = secure();
    for mechanism in ["PLAIN", "SCRAM-SHA-512"] {
        let error = failing_run(&brokers, security(mechanism, "not-the-password", Some(&ca)));
        assert!(
            error.contains("SASL authentication error"),
            "{mechanism}: the error does not name the refused authentication: {error}"
        );
        assert!(
            !error.contains("not-the-password"),
            "{mechanism}: the password was printed: {error}"
        );
    }
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_certificate_the_client_cannot_verify_is_a_clear_error() {
    let (brokers, _) = secure();
    let error = failing_run(&brokers, security("PLAIN", PASSWORD, None));
    assert!(
        error.contains("certificate verify failed"),
        "the error does not name the certificate check: {error}"
    );
}

/// The mutual-TLS listener refuses a client without a certificate: a clear error within
/// `--connect-timeout`, not a hang.
#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_client_without_a_certificate_is_refused_with_a_clear_error() {
    let (brokers, ca, _) = mutual();
    let error = failing_run(&brokers, mutual_tls(&ca, None));
    assert!(
        error.contains("alert bad certificate")
            && error.contains("the broker refused this client's certificate, or its lack of one"),
        "the error does not name the refused client certificate: {error}"
    );
}
