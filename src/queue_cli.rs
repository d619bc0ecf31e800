//! `serviceq queue …`: operating the queue from a shell (README "Operating the
//! queue"). With DEFERRED_Q_DIR and ServiceQ stopped, it opens the journal itself;
//! when a running ServiceQ holds the journal's lock (or the queue is in memory), it
//! asks that process over the admin API (ADMIN_ADDRESS:ADMIN_PORT), sending the token
//! in ADMIN_TOKEN_FILE for changes. Either way the operation runs through
//! [`ops::apply`] and its JSON answer is printed by the same code, so the output is
//! the same online and offline.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admin_queue::{load_token, percent_encode};
use crate::config::{self, Config};
use crate::queue::durable::JournalBackend;
use crate::queue::journal::{Journal, JournalError, JournalOptions};
use crate::queue::ops::{self, Op, Select};

pub const USAGE: &str = "\
usage: serviceq queue COMMAND [-c|--config PATH]

  list [--dead] [--json] [--limit N]   queued requests (or dead letters), oldest first
  show ID [--body FILE]                one request: request line, headers, body
  retry-dead ID...|--all               dead letters back to the queue's tail, in order
  drop ID...                           remove queued or dead requests for good
  purge --dead                         remove every dead letter

ID is a request's X-Request-Id. With ServiceQ stopped the journal (DEFERRED_Q_DIR) is
opened directly; while it runs, its admin API is used (ADMIN_PORT; changes need the
token in ADMIN_TOKEN_FILE).";

/// The whole exchange with a running ServiceQ's admin API may take this long.
const ADMIN_DEADLINE: Duration = Duration::from_secs(30);
/// Answers larger than this are refused (a listing of 10,000 requests is far smaller).
const MAX_ANSWER_BYTES: usize = 64 << 20;

#[derive(Debug, PartialEq, Eq)]
struct Cli {
    config: Option<PathBuf>,
    op: Op,
    json: bool,
    body_to: Option<PathBuf>,
}

/// Runs `serviceq queue ARGS…`; what to print, or the error line.
pub fn run(args: impl Iterator<Item = String>, default_config: &str) -> Result<String, String> {
    let args: Vec<String> = args.collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        return Ok(USAGE.to_string());
    }
    let cli = parse(args.into_iter())?;
    let path = cli
        .config
        .clone()
        .or_else(|| std::env::var_os("SQ_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(default_config));
    let (cfg, _warnings) = config::load(&path).map_err(|e| e.to_string())?;
    let answer = execute(&cfg, &cli.op)?;
    render(&cli, &answer)
}

fn parse(args: impl Iterator<Item = String>) -> Result<Cli, String> {
    let usage = |why: String| format!("{why}\n{USAGE}");
    let mut args = args.peekable();
    let command = args
        .next()
        .ok_or_else(|| usage("queue: which command?".into()))?;
    let (mut config, mut json, mut dead, mut all, mut body_to) = (None, false, false, false, None);
    let mut limit = usize::MAX;
    let mut ids = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = |what: &str| {
            args.next()
                .ok_or_else(|| usage(format!("{arg} needs {what}")))
        };
        match arg.as_str() {
            "-c" | "--config" => config = Some(PathBuf::from(value("a path")?)),
            "--json" => json = true,
            "--dead" => dead = true,
            "--all" => all = true,
            "--body" => body_to = Some(PathBuf::from(value("a file")?)),
            "--limit" => {
                let n = value("a number")?;
                limit = n
                    .parse()
                    .map_err(|_| usage(format!("--limit {n:?}: not a number")))?;
            }
            a if a.starts_with("--config=") => config = Some(PathBuf::from(&a[9..])),
            a if a.starts_with('-') => return Err(usage(format!("unknown option {a:?}"))),
            id => ids.push(id.to_string()),
        }
    }
    let op = match (command.as_str(), ids.is_empty()) {
        ("list", true) => Op::List { dead, limit },
        ("show", false) if ids.len() == 1 => Op::Show(ids.remove(0)),
        ("show", _) => return Err(usage("show takes one ID".into())),
        ("retry-dead", true) if all => Op::RetryDead(Select::All),
        ("retry-dead", false) if !all => Op::RetryDead(Select::Ids(ids)),
        ("retry-dead", _) => return Err(usage("retry-dead takes IDs or --all".into())),
        ("drop", false) => Op::Drop(ids),
        ("drop", true) => return Err(usage("drop takes the IDs to drop".into())),
        ("purge", true) if dead => Op::PurgeDead,
        ("purge", _) => {
            return Err(usage(
                "purge takes --dead (dead letters are all it purges)".into(),
            ))
        }
        ("list", false) => return Err(usage(format!("list takes no ID ({:?})", ids[0]))),
        (other, _) => return Err(usage(format!("unknown queue command {other:?}"))),
    };
    Ok(Cli {
        config,
        op,
        json,
        body_to,
    })
}

