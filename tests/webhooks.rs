//! Webhooks against a small HTTP receiver on loopback (docs/api.md, section 8).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{BinaryServer, Client, TestServer, eventually, tmp_dir};
use serde_json::{Value, json};
use warp::Filter;

/// These tests run their receivers on loopback, which webhooks may reach only when the admin
/// allows private targets.
const LOCAL_RECEIVERS: &str = "[webhooks]\nallowPrivateTargets = true\n";

/// Records every POST; answers 500 to the first `fail_first` of them.
#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<(warp::http::HeaderMap, String)>>>,
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        let hits: Arc<Mutex<Vec<(warp::http::HeaderMap, String)>>> = Arc::default();
        let failures_left = Arc::new(AtomicUsize::new(fail_first));
        let sink = hits.clone();
        let route = warp::post()
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .map(move |headers, body: bytes::Bytes| {
                sink.lock()
                    .unwrap()
                    .push((headers, String::from_utf8_lossy(&body).to_string()));
                let failing = failures_left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                let status = if failing { 500 } else { 200 };
                warp::reply::with_status("ok", warp::http::StatusCode::from_u16(status).unwrap())
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        Receiver { addr, hits }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/village", self.addr)
    }

    fn count(&self) -> usize {
        self.hits.lock().unwrap().len()
    }

    fn bodies(&self) -> Vec<Value> {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| serde_json::from_str(b).unwrap())
            .collect()
    }
}

