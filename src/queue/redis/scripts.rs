//! The Lua scripts that make each queue step atomic on the engine, and the pure
//! functions that read their replies. Every script names all its keys in KEYS (they
//! share one hash tag, so they would also live in one cluster slot).
//!
//! Replies are arrays whose first element is a status number; the rest depends on it
//! (see each script). Lua's `false` (a missing key) never appears in a reply.

use redis::{Script, Value};

use super::error::RedisQueueError;

/// PUSH — KEYS: stream. ARGV: cap, payload, instance id, not-after (Unix ms).
/// `{0, len}` = full (nothing written); `{1, len_after, id}` = appended;
/// `{2, len}` = it ran after the caller's deadline (nothing written).
///
/// The not-after check is for an engine that was stalled (paused, swapping, a long
/// fork) while the push sat in its socket: the caller has already told its client
/// "not buffered", so the entry must not appear later. It compares the caller's
/// wall clock with the engine's, so it assumes clocks within the timeout of each
/// other (NTP); a caller behind the engine by more than that has every push refused
/// as timed out, which the error log shows at once.
const PUSH: &str = r"
redis.replicate_commands()
local n = redis.call('XLEN', KEYS[1])
local t = redis.call('TIME')
if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(ARGV[4]) then
  return {2, n}
end
if n >= tonumber(ARGV[1]) then return {0, n} end
local id = redis.call('XADD', KEYS[1], '*', 'p', ARGV[2], 'by', ARGV[3])
return {1, n + 1, id}
";

/// The end of HEAD, ACK and DEAD: replies with the oldest entry of KEYS[2] and the
/// engine's time — `{1, now_ms, len}` when empty, `{2, now_ms, len, id, payload}`
/// otherwise (payload '' if the entry has no `p`). `now_ms` is the engine's clock
/// (TIME), so ages do not depend on ours. ACK and DEAD end with it so that a replayer
/// gets its next head in the same round trip; it stays the head while the lease is
/// ours, since only the lease holder removes entries.
const NEXT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = redis.call('XLEN', KEYS[2])
local e = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #e == 0 then return {1, now, n} end
local f, p = e[1][2], ''
for i = 1, #f, 2 do if f[i] == 'p' then p = f[i + 1] end end
return {2, now, n, e[1][1], p}
";

/// HEAD — KEYS: lease, stream. ARGV: our lease value.
/// `{0}` = the lease is not ours; else as NEXT.
const HEAD: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0} end
";

/// ACK — KEYS: lease, stream. ARGV: lease value, entry id.
/// `{0}` = the lease is not ours (nothing removed); else removed (or already gone),
/// and the new head as NEXT.
const ACK: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0} end
redis.call('XDEL', KEYS[2], ARGV[2])
";

/// DEAD — KEYS: lease, stream, dead-letter stream. ARGV: lease value, entry id,
/// reason, instance id, dead-letter cap.
/// `{0}` = the lease is not ours; else moved (or already gone), and the new head as
/// NEXT.
const DEAD: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0} end
do
  local e = redis.call('XRANGE', KEYS[2], ARGV[2], ARGV[2])
  if #e > 0 then
    local f, p = e[1][2], ''
    for i = 1, #f, 2 do if f[i] == 'p' then p = f[i + 1] end end
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*',
      'p', p, 'id', ARGV[2], 'reason', ARGV[3], 'by', ARGV[4])
    redis.call('XDEL', KEYS[2], ARGV[2])
  end
end
";

/// LEASE — KEYS: lease, fence counter, stream. ARGV: our lease value ('' = none),
/// TTL in ms, instance id.
/// `{0, holder_value, len}` = someone else holds it; `{1, value, len}` = ours, renewed;
/// `{2, value, len}` = newly ours, with a fence number one above any before.
const LEASE: &str = r"
local cur = redis.call('GET', KEYS[1])
local n = redis.call('XLEN', KEYS[3])
if cur and cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, cur, n}
end
if cur then return {0, cur, n} end
local v = redis.call('INCR', KEYS[2]) .. ' ' .. ARGV[3]
redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
return {2, v, n}
";