/// The operation's JSON answer, from the journal itself or from the running process.
fn execute(cfg: &Config, op: &Op) -> Result<serde_json::Value, String> {
    if let crate::config::QueueBackend::Redis(_) = cfg.deferred_q_backend {
        let why = "the queue is shared on Redis: a running ServiceQ reads and changes it";
        return online(cfg, op, why);
    }
    let Some(dir) = &cfg.deferred_q_dir else {
        return online(
            cfg,
            op,
            "the queue is in memory (DEFERRED_Q_DIR unset), in the running ServiceQ only",
        );
    };
    let mut options = JournalOptions::new(dir);
    options.fsync = cfg.deferred_q_fsync;
    let (journal, recovered, warnings) = match Journal::open(options) {
        Ok(opened) => opened,
        Err(JournalError::Dir { source, .. })
            if source.kind() == std::io::ErrorKind::WouldBlock =>
        {
            let why = format!(
                "a running ServiceQ holds the journal's lock in {}",
                dir.display()
            );
            return online(cfg, op, &why);
        }
        Err(e) => return Err(e.to_string()),
    };
    for w in warnings {
        eprintln!("serviceq: warning: queue journal: {w}");
    }
    let backend = JournalBackend::new(Arc::new(journal), recovered);
    ops::apply(&backend, op)
        .map(|applied| applied.answer)
        .map_err(|e| e.to_string())
}

/// The admin API request for `op`: method and target.
fn request_for(op: &Op) -> (&'static str, String) {
    let ids = |ids: &[String]| {
        let q: Vec<String> = ids
            .iter()
            .map(|i| format!("id={}", percent_encode(i)))
            .collect();
        q.join("&")
    };
    let limit = |n: usize| match n {
        usize::MAX => String::new(),
        n => format!("?limit={n}"),
    };
    match op {
        Op::List {
            dead: false,
            limit: n,
        } => ("GET", format!("/queue{}", limit(*n))),
        Op::List {
            dead: true,
            limit: n,
        } => ("GET", format!("/queue/dead{}", limit(*n))),
        Op::Show(id) => (
            "GET",
            format!("/queue/show?{}", ids(std::slice::from_ref(id))),
        ),
        Op::RetryDead(Select::All) => ("POST", "/queue/retry-dead?all=1".into()),
        Op::RetryDead(Select::Ids(list)) => ("POST", format!("/queue/retry-dead?{}", ids(list))),
        Op::Drop(list) => ("DELETE", format!("/queue?{}", ids(list))),
        Op::PurgeDead => ("DELETE", "/queue/dead".into()),
    }
}

/// Asks the running ServiceQ (`why`: why not the journal directly).
fn online(cfg: &Config, op: &Op, why: &str) -> Result<serde_json::Value, String> {
    if cfg.admin_port == 0 {
        return Err(format!(
            "{why}, and ADMIN_PORT is not set in {}: set it (and restart) to operate the queue while ServiceQ runs, or stop ServiceQ first",
            cfg.source.display()
        ));
    }
    let host = match cfg.admin_address {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        a => a,
    };
    let addr = SocketAddr::new(host, cfg.admin_port);
    let token = match (&cfg.admin_token_file, op.changes()) {
        (Some(path), true) => Some(load_token(path).map_err(|e| format!("ADMIN_TOKEN_FILE: {e}"))?),
        _ => None,
    };
    let (method, target) = request_for(op);
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n"
    );
    if let Some(t) = &token {
        head.push_str(&format!(
            "Authorization: Bearer {}\r\n",
            String::from_utf8_lossy(t)
        ));
    }
    head.push_str("\r\n");
    let (status, body) = exchange(addr, head.as_bytes())
        .map_err(|e| format!("{why}; the admin API at {addr} did not answer: {e}"))?;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| format!("admin API at {addr}: answer {status} is not JSON: {e}"))?;
    if status != 200 {
        let error = value
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("no reason given");
        return Err(format!("admin API at {addr}: {status}: {error}"));
    }
    Ok(value)
}

/// One request to the admin API within [`ADMIN_DEADLINE`]: (status, body).
fn exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let deadline = Instant::now() + ADMIN_DEADLINE;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(std::io::ErrorKind::TimedOut)
    };
    let mut stream = TcpStream::connect_timeout(&addr, left()?)?;
    stream.set_write_timeout(Some(left()?))?;
    stream.write_all(request)?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        stream.set_read_timeout(Some(left()?))?;
        match stream.read(&mut chunk)? {
            0 => break,
            n if answer.len() + n > MAX_ANSWER_BYTES => {
                return Err(std::io::Error::other("answer too large"))
            }
            n => answer.extend_from_slice(&chunk[..n]),
        }
    }
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer");
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let line = std::str::from_utf8(&answer[..end]).map_err(|_| bad())?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, answer[end + 4..].to_vec()))
}