async fn add_hook(c: &Client, body: Value) -> Value {
    let r = c.post("/api/v1/webhooks", body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.data().clone()
}

#[tokio::test]
async fn signed_deliveries_are_retried_until_they_land_once() {
    let s = TestServer::start(LOCAL_RECEIVERS).await;
    let admin = s.admin();
    let acme = admin.with_token(&admin.create_token("org", Some("acme")).await);
    let receiver = Receiver::start(3).await;
    let hook = add_hook(
        &acme,
        json!({"url": receiver.url(), "events": ["session_created"], "secret": "s3cr3t"}),
    )
    .await;
    assert_eq!(hook["orgId"], "acme");
    assert!(hook.get("secret").is_none(), "the secret is never returned");
    let id = admin.create_session("acme").await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    admin.create_session("globex").await; // another org: not for this hook

    // Attempt 1 fails at once; the retries wait 1 s, 2 s, 4 s.
    eventually(5, || async { (receiver.count() == 1).then_some(()) }).await;
    for (wait, attempts) in [(1_000, 2), (2_000, 3), (4_000, 4)] {
        s.advance(wait - 1);
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert_eq!(receiver.count(), attempts - 1, "retried too early");
        s.advance(1);
        eventually(5, || async { (receiver.count() == attempts).then_some(()) }).await;
    }
    // The receiver has the 4th attempt; wait until the dispatcher has recorded its answer too
    // before moving the clock on (else the clock could overtake the attempt still in flight).
    let log_path = format!(
        "/api/v1/webhooks/{}/deliveries",
        hook["webhookId"].as_str().unwrap()
    );
    eventually(5, || async {
        let log = acme.get(&log_path).await;
        (log.data()["items"][0]["status"] == "delivered").then_some(())
    })
    .await;
    s.advance(60_000);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(receiver.count(), 4, "delivered again after a 2xx");

    let hits = receiver.hits.lock().unwrap().clone();
    let first: Value = serde_json::from_str(&hits[0].1).unwrap();
    assert_eq!(first["event"], "session_created");
    assert_eq!(first["orgId"], "acme");
    assert_eq!(first["data"]["sessionId"], id.as_str());
    assert!(first["id"].is_string());
    for (headers, body) in &hits {
        assert_eq!(
            body, &hits[0].1,
            "every attempt carries the same body and id"
        );
        assert_eq!(headers["x-village-event"], "session_created");
        let sig = headers["x-village-signature"].to_str().unwrap();
        assert_eq!(sig, village::webhooks::signature("s3cr3t", body.as_bytes()));
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
    }
    assert!(receiver.bodies().iter().all(|b| b["orgId"] == "acme"));

    let log = acme.get(&log_path).await;
    let d = &log.data()["items"][0];
    assert_eq!(d["status"], "delivered");
    assert_eq!(d["attempts"], 4);
    assert_eq!(d["lastStatusCode"], 200);
    assert_eq!(d["deliveryId"], first["id"]);
    s.stop().await;
}

#[tokio::test]
async fn registration_is_validated_and_scoped() {
    let s = TestServer::start(LOCAL_RECEIVERS).await;
    let admin = s.admin();
    let acme = admin.with_token(&admin.create_token("org", Some("acme")).await);
    let globex = admin.with_token(&admin.create_token("org", Some("globex")).await);
    let r = admin
        .post(
            "/api/v1/webhooks",
            json!({"url": "ftp://ci.example/x", "events": ["nope"]}),
        )
        .await;
    r.expect_error(400, "VALIDATION_ERROR");
    assert_eq!(r.issue_paths(), ["url", "events[0]"]);
    let r = admin
        .post("/api/v1/webhooks", json!({"url": "http://127.0.0.1:9/x"}))
        .await;
    assert_eq!(r.issue_paths(), ["events"]);
    acme.post(
        "/api/v1/webhooks",
        json!({"url": "http://127.0.0.1:9/x", "events": ["*"], "orgId": "globex"}),
    )
    .await
    .expect_error(403, "FORBIDDEN");
    let hook = add_hook(
        &acme,
        json!({"url": "http://127.0.0.1:9/x", "events": ["*"]}),
    )
    .await;
    let all = add_hook(
        &admin,
        json!({"url": "http://127.0.0.1:9/y", "events": ["runner_offline"]}),
    )
    .await;
    assert!(all.get("orgId").is_none());
    let id = hook["webhookId"].as_str().unwrap();
    assert_eq!(
        acme.get("/api/v1/webhooks").await.data()["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        admin.get("/api/v1/webhooks").await.data()["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        globex.get("/api/v1/webhooks").await.data()["items"],
        json!([])
    );
    globex
        .get(&format!("/api/v1/webhooks/{id}/deliveries"))
        .await
        .expect_error(404, "WEBHOOK_NOT_FOUND");
    globex
        .delete(&format!("/api/v1/webhooks/{id}"))
        .await
        .expect_error(404, "WEBHOOK_NOT_FOUND");
    assert_eq!(
        acme.delete(&format!("/api/v1/webhooks/{id}")).await.status,
        200
    );
    acme.get(&format!("/api/v1/webhooks/{id}/deliveries"))
        .await
        .expect_error(404, "WEBHOOK_NOT_FOUND");
    s.stop().await;
}

#[tokio::test]
async fn a_restart_between_attempts_still_delivers() {
    let receiver = Receiver::start(1).await;
    let (_keep, dir) = tmp_dir();
    let mut server =
        BinaryServer::spawn(&dir, &[("VILLAGE_WEBHOOKS_ALLOW_PRIVATE_TARGETS", "true")]);
    let admin = server.admin();
    add_hook(
        &admin,
        json!({"url": receiver.url(), "events": ["session_created"]}),
    )
    .await;
    admin.create_session("acme").await;
    eventually(10, || async { (receiver.count() == 1).then_some(()) }).await;
    // The first attempt failed; the retry is due in 1 s. Stop hard before it.
    server.kill9();
    let again = BinaryServer::spawn(&dir, &[("VILLAGE_WEBHOOKS_ALLOW_PRIVATE_TARGETS", "true")]);
    eventually(15, || async { (receiver.count() >= 2).then_some(()) }).await;
    let bodies = receiver.bodies();
    assert_eq!(
        bodies[0]["id"], bodies[1]["id"],
        "the retry is the same delivery"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        receiver.count(),
        2,
        "delivered more than once after success"
    );
    drop(again);
}

/// An org token must not be able to point a webhook at the server's own network and read the
/// answers back: loopback, private, link-local (cloud metadata) and other reserved addresses are
/// refused when the webhook is registered, in every spelling, unless the admin allows them.
#[tokio::test]
async fn webhooks_to_private_addresses_are_refused_unless_the_admin_allows_them() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    for host in [
        "127.0.0.1:8080",
        "localhost",
        "169.254.169.254",
        "10.0.0.1",
        "192.168.1.20:9000",
        "0.0.0.0",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[fd00::1]",
    ] {
        let r = admin
            .post(
                "/api/v1/webhooks",
                json!({"url": format!("http://{host}/hook"), "events": ["*"]}),
            )
            .await;
        r.expect_error(400, "VALIDATION_ERROR");
        assert_eq!(r.issue_paths(), ["url"], "{host}: {}", r.text);
        assert!(r.text.contains("allowPrivateTargets"), "{}", r.text);
    }
    let listed = admin.get("/api/v1/webhooks").await;
    assert_eq!(listed.data()["items"], json!([]), "{}", listed.text);
    s.stop().await;

    let allowed = TestServer::start(LOCAL_RECEIVERS).await;
    let r = allowed
        .admin()
        .post(
            "/api/v1/webhooks",
            json!({"url": "http://127.0.0.1:9/hook", "events": ["*"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    allowed.stop().await;
}

/// A receiver that answers with a body that never ends: the delivery reads at most 64 KiB of it
/// and records the status, instead of reading until its timeout (or memory) runs out.
#[tokio::test]
async fn an_endless_answer_is_cut_off_and_the_delivery_recorded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                let chunk = format!("{:x}\r\n{}\r\n", 4096, "x".repeat(4096));
                // Endless, until the client hangs up.
                while sock.write_all(chunk.as_bytes()).await.is_ok() {}
            });
        }
    });
    let s = TestServer::start(LOCAL_RECEIVERS).await;
    let admin = s.admin();
    let hook = add_hook(
        &admin,
        json!({"url": format!("http://{addr}/hook"), "events": ["session_created"]}),
    )
    .await;
    admin.create_session("acme").await;
    let id = hook["webhookId"].as_str().unwrap().to_string();
    let delivery = common::eventually(5, || {
        let admin = admin.clone();
        let id = id.clone();
        async move {
            let d = admin
                .get(&format!("/api/v1/webhooks/{id}/deliveries"))
                .await;
            let first = d.data()["items"]
                .as_array()
                .and_then(|a| a.first().cloned())?;
            (first["status"] == "delivered").then_some(first)
        }
    })
    .await;
    assert_eq!(delivery["lastStatusCode"], 200, "{delivery}");
    s.stop().await;
}