/// RELEASE — KEYS: lease. ARGV: our lease value. `1` = deleted, `0` = was not ours.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// RETRY — KEYS: dead-letter stream, stream. ARGV: dead entry id, cap, instance id.
/// `1` = moved to the queue's tail, `0` = no such dead letter, `-1` = the queue is
/// full (the dead letter stays). The payload moves as it is.
const RETRY: &str = r"
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #e == 0 then return 0 end
if redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[2]) then return -1 end
local f, p = e[1][2], nil
for i = 1, #f, 2 do if f[i] == 'p' then p = f[i + 1] end end
if not p then return 0 end
redis.call('XADD', KEYS[2], '*', 'p', p, 'by', ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
";

/// PURGE — KEYS: dead-letter stream. How many entries it held, then it is gone.
const PURGE: &str = r"
local n = redis.call('XLEN', KEYS[1])
redis.call('DEL', KEYS[1])
return n
";

/// The scripts, hashed once (EVALSHA, falling back to EVAL on NOSCRIPT — a fresh
/// primary after a failover or restart has an empty script cache).
pub struct Scripts {
    pub push: Script,
    pub head: Script,
    pub ack: Script,
    pub dead: Script,
    pub lease: Script,
    pub release: Script,
    pub retry: Script,
    pub purge: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            push: Script::new(PUSH),
            head: Script::new(&format!("{HEAD}{NEXT}")),
            ack: Script::new(&format!("{ACK}{NEXT}")),
            dead: Script::new(&format!("{DEAD}{NEXT}")),
            lease: Script::new(LEASE),
            release: Script::new(RELEASE),
            retry: Script::new(RETRY),
            purge: Script::new(PURGE),
        }
    }
}

/// What PUSH did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Full { len: u64 },
    Late { len: u64 },
    Stored { id: String, len: u64 },
}

/// What HEAD (or ACK, DEAD) found.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadReply {
    NotHolder,
    Empty {
        now_ms: u64,
        len: u64,
    },
    Entry {
        now_ms: u64,
        len: u64,
        id: String,
        payload: Vec<u8>,
    },
}

/// What LEASE found.
#[derive(Debug, PartialEq, Eq)]
pub enum LeaseReply {
    Other { value: String, len: u64 },
    Renewed { value: String, len: u64 },
    Acquired { value: String, len: u64 },
}

type Parsed<T> = Result<T, RedisQueueError>;

fn bad(why: &'static str) -> RedisQueueError {
    RedisQueueError::BadReply(why)
}

fn items(v: Value) -> Parsed<Vec<Value>> {
    match v {
        Value::Array(items) => Ok(items),
        _ => Err(bad("script reply is not an array")),
    }
}

fn int(v: &Value) -> Parsed<i64> {
    match v {
        Value::Int(n) => Ok(*n),
        _ => Err(bad("expected an integer")),
    }
}

fn count(v: &Value) -> Parsed<u64> {
    u64::try_from(int(v)?).map_err(|_| bad("negative count"))
}

fn bytes(v: Value) -> Parsed<Vec<u8>> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        _ => Err(bad("expected a string")),
    }
}

fn text(v: Value) -> Parsed<String> {
    String::from_utf8(bytes(v)?).map_err(|_| bad("string is not UTF-8"))
}

pub fn parse_push(v: Value) -> Parsed<Pushed> {
    let mut it = items(v)?.into_iter();
    let (status, len) = (it.next(), it.next());
    let (Some(status), Some(len)) = (status, len) else {
        return Err(bad("short PUSH reply"));
    };
    let len = count(&len)?;
    match (int(&status)?, it.next()) {
        (0, None) => Ok(Pushed::Full { len }),
        (2, None) => Ok(Pushed::Late { len }),
        (1, Some(id)) => Ok(Pushed::Stored { id: text(id)?, len }),
        _ => Err(bad("unknown PUSH reply")),
    }
}

pub fn parse_head(v: Value) -> Parsed<HeadReply> {
    let mut it = items(v)?.into_iter();
    let status = int(&it.next().ok_or(bad("empty HEAD reply"))?)?;
    if status == 0 {
        return Ok(HeadReply::NotHolder);
    }
    let (Some(now), Some(len)) = (it.next(), it.next()) else {
        return Err(bad("short HEAD reply"));
    };
    let (now_ms, len) = (count(&now)?, count(&len)?);
    match (status, it.next(), it.next()) {
        (1, None, None) => Ok(HeadReply::Empty { now_ms, len }),
        (2, Some(id), Some(payload)) => Ok(HeadReply::Entry {
            now_ms,
            len,
            id: text(id)?,
            payload: bytes(payload)?,
        }),
        _ => Err(bad("unknown HEAD reply")),
    }
}

pub fn parse_lease(v: Value) -> Parsed<LeaseReply> {
    let mut it = items(v)?.into_iter();
    let (Some(status), Some(value), Some(len), None) = (it.next(), it.next(), it.next(), it.next())
    else {
        return Err(bad("LEASE reply is not three items"));
    };
    let (value, len) = (text(value)?, count(&len)?);
    match int(&status)? {
        0 => Ok(LeaseReply::Other { value, len }),
        1 => Ok(LeaseReply::Renewed { value, len }),
        2 => Ok(LeaseReply::Acquired { value, len }),
        _ => Err(bad("unknown LEASE status")),
    }
}

