//! A loopback TCP proxy for fault injection: forwards to a target until told
//! to stall (hold every byte), cut (drop every connection) or go down
//! (refuse new connections, as a stopped server would).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Forward,
    Stall,
    Down,
}

pub struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    listener: AbortHandle,
}

impl Proxy {
    /// Starts forwarding a free loopback port to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, _) = watch::channel(Mode::Forward);
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accept = {
            let mode = mode.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if *mode.borrow() == Mode::Down {
                        drop(client);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(target).await else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let up = tokio::spawn(pump(client_read, server_write, mode.subscribe()));
                    let down = tokio::spawn(pump(server_read, client_write, mode.subscribe()));
                    let mut open = connections.lock().unwrap();
                    open.retain(|h| !h.is_finished());
                    open.push(up.abort_handle());
                    open.push(down.abort_handle());
                }
            })
        };
        Proxy {
            addr,
            mode,
            connections,
            listener: accept.abort_handle(),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Holds every byte in both directions until [`resume`](Self::resume).
    pub fn stall(&self) {
        self.mode.send_replace(Mode::Stall);
    }

    /// Forwards again (after a stall or going down).
    pub fn resume(&self) {
        self.mode.send_replace(Mode::Forward);
    }

    /// Drops every open connection; new ones are still accepted.
    pub fn cut(&self) {
        for h in self.connections.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    /// As if the server stopped: open connections dropped, new ones closed at once.
    pub fn down(&self) {
        self.mode.send_replace(Mode::Down);
        self.cut();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.listener.abort();
        self.cut();
    }
}

/// Copies one direction, holding the bytes while the mode is `Stall`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if mode.wait_for(|m| *m != Mode::Stall).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
