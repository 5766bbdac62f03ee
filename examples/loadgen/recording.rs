//! `recording`: a session of `RECORDING_MIB` MiB of terminal output (chunks of
//! `RECORDING_CHUNK` bytes, an approval asked and allowed every `APPROVAL_EVERY` chunks) is
//! written to the `village` binary (built next to this example, or `$VILLAGE_BIN`), then its
//! recording (`GET /sessions/{id}/recording`, asciicast v2) is read twice, each time as fast as
//! this client takes it (the first read also fills the store's page cache, bounded at
//! `server.storeCacheMb`, 32 MiB by default: it may grow by that much more). The server is a child process so that its resident memory (`VmRSS`) can be sampled
//! on its own: before the read and every few milliseconds during it. The recording is streamed
//! from the store a page at a time, so the server's memory must stay flat: growth under
//! `TARGET_RSS_GROWTH_MIB`. The client parses every line as it arrives and checks that the whole
//! output came back, byte for byte and chunk by chunk, with every event as a marker and `t`
//! never decreasing; it prints the read's throughput.
//!
//! ```text
//! cargo build --release --example loadgen --bin village
//! target/release/examples/loadgen recording
//! ```

use std::sync::atomic::AtomicBool;

use super::day::ServerProcess;
use super::*;

/// The session's output, in MiB.
const RECORDING_MIB: usize = 100;
/// Bytes of one output chunk.
const RECORDING_CHUNK: usize = 64 * 1024;
/// An approval is asked (and allowed) after every this many chunks.
const APPROVAL_EVERY: usize = 100;
/// How often the server's RSS is sampled while the recording is read.
const RSS_SAMPLE: Duration = Duration::from_millis(10);
/// The most the server's RSS may grow while it streams the recording (on the first read, plus
/// the store's page cache, which that read may fill up to its bound).
const TARGET_RSS_GROWTH_MIB: f64 = 32.0;
/// How many times the recording is read.
const READS: usize = 2;
/// The longest the read of the recording may take.
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Chunk `i`: coloured, numbered lines, exactly `RECORDING_CHUNK` bytes, with characters JSON
/// must escape (ESC, quotes, backslashes, CR).
fn chunk(i: usize) -> String {
    let mut out = String::with_capacity(RECORDING_CHUNK);
    let mut line = 0;
    while out.len() < RECORDING_CHUNK {
        let text = format!(
            "\u{1b}[32m[chunk {i:05} line {line:04}]\u{1b}[0m \"compiling\" crate\\module … ok\r\n"
        );
        line += 1;
        let room = RECORDING_CHUNK - out.len();
        if text.len() <= room {
            out.push_str(&text);
        } else {
            out.push_str(&"x".repeat(room));
        }
    }
    out
}

