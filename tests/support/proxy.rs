//! A TCP proxy the test can cut and restore, to take a backend away mid-run without
//! touching the shared local services; it can also lose a backend's replies while the
//! requests still reach it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug)]
pub struct CuttableProxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
    /// While set, a connection whose client sends these bytes gets no reply from then on.
    swallow_after: Arc<Mutex<Option<Vec<u8>>>>,
}

impl CuttableProxy {
    /// Listens on a free local port and forwards to `upstream` while up.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let up = Arc::new(AtomicBool::new(true));
        let (cut, cuts) = watch::channel(0u64);
        let swallow_after = Arc::new(Mutex::new(None));
        let accepting = up.clone();
        let trigger = swallow_after.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !accepting.load(Ordering::SeqCst) {
                    drop(client); // refused while down
                    continue;
                }
                let mut cuts = cuts.clone();
                // Only cuts after this connection was accepted concern it.
                cuts.borrow_and_update();
                let trigger = trigger.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (from_client, to_client) = client.into_split();
                    let (from_server, to_server) = server.into_split();
                    let swallowing = AtomicBool::new(false);
                    tokio::select! {
                        _ = async {
                            tokio::join!(
                                requests(from_client, to_server, &trigger, &swallowing),
                                replies(from_server, to_client, &swallowing),
                            )
                        } => {}
                        _ = cuts.changed() => {} // dropping both ends cuts the connection
                    }
                });
            }
        });
        Self {
            addr,
            up,
            cut,
            swallow_after,
        }
    }

    /// Closes every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// From now on, a connection whose client sends `pattern` still forwards that request
    /// and every later one, but passes no reply back any more, for as long as it stays open:
    /// the backend did the work, the client never hears of it.
    pub fn swallow_replies_after(&self, pattern: &[u8]) {
        assert!(!pattern.is_empty(), "an empty pattern");
        *self.swallow_after.lock().expect("proxy lock") = Some(pattern.to_vec());
    }

    /// Connections no longer start swallowing replies; those already swallowing go on.
    pub fn stop_swallowing(&self) {
        *self.swallow_after.lock().expect("proxy lock") = None;
    }
}

/// Client to server. Marks the connection as swallowing before forwarding the bytes that
/// complete the trigger pattern, so not even their own reply gets through.
async fn requests(
    mut from_client: OwnedReadHalf,
    mut to_server: OwnedWriteHalf,
    trigger: &Mutex<Option<Vec<u8>>>,
    swallowing: &AtomicBool,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    // The end of what was forwarded, so a pattern split across reads is found too.
    let mut seen: Vec<u8> = Vec::new();
    while let Ok(read) = from_client.read(&mut buffer).await {
        if read == 0 {
            break;
        }
        let pattern = trigger.lock().expect("proxy lock").clone();
        if let Some(pattern) = pattern.filter(|_| !swallowing.load(Ordering::SeqCst)) {
            seen.extend_from_slice(&buffer[..read]);
            if seen.windows(pattern.len()).any(|w| w == pattern.as_slice()) {
                swallowing.store(true, Ordering::SeqCst);
            }
            let keep = pattern.len() - 1;
            seen.drain(..seen.len().saturating_sub(keep));
        }
        if to_server.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    let _ = to_server.shutdown().await;
}

/// Server to client, dropping everything once the connection swallows.
async fn replies(
    mut from_server: OwnedReadHalf,
    mut to_client: OwnedWriteHalf,
    swallowing: &AtomicBool,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    while let Ok(read) = from_server.read(&mut buffer).await {
        if read == 0 {
            break;
        }
        if swallowing.load(Ordering::SeqCst) {
            continue;
        }
        if to_client.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    let _ = to_client.shutdown().await;
}
