//! Serial consoles shared by several viewers: one connection per VM to the console's unix
//! socket, its output fanned out to every viewer (each new viewer first gets the recent
//! output, so its terminal is not blank), and every viewer's keystrokes written to it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc};

/// How much recent output a new viewer is sent.
const HISTORY: usize = 64 * 1024;

/// One VM's console connection.
pub struct Hub {
    /// Output: history and the broadcast sender, locked together so a viewer that joins sees
    /// every byte exactly once.
    out: Mutex<(Vec<u8>, broadcast::Sender<Vec<u8>>)>,
    /// Input to the guest.
    input: mpsc::Sender<Vec<u8>>,
}

/// A viewer's handle: the output so far, the live output, and the input.
pub struct Viewer {
    /// Recent output.
    pub history: Vec<u8>,
    /// Live output (closed when the console closes).
    pub output: broadcast::Receiver<Vec<u8>>,
    /// Keystrokes to the guest.
    pub input: mpsc::Sender<Vec<u8>>,
}

/// The consoles open now, by VM name.
#[derive(Default)]
pub struct Consoles(Arc<Mutex<HashMap<String, Arc<Hub>>>>);

impl Hub {
    fn viewer(&self) -> Viewer {
        let out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        Viewer {
            history: out.0.clone(),
            output: out.1.subscribe(),
            input: self.input.clone(),
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        out.0.extend_from_slice(bytes);
        if out.0.len() > HISTORY {
            let cut = out.0.len() - HISTORY;
            out.0.drain(..cut);
        }
        let _ = out.1.send(bytes.to_vec());
    }
}

impl Consoles {
    /// Join VM `name`'s console, connecting to `socket` if nobody is watching it yet (what the
    /// socket replays on connection becomes the first history).
    pub async fn attach(&self, name: &str, socket: &Path) -> std::io::Result<Viewer> {
        if let Some(hub) = self.get(name) {
            return Ok(hub.viewer());
        }
        let stream = tokio::net::UnixStream::connect(socket).await?;
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hub) = map.get(name) {
            // Someone connected meanwhile: use theirs, drop ours.
            return Ok(hub.viewer());
        }
        let (mut rd, mut wr) = stream.into_split();
        let (in_tx, mut in_rx) = mpsc::channel::<Vec<u8>>(64);
        let hub = Arc::new(Hub {
            out: Mutex::new((Vec::new(), broadcast::channel(256).0)),
            input: in_tx,
        });
        map.insert(name.to_string(), hub.clone());
        drop(map);
        tokio::spawn(async move {
            while let Some(bytes) = in_rx.recv().await {
                if wr.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        });
        let reader_hub = hub.clone();
        let viewer = hub.viewer();
        let name = name.to_string();
        let map_handle = self.0.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => reader_hub.push(&buf[..n]),
                }
            }
            // The console closed (the VM stopped): forget the hub; dropping the last sender
            // ends every viewer's stream.
            {
                let mut map = map_handle.lock().unwrap_or_else(|e| e.into_inner());
                if map.get(&name).is_some_and(|h| Arc::ptr_eq(h, &reader_hub)) {
                    map.remove(&name);
                }
            }
            let mut out = reader_hub.out.lock().unwrap_or_else(|e| e.into_inner());
            out.1 = broadcast::channel(1).0;
        });
        Ok(viewer)
    }

    fn get(&self, name: &str) -> Option<Arc<Hub>> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }
}
