//! The one background task that applies due timers (timeouts, approval expiry, purge).
//! It wakes on a short interval, and at once when a test's manual clock jumps.

use std::time::Duration;

use tokio::sync::watch;

use super::SessionService;
use crate::clock::SharedClock;

pub async fn run(service: SessionService, clock: SharedClock, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let jumped = async {
            match clock.jumped() {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            _ = jumped => {}
            _ = shutdown.changed() => return,
        }
        // A backlog (a server down for a day has a day of purges due) is worked off one bounded
        // job after another, and a stop is heard between two of them.
        while !*shutdown.borrow() {
            match service.sweep().await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::error!(error = %e, "sweeping timers failed");
                    break;
                }
            }
        }
    }
}
