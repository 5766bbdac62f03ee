//! The `pty` adapter: any command in a pseudo-terminal. Its bytes go to the dashboard as they
//! come, keystrokes go to it as they are typed, and its exit decides the outcome. It asks for
//! approvals itself with `village approval request`, which reaches the runner over its socket.

use std::io::{Read, Write};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use super::{Adapter, AgentContext, AgentControl, Outcome};
use crate::runner::process::AgentIo;

pub struct PtyAdapter;

/// After the process ends, output still in the terminal is collected for this long.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(300);

impl Adapter for PtyAdapter {
    fn run(&self, mut cx: AgentContext) -> BoxFuture<'static, Outcome> {
        Box::pin(async move {
            let Some(AgentIo::Pty { reader, writer }) = cx.process.io.take() else {
                return Outcome::Failed("the pty adapter needs a pseudo-terminal".into());
            };
            // The PTY's master side is blocking: one thread reads, one writes.
            let (bytes_tx, mut bytes_rx) = mpsc::channel::<Vec<u8>>(64);
            std::thread::spawn(move || read_loop(reader, bytes_tx));
            let (keys_tx, keys_rx) = std::sync::mpsc::channel::<Vec<u8>>();
            std::thread::spawn(move || write_loop(writer, keys_rx));

            let exit = loop {
                tokio::select! {
                    exit = cx.process.wait() => break exit,
                    Some(bytes) = bytes_rx.recv() => cx.output.write(bytes).await,
                    Some(control) = cx.control.recv() => {
                        let bytes = match control {
                            AgentControl::Input(b) => b,
                            // Ctrl-C, as a person at the terminal would.
                            AgentControl::Interrupt => vec![0x03],
                        };
                        let _ = keys_tx.send(bytes);
                    }
                }
            };
            let deadline = tokio::time::sleep(DRAIN_AFTER_EXIT);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    more = bytes_rx.recv() => match more {
                        Some(bytes) => cx.output.write(bytes).await,
                        None => break,
                    },
                }
            }
            exit.outcome()
        })
    }
}

fn read_loop(mut reader: Box<dyn Read + Send>, tx: mpsc::Sender<Vec<u8>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            // EIO once every process holding the terminal is gone: that is the end.
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.blocking_send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        }
    }
}

fn write_loop(mut writer: Box<dyn Write + Send>, rx: std::sync::mpsc::Receiver<Vec<u8>>) {
    while let Ok(bytes) = rx.recv() {
        if writer
            .write_all(&bytes)
            .and_then(|_| writer.flush())
            .is_err()
        {
            return;
        }
    }
}