/// One stream entry as XRANGE gives it: its id and its field/value pairs.
pub type RangeEntry = (String, Vec<(String, Vec<u8>)>);

/// An XRANGE reply, in stream order.
pub fn parse_range(v: Value) -> Parsed<Vec<RangeEntry>> {
    let mut out = Vec::new();
    for entry in items(v)? {
        let mut it = items(entry)?.into_iter();
        let id = text(it.next().ok_or(bad("entry without id"))?)?;
        let mut flat = items(it.next().ok_or(bad("entry without fields"))?)?.into_iter();
        let mut fields = Vec::new();
        while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
            fields.push((text(name)?, bytes(value)?));
        }
        out.push((id, fields));
    }
    Ok(out)
}

/// A stream id's milliseconds part: `1700000000000-3` → 1700000000000.
pub fn id_millis(id: &str) -> Option<u64> {
    let (ms, seq) = id.split_once('-')?;
    seq.parse::<u64>().ok()?;
    ms.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr(v: Vec<Value>) -> Value {
        Value::Array(v)
    }
    fn s(t: &str) -> Value {
        Value::BulkString(t.as_bytes().to_vec())
    }

    #[test]
    fn push_replies() {
        assert_eq!(
            parse_push(arr(vec![Value::Int(0), Value::Int(5)])),
            Ok(Pushed::Full { len: 5 })
        );
        assert_eq!(
            parse_push(arr(vec![Value::Int(2), Value::Int(5)])),
            Ok(Pushed::Late { len: 5 })
        );
        assert_eq!(
            parse_push(arr(vec![Value::Int(1), Value::Int(3), s("17-0")])),
            Ok(Pushed::Stored {
                id: "17-0".into(),
                len: 3
            })
        );
        for junk in [
            Value::Nil,
            arr(vec![]),
            arr(vec![Value::Int(1), Value::Int(3)]),
            arr(vec![Value::Int(0), Value::Int(-1)]),
            arr(vec![Value::Int(7), Value::Int(3), s("1-0")]),
        ] {
            assert!(parse_push(junk.clone()).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn head_replies() {
        assert_eq!(
            parse_head(arr(vec![Value::Int(0)])),
            Ok(HeadReply::NotHolder)
        );
        assert_eq!(
            parse_head(arr(vec![Value::Int(1), Value::Int(99), Value::Int(0)])),
            Ok(HeadReply::Empty { now_ms: 99, len: 0 })
        );
        assert_eq!(
            parse_head(arr(vec![
                Value::Int(2),
                Value::Int(99),
                Value::Int(4),
                s("90-1"),
                Value::BulkString(vec![0, 255])
            ])),
            Ok(HeadReply::Entry {
                now_ms: 99,
                len: 4,
                id: "90-1".into(),
                payload: vec![0, 255]
            })
        );
        assert!(parse_head(arr(vec![Value::Int(2), Value::Int(99), Value::Int(4)])).is_err());
        assert!(parse_head(arr(vec![])).is_err());
    }

    #[test]
    fn lease_replies() {
        let reply = |n| arr(vec![Value::Int(n), s("4 host-a"), Value::Int(2)]);
        assert_eq!(
            parse_lease(reply(0)),
            Ok(LeaseReply::Other {
                value: "4 host-a".into(),
                len: 2
            })
        );
        assert!(matches!(
            parse_lease(reply(1)),
            Ok(LeaseReply::Renewed { .. })
        ));
        assert!(matches!(
            parse_lease(reply(2)),
            Ok(LeaseReply::Acquired { .. })
        ));
        assert!(parse_lease(reply(3)).is_err());
        assert!(parse_lease(arr(vec![Value::Int(0), s("x")])).is_err());
    }

    #[test]
    fn range_replies() {
        let entry = arr(vec![
            s("5-1"),
            arr(vec![s("p"), s("xyz"), s("by"), s("me")]),
        ]);
        let got = parse_range(arr(vec![entry])).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "5-1");
        assert_eq!(got[0].1[0], ("p".to_owned(), b"xyz".to_vec()));
        assert_eq!(got[0].1[1], ("by".to_owned(), b"me".to_vec()));
        assert!(parse_range(arr(vec![])).unwrap().is_empty());
        assert!(parse_range(Value::Int(1)).is_err());
    }

    #[test]
    fn ids_give_engine_milliseconds() {
        assert_eq!(id_millis("1700000000000-3"), Some(1_700_000_000_000));
        assert_eq!(id_millis("5-0"), Some(5));
        for bad in ["", "5", "-1", "a-1", "5-x"] {
            assert_eq!(id_millis(bad), None, "{bad}");
        }
    }
}