#[tokio::test]
async fn an_org_may_register_only_so_many_webhooks() {
    let s = TestServer::start(&format!("{LOCAL_RECEIVERS}maxPerOrg = 2\n")).await;
    let admin = s.admin();
    let acme = admin.with_token(&admin.create_token("org", Some("acme")).await);
    let globex = admin.with_token(&admin.create_token("org", Some("globex")).await);
    let receiver = Receiver::start(0).await;
    let body = json!({"url": receiver.url(), "events": ["*"]});
    let first = add_hook(&acme, body.clone()).await;
    add_hook(&acme, body.clone()).await;
    let refused = acme.post("/api/v1/webhooks", body.clone()).await;
    refused.expect_error(429, "WEBHOOK_LIMIT_EXCEEDED");
    assert!(
        refused.text.contains("webhooks.maxPerOrg"),
        "{}",
        refused.text
    );
    // Another org has its own allowance; a deleted webhook frees a place.
    add_hook(&globex, body.clone()).await;
    let id = first["webhookId"].as_str().unwrap();
    assert_eq!(
        acme.delete(&format!("/api/v1/webhooks/{id}")).await.status,
        200
    );
    add_hook(&acme, body).await;
    let listed = acme.get("/api/v1/webhooks").await;
    assert_eq!(listed.data()["items"].as_array().unwrap().len(), 2);
}

/// One org's receiver that never answers holds at most its share of the delivery slots: another
/// org's delivery goes out at once instead of waiting for the hung attempts to time out.
#[tokio::test]
async fn a_hung_receiver_does_not_hold_up_other_orgs_deliveries() {
    let s = TestServer::start(&format!(
        "{LOCAL_RECEIVERS}[sessions]\nmaxSessionsPerOrg = 100\n"
    ))
    .await;
    let admin = s.admin();
    let acme = admin.with_token(&admin.create_token("org", Some("acme")).await);
    let globex = admin.with_token(&admin.create_token("org", Some("globex")).await);
    // Accepts connections and never answers (each attempt waits for its timeout).
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = hung.accept().await {
            holder.lock().unwrap().push(socket);
        }
    });
    let events = json!(["session_created"]);
    add_hook(
        &acme,
        json!({"url": format!("http://{hung_addr}/hook"), "events": events}),
    )
    .await;
    let receiver = Receiver::start(0).await;
    add_hook(&globex, json!({"url": receiver.url(), "events": events})).await;
    for _ in 0..30 {
        admin.create_session("acme").await;
    }
    // Acme's attempts have taken what they may.
    eventually(5, || async {
        (held.lock().unwrap().len() >= 4).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    admin.create_session("globex").await;
    eventually(5, || async { (receiver.count() == 1).then_some(()) }).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "globex waited {:?} behind acme's hung receiver",
        started.elapsed()
    );
    assert_eq!(
        held.lock().unwrap().len(),
        4,
        "acme's hung receiver holds more than its share of the slots"
    );
}

