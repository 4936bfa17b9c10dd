//! The in-test webhook receiver: an actix-web server on 127.0.0.1:0 that
//! records each request (method, path, headers, raw body, arrival time) and
//! answers from a per-request script; and a signature check in Python.
use std::collections::VecDeque;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::Value;

/// How the receiver answers one request.
#[derive(Clone)]
pub enum Answer {
    Status(u16),
    /// Status with `Retry-After` in seconds.
    RetryAfter(u16, u64),
    /// Status with `Retry-After` as an HTTP date this many seconds ahead.
    RetryAfterDate(u16, i64),
    /// A redirect to this path of the receiver.
    Redirect(u16, &'static str),
    /// Answer 200, but only after this long.
    Hang(Duration),
    /// Answer 200 once the test lets it go ([`Receiver::release`]).
    Hold,
}

#[derive(Debug, Clone)]
pub struct Hit {
    pub path: String,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Hit {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
    pub fn id(&self) -> &str {
        self.header("webhook-id")
    }
}

struct Shared {
    hits: Mutex<Vec<Hit>>,
    script: Mutex<VecDeque<Answer>>,
    /// One permit per held request the test has let go.
    gate: tokio::sync::Semaphore,
}

/// An HTTP server on 127.0.0.1:0 that records every request and answers
/// from a script (then 200).
pub struct Receiver {
    base: String,
    shared: Arc<Shared>,
}

async fn record(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    shared.hits.lock().unwrap().push(Hit {
        path: req.path().to_owned(),
        method: req.method().to_string(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect(),
        body: body.to_vec(),
        at: Instant::now(),
    });
    let answer = shared.script.lock().unwrap().pop_front();
    let status = |s: u16| HttpResponse::build(actix_web::http::StatusCode::from_u16(s).unwrap());
    match answer.unwrap_or(Answer::Status(200)) {
        Answer::Status(s) => status(s).finish(),
        Answer::RetryAfter(s, secs) => status(s)
            .insert_header(("Retry-After", secs.to_string()))
            .finish(),
        Answer::RetryAfterDate(s, ahead) => {
            let at = chrono::Utc::now() + chrono::Duration::seconds(ahead);
            status(s)
                .insert_header((
                    "Retry-After",
                    at.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
                ))
                .finish()
        }
        Answer::Redirect(s, to) => {
            let host = req.connection_info().host().to_owned();
            status(s)
                .insert_header(("Location", format!("http://{host}{to}")))
                .finish()
        }
        Answer::Hang(d) => {
            tokio::time::sleep(d).await;
            HttpResponse::Ok().finish()
        }
        Answer::Hold => {
            shared.gate.acquire().await.unwrap().forget();
            HttpResponse::Ok().finish()
        }
    }
}

impl Receiver {
    pub async fn start(script: Vec<Answer>) -> Receiver {
        Receiver::on(TcpListener::bind("127.0.0.1:0").unwrap(), script)
    }

    fn on(listener: TcpListener, script: Vec<Answer>) -> Receiver {
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            hits: Mutex::new(Vec::new()),
            script: Mutex::new(script.into()),
            gate: tokio::sync::Semaphore::new(0),
        });
        let data = web::Data::from(shared.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(record))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        actix_rt::spawn(server);
        Receiver {
            base: format!("http://127.0.0.1:{port}"),
            shared,
        }
    }

    pub fn url(&self) -> String {
        format!("{}/hook", self.base)
    }

    /// Let `n` held requests answer.
    pub fn release(&self, n: usize) {
        self.shared.gate.add_permits(n);
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().unwrap().clone()
    }

    /// Wait (up to 30 s) until `pred` holds for the recorded hits.
    pub async fn wait(&self, what: &str, pred: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let hits = self.hits();
            if pred(&hits) {
                return hits;
            }
            if Instant::now() > deadline {
                let ids: Vec<&str> = hits.iter().map(Hit::id).collect();
                panic!("timed out waiting for {what}; got {ids:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn wait_count(&self, n: usize) -> Vec<Hit> {
        self.wait(&format!("{n} requests"), |h| h.len() >= n).await
    }
}

/// Webhook ids in order of first arrival.
pub fn firsts(hits: &[Hit]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for h in hits {
        if !seen.iter().any(|s| s == h.id()) {
            seen.push(h.id().to_owned());
        }
    }
    seen
}

pub fn keys(job: &str, states: &[&str]) -> Vec<String> {
    states.iter().map(|s| format!("{job}:{s}")).collect()
}

/// Verify both signature headers of `hit` for `secrets` with Python's
/// hmac/hashlib/base64: an implementation this project did not write.
pub fn verify_with_python(hit: &Hit, secrets: &[&str]) {
    const SCRIPT: &str = r#"
import base64, hashlib, hmac, sys, time
body = sys.stdin.buffer.read()
msg_id, ts, standard, foreman = sys.argv[1:5]
secrets = sys.argv[5:]
assert abs(int(ts) - time.time()) < 300, "timestamp is now"
standard = standard.split(" ")
foreman = foreman.split(",")
assert len(standard) == len(secrets) == len(foreman), (standard, foreman)
for s in secrets:
    key = base64.b64decode(s[6:]) if s.startswith("whsec_") else s.encode()
    signed = msg_id.encode() + b"." + ts.encode() + b"." + body
    want = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert want in standard, ("webhook-signature", s, want, standard)
    want = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
    assert want in foreman, ("X-Foreman-Signature", s, want, foreman)
print("verified")
"#;
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .args([
            hit.id(),
            hit.header("webhook-timestamp"),
            hit.header("webhook-signature"),
            hit.header("x-foreman-signature"),
        ])
        .args(secrets)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(&hit.body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("verified"),
        "python rejected the signatures of {}: {}",
        hit.id(),
        String::from_utf8_lossy(&out.stderr)
    );
}
