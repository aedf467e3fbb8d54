//! Raw HTTP/1.1 over a plain socket, for requests no well-behaved client
//! would send.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// POSTs `len` bytes while reading the answer (a server may answer, and
/// close, before it read the body), until the server closes.
pub async fn post_raw(addr: SocketAddr, host: &str, path: &str, len: usize) -> String {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 << 10];
        let mut sent = 0;
        while sent < len {
            let n = chunk.len().min(len - sent);
            write.write_all(&chunk[..n]).await?;
            sent += n;
        }
        std::io::Result::Ok(write)
    });
    let mut answer = Vec::new();
    let done = tokio::time::timeout(Duration::from_secs(30), read.read_to_end(&mut answer)).await;
    assert!(
        done.is_ok(),
        "no answer: {}",
        String::from_utf8_lossy(&answer)
    );
    writer.abort();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Writes `request` raw and reads the answer until the server closes.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_until_closed(&mut stream).await
}

/// Connects to `addr` from the local address `from` (any of 127.0.0.0/8
/// reaches a loopback server, each a different client to it).
pub async fn connect_from(from: &str, addr: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    socket.connect(addr).await.unwrap()
}

/// Reads until the server closes `stream` (failing after 30 s); returns
/// what it sent.
pub async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> String {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the server kept the connection open; it sent {:?}",
        String::from_utf8_lossy(&answer)
    );
    String::from_utf8_lossy(&answer).into_owned()
}
