//! One shutdown signal every task watches, and a way to wait until every
//! task that holds a [`Shutdown`] has finished (as in mini-redis).

use tokio::sync::{mpsc, watch};

/// Held by each task: tells it when to stop, and by being dropped tells
/// [`Trigger::wait_for_tasks`] that the task is done.
#[derive(Clone, Debug)]
pub struct Shutdown {
    signal: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
}

/// Held by `main`: fires the signal and waits for the tasks.
#[derive(Debug)]
pub struct Trigger {
    signal: watch::Sender<bool>,
    alive_rx: mpsc::Receiver<()>,
}

pub fn channel() -> (Trigger, Shutdown) {
    let (signal, rx) = watch::channel(false);
    let (alive_tx, alive_rx) = mpsc::channel(1);
    (
        Trigger { signal, alive_rx },
        Shutdown {
            signal: rx,
            _alive: alive_tx,
        },
    )
}

impl Shutdown {
    pub fn is_shutdown(&self) -> bool {
        *self.signal.borrow()
    }

    /// Resolves once shutdown has been requested.
    pub async fn recv(&mut self) {
        // An error means the trigger is gone, which is shutdown too.
        let _ = self.signal.wait_for(|stop| *stop).await;
    }
}

impl Trigger {
    pub fn fire(&self) {
        let _ = self.signal.send(true);
    }

    /// Wait until every [`Shutdown`] clone has been dropped.
    pub async fn wait_for_tasks(mut self) {
        let _ = self.alive_rx.recv().await;
    }
}