pub(crate) async fn recording_scenario() -> ExitCode {
    let Some(village) = village_binary() else {
        eprintln!(
            "the `recording` scenario runs the `village` binary: build it with \
             `cargo build --release --example loadgen --bin village`, or set VILLAGE_BIN"
        );
        return ExitCode::from(2);
    };
    let chunks = RECORDING_MIB * 1024 * 1024 / RECORDING_CHUNK;
    println!(
        "server: {} (a child process); a session of {RECORDING_MIB} MiB of output in {chunks} \
         chunks of {} KiB, an approval asked and allowed every {APPROVAL_EVERY} chunks",
        village.display(),
        RECORDING_CHUNK / 1024
    );
    let scratch = scratch_dir(&std::env::temp_dir(), "recording");
    let data_dir = scratch.path().join("data");
    let server =
        ServerProcess::start(&village, &data_dir, &scratch.path().join("server.log")).await;
    let pid = server.pid();
    let token = server.admin_token.clone();
    let mut client = Client::connect(server.addr, 0).await;

    // 1. Write the session.
    let created = client
        .post_expecting(
            &Call::new(
                "/api/v1/sessions",
                &token,
                &json!({"orgId": "bench", "providerId": "codex",
                        "repo": {"url": "https://github.com/acme/app.git"}, "task": "recording"}),
            ),
            StatusCode::CREATED,
        )
        .await;
    let created: Value = serde_json::from_slice(&created).unwrap();
    let id = created["data"]["sessionId"].as_str().unwrap().to_owned();
    let session = |p: &str| format!("/api/v1/sessions/{id}/{p}");
    let state = |s: &str| Call::new(session("state"), &token, &json!({"state": s}));
    client
        .post_expecting(&state("RUNNING"), StatusCode::OK)
        .await;
    let rss_start = process_mib(pid, "VmRSS");
    let began = Instant::now();
    let mut written = 0usize;
    let mut approvals = 0usize;
    for i in 0..chunks {
        let data = chunk(i);
        let body = json!({"stream": if i % 10 == 9 { "stderr" } else { "stdout" },
                          "data": data, "offset": written});
        client
            .post_expecting(&Call::new(session("output"), &token, &body), StatusCode::OK)
            .await;
        written += data.len();
        if (i + 1) % APPROVAL_EVERY == 0 {
            let asked = client
                .post_expecting(
                    &Call::new(
                        session("approvals"),
                        &token,
                        &json!({"action": "merge", "description": format!("Merge after chunk {i}")}),
                    ),
                    StatusCode::CREATED,
                )
                .await;
            let asked: Value = serde_json::from_slice(&asked).unwrap();
            let approval = asked["data"]["approvalId"].as_str().unwrap();
            client
                .post_expecting(
                    &Call::new(
                        session(&format!("approvals/{approval}/resolve")),
                        &token,
                        &json!({"decision": "allow"}),
                    ),
                    StatusCode::OK,
                )
                .await;
            approvals += 1;
        }
    }
    client
        .post_expecting(&state("COMPLETED"), StatusCode::OK)
        .await;
    let write_secs = began.elapsed().as_secs_f64();
    println!(
        "  written: {:.1} MiB in {chunks} chunks and {approvals} approvals in {write_secs:.1} s \
         ({:.1} MiB/s); server RSS {rss_start:.1} → {:.1} MiB",
        written as f64 / 1048576.0,
        written as f64 / 1048576.0 / write_secs,
        process_mib(pid, "VmRSS")
    );
    // The events the recording must mark.
    let mut events = 0usize;
    let mut after = 0u64;
    loop {
        let page = client
            .get_ok(
                &format!("{}?afterSeq={after}&limit=1000", session("events")),
                &token,
            )
            .await;
        let page: Value = serde_json::from_slice(&page).unwrap();
        let items = page["data"]["items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if items.is_empty() {
            break;
        }
        events += items.len();
        after = items.last().unwrap()["seq"].as_u64().unwrap();
    }

    // 2. Read the recording twice, sampling the server's RSS meanwhile. The first read also
    // fills the store's page cache up to its bound (`server.storeCacheMb`); the second finds it
    // full, as on a server that has been running a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cache_mib = village::store::DEFAULT_CACHE_BYTES as f64 / 1048576.0;
    let mut reads = Vec::new();
    for round in 1..=READS {
        let rss_before = process_mib(pid, "VmRSS");
        let sampling = Arc::new(AtomicBool::new(true));
        let sampler = {
            let sampling = sampling.clone();
            tokio::spawn(async move {
                let mut peak = f64::NAN;
                let mut samples = 0usize;
                while sampling.load(Ordering::Relaxed) {
                    let rss = process_mib(pid, "VmRSS");
                    peak = if peak.is_nan() { rss } else { peak.max(rss) };
                    samples += 1;
                    tokio::time::sleep(RSS_SAMPLE).await;
                }
                (peak, samples)
            })
        };
        let began = Instant::now();
        let read = tokio::time::timeout(
            READ_TIMEOUT,
            read_recording(server.addr, &token, &session("recording")),
        )
        .await
        .unwrap_or_else(|_| panic!("the recording was not read in {READ_TIMEOUT:?}"));
        let read_secs = began.elapsed().as_secs_f64();
        sampling.store(false, Ordering::Relaxed);
        let (rss_peak, samples) = sampler.await.unwrap();
        let rss_after = process_mib(pid, "VmRSS");
        let growth = rss_peak - rss_before;
        // The first read may also fill the page cache, which is bounded on its own.
        let allowed = TARGET_RSS_GROWTH_MIB + if round == 1 { cache_mib } else { 0.0 };
        println!(
            "  read {round}: {:.1} MiB of asciicast ({} lines: {} output, {} markers) in \
             {read_secs:.2} s: {:.1} MiB/s of file, {:.1} MiB/s of output",
            read.bytes as f64 / 1048576.0,
            read.lines,
            read.output_lines,
            read.markers,
            read.bytes as f64 / 1048576.0 / read_secs,
            read.output_bytes as f64 / 1048576.0 / read_secs,
        );
        println!(
            "    server RSS: {rss_before:.1} MiB before, peak {rss_peak:.1} MiB during it \
             ({samples} samples every {} ms), {rss_after:.1} MiB after: growth {growth:+.1} MiB \
             (target < {allowed:.0} MiB{})",
            RSS_SAMPLE.as_millis(),
            if round == 1 {
                format!(
                    ": {TARGET_RSS_GROWTH_MIB:.0} + the page cache's {cache_mib:.0} it may fill"
                )
            } else {
                String::new()
            }
        );
        let whole = read.output_bytes == written
            && read.output_lines == chunks
            && read.chunks_intact
            && read.markers == events
            && read.approval_markers == 2 * approvals
            && read.monotonic
            && read.header_ok;
        println!(
            "    content: {} of {} output bytes, {} of {chunks} chunks intact and in order: {}; \
             {} of {events} events as markers ({} approval markers); t never decreases: {}; \
             header: {}",
            read.output_bytes,
            written,
            read.output_lines,
            read.chunks_intact,
            read.markers,
            read.approval_markers,
            read.monotonic,
            read.header_ok
        );
        reads.push((
            whole,
            growth,
            allowed,
            samples,
            read.bytes as f64 / 1048576.0 / read_secs,
        ));
    }
    let hwm = process_mib(pid, "VmHWM");
    println!("  server VmHWM over the whole run: {hwm:.1} MiB");
    server.stop().await;
    drop(scratch);

    let load_ok = load_check(
        written == chunks * RECORDING_CHUNK && approvals == chunks / APPROVAL_EVERY,
        format!(
            "{:.1} MiB written in {chunks} chunks with {approvals} approvals",
            written as f64 / 1048576.0
        ),
    ) && reads.iter().enumerate().all(|(i, r)| {
        load_check(
            r.3 >= 10,
            format!("{} RSS samples during read {}", r.3, i + 1),
        )
    });
    let mut pass = true;
    for (i, (whole, growth, allowed, _, rate)) in reads.iter().enumerate() {
        let ok = *whole && growth < allowed;
        pass &= ok;
        println!(
            "recording of {RECORDING_MIB} MiB, read {}: whole {}, RSS growth {growth:+.1} MiB < \
             {allowed:.0} MiB, {rate:.1} MiB/s: {}",
            i + 1,
            if *whole { "yes" } else { "NO" },
            judged(load_ok, ok)
        );
    }
    exit_code(load_ok && pass)
}