/// A certificate authority and a certificate it signed for 127.0.0.1.
struct TestPki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

impl TestPki {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let private = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], private)
        .unwrap();
        TestPki {
            ca_pem: ca_cert.pem(),
            server: Arc::new(server),
        }
    }
}

/// An `https://` receiver on loopback: records each request's body, answers 200.
async fn tls_receiver(pki: &TestPki) -> (String, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/hooks", listener.local_addr().unwrap());
    let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server.clone());
    let sink = bodies.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, sink) = (acceptor.clone(), sink.clone());
            tokio::spawn(async move {
                // A client that does not trust the certificate gives up in the handshake.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                let body = loop {
                    let Ok(n) = tls.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = common::content_length(head).unwrap_or(0);
                        if body.len() >= length {
                            break body.to_string();
                        }
                    }
                };
                sink.lock().unwrap().push(body);
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (url, bodies)
}

#[tokio::test]
async fn https_targets_are_reached_only_with_a_trusted_certificate() {
    let pki = TestPki::new();
    let (url, bodies) = tls_receiver(&pki).await;

    // Not trusted (a private CA the server was not told of): every attempt fails in the
    // handshake, nothing is delivered.
    let s = TestServer::start(LOCAL_RECEIVERS).await;
    let admin = s.admin();
    let hook = add_hook(&admin, json!({"url": url, "events": ["session_created"]})).await;
    let hook_id = hook["webhookId"].as_str().unwrap().to_string();
    admin.create_session("acme").await;
    let attempt = eventually(10, || {
        let admin = admin.clone();
        let hook_id = hook_id.clone();
        async move {
            let d = admin
                .get(&format!("/api/v1/webhooks/{hook_id}/deliveries"))
                .await;
            let first = d.data()["items"][0].clone();
            (first["attempts"].as_u64() >= Some(1)).then_some(first)
        }
    })
    .await;
    assert_eq!(attempt["status"], "pending", "{attempt}");
    assert!(attempt.get("lastStatusCode").is_none(), "{attempt}");
    assert!(bodies.lock().unwrap().is_empty());
    s.stop().await;

    // Trusted through `webhooks.caFile`: a Slack notification arrives over TLS.
    let (_dir, path) = common::tmp_dir();
    let ca_file = path.join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let s = TestServer::start(&format!(
        "{LOCAL_RECEIVERS}caFile = {:?}\n",
        ca_file.display().to_string()
    ))
    .await;
    let admin = s.admin();
    let r = admin
        .put(
            "/api/v1/orgs/acme/notifications",
            json!({"targets": [{"id": "slack", "kind": "slack", "url": url, "events": ["session_created"]}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = admin.create_session("acme").await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let body = eventually(10, || {
        let bodies = bodies.clone();
        async move { bodies.lock().unwrap().first().cloned() }
    })
    .await;
    let message: Value = serde_json::from_str(&body).unwrap();
    assert!(
        message["text"]
            .as_str()
            .unwrap()
            .contains("session created"),
        "{message}"
    );
    assert!(body.contains(&id), "{body}");
    s.stop().await;
}

#[test]
fn a_ca_file_that_holds_no_certificate_stops_the_start() {
    let (_dir, path) = common::tmp_dir();
    let ca_file = path.join("ca.pem");
    std::fs::write(&ca_file, "not a certificate\n").unwrap();
    let err = village::webhooks::client::tls_config(Some(&ca_file)).unwrap_err();
    assert!(err.contains("no PEM certificate"), "{err}");
    let missing =
        village::webhooks::client::tls_config(Some(&path.join("absent.pem"))).unwrap_err();
    assert!(missing.contains("absent.pem"), "{missing}");
}
