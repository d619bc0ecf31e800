"""wrk's report, parsed one line at a time: the one parser the bench scripts share.

Each figure is read from its own line, anchored at both ends, so that a column of
another line can never be taken for it (a `+/- Stdev` column that happens to read `99%`
is not the 99th percentile). `python3 scripts/wrkout.py` checks the parser against
sample reports and exits non-zero on a mismatch.
"""

import re

UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}

_TIME = r"([\d.]+(?:us|ms|s|m|h))"
_PERCENTILE = re.compile(r"\s*(50|75|90|99)(?:\.0+)?%\s+" + _TIME + r"\s*")
_REQUESTS = re.compile(r"\s*(\d+) requests in " + _TIME + r", .* read\s*")
_RPS = re.compile(r"Requests/sec:\s+([\d.]+)\s*")
_SOCKET = re.compile(r"\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)\s*")
_NON2XX = re.compile(r"\s*Non-2xx or 3xx responses: (\d+)\s*")


def to_us(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError("bad wrk time %r" % text)
    return float(m.group(1)) * UNITS_US[m.group(2)]


def parse(out):
    """{p50_us, p75_us, p90_us, p99_us (with --latency), requests, duration_s, rps,
    sock_errors: {connect, read, write, timeout}, non2xx}. ValueError when the request
    count or the rate is missing, or the percentiles are (after a `Latency
    Distribution` line)."""
    res = {"sock_errors": {}, "non2xx": 0}
    in_distribution = False
    for line in out.splitlines():
        if line.strip() == "Latency Distribution":
            in_distribution = True
            continue
        m = _PERCENTILE.fullmatch(line) if in_distribution else None
        if m:
            res["p%s_us" % m.group(1)] = to_us(m.group(2))
            continue
        in_distribution = False
        m = _REQUESTS.fullmatch(line)
        if m:
            res["requests"] = int(m.group(1))
            res["duration_s"] = to_us(m.group(2)) / 1e6
            continue
        m = _RPS.fullmatch(line)
        if m:
            res["rps"] = float(m.group(1))
            continue
        m = _SOCKET.fullmatch(line)
        if m:
            res["sock_errors"] = dict(zip(("connect", "read", "write", "timeout"),
                                          map(int, m.groups())))
            continue
        m = _NON2XX.fullmatch(line)
        if m:
            res["non2xx"] = int(m.group(1))
    missing = [k for k in ("requests", "rps") if k not in res]
    if "Latency Distribution" in out:
        missing += [k for k in ("p50_us", "p99_us") if k not in res]
    if missing:
        raise ValueError("wrk output lacks %s:\n%s" % (", ".join(missing), out))
    return res


def problems(res):
    """Socket errors and non-2xx responses as one short note ("" when none)."""
    errs = ", ".join("%s %d" % kv for kv in res["sock_errors"].items() if kv[1])
    notes = [errs] if errs else []
    if res["non2xx"]:
        notes.append("%d non-2xx" % res["non2xx"])
    return "; ".join(notes)


_SAMPLE = """Running 2s test @ https://127.0.0.1:4443/64
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   412.10us  101.20us   3.05ms   99.00%
    Req/Sec    19.33k   512.11    20.01k    99%
  Latency Distribution
     50%  401.00us
     75%  450.00us
     90%  520.00us
     99%    1.10ms
  77321 requests in 2.00s, 9.81MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 2
Requests/sec:  38660.50
Transfer/sec:      4.90MB
"""


def _self_test():
    r = parse(_SAMPLE)
    assert r["p50_us"] == 401.0 and r["p99_us"] == 1100.0, r
    assert r["requests"] == 77321 and r["duration_s"] == 2.0 and r["rps"] == 38660.5, r
    assert r["sock_errors"] == {"connect": 0, "read": 3, "write": 0, "timeout": 1}, r
    assert problems(r) == "read 3, timeout 1; 2 non-2xx", problems(r)
    plain = "\n".join(line for line in _SAMPLE.splitlines()
                      if "%" not in line or "Stdev" in line or "Latency" in line)
    assert "p99_us" not in parse(plain.replace("Latency Distribution", "")), plain
    for broken in (_SAMPLE.replace("Requests/sec", "Requests/s"),
                   _SAMPLE.replace("     99%    1.10ms\n", "")):
        try:
            parse(broken)
        except ValueError:
            continue
        raise AssertionError("accepted:\n" + broken)
    print("wrkout: ok")


if __name__ == "__main__":
    _self_test()
