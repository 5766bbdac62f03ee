//! A notification and webhook receiver on loopback: records the body of every POST (as JSON,
//! or as a JSON string when it is not JSON) and answers 200.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use warp::Filter;

use super::eventually;

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let sink = bodies.clone();
        let route = warp::post()
            .and(warp::body::bytes())
            .map(move |body: bytes::Bytes| {
                let value = serde_json::from_slice(&body)
                    .unwrap_or_else(|_| json!(String::from_utf8_lossy(&body)));
                sink.lock().unwrap().push(value);
                "ok"
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        Receiver { addr, bodies }
    }

    pub fn url(&self) -> String {
        format!("http://{}/notify", self.addr)
    }

    /// Every body received so far, in order.
    pub fn messages(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }

    /// The first body of `event` (a generic message or webhook delivery) that `matches`,
    /// within 10 s.
    pub async fn expect(&self, event: &str, matches: impl Fn(&Value) -> bool) -> Value {
        eventually(10, || async {
            self.messages()
                .into_iter()
                .find(|b| b["event"] == event && matches(b))
        })
        .await
    }
}
