//! The cost floor of ServiceQ's design, for `scripts/bench`: a blocking proxy with one
//! OS thread per client connection, as ServiceQ is, that does nothing else. Each thread
//! dials its own upstream connection (the two upstreams alternate by connection) and
//! then loops: read a request head up to the blank line, write it upstream, read the
//! response head and its Content-Length body, write it back. No parsing beyond that,
//! no header rewriting, no allocation per request, no limits, no error handling worth
//! the name — it is not a proxy anyone should run, only the least a thread-per-
//! connection proxy can spend per request on this kernel, measured side by side with
//! ServiceQ and nginx.
//!
//! Usage: blocking_floor LISTEN_ADDR UPSTREAM_ADDR [UPSTREAM_ADDR...]

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};

fn find_blank_line(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn content_length(head: &[u8]) -> usize {
    let text = String::from_utf8_lossy(head);
    text.split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0)
}

/// Reads from `from` into `buf` until a head is complete; returns (bytes read, head end).
fn read_head(from: &mut TcpStream, buf: &mut [u8]) -> io::Result<(usize, usize)> {
    let mut filled = 0;
    loop {
        let n = from.read(&mut buf[filled..])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
        if let Some(end) = find_blank_line(&buf[..filled]) {
            return Ok((filled, end));
        }
        if filled == buf.len() {
            return Err(io::ErrorKind::InvalidData.into());
        }
    }
}

fn serve(mut client: TcpStream, upstream: &str) -> io::Result<()> {
    client.set_nodelay(true)?;
    let mut up = TcpStream::connect(upstream)?;
    up.set_nodelay(true)?;
    let mut request = vec![0u8; 16 * 1024];
    let mut response = vec![0u8; 256 * 1024];
    loop {
        let (n, _) = match read_head(&mut client, &mut request) {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        up.write_all(&request[..n])?;
        let (mut filled, head_end) = read_head(&mut up, &mut response)?;
        let total = head_end + content_length(&response[..head_end]);
        if total > response.len() {
            return Err(io::ErrorKind::InvalidData.into());
        }
        while filled < total {
            match up.read(&mut response[filled..total])? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                k => filled += k,
            }
        }
        client.write_all(&response[..total])?;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: blocking_floor LISTEN_ADDR UPSTREAM_ADDR [UPSTREAM_ADDR...]");
        std::process::exit(2);
    }
    let listener = match TcpListener::bind(&args[0]) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("blocking_floor: bind {}: {e}", args[0]);
            std::process::exit(1);
        }
    };
    eprintln!("blocking_floor listening on {}", args[0]);
    let upstreams = &args[1..];
    for (i, client) in listener.incoming().enumerate() {
        let Ok(client) = client else { continue };
        let upstream = upstreams[i % upstreams.len()].clone();
        let spawned = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || serve(client, &upstream));
        if let Err(e) = spawned {
            eprintln!("blocking_floor: spawn: {e}");
        }
    }
}
