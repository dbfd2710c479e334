//! The floor under any proxy built on tokio, for `bench/cpu-per-request floor`.
//!
//! Each client connection gets one upstream connection, and each request is a head without a
//! body, answered with a `Content-Length` body: what wrk sends through the proxies in
//! `bench/compare`. It parses both heads with httparse, drops `Connection`, and copies everything
//! else through. No routing, no header maps, no timeouts, no retries, no balancing, no breakers,
//! no metrics: whatever user time it spends a request, a proxy that does those things spends
//! more, and the kernel's share, the same system calls, is the same for both. It is a measuring
//! stick, not a proxy: anything outside that shape ends the connection.
//!
//! ```text
//! rampart-bench-floor LISTEN UPSTREAM      # both host:port
//! ```

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::LocalSet;

// rampart's allocator, so that the difference measured is not the allocator's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MAX_HEADERS: usize = 64;

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream), None) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: rampart-bench-floor LISTEN UPSTREAM");
        std::process::exit(2);
    };
    // One thread, as the proxies it is set beside run one.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(LocalSet::new().run_until(async move {
        let listener = TcpListener::bind(&listen).await?;
        loop {
            let (client, _) = listener.accept().await?;
            let upstream = upstream.clone();
            tokio::task::spawn_local(async move {
                // A connection that leaves the shape just ends.
                let _ = relay(client, &upstream).await;
            });
        }
    }))
}

/// Relays requests from `client` to one connection to `upstream` until either side closes.
async fn relay(mut client: TcpStream, upstream: &str) -> io::Result<()> {
    client.set_nodelay(true)?;
    let mut server = TcpStream::connect(upstream).await?;
    server.set_nodelay(true)?;
    let mut from_client = Vec::with_capacity(8192);
    let mut from_server = Vec::with_capacity(8192);
    let mut out = Vec::with_capacity(8192);
    loop {
        let Some((head, _)) = read_head(&mut client, &mut from_client, &mut out, request).await?
        else {
            return Ok(());
        };
        from_client.drain(..head);
        server.write_all(&out).await?;

        let Some((head, length)) =
            read_head(&mut server, &mut from_server, &mut out, response).await?
        else {
            return Ok(());
        };
        while from_server.len() < head + length {
            if server.read_buf(&mut from_server).await? == 0 {
                return Ok(());
            }
        }
        out.extend_from_slice(&from_server[head..head + length]);
        from_server.drain(..head + length);
        client.write_all(&out).await?;
    }
}

/// A head's length and the length of the body after it.
type Head = (usize, usize);

/// Reads from `stream` into `buf` until `copy` finds a whole head there and writes it into
/// `out`. `None` when the stream ends first.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    copy: fn(&[u8], &mut Vec<u8>) -> io::Result<Option<Head>>,
) -> io::Result<Option<Head>> {
    loop {
        if let Some(head) = copy(buf, out)? {
            return Ok(Some(head));
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Parses a request head from `buf` and writes it to `out` as HTTP/1.1 without `Connection`.
/// Its body is taken to be empty.
fn request(buf: &[u8], out: &mut Vec<u8>) -> io::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(length) = head.parse(buf).map_err(invalid)? else {
        return Ok(None);
    };
    out.clear();
    out.extend_from_slice(head.method.unwrap_or_default().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.path.unwrap_or_default().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    copy_fields(head.headers, out);
    Ok(Some((length, 0)))
}

/// Parses a response head from `buf` and writes it to `out` as HTTP/1.1 without `Connection`.
/// Its body is as long as its `Content-Length`, which it must have.
fn response(buf: &[u8], out: &mut Vec<u8>) -> io::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(length) = head.parse(buf).map_err(invalid)? else {
        return Ok(None);
    };
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(head.code.unwrap_or_default().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    copy_fields(head.headers, out);
    Ok(Some((length, content_length(head.headers)?)))
}

fn copy_fields(fields: &[httparse::Header<'_>], out: &mut Vec<u8>) {
    for field in fields {
        if !field.name.eq_ignore_ascii_case("connection") {
            out.extend_from_slice(field.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(field.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

fn content_length(fields: &[httparse::Header<'_>]) -> io::Result<usize> {
    fields
        .iter()
        .find(|field| field.name.eq_ignore_ascii_case("content-length"))
        .and_then(|field| std::str::from_utf8(field.value).ok()?.trim().parse().ok())
        .ok_or_else(|| invalid("an answer without a Content-Length"))
}

fn invalid(error: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error.to_string())
}