/// What to print for an answer.
fn render(cli: &Cli, answer: &serde_json::Value) -> Result<String, String> {
    let count = |k: &str| answer.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    let garbled = || "the answer does not read as one (a different ServiceQ version?)".to_string();
    match &cli.op {
        Op::List { .. } if cli.json => Ok(answer.to_string()),
        Op::List { dead, .. } => {
            let rows = ops::from_json(answer).ok_or_else(garbled)?;
            Ok(ops::to_text(&rows, *dead).trim_end().to_string())
        }
        Op::Show(_) if cli.json => Ok(answer.to_string()),
        Op::Show(_) => {
            let shown = ops::shown_from_json(answer).ok_or_else(garbled)?;
            show_text(&shown, count("body_bytes"), cli.body_to.as_ref())
        }
        Op::RetryDead(which) => match (count("retried"), which) {
            (0, Select::Ids(ids)) => Err(not_found(ids)),
            (n, _) => Ok(format!("{n} dead letters back at the queue's tail")),
        },
        Op::Drop(ids) => match (count("queued"), count("dead")) {
            (0, 0) => Err(not_found(ids)),
            (q, d) => Ok(format!("dropped {q} queued and {d} dead requests")),
        },
        Op::PurgeDead => Ok(format!("purged {} dead letters", count("purged"))),
    }
}

fn not_found(ids: &[String]) -> String {
    format!(
        "no queued or dead request has X-Request-Id {}",
        ids.join(", ")
    )
}

/// `show`'s text: a summary line, then the request as it will be sent (less `Host`).
fn show_text(s: &ops::Shown, total: u64, body_to: Option<&PathBuf>) -> Result<String, String> {
    let e = &s.entry;
    let state = match &e.dead {
        Some(d) => format!(
            "dead letter #{} ({})",
            e.position,
            d.reason
                .as_deref()
                .unwrap_or("reason unknown: older ServiceQ")
        ),
        None => format!("queued #{}, {} attempts", e.position, e.attempts),
    };
    let mut out = format!(
        "X-Request-Id {}: {state}, age {}, body {total} bytes\n",
        crate::logging::escaped(&e.request_id),
        ops::short_age(e.age)
    );
    if s.sharing > 1 {
        out.push_str(&format!(
            "({} requests share this X-Request-Id; this is the first)\n",
            s.sharing
        ));
    }
    out.push('\n');
    out.push_str(&String::from_utf8_lossy(&s.request_line).replace('\r', ""));
    out.push_str(&String::from_utf8_lossy(&s.headers).replace('\r', ""));
    match body_to {
        Some(path) => {
            std::fs::write(path, &s.body).map_err(|e| format!("{}: {e}", path.display()))?;
            let cut = (s.body.len() as u64) < total;
            out.push_str(&format!(
                "[{} bytes of body written to {}{}]",
                s.body.len(),
                path.display(),
                if cut {
                    ", cut at the 16 MiB show limit"
                } else {
                    ""
                }
            ));
        }
        None => out.push_str(&ops::body_text(&s.body, total, 64 * 1024)),
    }
    Ok(out.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> impl Iterator<Item = String> + '_ {
        line.split_whitespace().map(str::to_string)
    }

    #[test]
    fn commands_parse() {
        let op = |line| parse(args(line)).map(|c| c.op);
        assert_eq!(
            op("list --dead"),
            Ok(Op::List {
                dead: true,
                limit: usize::MAX
            })
        );
        assert_eq!(op("show a1"), Ok(Op::Show("a1".into())));
        assert_eq!(op("retry-dead --all"), Ok(Op::RetryDead(Select::All)));
        assert_eq!(
            op("retry-dead a b"),
            Ok(Op::RetryDead(Select::Ids(vec!["a".into(), "b".into()])))
        );
        assert_eq!(op("drop a -c x.properties"), Ok(Op::Drop(vec!["a".into()])));
        assert_eq!(op("purge --dead"), Ok(Op::PurgeDead));
        for bad in [
            "",
            "purge",
            "drop",
            "show",
            "show a b",
            "retry-dead",
            "retry-dead a --all",
            "list x",
            "frob",
        ] {
            assert!(op(bad).is_err(), "{bad:?}");
        }
        let cli = parse(args("list --json --config=/x")).unwrap();
        assert_eq!((cli.json, cli.config), (true, Some(PathBuf::from("/x"))));
    }

    #[test]
    fn requests_name_the_endpoint() {
        assert_eq!(
            request_for(&Op::Drop(vec!["a b".into(), "c".into()])),
            ("DELETE", "/queue?id=a%20b&id=c".into())
        );
        assert_eq!(
            request_for(&Op::List {
                dead: true,
                limit: 3
            }),
            ("GET", "/queue/dead?limit=3".into())
        );
        assert_eq!(
            request_for(&Op::PurgeDead),
            ("DELETE", "/queue/dead".into())
        );
    }
}
