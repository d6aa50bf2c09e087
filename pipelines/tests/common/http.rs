//! A meterflow process serving its HTTP API, and a blocking client of it (the API tests').

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// A meterflow process serving the API; killed when dropped.
pub struct Engine {
    child: Child,
    api: Client,
    stderr: mpsc::Receiver<String>,
}

/// An HTTP client of one server, with or without a token.
pub struct Client {
    pub base: String,
    pub token: Option<String>,
}

impl Engine {
    /// `meterflow serve PIPELINE` on a fresh store in `dir`, on a free port, with `workers`
    /// workers and, when given, `token` as its only accepted token.
    pub fn serve(
        dir: &std::path::Path,
        pipeline: &std::path::Path,
        workers: &str,
        token: Option<&str>,
    ) -> Engine {
        let (store, token_file) = (dir.join("store"), dir.join("token"));
        let mut args = vec![
            "serve".to_owned(),
            pipeline.display().to_string(),
            "--store".to_owned(),
            store.display().to_string(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--workers".to_owned(),
            workers.to_owned(),
        ];
        if let Some(t) = token {
            std::fs::write(&token_file, t).unwrap();
            args.extend(["--token-file".to_owned(), token_file.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Engine::start(&args, token)
    }

    /// Starts `meterflow ARGS` (which must listen) and waits until it says where.
    pub fn start(args: &[&str], token: Option<&str>) -> Engine {
        let mut child = Command::new(env!("CARGO_BIN_EXE_meterflow"))
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("meterflow starts");
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut seen = Vec::new();
        let base = loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    if let Some(at) = line.find("http://") {
                        let addr = line[at..].split_whitespace().next().unwrap();
                        break addr.to_owned();
                    }
                    seen.push(line);
                }
                Err(_) => panic!("meterflow did not start listening: {}", seen.join("\n")),
            }
        };
        Engine {
            child,
            api: Client {
                base,
                token: token.map(str::to_owned),
            },
            stderr: rx,
        }
    }

    /// SIGTERM, then the exit status and everything it printed on stderr.
    pub fn terminate(mut self) -> (bool, String) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = self.child.wait().unwrap();
        let mut err = Vec::new();
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            err.push(line);
        }
        (status.success(), err.join("\n"))
    }
}

impl std::ops::Deref for Engine {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.api
    }
}

impl Client {
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::blocking::RequestBuilder {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut rb = client.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        rb
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let response = self.request(reqwest::Method::GET, path).send().unwrap();
        let status = response.status().as_u16();
        let text = response.text().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// POSTs `body` to Gnocchi's batch-by-resource route (without create_metrics); the status.
    pub fn batch(&self, body: &Value) -> u16 {
        self.post("/v1/batch/resources/metrics/measures", &body.to_string())
            .0
    }

    pub fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body))
    }

    /// Any request, with a JSON body or none: the status and the body (JSON if it is).
    pub fn call(&self, method: reqwest::Method, path: &str, body: Option<&str>) -> (u16, Value) {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        let text = response.text().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `/metrics` until `name` reaches `at_least`.
pub fn wait_for(engine: &Engine, name: &str, at_least: f64) {
    for _ in 0..600 {
        let (_, body) = engine.get("/metrics");
        let value = body
            .as_str()
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse::<f64>().ok());
        if value.is_some_and(|v| v >= at_least) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{name} never reached {at_least}");
}