/// What the client saw of the recording.
#[derive(Default)]
struct ReadRecording {
    bytes: usize,
    lines: usize,
    output_lines: usize,
    output_bytes: usize,
    markers: usize,
    approval_markers: usize,
    monotonic: bool,
    chunks_intact: bool,
    header_ok: bool,
}

/// Reads the recording frame by frame (never the whole body at once) and checks each line.
async fn read_recording(addr: SocketAddr, token: &str, path: &str) -> ReadRecording {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::get(path)
        .header(HOST, addr.to_string())
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[CONTENT_TYPE],
        "application/x-asciicast",
        "content type"
    );
    let mut body = response.into_body();
    let mut seen = ReadRecording {
        monotonic: true,
        chunks_intact: true,
        ..Default::default()
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut last_t = 0.0f64;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        let Some(data) = frame.data_ref() else {
            continue;
        };
        seen.bytes += data.len();
        pending.extend_from_slice(data);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|b| *b == b'\n') {
            let line = &pending[start..start + end];
            start += end + 1;
            seen.lines += 1;
            if seen.lines == 1 {
                let header: Value = serde_json::from_slice(line).unwrap();
                seen.header_ok = header["version"] == 2 && header["width"] == 120;
                continue;
            }
            let (t, code, text): (f64, String, String) = serde_json::from_slice(line).unwrap();
            if t < last_t {
                seen.monotonic = false;
            }
            last_t = t;
            match code.as_str() {
                "o" => {
                    if text != chunk(seen.output_lines) {
                        seen.chunks_intact = false;
                    }
                    seen.output_lines += 1;
                    seen.output_bytes += text.len();
                }
                "m" => {
                    seen.markers += 1;
                    if text.starts_with("approval") {
                        seen.approval_markers += 1;
                    }
                }
                _ => seen.monotonic = false,
            }
        }
        pending.drain(..start);
    }
    assert!(
        pending.is_empty(),
        "the recording ends in the middle of a line"
    );
    seen
}
